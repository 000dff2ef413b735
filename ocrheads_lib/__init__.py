"""ocrheads: find, explain and intervene on the attention heads with which vision-language models
read text in images ("OCR heads").

Import what you need from the submodules; the most used entry points are re-exported here and loaded
lazily, so `import ocrheads_lib` stays cheap (no torch / transformers until you touch a model):

    from ocrheads_lib import load_model, answer
    lm = load_model("tiny")                      # the embedded model, offline
    answer(lm, sample)                           # greedy answer to a sample's question
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it. Loaded on first access (module __getattr__) rather than imported here:
# `python -m ocrheads_lib ...` imports this package first, and the CLI must start without torch/transformers.
_LAZY = {
    "load_model": "ocrheads_lib.models",
    "answer": "ocrheads_lib.inference",
    "HeadScores": "ocrheads_lib.scoring",
    "load_scores": "ocrheads_lib.scoring",
    "score_ocr": "ocrheads_lib.scoring",
    "score_retrieval": "ocrheads_lib.scoring",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ocrheads_lib' has no attribute {name!r}")
