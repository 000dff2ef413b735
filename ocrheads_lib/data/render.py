"""Lay text out on pages and know exactly where every character's ink is.

Two layouts share one interface:

* ``"free"`` — wrapped lines drawn with a real TrueType font (DejaVu from matplotlib, or any .ttf
  path) at the requested pixel size, fixed line height and margins. Characters whose boxes are
  wanted ("special" characters) are drawn one by one at integer positions, so their ink boxes are
  measured exactly (rendered on a scratch canvas at the same integer origin, which rasterises
  identically), never estimated.
* ``"grid"`` — TINY's renderer (:mod:`ocrheads_lib.data.grid`): one monospace character per 28×28
  cell, lines on cell boundaries (plus an optional whole-block pixel offset). Ink boxes come from
  the renderer's own per-glyph measurements.

Wrapping is greedy on spaces (``textwrap``) with ``chars_per_line`` characters per line; spans that
must not be split (the answer, the needle when it fits) are "glued" with no-break spaces while
wrapping. Lines are grouped ``lines_per_page`` per page; pages are a list in reading order.

Everything here is deterministic: no randomness, every choice is an argument.
"""
from __future__ import annotations

import functools
import math
import os
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from . import grid as _grid

PixelBox = tuple[float, float, float, float]
NBSP = "\u00a0"

FONT_ALIASES = {
    "dejavusans": "DejaVuSans.ttf",
    "dejavusans-bold": "DejaVuSans-Bold.ttf",
    "dejavusansmono": "DejaVuSansMono.ttf",
    "dejavusansmono-bold": "DejaVuSansMono-Bold.ttf",
    "dejavuserif": "DejaVuSerif.ttf",
}
DEFAULT_MAX_PAGES = 200
MAX_FONT_SIZE = 256                 # px; larger sizes only make huge pages
MAX_PAGE_PIXELS = 16_000_000        # per page (e.g. 4000 x 4000): the models resize pages far below this
_MISSING_GLYPH_PROBE = "\U000f0000"  # a private-use code point no shipped font draws: its image is the placeholder


class RenderError(ValueError):
    """The text cannot be laid out as asked (a line or a glued span does not fit, too many pages...)."""


def resolve_font(font: str) -> str:
    """A font name ("DejaVuSans", "DejaVuSansMono", "DejaVuSansMono-Bold", ...) or a .ttf/.otf path
    -> an existing font file path. Raises FileNotFoundError naming what was tried."""
    if os.path.sep in font or font.lower().endswith((".ttf", ".otf")):
        if os.path.exists(font):
            return font
        raise FileNotFoundError(f"font file {font!r} does not exist; pass an existing .ttf path or one of "
                                f"{sorted(FONT_ALIASES)} (DejaVu fonts shipped with matplotlib)")
    folder = _grid.matplotlib_font_dir()
    name = FONT_ALIASES.get(font.lower().replace(" ", ""), font + ".ttf")
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"font {font!r} not found (looked for {path}); use one of {sorted(FONT_ALIASES)} "
                                "or a path to a .ttf file")
    return path


@functools.lru_cache(maxsize=32)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: identical results with or without libraqm installed.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=4096)
def glyph_ink(path: str, size: int, char: str) -> tuple[int, int, int, int] | None:
    """Exact ink extents (half-open, pixels) of `char` drawn with anchor "la" at origin (0, 0);
    None for a glyph without ink (space)."""
    font = load_font(path, size)
    pad = 2 * size
    canvas = Image.new("L", (4 * size + len(char) * 2 * size, 5 * size), 0)
    ImageDraw.Draw(canvas).text((pad, pad), char, fill=255, font=font, anchor="la")
    box = canvas.getbbox()
    if box is None:
        return None
    return (box[0] - pad, box[1] - pad, box[2] - pad, box[3] - pad)


@functools.lru_cache(maxsize=4096)
def _glyph_image(path: str, size: int, char: str) -> bytes:
    font = load_font(path, size)
    canvas = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(canvas).text((size, size), char, fill=255, font=font, anchor="la")
    return canvas.tobytes()


def has_glyph(path: str, size: int, char: str) -> bool:
    """False when the font would draw `char` as its placeholder box (.notdef): the character's image equals
    the image of a code point the font certainly lacks. Spaces count as drawable."""
    if char.isspace() or char == NBSP:
        return True
    return _glyph_image(path, size, char) != _glyph_image(path, size, _MISSING_GLYPH_PROBE)


def check_glyphs(text: Iterable[str], path: str, size: int) -> None:
    """RenderError naming the characters the font cannot draw (they would be labelled but show a box)."""
    missing = sorted({c for c in "".join(text) if not has_glyph(path, size, c)})
    if missing:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:5])
        raise RenderError(f"the font {os.path.basename(path)} has no glyph for {shown}: it would draw its "
                          "placeholder box instead; use characters the font has, or another font (font=...)")


def check_page_size(width: int, height: int) -> None:
    if width * height > MAX_PAGE_PIXELS:
        raise RenderError(f"a page of {width} x {height} px ({width * height / 1e6:.0f} megapixels) exceeds the "
                          f"limit of {MAX_PAGE_PIXELS / 1e6:.0f} megapixels; use fewer chars_per_line or "
                          "lines_per_page, or a smaller font_size")


@dataclass(frozen=True)
class TextLayout:
    """How text is put on pages. ``mode`` "free" uses font/font_size/line_height/margin;
    ``mode`` "grid" uses grid.py's font and 28-px cells (cols = chars_per_line + 1,
    rows = lines_per_page + 1 so a pixel offset never pushes ink off the page)."""

    mode: str = "free"
    chars_per_line: int = 50
    lines_per_page: int = 15
    font: str = "DejaVuSans"
    font_size: int = 24
    line_height: int | None = None      # None: max(ascent + descent, 1.2 * font_size)
    margin: int = 16
    x_off: int = 0                      # grid: pixel offset of the text block
    y_off: int = 0
    max_pages: int = DEFAULT_MAX_PAGES

    def __post_init__(self) -> None:
        if self.mode not in ("free", "grid"):
            raise ValueError(f"layout must be 'free' or 'grid', got {self.mode!r}")
        for name in ("chars_per_line", "lines_per_page", "font_size", "margin", "x_off", "y_off", "max_pages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.chars_per_line < 1 or self.lines_per_page < 1:
            raise ValueError(f"chars_per_line and lines_per_page must be >= 1 "
                             f"(got {self.chars_per_line}, {self.lines_per_page})")
        if self.max_pages < 1:
            raise ValueError(f"max_pages must be >= 1, got {self.max_pages}")
        if self.mode == "free":
            if not 4 <= self.font_size <= MAX_FONT_SIZE:
                raise ValueError(f"font_size must be in 4..{MAX_FONT_SIZE} px, got {self.font_size}; pages are "
                                 "resized by the model anyway, so a larger font only makes huge pages")
            if self.line_height is not None and self.line_height < 1:
                raise ValueError(f"line_height must be >= 1 px, got {self.line_height}")
            if self.margin < 0:
                raise ValueError(f"margin must be >= 0, got {self.margin}")
            resolve_font(self.font)          # fail early on a missing font
        else:
            for name in ("x_off", "y_off"):
                value = getattr(self, name)
                if not 0 <= value < _grid.CELL:
                    raise ValueError(f"grid {name} must be in [0, {_grid.CELL}), got {value}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def font_path(self) -> str:
        return resolve_font(self.font) if self.mode == "free" else _grid.font_path()

    def resolved_line_height(self) -> int:
        if self.mode == "grid":
            return _grid.CELL
        if self.line_height is not None:
            return int(self.line_height)
        ascent, descent = load_font(self.font_path, self.font_size).getmetrics()
        return max(ascent + descent, int(round(1.2 * self.font_size)))


@dataclass
class Line:
    text: str           # the characters drawn on this line
    start: int          # offset of text[0] in the source text (-1 for lines given directly)
    page: int = 0
    row: int = 0        # line index within its page


@dataclass
class Rendered:
    """Pages plus the exact ink box of every character that was asked for."""

    pages: list[Image.Image]
    lines: list[Line]
    layout: TextLayout
    ink: dict[tuple[int, int], PixelBox] = field(default_factory=dict)   # (line, col) -> ink box (no entry: no ink)

    def page_lines(self, page: int) -> list[str]:
        return [ln.text for ln in self.lines if ln.page == page]

    def locate(self, start: int, end: int) -> list[tuple[int, int]]:
        """Source-text span [start, end) -> (line, col) of each of its characters (all must be drawn)."""
        out = []
        for pos in range(start, end):
            for li, ln in enumerate(self.lines):
                if ln.start <= pos < ln.start + len(ln.text):
                    out.append((li, pos - ln.start))
                    break
            else:
                raise RenderError(f"character {pos} of the text is not on any rendered line")
        return out

    def span_box(self, cells: Sequence[tuple[int, int]]) -> tuple[int, PixelBox]:
        """(page, union ink box) of characters given as (line, col); raises if they have no ink or
        lie on different pages."""
        pages = {self.lines[li].page for li, _ in cells}
        if len(pages) != 1:
            raise RenderError(f"characters {list(cells)} lie on pages {sorted(pages)}; a unit must sit on one page")
        boxes = [self.ink[c] for c in cells if c in self.ink]
        if not boxes:
            raise RenderError(f"characters {list(cells)} have no ink (spaces only?)")
        return pages.pop(), union(boxes)

    def text_span_box(self, start: int, end: int) -> tuple[int, PixelBox]:
        return self.span_box(self.locate(start, end))


def union(boxes: Iterable[PixelBox]) -> PixelBox:
    boxes = list(boxes)
    return (float(min(b[0] for b in boxes)), float(min(b[1] for b in boxes)),
            float(max(b[2] for b in boxes)), float(max(b[3] for b in boxes)))


# ---------------------------------------------------------------------------------------- wrapping
def wrap(text: str, width: int, glue: Sequence[tuple[int, int]] = (), breaks: Sequence[int] = ()) -> list[Line]:
    """Greedy wrap of single-line `text` to <= width characters per line, never breaking inside
    a glued span [start, end). Returns lines with their source offsets; joining them with the
    dropped spaces gives `text` back. Raises RenderError if a glued span is longer than `width`.
    breaks: offsets in (0, len(text)) where a new line must start (each part is wrapped on its own)."""
    if "\n" in text or "\t" in text:
        raise RenderError("wrap() takes single-line text (no newlines or tabs); join paragraphs with spaces")
    if breaks:
        return _wrap_parts(text, width, glue, breaks)
    chars = list(text)
    for start, end in glue:
        if end - start > width:
            raise RenderError(f"span {text[start:end]!r} ({end - start} chars) cannot stay on one line of "
                              f"{width} characters; use more chars_per_line")
        for i in range(start, end):
            if chars[i] == " ":
                chars[i] = NBSP
    glued = "".join(chars)
    raw = textwrap.wrap(glued, width=width, break_long_words=True, break_on_hyphens=False,
                        expand_tabs=False, replace_whitespace=False)
    lines, pos = [], 0
    for piece in raw:
        at = glued.index(piece, pos)
        if glued[pos:at].strip(" "):
            raise RenderError("internal: wrapped lines do not cover the text in order")
        lines.append(Line(text=text[at:at + len(piece)], start=at))
        pos = at + len(piece)
    if glued[pos:].strip(" "):
        raise RenderError("internal: wrapped lines do not cover the end of the text")
    return lines


def _wrap_parts(text: str, width: int, glue: Sequence[tuple[int, int]], breaks: Sequence[int]) -> list[Line]:
    """wrap() with forced line starts: the text is cut at `breaks` and each part wrapped alone."""
    cuts = sorted(set(breaks))
    if cuts[0] <= 0 or cuts[-1] >= len(text):
        raise ValueError(f"line breaks {cuts} must lie inside the text, in (0, {len(text)})")
    lines = []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        part_glue = []
        for s, e in glue:
            if s < b and e > a:
                if s < a or e > b:
                    raise RenderError(f"glued span [{s}, {e}) crosses the forced line break at {a if s < a else b}")
                part_glue.append((s - a, e - a))
        lines += [Line(text=ln.text, start=ln.start + a) for ln in wrap(text[a:b], width, part_glue)]
    return lines


def paginate(lines: list[Line], lines_per_page: int, max_pages: int = DEFAULT_MAX_PAGES) -> list[Line]:
    n_pages = max(1, math.ceil(len(lines) / lines_per_page))
    if n_pages > max_pages:
        raise RenderError(f"the text needs {n_pages} pages of {lines_per_page} lines, over the limit of "
                          f"{max_pages}; shorten the context or raise max_pages")
    for i, ln in enumerate(lines):
        ln.page, ln.row = divmod(i, lines_per_page)
    return lines


# ---------------------------------------------------------------------------------------- rendering
def render_lines(lines: list[Line], layout: TextLayout, special: Iterable[tuple[int, int]] = (),
                 hide: Iterable[tuple[int, int]] = ()) -> Rendered:
    """Draw paginated lines. `special` (line, col) characters get exact ink boxes; `hide`
    characters are left blank (same positions, no ink) — used by tests to isolate a unit's ink.
    In grid mode every character gets its ink box."""
    special, hide = set(special), set(hide)
    if not hide <= special and layout.mode == "free":
        raise ValueError("hidden characters must also be special (drawn one by one)")
    lines = paginate(lines, layout.lines_per_page, layout.max_pages)
    n_pages = lines[-1].page + 1 if lines else 1
    size = _grid.FONT_SIZE if layout.mode == "grid" else layout.font_size
    check_glyphs((ln.text for ln in lines), layout.font_path, size)
    if layout.mode == "grid":
        check_page_size((layout.chars_per_line + 1) * _grid.CELL, (layout.lines_per_page + 1) * _grid.CELL)
        return _render_grid(lines, n_pages, layout, hide)
    return _render_free(lines, n_pages, layout, special, hide)


def _render_grid(lines: list[Line], n_pages: int, layout: TextLayout, hide: set) -> Rendered:
    cols, rows = layout.chars_per_line + 1, layout.lines_per_page + 1
    pages, ink = [], {}
    for p in range(n_pages):
        idx = [i for i, ln in enumerate(lines) if ln.page == p]
        texts = ["".join(" " if (i, c) in hide else ch for c, ch in enumerate(lines[i].text)) for i in idx]
        try:
            page = _grid.render_grid(texts, cols=cols, rows=rows, x_off=layout.x_off, y_off=layout.y_off)
        except ValueError as error:
            raise RenderError(f"grid page {p}: {error}") from error
        for gc in page.chars:
            ink[(idx[gc.line], gc.index)] = tuple(float(v) for v in gc.ink_box)
        pages.append(page.image)
    return Rendered(pages=pages, lines=lines, layout=layout, ink=ink)


def _render_free(lines: list[Line], n_pages: int, layout: TextLayout, special: set, hide: set) -> Rendered:
    path = layout.font_path
    font = load_font(path, layout.font_size)
    ascent, descent = font.getmetrics()
    line_h = layout.resolved_line_height()
    m = layout.margin
    # a common page size for all pages of the document: widest line, full page of lines
    right = 0
    for ln in lines:
        if ln.text:
            right = max(right, math.ceil(font.getlength(ln.text)), font.getbbox(ln.text, anchor="la")[2])
    width = 2 * m + right + 2
    height = 2 * m + (layout.lines_per_page - 1) * line_h + ascent + descent
    check_page_size(width, height)
    pages = [Image.new("RGB", (width, height), "white") for _ in range(n_pages)]
    draws = [ImageDraw.Draw(pg) for pg in pages]
    ink: dict[tuple[int, int], PixelBox] = {}
    for li, ln in enumerate(lines):
        draw = draws[ln.page]
        x0, y0 = m, m + ln.row * line_h
        cuts = sorted({c for (l, c) in special if l == li} | {c + 1 for (l, c) in special if l == li})
        bounds = [0, *[c for c in cuts if 0 < c < len(ln.text)], len(ln.text)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a == b:
                continue
            x = x0 + int(round(font.getlength(ln.text[:a]))) if a else x0
            piece = ln.text[a:b]
            if (li, a) in special:      # single special character
                rel = glyph_ink(path, layout.font_size, piece)
                if rel is not None:
                    ink[(li, a)] = (float(x + rel[0]), float(y0 + rel[1]), float(x + rel[2]), float(y0 + rel[3]))
                if (li, a) in hide:
                    continue
            draw.text((x, y0), piece, fill="black", font=font, anchor="la")
    return Rendered(pages=pages, lines=lines, layout=layout, ink=ink)


def render_text(text: str, layout: TextLayout, glue: Sequence[tuple[int, int]] = (),
                special_spans: Sequence[tuple[int, int]] = (),
                hide_spans: Sequence[tuple[int, int]] = (), breaks: Sequence[int] = ()) -> Rendered:
    """Wrap `text` (new lines forced at `breaks`, see wrap), paginate and draw it. Characters in
    `special_spans` (source offsets) get exact ink boxes; characters in `hide_spans` are not drawn
    (they keep their place)."""
    lines = wrap(text, layout.chars_per_line, glue, breaks)
    tmp = Rendered(pages=[], lines=lines, layout=layout)
    special = {cell for s, e in special_spans for cell in tmp.locate(s, e)}
    hide = {cell for s, e in hide_spans for cell in tmp.locate(s, e)}
    return render_lines(lines, layout, special | hide, hide)
