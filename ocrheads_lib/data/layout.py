"""How a generated needle document is put on pages: one settings object for the page generators.

    page = PageLayout(layout="free", font_size=30)           # checked here, once
    passkey_images(8, seed=0, page=page)
    passkey_images(8, seed=0, layout="free", font_size=30)   # the same: flat keys, as book/params.yml,
                                                             # the loaders and `--dataset-arg` give them

``passkey_images``, ``niah_images`` and ``case_study_images`` take ``page=`` and/or the flat keys
(``PageLayout.from_keys``); each sample's ``TextLayout`` comes from ``PageLayout.text_layout``, which
draws the random grid offset from the sample's own RNG.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import Any

from . import grid as _grid
from .render import DEFAULT_MAX_PAGES, TextLayout

LAYOUTS = ("grid", "free")
GRID_OFFSETS = ("aligned", "random")
FREE_DEFAULTS = dict(font="DejaVuSans", font_size=24, margin=16, chars_per_line=50, lines_per_page=15)


@dataclass(frozen=True)
class PageLayout:
    """Layout settings shared by the page generators; None means the layout's default.

    "grid" is the embedded model's book page (grid.py: DejaVuSansMono-Bold in 28-px cells, 15
    characters x 5 lines on a 16 x 6 cell page); "free" draws with a TrueType font (DejaVuSans 24 px,
    50 characters x 15 lines, margin 16 px, line height from the font)."""

    layout: str | None = None           # "grid" | "free" | None/"auto": "free" if a free-only option is set
    font: str | None = None             # free only: a DejaVu name ("DejaVuSansMono", ...) or a .ttf path
    font_size: int | None = None        # free only: pixels
    line_height: int | None = None      # free only: pixels between baselines
    margin: int | None = None           # free only: pixels around the text
    chars_per_line: int | None = None   # wrap width in characters
    lines_per_page: int | None = None   # lines per page
    grid_offset: Any = "aligned"        # grid only: "aligned" (0, 0), "random" (per sample, [0, 28) px) or (x, y)
    max_pages: int = DEFAULT_MAX_PAGES  # refuse documents longer than this

    def __post_init__(self) -> None:
        if self.layout not in (None, "auto", *LAYOUTS):
            raise ValueError(f"layout must be 'grid', 'free' or None/'auto' (free when font, font_size, "
                             f"line_height or margin is given, else grid), got {self.layout!r}")
        offset = self.grid_offset
        if not (isinstance(offset, str) and offset in GRID_OFFSETS):
            try:
                x_off, y_off = (int(v) for v in offset)
            except (TypeError, ValueError) as error:
                raise ValueError(f"grid_offset must be 'aligned', 'random' or an (x, y) pair of pixels in "
                                 f"[0, {_grid.CELL}); got {offset!r}") from error
            object.__setattr__(self, "grid_offset", (x_off, y_off))
        if self.mode == "grid" and any(getattr(self, k) is not None for k in self.free_only_keys()):
            raise ValueError("layout='grid' draws every character with grid.py's DejaVuSansMono-Bold "
                             f"{_grid.FONT_SIZE} px in {_grid.CELL}-px cells; font, font_size, line_height and "
                             "margin apply to layout='free' only")
        if self.mode == "free" and self.grid_offset != "aligned":
            raise ValueError(f"grid_offset={self.grid_offset!r} moves the text of layout='grid' only; the free "
                             "layout places text with margin=...; drop grid_offset or use layout='grid'")
        # the renderer's own checks (sizes, font file, offset range, max_pages), with a throwaway RNG
        self.text_layout(random.Random(0))

    @staticmethod
    def free_only_keys() -> tuple[str, ...]:
        return ("font", "font_size", "line_height", "margin")

    @property
    def mode(self) -> str:
        """The resolved layout: "grid" or "free"."""
        if self.layout in (None, "auto"):
            return "free" if any(getattr(self, k) is not None for k in self.free_only_keys()) else "grid"
        return self.layout

    @classmethod
    def from_keys(cls, page: PageLayout | None = None, **keys: Any) -> PageLayout:
        """`page` (default PageLayout()) with the flat keys set (layout="free", grid_offset="random", ...)."""
        unknown = sorted(set(keys) - set(LAYOUT_KEYS))
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown}; the page layout keys are {list(LAYOUT_KEYS)}")
        if page is not None and not isinstance(page, PageLayout):
            raise TypeError(f"page must be a PageLayout, got {type(page).__name__}: {page!r}")
        return replace(page, **keys) if page is not None else cls(**keys)

    def text_layout(self, rng: random.Random) -> TextLayout:
        """The TextLayout of one sample; grid_offset="random" draws (x, y) from `rng` (uniform in [0, 28))."""
        if self.mode == "grid" and self.grid_offset == "random":
            lo, hi = _grid.BOOK_LAYOUT["offset_range"]
            return self._text_layout(rng.randrange(lo, hi), rng.randrange(lo, hi))
        if self.mode == "grid" and self.grid_offset != "aligned":
            return self._text_layout(*self.grid_offset)
        return self._text_layout(0, 0)

    def _text_layout(self, x_off: int, y_off: int) -> TextLayout:
        if self.mode == "grid":
            return TextLayout(mode="grid", chars_per_line=_default(self.chars_per_line, _grid.BOOK_LAYOUT["line_chars"]),
                              lines_per_page=_default(self.lines_per_page, _grid.BOOK_LAYOUT["max_lines"]),
                              x_off=x_off, y_off=y_off, max_pages=self.max_pages)
        return TextLayout(mode="free", chars_per_line=_default(self.chars_per_line, FREE_DEFAULTS["chars_per_line"]),
                          lines_per_page=_default(self.lines_per_page, FREE_DEFAULTS["lines_per_page"]),
                          font=_default(self.font, FREE_DEFAULTS["font"]),
                          font_size=_default(self.font_size, FREE_DEFAULTS["font_size"]),
                          line_height=self.line_height, margin=_default(self.margin, FREE_DEFAULTS["margin"]),
                          max_pages=self.max_pages)


LAYOUT_KEYS = tuple(f.name for f in fields(PageLayout))


def _default(value: Any, default: Any) -> Any:
    """None -> the default; any other value is kept (0 is validated by TextLayout, never replaced)."""
    return default if value is None else value
