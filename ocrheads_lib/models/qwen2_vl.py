"""Qwen2-VL and Qwen2.5-VL: smart-resized pages, 14-px patches merged 2×2 into one token.

The processor resizes each page so both sides are multiples of patch·merge (28 px) and the area lies in
[min_pixels, max_pixels] (`smart_resize`), then emits one `<|image_pad|>` per merged 28×28 cell, row-major.
`image_grid_thw` (per image: temporal, height, width in patches) tells us the resized size exactly, so the
geometry never re-derives the resize rule. The paper ran both at min = max = 256·28² pixels
(`PAPER_PIXELS`): pass `min_pixels=PAPER_PIXELS, max_pixels=PAPER_PIXELS` to `load_model`.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from .base import ModelAdapter
from .geometry import qwen_page_boxes

PAPER_PIXELS = 256 * 28 * 28   # 200 704 px ≈ 256 merged tokens per page


class QwenVLAdapter(ModelAdapter):
    """Adapter for Qwen2VLForConditionalGeneration and Qwen2_5_VLForConditionalGeneration.

    Options: min_pixels, max_pixels (per-page pixel budget after resize; default: the processor's)."""

    family = "qwen2_vl"
    batched_generation = True      # the processor batches prompts with their pages, left padded

    def __init__(self, model, processor, tokenizer, model_id: str, min_pixels: int | None = None,
                 max_pixels: int | None = None, **options: Any) -> None:
        super().__init__(model, processor, tokenizer, model_id, **options)
        self.family = model.config.model_type          # "qwen2_vl" or "qwen2_5_vl"
        size = dict(getattr(processor.image_processor, "size", None) or {})
        self.min_pixels = int(min_pixels if min_pixels is not None else size.get("shortest_edge", 56 * 56))
        self.max_pixels = int(max_pixels if max_pixels is not None else size.get("longest_edge", 28 * 28 * 1280))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        vision = model.config.vision_config
        self.patch_size = int(getattr(processor.image_processor, "patch_size", None) or vision.patch_size)
        self.merge_size = int(getattr(processor.image_processor, "merge_size", None) or vision.spatial_merge_size)

    def _image_kwargs(self) -> dict[str, Any]:
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        grid_t, grid_h, grid_w = (int(v) for v in tensors["image_grid_thw"][index])
        if grid_t != 1:
            raise RuntimeError(f"page {index}: image_grid_thw has {grid_t} temporal patches; expected 1 for an image")
        boxes = qwen_page_boxes(page.width, page.height, grid_h, grid_w, self.patch_size, self.merge_size)
        return boxes, torch.zeros(len(boxes), dtype=torch.long)
