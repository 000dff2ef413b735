"""Image-token geometry: which tokens see which pixels of the original page.

Every expected token below is computed by hand from the processor's resize rule (the arithmetic is in
the comments) and checked twice: against `ImageTokenMap.evidence_tokens`, and against the processor's
real `pixel_values` (the cells that actually contain dark pixels after resize/crop/tiling).
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from ocrheads_lib.models.geometry import ImageTokenMap, cell_grid_boxes, qwen_page_boxes
from ocrheads_lib.models.testing import tiny_random

_CACHE: dict[tuple, object] = {}


def tiny(family: str, **options):
    key = (family, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = tiny_random(family, **options)
    return _CACHE[key]


def page_with_rect(width: int, height: int, rect: tuple[int, int, int, int]) -> Image.Image:
    """White page with a black rectangle filling the half-open box rect = (x0, y0, x1, y1)."""
    page = Image.new("RGB", (width, height), "white")
    x0, y0, x1, y1 = rect
    ImageDraw.Draw(page).rectangle([x0, y0, x1 - 1, y1 - 1], fill="black")
    return page


def relative(inputs, positions: torch.Tensor) -> list[int]:
    """Sequence positions → indices among the image tokens (0 = first image token)."""
    first = int(inputs.image_tokens.positions[0])
    return (positions - first).tolist()


def coverage_counts(boxes: torch.Tensor, width: int, height: int, step: float = 3.7) -> torch.Tensor:
    """For a lattice of points inside the page, how many boxes contain each point (half-open boxes)."""
    xs = torch.arange(step / 2, width, step, dtype=torch.float64)
    ys = torch.arange(step / 2, height, step, dtype=torch.float64)
    px = xs.repeat(len(ys))                                       # (P,)
    py = ys.repeat_interleave(len(xs))                            # (P,)
    b = boxes.to(torch.float64)
    inside = ((px[:, None] >= b[None, :, 0]) & (px[:, None] < b[None, :, 2])
              & (py[:, None] >= b[None, :, 1]) & (py[:, None] < b[None, :, 3]))   # (P, N)
    return inside.sum(dim=1)


# ----------------------------------------------------------------------------------------------- Qwen

# Tiny Qwen processor: min_pixels = 4·28², max_pixels = 64·28² = 50 176.
# Page 500×300: round to multiples of 28 → 308×504 = 155 232 > max, so β = √(150 000 / 50 176) = 1.7290,
# H' = ⌊300/1.7290/28⌋·28 = 6·28 = 168, W' = ⌊500/1.7290/28⌋·28 = 10·28 = 280 → image_grid_thw (1, 12, 20),
# 6×10 merged tokens; one token = 28 resized px = 28·500/280 = 50 original px wide, 28·300/168 = 50 px tall.
# Rectangle x 120..180, y 60..90 → columns 2 (100–150) and 3 (150–200), row 1 (50–100) → tokens 12, 13.
QWEN_RECT = (120, 60, 180, 90)
QWEN_EXPECTED = [12, 13]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_rectangle_tokens_by_hand_and_by_pixels(family):
    lm = tiny(family)
    inputs = lm.build_inputs([page_with_rect(500, 300, QWEN_RECT)], "x")
    assert inputs.tensors["image_grid_thw"].tolist() == [[1, 12, 20]]
    tmap = inputs.image_tokens
    assert len(tmap) == 60
    assert relative(inputs, tmap.evidence_tokens(0, QWEN_RECT)) == QWEN_EXPECTED
    # Every token is a 50×50 px cell of the original page, row-major.
    assert torch.allclose(tmap.boxes[:2], torch.tensor([[0., 0., 50., 50.], [50., 0., 100., 50.]]))
    # The processor's own pixels: merged token k = patches 4k..4k+3 of pixel_values (what the merger consumes).
    pixels = inputs.tensors["pixel_values"]                                          # (240, 3·2·14·14)
    darkest = pixels.view(-1, 4, pixels.shape[-1]).amin(dim=(1, 2))                  # (60,)
    assert (darkest < 0).nonzero().flatten().tolist() == QWEN_EXPECTED


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_paper_pixels_option(family):
    # Paper setting min = max = 256·28² = 200 704. 500×300 → 308×504 = 155 232 < min, so
    # β = √(200 704 / 150 000) = 1.15674, H' = ⌈300·β/28⌉·28 = 13·28 = 364, W' = ⌈500·β/28⌉·28 = 21·28 = 588
    # → grid (1, 26, 42), 13×21 = 273 tokens.
    lm = tiny(family, min_pixels=256 * 28 * 28, max_pixels=256 * 28 * 28)
    inputs = lm.build_inputs([Image.new("RGB", (500, 300), "white")], "x")
    assert inputs.tensors["image_grid_thw"].tolist() == [[1, 26, 42]]
    assert len(inputs.image_tokens) == 273
    assert int((inputs.input_ids == lm.image_token_id).sum()) == 273


def test_qwen_page_boxes_pure():
    boxes = qwen_page_boxes(500, 300, grid_h=12, grid_w=20, patch_size=14, merge_size=2)
    assert boxes.shape == (60, 4)
    assert boxes[13].tolist() == [150.0, 50.0, 200.0, 100.0]     # row 1, col 3
    assert boxes[-1].tolist() == [450.0, 250.0, 500.0, 300.0]


# ----------------------------------------------------------------------------------------------- InternVL

# One 448-px tile (the paper's max_num=1): 500×300 is squashed to 448×448; 16×16 tokens of 28×28 px
# → one token = 28·500/448 = 31.25 original px wide, 28·300/448 = 18.75 px tall.
# Rectangle x 100..150, y 60..70: columns ⌊100/31.25⌋ = 3 … ⌊149.9/31.25⌋ = 4, row ⌊60/18.75⌋ = ⌊69.9/18.75⌋ = 3
# → tokens 3·16 + 3 = 51 and 52.
INTERNVL_RECT = (100, 60, 150, 70)


def internvl_dark_cells(pixel_values: torch.Tensor) -> list[int]:
    """Token indices (tile-major, row-major inside a tile) whose 28×28 cell holds dark pixels."""
    tiles = pixel_values.shape[0]
    cells = pixel_values.view(tiles, 3, 16, 28, 16, 28).permute(0, 2, 4, 1, 3, 5).reshape(tiles * 256, -1)
    return (cells.amin(dim=1) < 0).nonzero().flatten().tolist()


def test_internvl_one_tile_rectangle():
    lm = tiny("internvl", max_tiles=1)
    inputs = lm.build_inputs([page_with_rect(500, 300, INTERNVL_RECT)], "x")
    assert inputs.tensors["pixel_values"].shape == (1, 3, 448, 448)
    tmap = inputs.image_tokens
    assert len(tmap) == 256
    assert relative(inputs, tmap.evidence_tokens(0, INTERNVL_RECT)) == [51, 52]
    assert internvl_dark_cells(inputs.tensors["pixel_values"]) == [51, 52]
    # <img> right before the first image token and </img> right after the last.
    ids = inputs.input_ids
    assert int(ids[tmap.positions[0] - 1]) == lm.tokenizer.start_image_token_id
    assert int(ids[tmap.positions[-1] + 1]) == lm.tokenizer.end_image_token_id


def test_internvl_default_tiling_with_thumbnail():
    # max_tiles=2: grids (1,1) ratio 1, (1,2) ratio 0.5, (2,1) ratio 2; 500/300 = 1.67 is closest to 2
    # → 2 tiles side by side (page resized to 896×448) + a thumbnail (448×448) = 3·256 tokens.
    # Tile cell = 28·500/896 = 15.625 px wide, 18.75 tall: x 100..150 → cols 6..9 of tile 0, row 3
    # → tokens 54..57; thumbnail = the one-tile case → 512 + 51, 512 + 52.
    lm = tiny("internvl", max_tiles=2)
    inputs = lm.build_inputs([page_with_rect(500, 300, INTERNVL_RECT)], "x")
    assert inputs.tensors["pixel_values"].shape == (3, 3, 448, 448)
    tmap = inputs.image_tokens
    assert len(tmap) == 768
    expected = [54, 55, 56, 57, 563, 564]
    assert relative(inputs, tmap.evidence_tokens(0, INTERNVL_RECT)) == expected
    assert internvl_dark_cells(inputs.tensors["pixel_values"]) == expected
    assert tmap.tiles.tolist() == [0] * 256 + [1] * 256 + [-1] * 256
    # The tile tokens tile the page once, and the thumbnail tokens tile it once more.
    for group in (tmap.tiles >= 0, tmap.tiles == -1):
        assert bool((coverage_counts(tmap.boxes[group], 500, 300) == 1).all())
    # Pages with different tilings keep their order: 500×300 → 2 tiles + thumbnail, 300×300 → 1 tile, no thumbnail.
    two = lm.build_inputs([page_with_rect(500, 300, INTERNVL_RECT), page_with_rect(300, 300, (10, 10, 20, 20))], "x")
    assert two.image_tokens.pages.tolist() == [0] * 768 + [1] * 256
    assert two.image_tokens.tiles[768:].tolist() == [0] * 256
    # 300 px → 448 px: cells of 18.75 px; (10, 10, 20, 20) touches rows/cols 0 and 1 → tokens 0, 1, 16, 17 of page 1.
    first_of_page_1 = int(two.image_tokens.page_positions(1)[0])
    assert (two.image_tokens.evidence_tokens(1, (10, 10, 20, 20)) - first_of_page_1).tolist() == [0, 1, 16, 17]


def test_internvl_pixel_shuffle_is_row_major():
    # The model's pixel shuffle must turn a 32×32 patch grid into 16×16 tokens, token k = cell (k // 16, k % 16)
    # holding the 2×2 patches of that cell; feed patch indices through it to check.
    lm = tiny("internvl")
    side = 32
    index = torch.arange(side * side, dtype=torch.float32).view(1, side, side, 1)     # (1, rows, cols, 1)
    shuffled = lm.model.model.pixel_shuffle(index, scale_factor=0.5).reshape(256, 4)   # (tokens, 4 patches)
    for k in (0, 1, 17, 255):
        row, col = divmod(k, 16)
        patches = {(2 * row + dr) * side + (2 * col + dc) for dr in (0, 1) for dc in (0, 1)}
        assert set(shuffled[k].long().tolist()) == patches


# ----------------------------------------------------------------------------------------------- LLaVA

# Tiny LLaVA: shortest edge → 56, center crop 56×56, 14-px patches → 4×4 tokens.
# 500×300: short 300 → 56, long int(56·500/300) = 93 → resized 93×56; crop left = int((93 − 56)/2) = 18.
# Column c covers resized x 18+14c … 32+14c → original ×500/93: c=0 96.77–172.04, c=1 172.04–247.31, …,
# c=3 ends at 397.85; rows are 14·300/56 = 75 px. Rectangle x 195..225, y 100..125 → col 1, row 1 → token 5.
# Pixels left of x 96.77 or right of 397.85 are cropped away: no token sees them.
LLAVA_RECT = (195, 100, 225, 125)


def test_llava_center_crop_geometry():
    lm = tiny("llava")
    inputs = lm.build_inputs([page_with_rect(500, 300, LLAVA_RECT)], "x")
    tmap = inputs.image_tokens
    assert len(tmap) == 16
    assert relative(inputs, tmap.evidence_tokens(0, LLAVA_RECT)) == [5]
    cells = inputs.tensors["pixel_values"].view(1, 3, 4, 14, 4, 14).permute(0, 2, 4, 1, 3, 5).reshape(16, -1)
    assert (cells.amin(dim=1) < 0).nonzero().flatten().tolist() == [5]
    assert tmap.evidence_tokens(0, (10, 10, 60, 60)).numel() == 0            # in the cropped-away strip
    assert tmap.boxes[0].tolist() == pytest.approx([18 * 500 / 93, 0.0, 32 * 500 / 93, 75.0])
    # Inside the crop every point is seen by exactly one token; outside by none.
    counts = coverage_counts(tmap.boxes, 500, 300)
    step = 3.7
    xs = torch.arange(step / 2, 500, step, dtype=torch.float64).repeat(len(torch.arange(step / 2, 300, step)))
    in_crop = (xs >= 18 * 500 / 93) & (xs < 74 * 500 / 93)
    assert bool((counts[in_crop] == 1).all()) and bool((counts[~in_crop] == 0).all())


# ----------------------------------------------------------------------------------------------- all families

@pytest.mark.parametrize("family,options", [("qwen2_vl", {}), ("qwen2_5_vl", {}), ("internvl", {"max_tiles": 1})])
def test_boxes_tile_each_page_and_pages_are_in_order(family, options):
    lm = tiny(family, **options)
    pages = [Image.new("RGB", (500, 300), "white"), Image.new("RGB", (200, 410), "white")]
    inputs = lm.build_inputs(pages, "x")
    tmap = inputs.image_tokens
    # Processor's image-token count = map size.
    assert int((inputs.input_ids == lm.image_token_id).sum()) == len(tmap)
    assert tmap.page_sizes == [(500, 300), (200, 410)]
    assert torch.equal(tmap.pages, tmap.pages.sort().values) and set(tmap.pages.tolist()) == {0, 1}
    for page_index, (width, height) in enumerate(tmap.page_sizes):
        on_page = tmap.pages == page_index
        positions = tmap.positions[on_page]
        assert torch.equal(positions, torch.arange(int(positions[0]), int(positions[0]) + len(positions)))
        assert bool((coverage_counts(tmap.boxes[on_page], width, height) == 1).all())
        assert float((tmap.boxes[on_page, 2] - tmap.boxes[on_page, 0]).mul(
            tmap.boxes[on_page, 3] - tmap.boxes[on_page, 1]).sum()) == pytest.approx(width * height, rel=1e-5)
    # Evidence on page 1 comes from page 1's tokens only.
    hit = tmap.evidence_tokens(1, (10, 10, 20, 20))
    assert hit.numel() > 0 and set(hit.tolist()) <= set(tmap.page_positions(1).tolist())
    assert int(hit.max()) > int(tmap.page_positions(0).max())


def test_min_overlap_threshold():
    # Two cells of 10×10; a 10×10 box overlapping cell 1 by 0.5 px² (0.5 % of the box) and cell 0 by the rest.
    tmap = ImageTokenMap(positions=torch.tensor([7, 8]), pages=torch.tensor([0, 0]),
                         boxes=cell_grid_boxes(1, 2, 10, 10).float(), page_sizes=[(20, 10)])
    box = (0.05, 0, 10.05, 10)
    assert tmap.evidence_tokens(0, box).tolist() == [7, 8]                        # default: > 0.1 %
    assert tmap.evidence_tokens(0, box, min_overlap=0.01).tolist() == [7]         # > 1 % drops the sliver


def test_bbox_and_page_errors():
    tmap = ImageTokenMap(positions=torch.tensor([3, 4]), pages=torch.tensor([0, 0]),
                         boxes=cell_grid_boxes(1, 2, 10, 10).float(), page_sizes=[(20, 10)])
    with pytest.raises(ValueError, match="outside page 0"):
        tmap.evidence_tokens(0, (15, 5, 40, 9))
    with pytest.raises(ValueError, match="empty or inverted"):
        tmap.evidence_tokens(0, (5, 5, 5, 9))
    with pytest.raises(IndexError, match="page 1 is out of range"):
        tmap.evidence_tokens(1, (1, 1, 2, 2))
    with pytest.raises(IndexError, match="out of range"):
        tmap.page_positions(-1)
    # Within the 1-px tolerance of the edge: accepted (renderers report glyph boxes one pixel past the canvas).
    assert tmap.evidence_tokens(0, (15, 5, 20.5, 9)).tolist() == [4]


# ----------------------------------------------------------------------------------------------- LLaVA-OneVision

# Tiny OneVision: views of S = 60 px, 14-px patches → n = 4 tokens per side (4·14 = 56 < 60: the last 4 px of
# every view are seen by no patch). Page 150×100, pinpoints (h, w) in {60,120,180}²-ish: (120, 120) keeps the
# most pixels (scale min(120/150, 120/100) = 0.8 → 120×80 effective) → 2×2 crops. The page is resized to
# 120×80 (width fills) and pasted at y = (120 − 80) // 2 = 20.
# Feature grid 8×8; feature row r spans padded y (r // 4)·60 + (r % 4)·14 … +14, same for columns.
# unpad (the model's rule): 150/100 > 8/8 → rows kept = int(100·8/150) = 5, padding (8 − 5) // 2 = 1 → rows 1..6.
# ratio √(6·8 / (9·16)) < 1.1 → no downsample. Sequence: 16 base tokens, then 6 rows × (8 tokens + newline).
# Rectangle x 79..88, y 54..63: padded x 63.2..70.4 → column 4 (60–74); padded y 54/1.25 + 20 = 63.2..70.4
# → row 4 (60–74) = kept row 3 → token 16 + 3·9 + 4 = 47. Base view (squashed to 60×60, cells 35×23.3 px):
# x 79..88 → column 2, y 54..63 → row 2 → token 2·4 + 2 = 10.
OV_RECT = (79, 54, 88, 63)


def test_llava_onevision_anyres_geometry():
    lm = tiny("llava_onevision")
    inputs = lm.build_inputs([page_with_rect(150, 100, OV_RECT)], "x")
    tmap = inputs.image_tokens
    pixels = inputs.tensors["pixel_values"][0]                                     # (5, 3, 60, 60): base + 4 crops
    assert pixels.shape == (5, 3, 60, 60)
    assert len(tmap) == 16 + 6 * 9 == int((inputs.input_ids == lm.image_token_id).sum())
    assert relative(inputs, tmap.evidence_tokens(0, OV_RECT)) == [10, 47]
    # The processor's pixels: cells of the base view and of the 8×8 high-res feature grid that differ from a
    # blank page's (the padding is black too, so compare against the same page without the rectangle).
    blank = lm.build_inputs([Image.new("RGB", (150, 100), "white")], "x").tensors["pixel_values"][0]
    changed = (pixels - blank).abs()                                               # (5, 3, 60, 60)
    base = changed[0, :, :56, :56].reshape(3, 4, 14, 4, 14).permute(1, 3, 0, 2, 4).reshape(16, -1)
    assert (base.amax(dim=1) > 0.5).nonzero().flatten().tolist() == [10]
    crops = changed[1:, :, :56, :56].reshape(2, 2, 3, 4, 14, 4, 14)               # (crop row, crop col, c, r, 14, c, 14)
    grid = crops.permute(0, 3, 1, 5, 2, 4, 6).reshape(8, 8, -1)                    # (grid row, grid col, pixels)
    assert (grid.amax(dim=2) > 0.5).nonzero().tolist() == [[4, 4]]
    newline = tmap.tiles == -2
    assert int(newline.sum()) == 6 and float(tmap.boxes[newline].abs().sum()) == 0.0
    assert tmap.evidence_tokens(0, (0, 0, 150, 100)).numel() == len(tmap) - 6      # everything but newlines
    # Base tokens cover the squashed view's seen part once: x < 4·14·150/60 = 140, y < 4·14·100/60 = 93.3.
    assert tmap.boxes[tmap.tiles == -1].max(dim=0).values[2:].tolist() == pytest.approx([140.0, 280 / 3])


def test_llava_onevision_downsampled_grid():
    # With anyres_max_1 the 6×8 unpadded grid is too large: ratio √(48 / 16) = 1.73 > 1.1 → the model
    # interpolates it to ⌊6/1.73⌋ × ⌊8/1.73⌋ = 3×4; each new row spans 2 old rows, each new column 2 old
    # columns. OV_RECT (old row 4 = kept row 3, old column 4) → new row 1, column 2 → 16 + 1·5 + 2 = 23.
    lm = tiny_random("llava_onevision")
    lm.model.config.vision_aspect_ratio = lm.processor.vision_aspect_ratio = "anyres_max_1"
    lm.max_num_patches = 1
    inputs = lm.build_inputs([page_with_rect(150, 100, OV_RECT)], "x")
    tmap = inputs.image_tokens
    assert len(tmap) == 16 + 3 * 5
    assert relative(inputs, tmap.evidence_tokens(0, OV_RECT)) == [10, 23]
    with torch.no_grad():
        assert lm.model(**inputs.tensors).logits.shape[1] == len(inputs)
