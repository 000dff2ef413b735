"""A Sphinx extension for the book (listed in _config.yml `sphinx.extra_extensions`).

Tables are numbered as tables: myst-nb's ``{glue:figure}`` wraps every glued output in a figure, so a
glued table was captioned "Fig. 4.1". A figure whose name starts with ``tbl-`` (the chapters' convention for
tables) becomes a :class:`glued_table` — a figure node Sphinx numbers in the *table* sequence, so its
caption reads "Table 4.1" and ``{numref}`` says "Table"; figures keep their own sequence.

Jupyter Book 1 runs sphinx-thebe's `env-before-read-docs` hook once per reading pass, and each pass
adds the same inline configuration script again, so every page declared `const THEBE_JS_URL` twice and
the browser logged "Identifier 'THEBE_JS_URL' has already been declared". This extension drops repeated
script entries (same file and same inline body) from each page's script list before it is rendered.
"""
from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.transforms import SphinxTransform

TABLE_PREFIX = "tbl-"


class glued_table(nodes.figure):   # noqa: N801 (docutils names node classes in lower case)
    """A glued table: laid out like a figure, numbered like a table."""


def _visit_glued_table(translator: Any, node: nodes.Element) -> None:
    translator.visit_figure(node)


def _depart_glued_table(translator: Any, node: nodes.Element) -> None:
    translator.depart_figure(node)


def is_glued_table(node: nodes.Node) -> bool:
    """A figure node named ``tbl-…`` (only its ids say which it is)."""
    return type(node) is nodes.figure and any(str(i).startswith(TABLE_PREFIX) for i in node.get("ids", []))


class GluedTables(SphinxTransform):
    """Turn every figure named ``tbl-…`` into a :class:`glued_table` (same children and attributes)."""

    default_priority = 500

    def apply(self, **kwargs: Any) -> None:
        for node in list(self.document.findall(nodes.figure)):
            if is_glued_table(node):
                table = glued_table(node.rawsource, *node.children, **node.attributes)
                node.replace_self(table)
                for ident in table["ids"]:         # {numref} finds its target through document.ids
                    self.document.ids[ident] = table


def _script_key(script: Any) -> tuple[str, str]:
    filename = getattr(script, "filename", script)
    body = (getattr(script, "attributes", None) or {}).get("body", "")
    return str(filename or ""), str(body)      # an inline script's filename is None, or "" once re-added


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """`scripts` in order, without repeats of the same (file, inline body)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            out.append(script)
    return out


def _dedupe(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        scripts[:] = unique_scripts(scripts)      # in place: themes add page scripts to this list later


def setup(app: Any) -> dict[str, Any]:
    app.add_enumerable_node(glued_table, "table", html=(_visit_glued_table, _depart_glued_table),
                            latex=(_visit_glued_table, _depart_glued_table))
    app.add_transform(GluedTables)
    app.connect("html-page-context", _dedupe, priority=100)   # early: html-page-context stops at the first handler that returns a value
    return {"parallel_read_safe": True, "parallel_write_safe": True}
