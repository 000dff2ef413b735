"""InternVL (transformers-native `-hf` checkpoints): 448-px tiles, 256 tokens per tile.

The `-hf` processor (GotOcr2 image processor with `crop_to_patches=True`) picks a grid of cols×rows
tiles whose aspect ratio is closest to the page's, with 1 ≤ cols·rows ≤ max_patches (default 12):
the page is resized — aspect ratio NOT preserved — to (cols·448) × (rows·448) px and cut into tiles,
row-major. When there is more than one tile a thumbnail (the whole page squashed to 448×448) is
appended. Each tile's 32×32 ViT patches are pixel-shuffled (0.5) to 16×16 tokens, row-major, each
covering a 28×28 cell of the tile. All tokens of one page sit between `<img>` and `</img>`.

The paper (InternVL2-8B, `load_image(max_num=1)`) used exactly one tile per page and no thumbnail:
`load_model(..., max_tiles=1)` reproduces that (`PAPER_MAX_TILES`). With the default tiling a page
also has thumbnail tokens (tile id -1 in the map): they cover the page at 1/cols × 1/rows of the tile
resolution and `evidence_tokens` returns them too when their cell overlaps the box.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from .base import ModelAdapter
from .geometry import internvl_page_boxes

PAPER_MAX_TILES = 1


class InternVLAdapter(ModelAdapter):
    """Adapter for InternVLForConditionalGeneration (`OpenGVLab/InternVL*-hf`).

    Options: max_tiles (tiles per page; default: the processor's max_patches, 12 for the released ones)."""

    family = "internvl"

    def __init__(self, model, processor, tokenizer, model_id: str, max_tiles: int | None = None,
                 **options: Any) -> None:
        super().__init__(model, processor, tokenizer, model_id, **options)
        image_processor = processor.image_processor
        self.max_tiles = int(max_tiles if max_tiles is not None else getattr(image_processor, "max_patches", 12))
        self.min_tiles = int(getattr(image_processor, "min_patches", 1))
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles must be ≥ 1, got {self.max_tiles}")
        size = image_processor.size
        self.tile_size = int(size["height"] if isinstance(size, dict) else size.height)
        vision = model.config.vision_config
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        self.tokens_per_side = int(round(self.tile_size / int(patch) * float(model.config.downsample_ratio)))
        if self.tokens_per_side ** 2 != int(processor.image_seq_length):
            raise RuntimeError(f"{model_id}: {self.tokens_per_side}² tokens per tile from the config but the processor "
                               f"expects image_seq_length={processor.image_seq_length}")

    def _image_kwargs(self) -> dict[str, Any]:
        return {"crop_to_patches": True, "min_patches": min(self.min_tiles, self.max_tiles),
                "max_patches": self.max_tiles}

    def tile_grid(self, width: int, height: int) -> tuple[int, int, bool]:
        """(cols, rows, has_thumbnail) the processor chooses for a page of width×height px."""
        cols, rows = get_optimal_tiled_canvas((height, width), (self.tile_size, self.tile_size),
                                              min(self.min_tiles, self.max_tiles), self.max_tiles)
        return cols, rows, cols * rows > 1

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cols, rows, thumbnail = self.tile_grid(page.width, page.height)
        return internvl_page_boxes(page.width, page.height, cols, rows, self.tile_size, self.tokens_per_side,
                                   thumbnail)
