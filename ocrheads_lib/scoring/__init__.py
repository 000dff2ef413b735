"""Head scores: computing them on a model (OCR and text-retrieval scores) and keeping them as data.

    from ocrheads_lib.scoring import load_scores, score_ocr, score_retrieval
    scores = score_ocr(lm, samples)            # HeadScores
    scores.save("results/tiny/ocr_scores.json")
    official = load_scores("../shared/data/official_scores/InternVL2-8B_fg_2.json")

`store` (the data types) is imported eagerly and is torch-free; the scorers load torch on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from ocrheads_lib.scoring.store import (  # noqa: F401
    Failure,
    Head,
    HeadScores,
    SampleScore,
    ScoreMeta,
    from_official,
    load_scores,
)

# The scorers import torch. They are loaded on first access (this module's __getattr__) because the command
# line imports this package for `merge` and `summary` and must start torch-free (`python -m ocrheads_lib --help`).
_LAZY = {
    "score_ocr": "ocrheads_lib.scoring.ocr",
    "score_ocr_sample": "ocrheads_lib.scoring.ocr",
    "score_retrieval": "ocrheads_lib.scoring.retrieval",
    "score_retrieval_sample": "ocrheads_lib.scoring.retrieval",
}

__all__ = ["Failure", "Head", "HeadScores", "SampleScore", "ScoreMeta", "from_official", "load_scores", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ocrheads_lib.scoring' has no attribute {name!r}")
