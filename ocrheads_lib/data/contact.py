"""Contact sheet: a PNG grid of sample pages with their evidence boxes drawn.

Fine boxes (one per answer unit) in red, the coarse box in blue (ImageSample); document answer boxes
in green (DocSample). Each tile shows the evidence page (the first page for documents), scaled to a
common width, with the sample id and answer as a caption. Written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from .render import load_font, resolve_font
from .samples import DocSample, ImageSample, TextSample

FINE_COLOUR = (220, 30, 30)
COARSE_COLOUR = (30, 90, 230)
DOC_COLOUR = (20, 160, 60)


def _check(sample) -> None:
    if isinstance(sample, TextSample):
        raise ValueError(f"contact_sheet: {sample.id} is a TextSample (no pages to show)")
    if not isinstance(sample, (ImageSample, DocSample)):
        raise TypeError(f"contact_sheet: unsupported sample type {type(sample).__name__}")
    if not sample.pages:
        raise ValueError(f"contact_sheet: document sample {sample.id} has no page image (text QA)")


def default_page(sample) -> int:
    """The page worth showing: the evidence page (ImageSample) or the first page with answer boxes."""
    _check(sample)
    if isinstance(sample, ImageSample):
        return sample.evidence_page
    return min(sample.answer_boxes) if sample.answer_boxes else 0


def draw_evidence(sample, page_index: int | None = None, width: int | None = None) -> Image.Image:
    """A copy of one page of `sample` (default: its evidence page) with its boxes drawn, optionally
    scaled to `width` pixels. ImageSample: fine boxes red, coarse box blue (only on the evidence page);
    DocSample: answer boxes green."""
    _check(sample)
    page_index = default_page(sample) if page_index is None else page_index
    if not 0 <= page_index < len(sample.pages):
        raise ValueError(f"page {page_index} outside 0..{len(sample.pages) - 1} for {sample.id}")
    page = sample.pages[page_index].convert("RGB")
    scale = 1.0 if width is None else width / page.width
    if width is not None:
        page = page.resize((width, max(1, round(page.height * scale))), Image.Resampling.LANCZOS)
    else:
        page = page.copy()
    draw = ImageDraw.Draw(page)

    def scaled(box):
        x0, y0, x1, y1 = box
        return (x0 * scale - 1, y0 * scale - 1, x1 * scale, y1 * scale)

    if isinstance(sample, ImageSample) and page_index == sample.evidence_page:
        draw.rectangle(scaled(sample.coarse_box), outline=COARSE_COLOUR, width=3)
        for box in sample.boxes:
            draw.rectangle(scaled(box), outline=FINE_COLOUR, width=1)
    if isinstance(sample, DocSample):
        for box in sample.answer_boxes.get(page_index, []):
            draw.rectangle(scaled(box), outline=DOC_COLOUR, width=2)
    return page


def _tile(sample, width: int, page_index: int | None = None) -> Image.Image:
    page_index = default_page(sample) if page_index is None else page_index
    shown = draw_evidence(sample, page_index, width)
    caption = f"{sample.id}  p{page_index + 1}/{len(sample.pages)}  answer: {sample.answer}"
    font = load_font(resolve_font("DejaVuSans"), 13)
    tile = Image.new("RGB", (width, shown.height + 22), "white")
    tile.paste(shown, (0, 22))
    ImageDraw.Draw(tile).text((2, 3), caption[:90], fill="black", font=font)
    return tile


def contact_sheet(samples: Sequence, path: str | os.PathLike, cols: int = 4, tile_width: int = 360,
                  pad: int = 8, all_pages: bool = False) -> Path:
    """Write a PNG grid of the samples' evidence pages (every page with all_pages=True, in reading
    order) with boxes drawn; returns the path."""
    if not samples:
        raise ValueError("contact_sheet: no samples")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    for s in samples:
        _check(s)
    if all_pages:
        tiles = [_tile(s, tile_width, k) for s in samples for k in range(len(s.pages))]
    else:
        tiles = [_tile(s, tile_width) for s in samples]
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (pad + min(cols, len(tiles)) * (tile_width + pad), pad + sum(h + pad for h in heights)),
                      (235, 235, 235))
    y = pad
    for row, h in zip(rows, heights):
        x = pad
        for t in row:
            sheet.paste(t, (x, y))
            x += tile_width + pad
        y += h + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
