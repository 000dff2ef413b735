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
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ocrheads_lib.experiments.evaluate import (
    Head,
    PredictionCache,
    condition_key,
    format_heads,
    heads_fingerprint,
    run_sweep,
    sweep_curves,
    sweep_figure,
)

DEFAULT_KS = (2, 5, 10, 20)
MAX_MASK_FRACTION = 0.25
RANDOM = "random"
LAYER_MATCHED = "random_layer_matched"
CONTROLS = {RANDOM: "random", LAYER_MATCHED: "layer-matched random"}   # head set -> how sentences name it
BASELINE = "none"
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


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    """Every (layer, head), layer-major."""
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def random_heads(n_layers: int, n_heads: int, k: int, exclude: Sequence[Head] = (), seed: int = 0) -> list[Head]:
    """k distinct heads drawn uniformly from the heads not in `exclude`, with ``random.Random(seed)``.

    Same (arguments, seed) -> same heads. The pool is enumerated layer-major before drawing, so the draw
    does not depend on the order of `exclude`. Returned in draw order.
    """
    excluded = {(int(l), int(h)) for l, h in exclude}
    pool = [head for head in all_heads(n_layers, n_heads) if head not in excluded]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random heads: only {len(pool)} of {n_layers * n_heads} heads lie outside "
                         f"the excluded set of {len(excluded)}; lower k or exclude fewer heads")
    return random.Random(seed).sample(pool, k)


def layer_matched_heads(n_layers: int, n_heads: int, reference: Sequence[Head],
                        avoid_rules: Sequence[tuple[str, Sequence[Head]]], seed: int = 0) -> tuple[list[Head], str]:
    """Random heads with the layer histogram of `reference`: as many heads from each layer as it has there.

    avoid_rules: (name, heads to avoid) from the strictest to the loosest; each layer uses the first rule that
    leaves enough heads in that layer, and the returned pool name is the loosest rule any layer needed.
    The heads of `reference` itself are always avoided. Draws with ``random.Random(seed)``, layer by layer in
    ascending order, from each layer's pool in head order, so the same arguments give the same heads.
    """
    reference = [(int(l), int(h)) for l, h in reference]
    per_layer: dict[int, int] = {}
    for layer, _ in reference:
        if not 0 <= layer < n_layers:
            raise ValueError(f"reference head in layer {layer}, but the model has layers 0..{n_layers - 1}")
        per_layer[layer] = per_layer.get(layer, 0) + 1
    rules = [(name, {(int(l), int(h)) for l, h in heads} | set(reference)) for name, heads in avoid_rules]
    rules.append(("outside reference", set(reference)))
    rng = random.Random(seed)
    drawn: list[Head] = []
    loosest = 0
    for layer in sorted(per_layer):
        need = per_layer[layer]
        for index, (_, avoid) in enumerate(rules):
            pool = [(layer, head) for head in range(n_heads) if (layer, head) not in avoid]
            if len(pool) >= need:
                drawn += rng.sample(pool, need)
                loosest = max(loosest, index)
                break
        else:
            raise ValueError(f"cannot draw {need} layer-matched heads from layer {layer}: it has {n_heads} heads, "
                             f"{need} of them in the reference set; lower k")
    return drawn, "layer-matched " + rules[loosest][0]


def random_pool_for(n_layers: int, n_heads: int, k: int, exclude: Sequence[Head],
                    ranked_sets: Mapping[str, Sequence[Head]]) -> tuple[list[Head], str]:
    """The heads random draws must avoid at this k, and the name of the rule used.

    "outside selected": outside `exclude` (the selected OCR ∪ retrieval sets) when at least k heads remain;
    else "outside top-k": outside the top-k heads of every ranked set.
    """
    total = n_layers * n_heads
    excluded = {(int(l), int(h)) for l, h in exclude}
    if total - len(excluded) >= k:
        return sorted(excluded), "outside selected"
    top = {(int(l), int(h)) for heads in ranked_sets.values() for l, h in list(heads)[:k]}
    return sorted(top), "outside top-k"


def control_draws(n_layers: int, n_heads: int, head_sets: Mapping[str, Sequence[Head]], k: int,
                  seeds: Sequence[int], exclude: Sequence[Head],
                  layer_matched_to: str | None = "ocr") -> list[tuple[str, int, list[Head], str]]:
    """The random control heads at one k: (head set, seed, heads, pool rule) per seed, first the ``random``
    draws (outside the selected sets, see :func:`random_pool_for`), then the ``random_layer_matched`` draws
    copying the layers of the top-k of `layer_matched_to` (skipped with a warning when a layer has no room)."""
    avoid, pool_name = random_pool_for(n_layers, n_heads, k, exclude, head_sets)
    draws = [(RANDOM, int(seed), random_heads(n_layers, n_heads, k, avoid, seed=seed), pool_name) for seed in seeds]
    if layer_matched_to in head_sets:
        top_k = {(int(l), int(h)) for heads in head_sets.values() for l, h in list(heads)[:k]}
        rules = [("outside selected", exclude), ("outside top-k", sorted(top_k))]
        for seed in seeds:
            try:
                heads, matched_pool = layer_matched_heads(n_layers, n_heads, list(head_sets[layer_matched_to])[:k],
                                                          rules, seed=seed)
            except ValueError as error:   # a layer holds too many reference heads: no such control at this k
                warnings.warn(f"no {LAYER_MATCHED} control at k={k}: {error}", stacklevel=3)
                break
            draws.append((LAYER_MATCHED, int(seed), heads, matched_pool))
    return draws


def mask_conditions(n_layers: int, n_heads: int, head_sets: Mapping[str, Sequence[Head]], ks: Sequence[int],
                    seeds: Sequence[int], exclude: Sequence[Head] | None = None,
                    layer_matched_to: str | None = "ocr") -> list[dict[str, Any]]:
    """The list of conditions: baseline, then for each k the top-k of every head set and one random draw per
    seed, plus one layer-matched random draw per seed (see :func:`layer_matched_heads`).

    head_sets: name -> heads ranked best first (e.g. {"ocr": [...], "retrieval": [...]}).
    exclude: heads random draws avoid (default: the union of all heads in `head_sets`).
    layer_matched_to: the head set whose top-k layer histogram the ``random_layer_matched`` draws copy
    (skipped when None or not in `head_sets`).
    Each condition: {"head_set", "k", "seed", "heads", "random_pool"} (seed -1 for non-random rows).
    """
    if exclude is None:
        exclude = sorted({(int(l), int(h)) for heads in head_sets.values() for l, h in heads})
    conditions: list[dict[str, Any]] = [dict(head_set=BASELINE, k=0, seed=-1, heads=[], random_pool="")]
    for k in ks:
        if k <= 0:
            continue
        for name, heads in head_sets.items():
            conditions.append(dict(head_set=name, k=int(k), seed=-1, heads=[(int(l), int(h)) for l, h in heads[:k]],
                                   random_pool=""))
        for head_set, seed, heads, pool_name in control_draws(n_layers, n_heads, head_sets, k, seeds, exclude,
                                                              layer_matched_to):
            conditions.append(dict(head_set=head_set, k=int(k), seed=int(seed), heads=heads, random_pool=pool_name))
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
    revision = getattr(lm, "revision", None)
    return run_sweep(
        lm, tasks, conditions, experiment="masking", plan_for=lambda cond: Plan(mask=cond["heads"]),
        cache_for=lambda task, cond: _cache(out_dir, "masking", task, cond["head_set"], cond["k"], cond["seed"],
                                            cond["heads"], revision=revision),
        columns_for=lambda cond: dict(head_set=cond["head_set"], k=cond["k"], seed=cond["seed"],
                                      n_masked=len(cond["heads"]), random_pool=cond["random_pool"],
                                      heads=format_heads(cond["heads"])),
        model_id=model_id or str(getattr(lm, "model_id", "model")),
        out_csv=Path(out_dir) / "masking.csv" if out_dir is not None else None,
        max_new_tokens=max_new_tokens, n_boot=n_boot, boot_seed=boot_seed, progress=progress)


def _cache(out_dir: str | Path | None, experiment: str, task: str, *parts: Any,
           revision: str | None = None) -> PredictionCache:
    """The prediction cache of one condition; its folder names the weights revision, so predictions of
    other weights under the same model id are never reused."""
    if out_dir is None:
        return PredictionCache(None)
    *named, heads = parts
    names = ("head_set", "k", "seed") if experiment == "masking" else ("head_set", "k", "beta", "seed")
    key = condition_key(**dict(zip(names, named)), heads=heads_fingerprint(heads) if heads else "none")
    return PredictionCache(Path(out_dir) / "cache" / (revision or "unversioned") / experiment / task / f"{key}.jsonl")


def score_curves(table: Any, metric: str | None = None) -> Any:
    """Per (task, head_set, k): the primary metric, with random rows averaged over seeds
    (columns: task, modality, head_set, k, metric, score, lo, hi, n_seeds; lo/hi = CI for single draws,
    min/max of the seed means for random); see :func:`~ocrheads_lib.experiments.evaluate.sweep_curves`."""
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

    metric_name = metric  # None: each task's headline metric
    rows = []
    for task, sub in table.groupby("task", sort=True):
        metric = metric_name or sub["metric"].iloc[0]
        base_rows = sub[sub.head_set == BASELINE]
        if base_rows.empty:
            continue
        baseline = float(base_rows[metric].iloc[0])
        for k, at_k in sub[sub.head_set != BASELINE].groupby("k", sort=True):
            row: dict[str, Any] = dict(task=task, modality=sub["modality"].iloc[0], metric=metric, k=int(k),
                                       baseline=baseline)
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
