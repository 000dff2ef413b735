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

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ocrheads_lib.experiments.evaluate import format_heads
from ocrheads_lib.experiments.sweep import (
    BASELINE,
    CONTROLS,
    Condition,
    control_draws,
    run_sweep,
    selected_union,
    sweep_curves,
    sweep_figure,
    task_baselines,
    top_k_conditions,
)
from ocrheads_lib.types import Head

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


def mask_conditions(n_layers: int, n_heads: int, head_sets: Mapping[str, Sequence[Head]], ks: Sequence[int],
                    seeds: Sequence[int], exclude: Sequence[Head] | None = None,
                    layer_matched_to: str | None = "ocr") -> list[Condition]:
    """The list of conditions: baseline, then for each k the top-k of every head set and one random draw per
    seed, plus one layer-matched random draw per seed (see :func:`~ocrheads_lib.experiments.sweep.control_draws`).

    head_sets: name -> heads ranked best first (e.g. {"ocr": [...], "retrieval": [...]}).
    exclude: heads random draws avoid (default: the union of all heads in `head_sets`).
    layer_matched_to: the head set whose top-k layer histogram the ``random_layer_matched`` draws copy
    (skipped when None or not in `head_sets`).
    """
    if exclude is None:
        exclude = selected_union(head_sets)
    conditions = [Condition(BASELINE, 0)]
    for k in ks:
        if k <= 0:
            continue
        draws = control_draws(n_layers, n_heads, head_sets, k, seeds, exclude, layer_matched_to)
        conditions += top_k_conditions(head_sets, int(k), draws)
    return conditions


def run_masking(lm: Any, tasks: Mapping[str, Sequence[Any]], head_sets: Mapping[str, Sequence[Head]], *,
                ks: Sequence[int] | None = None, seeds: Sequence[int] = (0, 1, 2),
                exclude: Sequence[Head] | None = None, model_id: str | None = None,
                out_dir: str | Path | None = None, max_new_tokens: int = 16, n_boot: int = 1000,
                boot_seed: int = 0, progress: bool = False, layer_matched_to: str | None = "ocr") -> Any:
    """Mask heads under every condition on every task; returns the tidy table (pandas DataFrame).

    tasks: task name -> samples (the whole split is evaluated).
    head_sets: name -> ranked heads (best first), typically {"ocr": ..., "retrieval": ...}.
    ks: default :func:`scale_ks` of the model's head count. seeds: random-head draws (>= 3 recommended).
    layer_matched_to: head set whose per-layer counts the ``random_layer_matched`` control copies (None: no
    such control).
    out_dir: ``results/<model>/``; when given, per-sample predictions are cached under
    ``out_dir/cache/<weights revision>/masking/<task>/`` and the table is written to ``out_dir/masking.csv`` (atomically).
    Columns: model, task, modality, head_set, k, seed, n_masked, random_pool, heads, n, n_failed, metric,
    then per metric ``<m>, <m>_lo, <m>_hi`` (95 % bootstrap CI over samples).
    """
    from ocrheads_lib.attention import Plan

    n_layers, n_heads = int(lm.n_layers), int(lm.n_heads)
    ks = list(ks) if ks is not None else scale_ks(n_layers * n_heads)
    conditions = mask_conditions(n_layers, n_heads, head_sets, ks, seeds, exclude, layer_matched_to)
    return run_sweep(
        lm, tasks, conditions, experiment="masking", plan_for=lambda cond: Plan(mask=cond.heads),
        columns_for=lambda cond: dict(head_set=cond.head_set, k=cond.k, seed=cond.seed, n_masked=len(cond.heads),
                                      random_pool=cond.random_pool, heads=format_heads(cond.heads)),
        model_id=model_id, out_dir=out_dir, max_new_tokens=max_new_tokens, n_boot=n_boot, boot_seed=boot_seed,
        progress=progress)


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


def compare_drops(table: Any, metric: str | None = None) -> Any:
    """Per (task, k): baseline, the score after masking each head set and its drop (baseline - score).

    Random head sets: mean over seeds, plus the largest drop of any seed (``random_max_drop``,
    ``random_layer_matched_max_drop``), so a claim "OCR heads matter more than random heads" can be checked
    against the worst random draw, not only the mean.
    Columns: task, modality, metric, k, baseline, <set>_score, <set>_drop for each head set, <control>_max_drop,
    ocr_vs_random (ocr_drop - random_max_drop; > 0 means masking OCR heads hurt more than every random draw),
    ocr_vs_random_layer_matched likewise against the layer-matched draws, and the same for retrieval (when
    those sets exist).
    """
    import pandas as pd

    rows = []
    for start, baseline, changed in task_baselines(table, metric):
        metric = start["metric"]
        for k, at_k in changed.groupby("k", sort=True):
            row: dict[str, Any] = dict(start, k=int(k), baseline=baseline)
            for name, group in at_k.groupby("head_set", sort=True):
                row[f"{name}_score"] = float(group[metric].mean())
                row[f"{name}_drop"] = baseline - float(group[metric].mean())
                if name in CONTROLS:
                    row[f"{name}_max_drop"] = baseline - float(group[metric].min())
            for name in ("ocr", "retrieval"):
                for control in CONTROLS:
                    if f"{name}_drop" in row and f"{control}_max_drop" in row:
                        row[f"{name}_vs_{control}"] = row[f"{name}_drop"] - row[f"{control}_max_drop"]
            rows.append(row)
    return pd.DataFrame(rows)


def describe_drops(drops: Any, min_baseline: float = 0.2) -> list[str]:
    """One plain sentence per (task, k) of :func:`compare_drops`: how much each head set's masking cost, and
    whether it cost more than every random draw. A task whose unmasked score is below `min_baseline` has little
    to lose, and the sentence says the comparison is uninformative instead of reporting drops."""
    lines = []
    for row in drops.to_dict("records"):
        head = f"{row['task']} ({row['modality']}, {row['metric']}) k={row['k']}: baseline {row['baseline']:.2f}"
        if row["baseline"] < min_baseline:
            lines.append(f"{head} -- too low to lose anything; masking cannot be judged on this task")
            continue
        parts = []
        for name in ("ocr", "retrieval"):
            if f"{name}_drop" not in row:
                continue
            versus = []
            for control, label in CONTROLS.items():
                if f"{control}_max_drop" not in row:
                    continue
                if math.isnan(row[f"{control}_max_drop"]):   # e.g. no layer-matched draw fits at this k
                    versus.append(f"no {label} draw at this k")
                    continue
                gap = row[f"{name}_vs_{control}"]
                relation = "more than" if gap > 0 else ("as much as" if gap == 0 else "less than")
                versus.append(f"{relation} the worst {label} draw, {row[f'{control}_max_drop']:+.2f}")
            parts.append(f"{name} heads drop {row[f'{name}_drop']:+.2f}" + (f" ({'; '.join(versus)})" if versus else ""))
        lines.append(f"{head}; " + "; ".join(parts))
    return lines
