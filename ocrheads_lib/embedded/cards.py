"""Model cards from a markdown source plus data, for every embedded model.

A card's prose lives in markdown beside its model (`tiny/model_card_template.md` and `tiny/card_notes.md`,
`smolvl/card_template.md`); its numbers come from JSON records. `render` fills a template's `$placeholders`;
`read_sections` splits a markdown file into its `## name` sections, and `bullets` / `paragraph` turn a
section into the strings a card quotes. Torch-free: rendering a card needs no model.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from string import Template

COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)   # maintainers' notes (where a number came from): never quoted


def render(template: str, values: Mapping[str, object]) -> str:
    """`template` with every `$name` (or `${name}`) replaced by `str(values[name])`; `$$` is a literal `$`."""
    try:
        return Template(template).substitute(values)
    except KeyError as err:
        raise KeyError(f"the card template needs a value for ${err.args[0]}; add it to the values "
                       f"(given: {', '.join(sorted(values))})") from err


def read_template(path: str | os.PathLike) -> str:
    """A template file's text (UTF-8)."""
    return Path(path).read_text(encoding="utf-8")


def read_sections(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, str]:
    """The `## name` sections of a markdown file as {name: body}, in file order: `<!-- comments -->` removed,
    each body stripped. Text before the first `##` heading (the file's own preface) is no section. A name in
    `required` that the file lacks is an error naming the file and the sections it has."""
    text = COMMENT.sub("", Path(path).read_text(encoding="utf-8"))
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    missing = [name for name in required if name not in sections]
    if missing:
        raise ValueError(f"{path} has no section {', '.join(repr(m) for m in missing)} (it has "
                         f"{', '.join(repr(s) for s in sections) or 'none'}); add a '## <name>' heading for each")
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def bullets(text: str) -> list[str]:
    """The items of a markdown bullet list: a line starting with `- ` opens an item, the indented lines after
    it continue the item (joined with one space)."""
    items: list[str] = []
    for line in text.split("\n"):
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line.strip():
            if not items:
                raise ValueError(f"text before the first bullet: {line.strip()[:60]!r}; start each item with '- '")
            items[-1] += " " + line.strip()
    return items


def paragraph(text: str) -> str:
    """A wrapped paragraph as one line (its lines joined with one space)."""
    return " ".join(line.strip() for line in text.split("\n") if line.strip())
