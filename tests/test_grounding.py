"""Grounding: OCR heads' attention as a per-character box detector (ocrheads_lib.grounding), with planted
attention (hand-made arrays and a planted head in a tiny random Qwen2-VL), and the character picker."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ocrheads_lib.grounding import (CharacterAttention, covers, ground, iou, record_character_attention,
                                    summarize_grounding)

CELL = 28


def _grid_chars(targets: list[int], n_tokens: int = 6) -> CharacterAttention:
    """One row of six 28-px tokens; three characters in tokens 1, 2, 3 (boxes inset 4 px); head (0, 1)
    attends token targets[c] for character c (0.9, and 0.1 on the next token), head (0, 0) puts 0.8 on token 0."""
    token_boxes = np.array([[CELL * i, 0, CELL * (i + 1), CELL] for i in range(n_tokens)], dtype=float)
    char_boxes = [(CELL * i + 4, 4, CELL * (i + 1) - 4, CELL - 4) for i in (1, 2, 3)]
    attention = np.zeros((1, 2, 3, n_tokens))
    attention[0, 0, :, 0] = 0.8
    attention[0, 0, :, 5] = 0.2
    for c, t in enumerate(targets):
        attention[0, 1, c, t] = 0.9
        attention[0, 1, c, (t + 1) % n_tokens] = 0.1
    return CharacterAttention(sample_id="s", page=Image.new("RGB", (CELL * n_tokens, CELL), "white"),
                              token_boxes=token_boxes, attention=attention, characters=list("417"),
                              char_boxes=char_boxes)


def test_box_helpers_by_hand() -> None:
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou((0, 0, 28, 28), (4, 4, 24, 24)) == pytest.approx(400 / 784)
    assert covers((0, 0, 28, 28), (4, 4, 24, 24))
    assert not covers((28, 0, 56, 28), (4, 4, 24, 24))
    assert not covers((23.99, 0, 56, 28), (4, 4, 24, 24), min_overlap=0.01)   # a sliver below the threshold


def test_ground_scores_planted_attention() -> None:
    chars = _grid_chars([1, 2, 3])                      # the reading head looks at the right token each time
    good = ground(chars, [(0, 1)])
    assert good.hits == [True, True, True]
    assert good.ious == pytest.approx([400 / 784] * 3)
    assert good.predicted[0] == (28.0, 0.0, 56.0, 28.0)
    bad = ground(chars, [(0, 0)])                       # the sink-like head never does
    assert bad.hits == [False, False, False] and bad.ious == [0.0, 0.0, 0.0]
    # two heads averaged: the reader's token gets 0.9 / 2 = 0.45, the sink head's token 0.8 / 2 = 0.4
    assert ground(chars, [(0, 0), (0, 1)]).hits == [True, True, True]
    off = ground(_grid_chars([1, 4, 3]), [(0, 1)])      # second character read from the wrong cell
    assert off.hits == [True, False, True]
    with pytest.raises(ValueError, match="out of range"):
        ground(chars, [(3, 0)])
    with pytest.raises(ValueError, match="no heads"):
        ground(chars, [])


def test_summary_rates_and_seeded_interval() -> None:
    results = [ground(_grid_chars([1, 4, 3]), [(0, 1)]), ground(_grid_chars([1, 2, 3]), [(0, 1)])]
    summary = summarize_grounding(results, seed=3)
    assert summary.n_characters == 6 and summary.n_heads == 1
    assert summary.hit_rate == pytest.approx(5 / 6)
    assert summary.hit_low <= summary.hit_rate <= summary.hit_high
    assert summary.hit_low < 5 / 6 < summary.hit_high <= 1.0
    assert summarize_grounding(results, seed=3) == summary                       # same seed, same interval
    perfect = summarize_grounding([ground(_grid_chars([1, 2, 3]), [(0, 1)])])
    assert (perfect.hit_rate, perfect.hit_low, perfect.hit_high) == (1.0, 1.0, 1.0)
    empty = summarize_grounding([])
    assert empty.n_characters == 0 and np.isnan(empty.hit_rate)


def test_character_attention_checks_shapes() -> None:
    chars = _grid_chars([1, 2, 3])
    with pytest.raises(ValueError, match="characters"):
        CharacterAttention(sample_id="x", page=chars.page, token_boxes=chars.token_boxes,
                           attention=chars.attention[:, :, :2], characters=list("417"), char_boxes=chars.char_boxes)


def test_planted_head_grounds_every_character() -> None:
    """A head planted to read the next character (tiny random Qwen2-VL) is a perfect detector; the recorded
    rows are the emitting rows of each character."""
    pytest.importorskip("torch")
    from ocrheads_lib.data.samples import ImageSample
    from ocrheads_lib.models.testing import tiny_random
    from ocrheads_lib.scoring.planted import ocr_targets, plant

    lm = tiny_random("qwen2_vl", seed=0, attn="probe")
    pages = [Image.new("RGB", (10 * CELL, 6 * CELL), "white"), Image.new("RGB", (10 * CELL, 6 * CELL), (250, 250, 240))]
    boxes = [(CELL * (2 + i) + 6, CELL * 2 + 4, CELL * (3 + i) - 6, CELL * 3 - 4) for i in range(4)]
    sample = ImageSample(id="p", pages=pages, question="What is the pass key?", answer="4817", evidence_page=1,
                         boxes=boxes, units=list("4817"), coarse_box=(boxes[0][0], boxes[0][1], boxes[-1][2], boxes[-1][3]),
                         seed=0)
    planted = (1, 2)
    with plant(*planted, targets=ocr_targets(lm, sample, row="emit")):
        chars = record_character_attention(lm, sample)
    assert chars.characters == list("4817") and chars.attention.shape[:3] == (lm.n_layers, lm.n_heads, 4)
    assert chars.rows == sorted(ocr_targets(lm, sample, row="emit"))
    result = ground(chars, [planted])
    assert result.hits == [True] * 4
    assert min(result.ious) > 0.3                        # the token cell around a 16x20 px character box
    assert np.allclose(chars.attention.sum(axis=-1)[planted], 1.0, atol=1e-4)   # all its mass on the page

    from ocrheads_lib.widgets import character_explorer

    box = character_explorer([chars], heads=[planted, (0, 0)], width=240)
    pick, stack = box.children[0], box.children[1]
    assert [label for label, _ in pick.options][1] == "p: character 2 of '4817' ('8')"
    assert len(stack.children) == 4 and stack.children[0].value[:4] == b"\x89PNG"
