"""Selecting heads from scores: the two named rules, top-k, and head-set files.

Rules (PAPER.md §4):

* ``"readme"`` — what the paper's README says: keep a head when its mean score is >= threshold and
  it is *active* (entry > 0) in at least 10 % of the entries. The value ranked is the raw mean.
* ``"paper-code"`` — what the paper's code does (step3 / exp_*): a head keeps its mean only if MORE
  than 10 % of its entries are exactly zero, otherwise its value is set to 0 (heads active in >= 90 %
  of entries are dropped — in the text setting these are the always-on self-matching heads); then
  keep heads with value >= threshold.

Ordering everywhere: value descending; ties keep layer-major order (layer, then head), i.e. a stable
sort of the layer-major list.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ocrheads_lib.paths import atomic_write_json
from ocrheads_lib.scoring.store import HeadScores
from ocrheads_lib.types import Head, parse_head

RULES = ("readme", "paper-code")
RULE_NAMES = {"readme": "frequency rule", "paper-code": "zero-filter rule"}   # the book's names (glossary)
README_MIN_ACTIVE = 0.10        # README: active in >= 10 % of samples
PAPER_CODE_MIN_ZEROS = 0.10     # step3: keep the mean only if > 10 % of entries are zero


def filtered_mean(scores: HeadScores) -> np.ndarray:
    """(L, H) the paper code's filtered mean: the raw mean where > 10 % of entries are zero, else 0
    (NaN everywhere for scores without any scored sample, as the mean)."""
    if not scores.has_entries():
        return scores.mean()
    keep = scores.zero_fraction() > PAPER_CODE_MIN_ZEROS  # (L, H) bool
    return np.where(keep, scores.mean(), 0.0)


def head_values(scores: HeadScores, rule: str = "readme") -> np.ndarray:
    """(L, H) the value a rule ranks heads by: raw mean ("readme") or filtered mean ("paper-code")."""
    if rule == "readme":
        return scores.mean()
    if rule == "paper-code":
        return filtered_mean(scores)
    raise ValueError(f"unknown selection rule {rule!r}; use one of {RULES}")


def _rank(values: np.ndarray, keep: np.ndarray) -> list[Head]:
    """Heads where keep is True, by value descending, ties in layer-major order."""
    n_layers, n_heads = values.shape
    order = np.argsort(-values.reshape(-1), kind="stable")  # layer-major flat index, stable
    return [(int(i // n_heads), int(i % n_heads)) for i in order if keep.reshape(-1)[i]]


def select(scores: HeadScores, rule: str = "readme", threshold: float = 0.1) -> list[Head]:
    """(layer, head) pairs a rule selects, sorted by the rule's value descending (stable, layer-major ties)."""
    threshold = check_threshold(threshold)
    values = head_values(scores, rule)  # (L, H)
    keep = values >= threshold
    if rule == "readme":
        keep &= scores.activation_frequency(0.0) >= README_MIN_ACTIVE
    return _rank(values, keep)


def check_k(k: Any, scores: HeadScores) -> int:
    """k as an int in 0..L*H, or a ValueError naming the value and the range (a negative k would slice
    from the end: top_k(scores, -1) returned all heads but one)."""
    n_heads = scores.shape[0] * scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= n_heads:
        raise ValueError(f"k must be an int in 0..{n_heads} (the model's layers x heads), got {k!r}")
    return int(k)


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number (a mean score, e.g. 0.1), got {threshold!r}")
    return float(threshold)


def top_k(scores: HeadScores, k: int, rule: str = "readme") -> list[Head]:
    """The k best heads by the rule's value (no threshold), stable layer-major ties; k in 0..L*H.
    (The paper's exp_masking/exp_sink take the first k of the paper-code selection.) Scores without any
    scored sample raise ValueError (there is no ranking)."""
    k = check_k(k, scores)
    scores.require_entries("top_k")
    values = head_values(scores, rule)
    return _rank(values, np.ones_like(values, dtype=bool))[:k]


def ranked(scores: HeadScores, rule: str = "readme") -> list[tuple[Head, float]]:
    """Every head with its value, best first (values NaN, in layer-major order, for scores without any
    scored sample)."""
    values = head_values(scores, rule)
    return [(head, float(values[head])) for head in _rank(values, np.ones_like(values, dtype=bool))]


# --------------------------------------------------------------------------- head-set files
def head_set(scores: HeadScores, rule: str = "readme", threshold: float = 0.1,
             k: int | None = None) -> dict[str, Any]:
    """``{"model", "kind", "rule", "threshold", "heads": [[l, h], ...]}`` (best first)."""
    heads = select(scores, rule, threshold)
    if k is not None:
        heads = heads[:check_k(k, scores)]
    return {"model": scores.meta.model_id, "revision": scores.meta.revision, "kind": scores.meta.kind,
            "rule": rule, "threshold": threshold, "heads": [[l, h] for l, h in heads]}


def by_layer(heads: Iterable[Head]) -> dict[str, list[int]]:
    """``{"layer_0": [heads...], ...}`` for layers that have selected heads, heads ascending."""
    out: dict[str, list[int]] = {}
    for layer, head in sorted(heads):
        out.setdefault(f"layer_{layer}", []).append(int(head))
    return out


def save_head_set(path: str | os.PathLike, payload: Mapping[str, Any], layout: str = "list") -> Path:
    """Write a head set atomically: ``layout="list"`` -> our JSON, ``"by_layer"`` -> {"layer_0": [...]}."""
    if layout == "list":
        return atomic_write_json(path, dict(payload))
    if layout == "by_layer":
        return atomic_write_json(path, by_layer(tuple(h) for h in payload["heads"]))
    raise ValueError(f"unknown head-set layout {layout!r}; use 'list' or 'by_layer'")


def load_head_set(path: str | os.PathLike) -> list[Head]:
    """Read a head set written by :func:`save_head_set` (either layout) or an official step3 list
    (``["l9_h0", ...]``)."""
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    if isinstance(payload, dict) and "heads" in payload:
        return [(int(l), int(h)) for l, h in payload["heads"]]
    if isinstance(payload, dict):
        return [(int(key.split("_", 1)[1]), int(h)) for key, hs in payload.items() for h in hs]
    if isinstance(payload, list):
        return [parse_head(k) if isinstance(k, str) else (int(k[0]), int(k[1])) for k in payload]
    raise ValueError(f"{path}: not a head-set file")
