"""LLaVA (LlavaForConditionalGeneration with a CLIP-style processor): one fixed grid per page.

The CLIP image processor optionally pads the page to a square (`do_pad`, LLaVA-1.5's "pad" mode),
resizes it (shortest edge to S keeping the aspect ratio, long edge int(S·long/short); or to a fixed
height×width), then center-crops to crop_size (offset int((resized − crop)/2)). The vision tower cuts
the crop into patch×patch patches and every patch becomes one LLM token, row-major
(`vision_feature_select_strategy="default"` drops CLS; with "full" the CLS token comes first and is
given the whole page as its box and tile id -1). A center crop means the strips of the page outside
the crop are seen by NO token: `evidence_tokens` returns nothing for a box lying there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .base import ModelAdapter
from .geometry import llava_page_boxes


@dataclass(frozen=True)
class ClipFrame:
    """Sizes of a page through a CLIP-style processor (pixels)."""

    pad_left: int
    pad_top: int
    padded_w: int
    padded_h: int
    resized_w: int
    resized_h: int
    crop_w: int
    crop_h: int


def _size_get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def clip_frame(width: int, height: int, image_processor: Any) -> ClipFrame:
    """Follow a CLIP/LLaVA image processor's pad → resize → center-crop on a width×height page."""
    pad_left = pad_top = 0
    padded_w, padded_h = width, height
    if getattr(image_processor, "do_pad", False):
        side = max(width, height)
        pad_left, pad_top = (side - width) // 2, (side - height) // 2
        padded_w = padded_h = side
    resized_w, resized_h = padded_w, padded_h
    if getattr(image_processor, "do_resize", True):
        size = image_processor.size
        shortest, longest = _size_get(size, "shortest_edge"), _size_get(size, "longest_edge")
        if shortest and not longest:
            short, long = (padded_w, padded_h) if padded_w <= padded_h else (padded_h, padded_w)
            new_short, new_long = int(shortest), int(int(shortest) * long / short)
            resized_w, resized_h = (new_short, new_long) if padded_w <= padded_h else (new_long, new_short)
        elif _size_get(size, "height") and _size_get(size, "width"):
            resized_w, resized_h = int(_size_get(size, "width")), int(_size_get(size, "height"))
        else:
            raise NotImplementedError(f"LLaVA geometry: unsupported image processor size {size!r} "
                                      f"(supported: shortest_edge alone, or height and width)")
    crop_w, crop_h = resized_w, resized_h
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        crop_w, crop_h = int(_size_get(crop, "width")), int(_size_get(crop, "height"))
    return ClipFrame(pad_left, pad_top, padded_w, padded_h, resized_w, resized_h, crop_w, crop_h)


class LlavaAdapter(ModelAdapter):
    """Adapter for LlavaForConditionalGeneration (e.g. `llava-hf/llava-1.5-7b-hf`)."""

    family = "llava"

    def __init__(self, model, processor, tokenizer, model_id: str, **options: Any) -> None:
        super().__init__(model, processor, tokenizer, model_id, **options)
        vision = model.config.vision_config
        self.patch_size = int(vision.patch_size)
        self.feature_strategy = str(model.config.vision_feature_select_strategy)

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f = clip_frame(page.width, page.height, self.processor.image_processor)
        boxes = llava_page_boxes(page.width, page.height, f.resized_w, f.resized_h, f.crop_w, f.crop_h,
                                 f.pad_left, f.pad_top, f.padded_w, f.padded_h, self.patch_size)
        tiles = torch.zeros(len(boxes), dtype=torch.long)
        if self.feature_strategy == "full":   # CLS first: it summarises the whole page
            whole = torch.tensor([[0.0, 0.0, float(page.width), float(page.height)]], dtype=torch.float64)
            boxes = torch.cat([whole, boxes])
            tiles = torch.cat([torch.tensor([-1]), tiles])
        return boxes, tiles
