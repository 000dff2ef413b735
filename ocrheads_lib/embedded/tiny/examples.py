"""Training and held-out examples for the embedded model, generated from a seeded rng.

Three tasks, all rendered with the same grid renderer as the book's pages
(:mod:`ocrheads_lib.data.grid`):

- ``key``:  read a pass key / short word alone on a small page (aligned or unaligned, 1 or 2 lines);
- ``page``: find and read the pass key inside a paragraph page (the book's ``passkey_images`` grid
  default: 16x6 cells, filler text wrapped to 15 characters, up to 5 lines);
- ``text``: find the pass key in a plain-text context (text retrieval), context length by curriculum.

Every function takes a ``random.Random``; nothing else is random.
"""
from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from ocrheads_lib.data.grid import BOOK_LAYOUT, BOOK_PAGE, CELL, cell_labels, render_grid, wrap_words

PASSKEY_QUESTION = "What is the pass key?"
READ_QUESTION = "What is written in the image?"
SOFT_PROMPT = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
               "I will quiz you about the important information there.")
# The classic repetitive haystack of pass-key retrieval (no digits in it).
CLASSIC_FILLER = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again."]
WORDS = ("the a of and to in is was for on with as by at from it that this be are or an we they you "
         "grass sky sun tree river hill road house cloud stone field bird water light day night rain "
         "snow wind sea boat town city book page door garden flower horse apple bread table window "
         "green blue warm cold old new long small big quiet bright dark soft slow fast red white "
         "yellow gray runs flows grows shines sings rests falls waits moves stands reads walks "
         "again here there back always never often").split()
SINGLE_CHARS = string.digits + string.ascii_lowercase      # the case study's single-character keys


@dataclass
class Example:
    """One training/eval example: pages + user text -> answer."""

    kind: str                          # "key" | "page" | "text" | "read" | "eye"
    pages: list[Image.Image]
    prompt: str                        # user text after the images
    answer: str
    cell_labels: list[list[str]] = field(default_factory=list)   # per page, per visual token ("" = blank)
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------ keys and filler
def seeded_examples(n: int, seed: int, make: Callable[[random.Random], "Example"]) -> list["Example"]:
    """n examples from `make`, drawn in order from one random.Random(seed): a held-out set that is the same
    wherever it is built (the card's and the trainer's evaluation sets use disjoint seeds)."""
    rng = random.Random(seed)
    return [make(rng) for _ in range(n)]


def random_key(rng: random.Random, style: str | None = None) -> tuple[str, str]:
    """A pass key; returns (key, style)."""
    style = style or rng.choices(["digits", "paper", "char", "alnum"], weights=[5, 3, 2, 1])[0]
    if style == "digits":        # 3-6 random digits
        key = "".join(rng.choice(string.digits) for _ in range(rng.randint(3, 6)))
    elif style == "paper":       # the paper's k ~ U[1, 10000]
        key = str(rng.randint(1, 10000))
    elif style == "char":        # one character, as in the case study
        key = rng.choice(SINGLE_CHARS)
    elif style == "alnum":
        key = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(2, 6)))
    else:
        raise ValueError(f"unknown key style {style!r}")
    return key, style


def random_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    return " ".join(words).capitalize() + "."


def filler_sentences(rng: random.Random, n_chars: int, classic: bool) -> list[str]:
    """Sentences totalling about n_chars characters (with the joining spaces)."""
    out: list[str] = []
    total = 0
    start = rng.randrange(len(CLASSIC_FILLER))
    while total < n_chars:
        s = CLASSIC_FILLER[(start + len(out)) % len(CLASSIC_FILLER)] if classic else random_sentence(rng)
        out.append(s)
        total += len(s) + 1
    return out


def needle_sentence(rng: random.Random, key: str) -> str:
    return f"The pass key is {key}." + (" Remember it." if rng.random() < 0.6 else "")


def haystack_with_needle(rng: random.Random, n_chars: int, key: str) -> tuple[str, int]:
    """Filler of ~n_chars characters with the needle at a random sentence boundary.

    Returns (text, index of the key in text)."""
    needle = needle_sentence(rng, key)
    classic = rng.random() < 0.5
    sents = filler_sentences(rng, max(0, n_chars - len(needle) - 1), classic)
    pos = rng.randint(0, len(sents))
    before = " ".join(sents[:pos])
    text = (before + " " if before else "") + needle
    key_at = len(before) + (1 if before else 0) + len("The pass key is ")
    after = " ".join(sents[pos:])
    if after:
        text += " " + after
    assert text[key_at:key_at + len(key)] == key
    return text, key_at


def _in_band(rng: random.Random, band: tuple[int, int]) -> int:
    lo, hi = band
    if not 0 <= lo < hi <= CELL:
        raise ValueError(f"band {band} must satisfy 0 <= lo < hi <= {CELL} (pixels within one cell)")
    return rng.randrange(lo, hi)


# ------------------------------------------------------------------ task: key alone on a page
def key_example(rng: random.Random, layout: str, band: tuple[int, int] | None = None,
                key_style: str | None = None, words_share: float = 0.25) -> Example:
    """A pass key (or short words) alone on a small grid page.

    layout: "aligned" | "offset" (1 line) | "2lines" | "2lines_offset".
    band: for an offset layout, draw both offsets modulo the cell from [lo, hi) pixels instead of
    anywhere (e.g. (10, 20): glyphs that straddle two token rows and columns); the page gets one more
    row or column where it has no room to move the block.
    key_style: the pass-key style when the page holds a key (see `random_key`; None = the usual mixture);
    words_share: the share of pages that hold one to three short words whatever the style (a quarter by
    default; the draw consumes the rng the same way for every share)."""
    if not 0.0 <= words_share <= 1.0:
        raise ValueError(f"words_share = {words_share!r}: give a probability in [0, 1] (default 0.25)")
    if rng.random() < words_share:    # read one to three short words
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
        while len(" ".join(words)) > 15:
            words.pop()
        text, question, style = " ".join(words), READ_QUESTION, "words"
    else:
        text, style = random_key(rng, key_style)
        question = PASSKEY_QUESTION
    two = layout.startswith("2lines")
    offset = layout.endswith("offset")
    if two:
        if " " in text:
            lines = wrap_words(text, max(len(w) for w in text.split()))
            lines = [" ".join(lines[: len(lines) // 2 or 1]), " ".join(lines[len(lines) // 2 or 1:])]
            lines = [s for s in lines if s]
        elif len(text) >= 2:
            k = rng.randint(1, len(text) - 1)
            lines = [text[:k], text[k:]]
        else:
            lines = [text]
    else:
        lines = [text]
    width = max(len(s) for s in lines)
    cols = rng.randint(min(16, width + 1), 16)
    rows = rng.randint(len(lines), 4)
    if offset and band is not None:
        cols, rows = max(cols, width + 1), max(rows, len(lines) + 1)
        x_off = rng.randrange(cols - width) * CELL + _in_band(rng, band)
        y_off = rng.randrange(rows - len(lines)) * CELL + _in_band(rng, band)
    elif offset:   # any pixel position that keeps the block on the page
        x_off = rng.randint(0, (cols - width) * CELL)
        y_off = rng.randint(0, (rows - len(lines)) * CELL)
    else:
        x_off = rng.randint(0, cols - width) * CELL
        y_off = rng.randint(0, rows - len(lines)) * CELL
    page = render_grid(lines, cols, rows, x_off, y_off)
    answer = text   # words: lines joined by a space; keys: the lines concatenated
    return Example("key", [page.image], question, answer, [cell_labels(page)],
                   meta=dict(layout=layout, style=style, cols=cols, rows=rows, x_off=x_off, y_off=y_off))


def shifted_key_example(base: Example, dx: int, dy: int) -> Example:
    """`base`, a `key_example` of the "aligned" layout, redrawn `dx` pixels right and `dy` pixels down on a page
    one cell wider and taller (so every shift below a cell fits): same key, same question. A set of these
    against dx = dy = 0 measures what moving the glyphs off the 28-px token grid costs a reader."""
    layout = base.meta.get("layout")
    if base.kind != "key" or layout != "aligned":
        raise ValueError(f"shifted_key_example needs a key_example of the 'aligned' layout, got kind {base.kind!r} "
                         f"and layout {layout!r}; draw the base with key_example(rng, 'aligned')")
    for name, value in (("dx", dx), ("dy", dy)):
        if not isinstance(value, int) or not 0 <= value < CELL:
            raise ValueError(f"{name} = {value!r}: a shift must be an integer number of pixels in [0, {CELL}) "
                             f"(a whole cell of {CELL} px is an aligned page again)")
    meta = dict(base.meta, layout="shifted", shift=(dx, dy), cols=base.meta["cols"] + 1,
                rows=base.meta["rows"] + 1, x_off=base.meta["x_off"] + dx, y_off=base.meta["y_off"] + dy)
    page = render_grid([base.answer], meta["cols"], meta["rows"], meta["x_off"], meta["y_off"])
    return Example("key", [page.image], base.prompt, base.answer, [cell_labels(page)], meta=meta)


# ------------------------------------------------------------------ task: pass key in a paragraph page
def page_example(rng: random.Random, n_lines: int | None = None, offset: bool = False,
                 key_style: str | None = None, cols: int | None = None, rows: int | None = None,
                 band: tuple[int, int] | None = None) -> Example:
    """The book's grid page: filler paragraph with the needle, wrapped, on a cols x rows page.

    band: with `offset`, draw both offsets from [lo, hi) pixels instead of the whole cell."""
    cols = cols or BOOK_PAGE["cols"]
    rows = rows or BOOK_PAGE["rows"]
    line_chars = cols - 1
    max_lines = rows - 1
    n_lines = n_lines or max_lines
    key, style = random_key(rng, key_style)
    soft = rng.random() < 0.15
    for _attempt in range(50):
        text, key_at = haystack_with_needle(rng, n_lines * line_chars + 40, key)
        if soft:
            text = SOFT_PROMPT + " " + text
            key_at += len(SOFT_PROMPT) + 1
        lines = wrap_words(text, line_chars)
        # locate the key's line; choose a window of n_lines lines containing it
        starts, pos = [], 0
        for ln in lines:
            pos = text.index(ln, pos)
            starts.append(pos)
            pos += len(ln)
        key_line = max(i for i, s in enumerate(starts) if s <= key_at)
        if key_at + len(key) > starts[key_line] + len(lines[key_line]):
            continue   # key split by the wrap (never for keys <= line width); try again
        lo = max(0, min(key_line - rng.randint(0, n_lines - 1), len(lines) - n_lines))
        window = lines[lo: lo + n_lines]
        if len(window) < min(n_lines, len(lines)) or not (lo <= key_line < lo + len(window)):
            continue
        break
    else:
        raise RuntimeError("could not place the needle on the page")
    if offset and band is not None:
        x_off, y_off = _in_band(rng, band), _in_band(rng, band)
    else:
        x_off = rng.randrange(*BOOK_LAYOUT["offset_range"]) if offset else 0
        y_off = rng.randrange(*BOOK_LAYOUT["offset_range"]) if offset else 0
    page = render_grid(window, cols, rows, x_off, y_off)
    return Example("page", [page.image], PASSKEY_QUESTION, key, [cell_labels(page)],
                   meta=dict(style=style, n_lines=len(window), offset=offset, x_off=x_off, y_off=y_off))


# ------------------------------------------------------------------ task: text retrieval
def text_example(rng: random.Random, min_chars: int, max_chars: int, key_style: str | None = None) -> Example:
    key, style = random_key(rng, key_style)
    n_chars = rng.randint(min_chars, max_chars)
    text, _ = haystack_with_needle(rng, n_chars, key)
    return Example("text", [], f"{text}\n\n{PASSKEY_QUESTION}", key, [], meta=dict(style=style, n_chars=len(text)))


# ------------------------------------------------------------------ pages for the 60-minute recipe (budget.py)
PRINTABLE_GLYPHS = "".join(c for c in string.printable if c not in string.whitespace)   # 94 visible characters
ALNUM = string.ascii_letters + string.digits


def _random_offsets(rng: random.Random, unaligned_share: float) -> tuple[int, int]:
    """Pixel offsets of a text block: anywhere within one cell with `unaligned_share`, else on the grid."""
    if rng.random() < unaligned_share:
        return rng.randrange(CELL), rng.randrange(CELL)
    return 0, 0


def dense_page_example(rng: random.Random) -> Example:
    """A page of random characters for the vision tower alone (no question, no answer).

    5-10 x 2-4 cells; each line 1 to cols-1 characters, drawn from letters and digits (70 % of the lines) or
    all 94 visible ASCII characters, with 12 % spaces; 80 % of the pages at random pixel offsets. Every glyph
    is equally likely wherever it sits, unlike on key and paragraph pages (mostly digits and filler letters),
    so the cell classifier learns the whole alphabet at every offset."""
    cols, rows = rng.randint(5, 10), rng.randint(2, 4)
    lines = []
    for _ in range(rows - 1):
        pool = ALNUM if rng.random() < 0.7 else PRINTABLE_GLYPHS
        lines.append("".join(" " if rng.random() < 0.12 else rng.choice(pool) for _ in range(rng.randint(1, cols - 1))))
    x_off, y_off = _random_offsets(rng, 0.8)
    page = render_grid(lines, cols, rows, x_off, y_off)
    return Example("eye", [page.image], "", "", [cell_labels(page)], meta=dict(lines=lines, x_off=x_off, y_off=y_off))


def _random_line(rng: random.Random, n: int, repeat: float = 0.2) -> str:
    """n random characters (digits 40 %, else letters and digits) in which each character repeats the one
    before it with probability `repeat`: adjacent repeats are where a copying decoder slips."""
    pool = string.digits if rng.random() < 0.4 else ALNUM
    out: list[str] = []
    for _ in range(n):
        out.append(out[-1] if out and rng.random() < repeat else rng.choice(pool))
    return "".join(out)


def read_page_example(rng: random.Random, random_share: float = 0.0) -> Example:
    """'What is written in the image?' about a whole page; the answer is every line, joined by newlines.

    With probability `random_share` the lines are random strings with adjacent repeats (`_random_line`);
    otherwise filler prose, half the time opened by a pass-key sentence. 60 % of pages are unaligned."""
    if rng.random() < random_share:
        cols, rows = rng.randint(4, 12), rng.randint(2, 4)
        lines = [_random_line(rng, rng.randint(1, cols - 1)) for _ in range(rng.randint(1, rows - 1))]
    else:
        cols, rows = rng.randint(6, 16), rng.randint(2, 6)
        text = " ".join(filler_sentences(rng, (cols - 1) * (rows - 1) + 20, rng.random() < 0.3))
        if rng.random() < 0.5:
            text = needle_sentence(rng, random_key(rng)[0]) + " " + text
        lines = wrap_words(text, cols - 1)[: rng.randint(1, rows - 1)]
    x_off, y_off = _random_offsets(rng, 0.6)
    page = render_grid(lines, cols, rows, x_off, y_off)
    return Example("read", [page.image], READ_QUESTION, "\n".join(lines), [cell_labels(page)],
                   meta=dict(x_off=x_off, y_off=y_off, n_lines=len(lines)))
