"""Render text on the embedded model's token grid: one character per 28x28 cell.

Qwen2-VL cuts an image into 14x14 patches and merges 2x2 of them into one visual token, so one
token covers a 28x28 pixel cell. Drawing one monospace character centred in each cell makes
"one token = one character" true by construction — the easy case for a tiny reader, and the one
the embedded model (``ocrheads_lib.embedded.tiny``) is trained on. A pixel offset of the whole text block
(``x_off``, ``y_off``) moves the characters off the cell boundaries ("unaligned" text, where a
glyph straddles two or four tokens).

Note to the DATA generators (``passkey_images(..., layout="grid")``): the book's default grid page
is :data:`BOOK_PAGE` and its text layout :data:`BOOK_LAYOUT` below. The embedded model is trained on
exactly these settings; a generator that changes them measures a model off its training
distribution. Recommended use::

    lines = wrap_words(text, BOOK_LAYOUT["line_chars"])        # <= rows lines
    page = render_grid(lines, **BOOK_PAGE, x_off=dx, y_off=dy)  # dx, dy drawn by the caller's seeded rng
    page.image, page.chars[i].ink_box, page.chars[i].cell

with ``dx, dy`` uniform integers in ``[0, CELL)`` for the unaligned layout and ``0`` for the
aligned one (one column and one row are left free so any offset fits on the page).

This module is pure: no randomness, every choice is an argument.
"""
from __future__ import annotations

import functools
import os
import textwrap
from dataclasses import dataclass, field

import matplotlib
from PIL import Image, ImageDraw, ImageFont

CELL = 28            # pixels per visual token side (patch 14 x spatial merge 2)
FONT_SIZE = 26       # DejaVu Sans Mono Bold at 26 px: the ink of every printable ASCII glyph fits in a cell
# Draw origin (baseline-left, PIL anchor "ls") of a glyph inside its cell. At 26 px the font's ink
# spans x in [0, 16] and y in [-21, 5] around that origin, so (6, 22) centres the glyph horizontally
# and keeps ascenders and descenders inside the 28 px cell.
GLYPH_ORIGIN = (6, 22)

# The book's default grid page and layout (agreed between TINY and DATA; see the module docstring).
BOOK_PAGE = dict(cols=16, rows=6)                 # 448 x 168 px = 96 visual tokens
BOOK_LAYOUT = dict(
    line_chars=15,        # wrap width: cols - 1, so an x offset in [0, 28) never pushes ink off the page
    max_lines=5,          # rows - 1, for the same reason vertically
    offset_range=(0, CELL),  # unaligned layout: x_off, y_off uniform integers in [0, 28)
)


def matplotlib_font_dir() -> str:
    """The folder of TrueType fonts shipped inside matplotlib (``mpl-data/fonts/ttf``)."""
    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def font_path() -> str:
    """DejaVu Sans Mono Bold, shipped with matplotlib (so no system font is needed)."""
    path = os.path.join(matplotlib_font_dir(), "DejaVuSansMono-Bold.ttf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"DejaVuSansMono-Bold.ttf not found at {path}; "
                                "reinstall matplotlib (it ships the DejaVu fonts)")
    return path


@functools.lru_cache(maxsize=8)
def grid_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(), size)


@functools.lru_cache(maxsize=512)
def _glyph_ink(char: str, size: int) -> tuple[int, int, int, int] | None:
    """Exact ink extents of `char` drawn at origin GLYPH_ORIGIN in an empty cell-sized canvas,
    relative to the cell's top-left corner; None for a glyph without ink (space)."""
    pad = CELL  # generous margin so no ink is clipped while measuring
    canvas = Image.new("L", (3 * CELL, 3 * CELL), 0)
    ImageDraw.Draw(canvas).text((pad + GLYPH_ORIGIN[0], pad + GLYPH_ORIGIN[1]), char, fill=255,
                                font=grid_font(size), anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None
    return (box[0] - pad, box[1] - pad, box[2] - pad, box[3] - pad)


@dataclass
class GridChar:
    """One drawn (non-space) character."""

    char: str
    line: int                                   # line index in the text block
    index: int                                  # character index within its line
    slot: tuple[float, float, float, float]     # the 28x28 slot the glyph is centred in, page pixels
    ink_box: tuple[int, int, int, int]          # exact ink extents (x0, y0, x1, y1), half-open, page pixels
    cell: tuple[int, int]                       # (row, col) of the page cell holding the slot's centre
    token: int                                  # row * cols + col: index among the page's visual tokens


@dataclass
class GridPage:
    image: Image.Image
    cols: int
    rows: int
    lines: list[str]
    x_off: int
    y_off: int
    chars: list[GridChar] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Visual tokens of this page in Qwen2-VL (one per 28x28 cell)."""
        return self.cols * self.rows

    def char_at(self, line: int, index: int) -> GridChar:
        for c in self.chars:
            if c.line == line and c.index == index:
                return c
        raise KeyError(f"no drawn character at line {line}, index {index} (space or outside the text)")


def render_grid(lines: list[str], cols: int, rows: int, x_off: int = 0, y_off: int = 0,
                font_size: int = FONT_SIZE, cell: int = CELL) -> GridPage:
    """Draw `lines` on a white cols x rows cell page, one character per cell, line i in row i.

    The text block's top-left corner sits at pixel (x_off, y_off); with zero offsets every character
    is centred in its own cell. Raises ValueError when a line or the block does not fit the page.
    Spaces take a cell but draw no ink and get no GridChar.
    """
    if cell != CELL:
        raise ValueError(f"cell must be {CELL} (Qwen2-VL patch 14 x merge 2); got {cell}")
    if x_off < 0 or y_off < 0 or int(x_off) != x_off or int(y_off) != y_off:
        raise ValueError(f"offsets must be non-negative integers, got ({x_off}, {y_off})")
    x_off, y_off = int(x_off), int(y_off)
    width, height = cols * cell, rows * cell
    longest = max((len(s) for s in lines), default=0)
    if x_off + longest * cell > width or y_off + len(lines) * cell > height:
        raise ValueError(f"text block of {len(lines)} lines x {longest} chars at offset ({x_off}, {y_off}) "
                         f"does not fit a {cols}x{rows} cell page; wrap shorter lines or use a smaller offset")
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = grid_font(font_size)
    chars: list[GridChar] = []
    for li, line in enumerate(lines):
        if "\n" in line:
            raise ValueError(f"line {li} contains a newline; pass one string per line")
        top = y_off + li * cell
        for ci, ch in enumerate(line):
            left = x_off + ci * cell
            ink = _glyph_ink(ch, font_size)
            if ink is None:
                continue
            draw.text((left + GLYPH_ORIGIN[0], top + GLYPH_ORIGIN[1]), ch, fill="black", font=font, anchor="ls")
            col = min(cols - 1, int((left + cell / 2) // cell))
            row = min(rows - 1, int((top + cell / 2) // cell))
            chars.append(GridChar(
                char=ch, line=li, index=ci,
                slot=(float(left), float(top), float(left + cell), float(top + cell)),
                ink_box=(left + ink[0], top + ink[1], left + ink[2], top + ink[3]),
                cell=(row, col), token=row * cols + col,
            ))
    return GridPage(image=image, cols=cols, rows=rows, lines=list(lines), x_off=x_off, y_off=y_off, chars=chars)


def wrap_words(text: str, width: int) -> list[str]:
    """Greedy word wrap to at most `width` characters per line (words longer than width are split)."""
    return textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]


def cell_labels(page: GridPage) -> list[str]:
    """Per visual token (row-major), the character whose slot centre falls in that cell, or "" (blank).

    This is the target of the embedded model's auxiliary vision loss.
    """
    labels = [""] * page.n_tokens
    for c in page.chars:
        labels[c.token] = c.char
    return labels
