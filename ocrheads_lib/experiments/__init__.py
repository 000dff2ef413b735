"""Causal experiments on OCR and retrieval heads (PAPER.md §5.2–§5.4, and a chain-of-thought design of ours).

    from ocrheads_lib.experiments import RunSettings, SweepHeads, run_masking, compare_to_baseline
    settings = RunSettings(model_id="tiny", out_dir="results/tiny")
    table = run_masking(lm, {"passkey_image": images, "passkey_text": texts},
                        SweepHeads({"ocr": ocr_heads, "retrieval": retrieval_heads}), settings)
    drops = compare_to_baseline(table, "k")

Modules: ``evaluate`` (answer a task under a Plan, score, bootstrap CIs, prediction cache), ``sweep`` (the
machinery masking and sink share: ``RunSettings``, ``SweepHeads``, ``Intervention``, ``Condition``, random
controls, cache paths, ``run_sweep``, ``compare_to_baseline``, curves and figures), ``masking``, ``sink``,
``case_study``, ``cot``, ``head_sets`` (which heads to use, from results/ or computed), ``tasks`` (evaluation
tasks by name). Importing the package loads torch (the experiments run models); the torch-free command line
never imports it.
"""
from __future__ import annotations

from ocrheads_lib.experiments.case_study import plot_case_grid, run_case_study
from ocrheads_lib.experiments.cot import run_cot
from ocrheads_lib.experiments.evaluate import Prediction, PredictionCache, summarize
from ocrheads_lib.experiments.head_sets import experiment_heads
from ocrheads_lib.experiments.masking import plot_masking, run_masking, scale_ks
from ocrheads_lib.experiments.sink import plot_sink, run_sink
from ocrheads_lib.experiments.sweep import (
    Condition,
    Intervention,
    RunSettings,
    SweepHeads,
    compare_to_baseline,
    random_heads,
    run_sweep,
)

__all__ = [
    "summarize", "PredictionCache", "Prediction", "run_masking", "random_heads", "Condition", "Intervention",
    "RunSettings", "SweepHeads", "compare_to_baseline", "run_sweep", "scale_ks", "plot_masking", "run_sink",
    "plot_sink", "run_case_study", "plot_case_grid", "run_cot", "experiment_heads",
]
