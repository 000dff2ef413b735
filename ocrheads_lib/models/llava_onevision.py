"""LLaVA-OneVision ("anyres"): a low-resolution view of the whole page, then a high-resolution grid.

For a sample with ONE image the processor (a) squashes the page to S×S (S = vision image_size, 384 in
the released models) — the "base" view, n×n tokens with n = S // patch (27: 27·14 = 378, so the last
S − n·patch px of every S-px crop are seen by no patch); (b) picks the best resolution from
`image_grid_pinpoints`, resizes the page into it keeping the aspect ratio (the longer relative side fills
it, the other is ceil-rounded), pads it centred, and cuts it into S×S crops, row-major. The model joins
the crops' n×n feature grids into one (rows·n) × (cols·n) grid, removes the feature rows/columns that the
padding produced (`unpad_image`), and — when that grid is more than 1.1× larger than max_num_patches
("anyres_max_9") crops — bilinearly downsamples it. It then appends a learned `image_newline` token after
every row. Sequence per page: base tokens, then for each grid row its tokens and one newline token.

Boxes: base and high-res tokens get the pixel cells they see (clipped to the page); after a downsample a
token gets the proportional part of the grid (a resampled feature blends neighbours: approximate);
newline tokens get an empty box (tile id -2) so `evidence_tokens` never returns them. Base tokens have
tile id -1 (like InternVL's thumbnail), high-res tokens 0.

With several images in one sample the processor skips anyres: each page is padded to a square (mean
colour), resized to S×S, gives n×n tokens and one newline token.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution

from .base import ModelAdapter
from .geometry import cell_grid_boxes, clip_boxes, scale_boxes_to_original

BASE_TILE, HIGHRES_TILE, NEWLINE_TILE = -1, 0, -2


def _axis_edges(n_crops: int, crop: int, n_per_crop: int, patch: int) -> torch.Tensor:
    """(n_crops·n_per_crop, 2) start/end pixel of every feature cell along one axis of the padded image."""
    index = torch.arange(n_crops * n_per_crop, dtype=torch.float64)
    start = torch.div(index, n_per_crop, rounding_mode="floor") * crop + (index % n_per_crop) * patch
    return torch.stack([start, start + patch], dim=1)


def _resample_edges(edges: torch.Tensor, n_out: int) -> torch.Tensor:
    """Edges of n_out cells covering the same feature range as `edges` (n_in cells), proportionally.

    Continuous feature coordinate u ∈ [0, n_in] maps to pixels inside cell ⌊u⌋ linearly."""
    n_in = edges.shape[0]

    def pixel(u: float) -> float:
        j = min(int(math.floor(u)), n_in - 1)
        return float(edges[j, 0] + (u - j) * (edges[j, 1] - edges[j, 0]))

    step = n_in / n_out
    return torch.tensor([[pixel(i * step), pixel((i + 1) * step)] for i in range(n_out)], dtype=torch.float64)


def onevision_page_layout(width: int, height: int, image_size: int, patch: int, pinpoints: list[list[int]],
                          max_num_patches: int, anyres: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (N, 4) in original page pixels, tile ids (N,)) of one page, in sequence order."""
    n = image_size // patch
    base = cell_grid_boxes(n, n, patch, patch)                                    # (n², 4) in the S×S view
    if not anyres:
        side = max(width, height)
        pad = torch.tensor([(side - width) // 2, (side - height) // 2] * 2, dtype=torch.float64)
        base = clip_boxes(scale_boxes_to_original(base, image_size, image_size, side, side) - pad, width, height)
        newline = torch.zeros(1, 4, dtype=torch.float64)
        tiles = torch.tensor([BASE_TILE] * n * n + [NEWLINE_TILE])
        return torch.cat([base, newline]), tiles
    base = scale_boxes_to_original(base, image_size, image_size, width, height)
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    rows_edges = _axis_edges(best_h // image_size, image_size, n, patch)          # (R, 2) padded-image y
    cols_edges = _axis_edges(best_w // image_size, image_size, n, patch)          # (C, 2) padded-image x
    # unpad_image, on the feature grid, exactly as the model does it
    current_h, current_w = rows_edges.shape[0], cols_edges.shape[0]
    if width / height > current_w / current_h:
        new_rows = int(round(height * (current_w / width), 7))
        padding = (current_h - new_rows) // 2
        rows_edges = rows_edges[padding: current_h - padding]
    else:
        new_cols = int(round(width * (current_h / height), 7))
        padding = (current_w - new_cols) // 2
        cols_edges = cols_edges[padding: current_w - padding]
    current_h, current_w = rows_edges.shape[0], cols_edges.shape[0]
    ratio = math.sqrt(current_h * current_w / (max_num_patches * n ** 2))
    if ratio > 1.1:
        rows_edges = _resample_edges(rows_edges, int(current_h // ratio))
        cols_edges = _resample_edges(cols_edges, int(current_w // ratio))
    # padded-image pixels → original page pixels
    ys = (rows_edges - paste_y) * (height / new_h)                                # (R', 2)
    xs = (cols_edges - paste_x) * (width / new_w)                                 # (C', 2)
    boxes, tiles = [base], [torch.full((n * n,), BASE_TILE, dtype=torch.long)]
    for y0, y1 in ys.tolist():
        row = torch.stack([xs[:, 0], torch.full_like(xs[:, 0], y0), xs[:, 1], torch.full_like(xs[:, 0], y1)], dim=1)
        boxes.append(clip_boxes(row, width, height))
        boxes.append(torch.zeros(1, 4, dtype=torch.float64))                      # the row's newline token
        tiles.append(torch.tensor([HIGHRES_TILE] * len(xs) + [NEWLINE_TILE]))
    return torch.cat(boxes), torch.cat(tiles)


class LlavaOnevisionAdapter(ModelAdapter):
    """Adapter for LlavaOnevisionForConditionalGeneration (`llava-hf/llava-onevision-qwen2-*-ov-hf`)."""

    family = "llava_onevision"

    def __init__(self, model, processor, tokenizer, model_id: str, **options: Any) -> None:
        super().__init__(model, processor, tokenizer, model_id, **options)
        config = model.config
        if config.vision_feature_select_strategy != "full":
            raise NotImplementedError(f"{model_id}: LLaVA-OneVision geometry supports vision_feature_select_strategy "
                                      f"'full' only (got {config.vision_feature_select_strategy!r})")
        self.image_size = int(config.vision_config.image_size)
        self.patch_size = int(config.vision_config.patch_size)
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        self.max_num_patches = int(str(config.vision_aspect_ratio).replace("anyres_max_", ""))

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch_num_images = tensors.get("batch_num_images")
        anyres = True if batch_num_images is None else int(torch.as_tensor(batch_num_images).flatten()[0]) == 1
        height, width = (int(v) for v in tensors["image_sizes"][index])
        if (width, height) != page.size:
            raise RuntimeError(f"page {index}: processor reports size {(width, height)} but the page is {page.size}")
        return onevision_page_layout(width, height, self.image_size, self.patch_size, self.pinpoints,
                                     self.max_num_patches, anyres=anyres)
