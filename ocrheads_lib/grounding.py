"""Where the model read each character: per-character attention rows, and OCR heads read as a detector.

    from ocrheads_lib.grounding import record_character_attention, ground, summarize_grounding
    chars = record_character_attention(lm, sample)          # one teacher-forced pass
    chars.attention[l, h, c]                                 # head (l, h)'s row that emitted character c,
                                                             # over the evidence page's image tokens
    result = ground(chars, heads=[(2, 1), (2, 5)])          # predicted box per character + hit + IoU
    summarize_grounding([result, ...], seed=0)              # hit rate and mean IoU with bootstrap CIs

The grounding view turns the top OCR heads' attention into a predicted box per answer character: the
heads' emitting rows for that character are averaged, and the image token they attend most is the
prediction (its box in page pixels). A prediction *hits* when that token is evidence for the character
(its box overlaps the character's box by more than `min_overlap` of the character's area: the same rule
that defines evidence tokens for the OCR score), and its IoU with the character's box says how tightly
it sits. On the book's grid pages one token is one character cell, so a hit has an IoU near 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ocrheads_lib import bootstrap
from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.inference import sample_inputs
from ocrheads_lib.scoring.align import align_answer
from ocrheads_lib.types import Head

Box = tuple[float, float, float, float]
MIN_OVERLAP = 0.001          # share of the character box's area, as for evidence tokens


@dataclass
class CharacterAttention:
    """Every head's attention, from the row that emitted each answer character, over one page's tokens.

    attention[l, h, c, i]: attention of head (l, h) on image token i of the evidence page, from the query
    row that emits the token covering answer character (unit) c.
    """

    sample_id: str
    page: Any                              # PIL image of the evidence page (original pixels)
    token_boxes: np.ndarray                # (N, 4) page-pixel boxes of the page's image tokens
    attention: np.ndarray                  # (L, H, C, N)
    characters: list[str]                  # the C answer units, in answer order
    char_boxes: list[Box]                  # their boxes on the page
    rows: list[int] = field(default_factory=list)   # the C query positions

    def __post_init__(self) -> None:
        self.token_boxes = np.asarray(self.token_boxes, dtype=np.float64).reshape(-1, 4)
        self.attention = np.asarray(self.attention, dtype=np.float64)
        if self.attention.ndim != 4 or self.attention.shape[2:] != (len(self.characters), len(self.token_boxes)):
            raise ValueError(f"sample {self.sample_id}: attention must be (layers, heads, {len(self.characters)} "
                             f"characters, {len(self.token_boxes)} tokens), got {self.attention.shape}")
        if len(self.char_boxes) != len(self.characters):
            raise ValueError(f"sample {self.sample_id}: {len(self.characters)} characters but "
                             f"{len(self.char_boxes)} boxes")


@dataclass
class CharacterGrounding:
    """One sample's predictions: per character, the predicted token box, hit and IoU."""

    sample_id: str
    heads: list[Head]
    predicted: list[Box]
    hits: list[bool]
    ious: list[float]


@dataclass
class GroundingSummary:
    """Hit rate and mean IoU over all characters, with percentile bootstrap intervals."""

    n_characters: int
    n_heads: int
    heads: list[Head]
    hit_rate: float
    hit_low: float
    hit_high: float
    iou: float
    iou_low: float
    iou_high: float


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when disjoint or both empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def covers(token: Sequence[float], target: Sequence[float], min_overlap: float = MIN_OVERLAP) -> bool:
    """True when `token` overlaps `target` by more than `min_overlap` of the target's area."""
    ix = max(0.0, min(token[2], target[2]) - max(token[0], target[0]))
    iy = max(0.0, min(token[3], target[3]) - max(token[1], target[1]))
    area = (target[2] - target[0]) * (target[3] - target[1])
    return area > 0 and ix * iy > min_overlap * area


def ground(chars: CharacterAttention, heads: Sequence[Head], min_overlap: float = MIN_OVERLAP) -> CharacterGrounding:
    """Predict each character's box from `heads` (their emitting rows averaged) and score it."""
    heads = [(int(l), int(h)) for l, h in heads]
    if not heads:
        raise ValueError("ground: no heads given; pass e.g. the top OCR heads (heads.ranked(scores)[:4])")
    n_layers, n_heads = chars.attention.shape[:2]
    bad = [hd for hd in heads if not (0 <= hd[0] < n_layers and 0 <= hd[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} out of range for a model with {n_layers} layers × {n_heads} heads")
    rows = np.stack([chars.attention[l, h] for l, h in heads]).mean(axis=0)     # (C, N)
    predicted, hits, ious = [], [], []
    for c, box in enumerate(chars.char_boxes):
        token = chars.token_boxes[int(np.argmax(rows[c]))]
        predicted.append(tuple(float(v) for v in token))
        hits.append(covers(token, box, min_overlap))
        ious.append(iou(token, box))
    return CharacterGrounding(chars.sample_id, heads, predicted, hits, ious)


def _mean_interval(values: np.ndarray, seed: int, n_resamples: int) -> tuple[float, float]:
    """95 % interval of the mean: (mean, mean) when every resample is the same, else the project's bootstrap
    with the interpolation rule this summary was first published with (``rule="scipy"``)."""
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())       # degenerate: every resample is the same
    return bootstrap.mean_interval(values, n_boot=n_resamples, seed=seed, alpha=0.05, rule="scipy")


def summarize_grounding(results: Sequence[CharacterGrounding], seed: int = 0, n_resamples: int = 2000) -> GroundingSummary:
    """Hit rate and mean IoU over every character of `results`, with 95 % percentile bootstrap intervals
    over characters (seeded: the same results and seed give the same interval)."""
    hits = np.array([h for r in results for h in r.hits], dtype=float)
    ious = np.array([v for r in results for v in r.ious], dtype=float)
    heads = results[0].heads if results else []
    if hits.size == 0:
        nan = float("nan")
        return GroundingSummary(0, len(heads), heads, nan, nan, nan, nan, nan, nan)
    hit_low, hit_high = _mean_interval(hits, seed, n_resamples)
    iou_low, iou_high = _mean_interval(ious, seed, n_resamples)
    return GroundingSummary(int(hits.size), len(heads), heads, float(hits.mean()), hit_low, hit_high,
                            float(ious.mean()), iou_low, iou_high)


def record_rows(lm: Any, sample: Any, answer: str | None = None) -> dict[str, Any]:
    """One teacher-forced pass of `sample` with `answer` (default: gold) under the probe, recording every
    head's attention mass on each image token of the evidence page from every answer-emitting row.

    Returns {"attention": (L, H, A, N), "rows": A query positions, "answer_ids": A token ids,
    "token_boxes": (N, 4), "layers": recorded layer indices}."""
    text = sample.answer if answer is None else answer
    inputs = sample_inputs(lm, sample, answer=text)
    answer_positions = inputs.answer_positions                                # (A,)
    if answer_positions.numel() == 0:
        raise ValueError(f"sample {sample.id}: the answer {text!r} has no tokens; nothing to record")
    rows = answer_positions - 1                                               # (A,) rows that emit each answer token
    tokens = inputs.image_tokens
    on_page = tokens.pages == int(sample.evidence_page)                       # (N_all,)
    positions = tokens.positions[on_page]                                     # (N,)
    if positions.numel() == 0:
        raise ValueError(f"sample {sample.id}: no image tokens on evidence page {sample.evidence_page}")
    names = [f"token{i}" for i in range(positions.numel())]
    plan = Plan(record="all", rows=rows, topk=1, key_sets={name: positions[i:i + 1] for i, name in enumerate(names)})
    with torch.no_grad(), apply(lm, plan) as rec:
        lm.model(**inputs.tensors)
    layers = sorted(rec.argmax)
    attention = np.stack([torch.stack([rec.mass[name][layer][0] for name in names], dim=-1).float().numpy()
                          for layer in layers])                               # (L, H, A, N)
    input_ids = inputs.tensors["input_ids"][0]
    return {"attention": attention, "rows": rows.tolist(), "answer_ids": input_ids[answer_positions].tolist(),
            "token_boxes": tokens.boxes[on_page].numpy(), "layers": layers}


def record_character_attention(lm: Any, sample: Any) -> CharacterAttention:
    """Per answer character (unit) of an `ImageSample`, every head's attention row that emitted it (the
    row of the first answer token covering the unit), teacher-forced with the gold answer."""
    recorded = record_rows(lm, sample)
    alignment = align_answer(lm.tokenizer, recorded["answer_ids"], sample.answer, sample.units)
    if alignment is None:
        raise ValueError(f"sample {sample.id}: the gold answer's tokens do not decode to {sample.answer!r}")
    first_token = {}
    for k, units in enumerate(alignment.token_units):
        for unit in units:
            first_token.setdefault(unit, k)
    units = sorted(first_token)
    attention = recorded["attention"][:, :, [first_token[u] for u in units]]   # (L, H, C, N)
    return CharacterAttention(sample_id=str(sample.id), page=sample.pages[sample.evidence_page],
                              token_boxes=recorded["token_boxes"], attention=attention,
                              characters=[str(sample.units[u]) for u in units],
                              char_boxes=[tuple(float(v) for v in sample.boxes[u]) for u in units],
                              rows=[recorded["rows"][first_token[u]] for u in units])


def grounding_table(results: Sequence[CharacterGrounding], chars: Sequence[CharacterAttention]) -> Any:
    """One row per character: sample, character, hit, IoU (for a table in the book)."""
    rows = []
    for result, ca in zip(results, chars):
        for c, (hit, value) in enumerate(zip(result.hits, result.ious)):
            rows.append({"sample": result.sample_id, "character": ca.characters[c], "hit": bool(hit), "IoU": value})
    return pd.DataFrame(rows)
