"""Head masking: zero the top-k OCR heads, the top-k retrieval heads, or k random heads, and measure.

PAPER.md §5.3 did this on one example and saved nothing, with random heads and distractors drawn from
one RNG. Here:

* every sample of each task is evaluated (the caller chooses the split and its size);
* random heads come from their own ``random.Random(seed)`` (nothing else draws from it), one draw per seed,
  only from heads *outside* the selected OCR and retrieval sets (``exclude``); if that pool is smaller than
  k, from the heads outside the top-k of every head set, and the table says so (column ``random_pool``);
* a second control, ``random_layer_matched``, draws per seed as many heads *from each layer* as the top-k
  of the reference set (the OCR heads) has there, so "OCR heads matter more than random heads" is not
  confounded by depth (random heads from early layers can hurt everything downstream);
* masking is :func:`ocrheads_lib.attention.apply` with ``Plan(mask=heads)`` around generation: the heads'
  slices of the o_proj input are zero at every position (prefill and decoding);
* the table (pandas) has one row per (model, task, head_set, k, seed) with bootstrap CIs, and is written
  atomically to ``results/<model>/masking.csv``; per-sample predictions are cached per condition
  (JSONL), so a rerun resumes.

The baseline is the row ``head_set="none", k=0``; masking zero heads is the same empty plan.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ocrheads_lib.attention import Plan
from ocrheads_lib.experiments.evaluate import format_heads
from ocrheads_lib.experiments.sweep import (
    BASELINE,
    CONTROLS,
    Condition,
    Intervention,
    RunSettings,
    SweepHeads,
    control_draws,
    run_sweep,
    sweep_curves,
    sweep_figure,
    top_k_conditions,
)

DEFAULT_KS = (2, 5, 10, 20)
MAX_MASK_FRACTION = 0.25
TABLE_COLUMNS = ("model", "task", "modality", "head_set", "k", "seed", "n_masked", "random_pool", "heads", "n",
                 "n_failed")


def scale_ks(n_total_heads: int, ks: Sequence[int] = DEFAULT_KS,
             max_fraction: float = MAX_MASK_FRACTION) -> list[int]:
    """The k values that make sense for a model with `n_total_heads` heads.

    The paper's k (2, 5, 10, 20) are for 336–1024 heads. k above ``max_fraction`` of all heads is dropped and
    replaced by that cap (so a 32-head model gets [2, 5, 8]); duplicates removed, ascending.
    """
    cap = max(1, int(n_total_heads * max_fraction))
    out = sorted({min(int(k), cap) for k in ks if int(k) > 0})
    return out


def mask_conditions(n_layers: int, n_heads: int, heads: SweepHeads, ks: Sequence[int]) -> list[Condition]:
    """The list of conditions: baseline, then for each k the top-k of every head set and one random draw per
    seed, plus one layer-matched random draw per seed (see :func:`~ocrheads_lib.experiments.sweep.control_draws`;
    `heads` says which sets, seeds and exclusions)."""
    heads.check_fits(n_layers, n_heads)
    conditions = [Condition(BASELINE, 0)]
    for k in ks:
        if k <= 0:
            continue
        draws = control_draws(n_layers, n_heads, heads.ranked, k, heads.seeds, heads.avoid, heads.layer_matched_to)
        conditions += top_k_conditions(heads.ranked, int(k), draws)
    return conditions


MASKING = Intervention(
    "masking", plan_for=lambda cond: Plan(mask=cond.heads),
    columns_for=lambda cond: dict(head_set=cond.head_set, k=cond.k, seed=cond.seed, n_masked=len(cond.heads),
                                  random_pool=cond.random_pool, heads=format_heads(cond.heads)))


def run_masking(lm: Any, tasks: Mapping[str, Sequence[Any]], heads: SweepHeads, settings: RunSettings, *,
                ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Mask heads under every condition on every task; returns the tidy table (pandas DataFrame).

    tasks: task name -> samples (the whole split is evaluated).
    heads: the ranked head sets (typically "ocr" and "retrieval") and the random controls' seeds (>= 3
    recommended) and exclusions. ks: default :func:`scale_ks` of the model's head count.
    settings: with ``out_dir`` (``results/<model>/``), per-sample predictions are cached under
    ``out_dir/cache/<weights revision>/masking/<task>/`` and the table is written to ``out_dir/masking.csv``
    (atomically).
    Columns: model, task, modality, head_set, k, seed, n_masked, random_pool, heads, n, n_failed, metric,
    then per metric ``<m>, <m>_lo, <m>_hi`` (95 % bootstrap CI over samples).
    """
    n_layers, n_heads = int(lm.n_layers), int(lm.n_heads)
    ks = list(ks) if ks is not None else scale_ks(n_layers * n_heads)
    return run_sweep(lm, tasks, mask_conditions(n_layers, n_heads, heads, ks), MASKING, settings)


def score_curves(table: Any, metric: str | None = None) -> Any:
    """Per (task, head_set, k): the primary metric, with random rows averaged over seeds
    (columns: task, modality, head_set, k, metric, score, lo, hi, n_seeds; lo/hi = CI for single draws,
    min/max of the seed means for random); see :func:`~ocrheads_lib.experiments.sweep.sweep_curves`."""
    return sweep_curves(table, "k", metric)


def plot_masking(table: Any, path: str | Path | None = None, title: str | None = None,
                 metric: str | None = None) -> Any:
    """Score vs k for the head sets (random: mean over seeds, band = min..max over seeds), one panel per task,
    image tasks first. k = 0 is the unmasked baseline, shared by every curve. Returns the matplotlib figure."""
    return sweep_figure(score_curves(table, metric), "k", "k masked heads", baseline="start", title=title,
                        path=path)


def describe_drops(comparison: pd.DataFrame, min_baseline: float = 0.2) -> list[str]:
    """One plain sentence per (task, k) of :func:`~ocrheads_lib.experiments.sweep.compare_to_baseline` (x = "k"):
    how much each head set's masking cost (its drop, baseline - score), and whether it cost more than every
    random draw (the worst draw's drop, baseline - worst). A task whose unmasked score is below `min_baseline`
    has little to lose, and the sentence says the comparison is uninformative instead of reporting drops."""
    lines = []
    controls_run = set(comparison["head_set"])
    for (task, k), at_k in comparison.groupby(["task", "k"], sort=True):
        first = at_k.iloc[0]
        head = f"{task} ({first['modality']}, {first['metric']}) k={k}: baseline {first['baseline']:.2f}"
        if first["baseline"] < min_baseline:
            lines.append(f"{head} -- too low to lose anything; masking cannot be judged on this task")
            continue
        by_set = {row["head_set"]: row for row in at_k.to_dict("records")}
        parts = []
        for name in ("ocr", "retrieval"):
            if name not in by_set:
                continue
            drop = by_set[name]["baseline"] - by_set[name]["score"]   # not -change: 0.0 stays +0.00
            versus = []
            for control, label in CONTROLS.items():
                if control not in by_set:
                    if control in controls_run:   # drawn at other k, but e.g. no layer-matched draw fits here
                        versus.append(f"no {label} draw at this k")
                    continue
                worst_drop = by_set[control]["baseline"] - by_set[control]["worst"]
                relation = "more than" if drop > worst_drop else ("as much as" if drop == worst_drop else "less than")
                versus.append(f"{relation} the worst {label} draw, {worst_drop:+.2f}")
            parts.append(f"{name} heads drop {drop:+.2f}" + (f" ({'; '.join(versus)})" if versus else ""))
        lines.append(f"{head}; " + "; ".join(parts))
    return lines
