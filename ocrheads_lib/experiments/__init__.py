"""Causal experiments on OCR and retrieval heads (PAPER.md §5.2–§5.4, and a chain-of-thought design of ours).

    from ocrheads_lib.experiments import run_masking, run_sink, run_case_study, run_cot
    table = run_masking(lm, {"passkey_image": images, "passkey_text": texts},
                        {"ocr": ocr_heads, "retrieval": retrieval_heads}, out_dir="results/tiny")

Modules: ``evaluate`` (answer a task under a Plan, score, bootstrap CIs, prediction cache), ``sweep`` (the
machinery masking and sink share: ``Condition``, random controls, cache paths, ``run_sweep``, curves and
figures), ``masking``, ``sink``, ``case_study``, ``cot``, ``head_sets`` (which heads to use, from results/ or
computed), ``tasks`` (evaluation tasks by name).
Submodules are imported lazily so ``import ocrheads_lib.experiments`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "summarize": "ocrheads_lib.experiments.evaluate",
    "bootstrap_ci": "ocrheads_lib.experiments.evaluate",
    "PredictionCache": "ocrheads_lib.experiments.evaluate",
    "Prediction": "ocrheads_lib.experiments.evaluate",
    "run_masking": "ocrheads_lib.experiments.masking",
    "random_heads": "ocrheads_lib.experiments.sweep",
    "Condition": "ocrheads_lib.experiments.sweep",
    "run_sweep": "ocrheads_lib.experiments.sweep",
    "scale_ks": "ocrheads_lib.experiments.masking",
    "plot_masking": "ocrheads_lib.experiments.masking",
    "run_sink": "ocrheads_lib.experiments.sink",
    "plot_sink": "ocrheads_lib.experiments.sink",
    "run_case_study": "ocrheads_lib.experiments.case_study",
    "plot_case_grid": "ocrheads_lib.experiments.case_study",
    "run_cot": "ocrheads_lib.experiments.cot",
    "experiment_heads": "ocrheads_lib.experiments.head_sets",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ocrheads_lib.experiments' has no attribute {name!r}")
