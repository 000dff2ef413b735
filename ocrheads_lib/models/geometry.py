"""Which image token sees which pixels of the ORIGINAL page.

Every vision-language processor resizes (and sometimes tiles or crops) a page before its vision
tower cuts it into patches; the language model then sees one token per merged cell of that
processed image. To ask "which tokens cover the answer's box?" we map every token's cell back
into original-page pixels and intersect boxes there.

Box convention: (x0, y0, x1, y1) in continuous pixel coordinates, half-open, x to the right,
y downwards, (0, 0) the top-left corner of the page. A resize from W to W' px is the linear map
x' = x · W'/W on these edge coordinates (the pixel-centre offsets of the interpolation cancel on
edges), so cell edges map back exactly by dividing by the scale.

This module holds pure geometry (no model, no processor) so a test can compute the answers by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

# (x0, y0, x1, y1) in pixels
Box = tuple[float, float, float, float]

# How far (px) a box may stick out of the page before `evidence_tokens` calls it an error
# (text renderers sometimes report a glyph box one pixel past the canvas edge).
PAGE_EDGE_TOLERANCE_PX = 1.0


def cell_grid_boxes(rows: int, cols: int, cell_w: float, cell_h: float,
                    x_offset: float = 0.0, y_offset: float = 0.0) -> torch.Tensor:
    """Boxes of a rows×cols grid of equal cells, row-major (token k = row k // cols, col k % cols).

    Returns a FloatTensor (rows*cols, 4) in the grid's own pixel frame, shifted by the offsets.
    """
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)   # (rows*cols,)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)              # (rows*cols,)
    x0 = c * cell_w + x_offset
    y0 = r * cell_h + y_offset
    return torch.stack([x0, y0, x0 + cell_w, y0 + cell_h], dim=1)        # (rows*cols, 4)


def scale_boxes_to_original(boxes: torch.Tensor, processed_w: float, processed_h: float,
                            original_w: float, original_h: float) -> torch.Tensor:
    """Map boxes from a processed (resized) image of size processed_w×processed_h back to the original."""
    sx = original_w / processed_w
    sy = original_h / processed_h
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    return boxes.to(torch.float64) * scale                                # (N, 4)


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip boxes to [0, width] × [0, height] (used when a crop or pad leaves part of a cell off-page)."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0.0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0.0, height)
    return out


def intersection_area(boxes: torch.Tensor, bbox: Box) -> torch.Tensor:
    """Area of each box ∩ bbox. boxes (N, 4) -> (N,)."""
    bx0, by0, bx1, by1 = (float(v) for v in bbox)
    w = (torch.minimum(boxes[:, 2], torch.tensor(bx1, dtype=boxes.dtype))
         - torch.maximum(boxes[:, 0], torch.tensor(bx0, dtype=boxes.dtype))).clamp(min=0)   # (N,)
    h = (torch.minimum(boxes[:, 3], torch.tensor(by1, dtype=boxes.dtype))
         - torch.maximum(boxes[:, 1], torch.tensor(by0, dtype=boxes.dtype))).clamp(min=0)   # (N,)
    return w * h


# ------------------------------------------------------------------------------------------------
# Per-family layouts: token boxes of ONE page, in original-page pixels, in the order the tokens
# appear in the sequence.
# ------------------------------------------------------------------------------------------------

def qwen_page_boxes(original_w: int, original_h: int, grid_h: int, grid_w: int,
                    patch_size: int, merge_size: int) -> torch.Tensor:
    """Qwen2-VL / Qwen2.5-VL: the page is smart-resized to (grid_h·patch, grid_w·patch) px (multiples of
    patch·merge = 28), cut into patch×patch patches, and merge×merge patches become one LLM token;
    tokens are row-major over the (grid_h/merge) × (grid_w/merge) grid. `grid_h, grid_w` are the
    patch counts from the processor's `image_grid_thw`."""
    cell = patch_size * merge_size
    rows, cols = grid_h // merge_size, grid_w // merge_size
    boxes = cell_grid_boxes(rows, cols, cell, cell)                        # (rows*cols, 4) resized px
    return scale_boxes_to_original(boxes, grid_w * patch_size, grid_h * patch_size, original_w, original_h)


def internvl_page_boxes(original_w: int, original_h: int, tile_cols: int, tile_rows: int,
                        tile_size: int, tokens_per_side: int, thumbnail: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """InternVL (`-hf` processor, GotOcr2 tiling): the page is resized (aspect NOT preserved) to
    (tile_cols·tile_size) × (tile_rows·tile_size) px and cut into tiles, row-major; each tile gives
    tokens_per_side² tokens (ViT patches of 14 px, pixel-shuffle 0.5 → 28-px cells), row-major within the
    tile. With more than one tile the processor appends a thumbnail tile (the whole page resized to
    tile_size²), whose tokens come last and each cover a larger part of the page.

    Returns (boxes (N, 4), tile index (N,) with -1 for the thumbnail)."""
    cell = tile_size / tokens_per_side
    per_tile = []
    tile_ids = []
    for t in range(tile_rows * tile_cols):
        tr, tc = divmod(t, tile_cols)
        per_tile.append(cell_grid_boxes(tokens_per_side, tokens_per_side, cell, cell,
                                        x_offset=tc * tile_size, y_offset=tr * tile_size))
        tile_ids.append(torch.full((tokens_per_side ** 2,), t, dtype=torch.long))
    boxes = scale_boxes_to_original(torch.cat(per_tile), tile_cols * tile_size, tile_rows * tile_size,
                                    original_w, original_h)
    if thumbnail:
        thumb = cell_grid_boxes(tokens_per_side, tokens_per_side, cell, cell)
        boxes = torch.cat([boxes, scale_boxes_to_original(thumb, tile_size, tile_size, original_w, original_h)])
        tile_ids.append(torch.full((tokens_per_side ** 2,), -1, dtype=torch.long))
    return boxes, torch.cat(tile_ids)


def llava_page_boxes(original_w: int, original_h: int, resized_w: int, resized_h: int,
                     crop_w: int, crop_h: int, pad_left: int, pad_top: int, padded_w: int, padded_h: int,
                     patch_size: int) -> torch.Tensor:
    """LLaVA (CLIP-style processor): optional pad to a square (pad_left/pad_top, size padded_w×padded_h),
    resize to resized_w×resized_h, center crop to crop_w×crop_h (crop offset = int((resized - crop) / 2));
    one token per patch, row-major over the crop. Boxes are clipped to the page: with a center crop some
    page pixels are seen by no token, with padding some tokens see (partly) no page."""
    rows, cols = crop_h // patch_size, crop_w // patch_size
    crop_left = int((resized_w - crop_w) / 2.0)
    crop_top = int((resized_h - crop_h) / 2.0)
    boxes = cell_grid_boxes(rows, cols, patch_size, patch_size, x_offset=crop_left, y_offset=crop_top)
    boxes = scale_boxes_to_original(boxes, resized_w, resized_h, padded_w, padded_h)          # padded frame
    boxes = boxes - torch.tensor([pad_left, pad_top, pad_left, pad_top], dtype=torch.float64)  # page frame
    return clip_boxes(boxes, original_w, original_h)


# ------------------------------------------------------------------------------------------------
# The map the scorers use.
# ------------------------------------------------------------------------------------------------

@dataclass
class ImageTokenMap:
    """For every image token of one input sequence: its sequence position, page and pixel box.

    positions (N,) LongTensor — sequence positions, increasing;
    pages     (N,) LongTensor — page index (0-based, the order the pages were given);
    boxes     (N, 4) FloatTensor — (x0, y0, x1, y1) in ORIGINAL page pixels;
    page_sizes — (width, height) of every page as given;
    tiles     (N,) LongTensor — tile index within the page (InternVL tiling; -1 = thumbnail; 0 otherwise).
    """

    positions: torch.Tensor
    pages: torch.Tensor
    boxes: torch.Tensor
    page_sizes: list[tuple[int, int]] = field(default_factory=list)
    tiles: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.positions.numel())
        if self.pages.numel() != n or self.boxes.shape != (n, 4):
            raise ValueError(f"ImageTokenMap: {n} positions but pages {tuple(self.pages.shape)} "
                             f"and boxes {tuple(self.boxes.shape)}")
        if self.tiles is None:
            self.tiles = torch.zeros(n, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.positions.numel())

    @property
    def n_pages(self) -> int:
        return len(self.page_sizes)

    def page_positions(self, page: int) -> torch.Tensor:
        """Sequence positions of all tokens of one page."""
        self._check_page(page)
        return self.positions[self.pages == page]

    def _check_page(self, page: int) -> None:
        if not 0 <= int(page) < self.n_pages:
            raise IndexError(f"page {page} is out of range: this input has {self.n_pages} page(s) "
                             f"(valid indices 0..{self.n_pages - 1})")

    def evidence_tokens(self, page: int, bbox: Sequence[float], min_overlap: float = 0.001) -> torch.Tensor:
        """Sequence positions of the tokens of `page` whose box overlaps `bbox` by MORE than
        min_overlap × area(bbox) (the paper: 0.1 % of the box area, i.e. practically any overlap).

        Raises IndexError for a page out of range, ValueError for an empty box or one outside the page
        (more than PAGE_EDGE_TOLERANCE_PX past an edge)."""
        self._check_page(page)
        x0, y0, x1, y1 = (float(v) for v in bbox)
        width, height = self.page_sizes[page]
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"bbox {tuple(bbox)} is empty or inverted; expected (x0, y0, x1, y1) with x0 < x1, y0 < y1")
        tol = PAGE_EDGE_TOLERANCE_PX
        if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
            raise ValueError(f"bbox {tuple(bbox)} lies outside page {page} of size {width}×{height} px "
                             f"(boxes are in original page pixels: check the page index and the box units)")
        area = (x1 - x0) * (y1 - y0)
        on_page = self.pages == page                                        # (N,)
        overlap = intersection_area(self.boxes.to(torch.float64), (x0, y0, x1, y1))   # (N,)
        hit = on_page & (overlap > min_overlap * area)
        return self.positions[hit]
