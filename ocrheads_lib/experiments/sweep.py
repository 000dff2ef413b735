"""The sweep machinery the head experiments share: settings, conditions, random controls, caches, tables,
comparisons, curves, figures.

An intervention experiment (masking, sink redistribution) answers every sample of every task under a list
of :class:`Condition` s and writes one table row per (task, condition):

    settings = RunSettings(model_id="tiny", out_dir="results/tiny", max_new_tokens=12)
    heads = SweepHeads({"ocr": ocr_ranked, "retrieval": retrieval_ranked}, seeds=(0, 1, 2))
    conditions = [Condition(BASELINE, 0), *top_k_conditions(heads.ranked, k, control_draws(...))]
    table = run_sweep(lm, tasks, conditions, Intervention("masking", plan_for, columns_for), settings)
    comparison = compare_to_baseline(table, "k")

* **Settings.** :class:`RunSettings` (model name, results folder, token budget, bootstrap, progress) is
  shared by masking, sink and chain-of-thought; :class:`SweepHeads` (the ranked head sets and the random
  controls' seeds and exclusions) by masking and sink; :class:`Intervention` says what a condition does to
  the model and which columns it adds to the table.
* **Controls.** Next to the named head sets (e.g. "ocr", "retrieval") every k gets random heads (``random``:
  own ``random.Random(seed)``, outside the selected sets) and layer-matched random heads
  (``random_layer_matched``: as many heads per layer as the reference set's top-k), one draw per seed
  (:func:`control_draws`).
* **Caches.** Per-sample predictions of one condition live in
  ``<out_dir>/cache/<weights revision>/<experiment>/<task>/<condition key>__tokens=<budget>.jsonl``
  (:func:`prediction_cache`), so a rerun resumes and predictions of other weights or budgets are never reused.
* **Tables, comparisons, curves, figures.** :func:`run_sweep` gives the tidy table (bootstrap CIs per
  metric), :func:`compare_to_baseline` each head set's change from the unmodified model per x (k or beta),
  :func:`sweep_curves` one score per (task, head set, x), :func:`sweep_figure` the panels the masking and
  sink chapters share.

The baseline condition is ``head_set="none"`` with no heads: the stock model.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ocrheads_lib.experiments.evaluate import (
    PredictionCache,
    condition_key,
    evaluate,
    heads_fingerprint,
    metrics_for,
    modality,
    primary_metric,
    summarize,
    write_csv_atomic,
)
from ocrheads_lib.types import Head

BASELINE = "none"
RANDOM = "random"
LAYER_MATCHED = "random_layer_matched"
CONTROLS = {RANDOM: "random", LAYER_MATCHED: "layer-matched random"}   # head set -> how sentences name it


# ----------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """How an experiment runs and where it writes; shared by masking, sink and chain-of-thought."""

    model_id: str | None = None          # the model's name in the tables (None: ``lm.model_id``)
    out_dir: str | Path | None = None    # results folder for caches and CSV tables (None: in memory, no files)
    max_new_tokens: int = 16             # greedy answer budget per sample (CoT's own budget is separate)
    n_boot: int = 1000                   # bootstrap resamples per confidence interval
    boot_seed: int = 0                   # seed of the bootstrap RNG (same seed, same intervals)
    progress: bool = False               # print one line per evaluated condition
    batch_size: int = 1                  # samples per greedy generate (>1: left-padded batches; answers equal)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "n_boot", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RunSettings.{name} must be an integer >= 1, got {value!r}; "
                                 f"e.g. RunSettings({name}=16)")
        if isinstance(self.boot_seed, bool) or not isinstance(self.boot_seed, int):
            raise ValueError(f"RunSettings.boot_seed must be an integer, got {self.boot_seed!r}")
        if self.model_id is not None and not str(self.model_id).strip():
            raise ValueError("RunSettings.model_id must be a non-empty name or None (None: the model's own id)")

    def name_of(self, lm: Any) -> str:
        """The model name the tables use: `model_id`, else ``lm.model_id``."""
        return self.model_id or str(getattr(lm, "model_id", "model"))


@dataclass(frozen=True)
class SweepHeads:
    """Which heads a sweep changes: the ranked head sets and how the random controls are drawn."""

    ranked: Mapping[str, Sequence[Head]]     # head set name -> heads, best first (e.g. {"ocr": [...]})
    seeds: Sequence[int] = (0, 1, 2)         # one random (and one layer-matched) control draw per seed
    exclude: Sequence[Head] | None = None    # heads random draws avoid (None: every head of every set)
    layer_matched_to: str | None = "ocr"     # set whose top-k layers the layer-matched draws copy (None: no
                                             # such control; skipped when the set is not in `ranked`)

    def __post_init__(self) -> None:
        if not isinstance(self.ranked, Mapping) or not self.ranked:
            raise ValueError(f"SweepHeads.ranked must map head set names to ranked heads, got {self.ranked!r}; "
                             'e.g. SweepHeads({"ocr": [(3, 1), (2, 0)]})')
        reserved = sorted(set(self.ranked) & ({BASELINE} | set(CONTROLS)))
        if reserved:
            raise ValueError(f"head set names {reserved} are reserved for the baseline and the random controls; "
                             "rename the set")
        ranked = {str(name): [_as_head(head, f"SweepHeads.ranked[{name!r}]") for head in heads]
                  for name, heads in self.ranked.items()}
        seeds = list(self.seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"SweepHeads.seeds must be distinct integers, got {self.seeds!r}; e.g. (0, 1, 2)")
        object.__setattr__(self, "ranked", ranked)
        object.__setattr__(self, "seeds", tuple(seeds))
        if self.exclude is not None:
            object.__setattr__(self, "exclude", [_as_head(h, "SweepHeads.exclude") for h in self.exclude])

    @property
    def avoid(self) -> list[Head]:
        """The heads random draws avoid: `exclude`, or every head of every set."""
        return list(self.exclude) if self.exclude is not None else selected_union(self.ranked)

    def check_fits(self, n_layers: int, n_heads: int) -> None:
        """Raise when a head lies outside a model of `n_layers` x `n_heads`."""
        for name, heads in [*self.ranked.items(), ("exclude", self.exclude or [])]:
            bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
            if bad:
                raise ValueError(f"SweepHeads: {name} has heads {bad[:3]} outside the model's {n_layers} layers x "
                                 f"{n_heads} heads; pass the head sets of this model")


def _as_head(head: Any, where: str) -> Head:
    """(layer, head) as two ints, or a clear error naming `where`."""
    try:
        layer, index = head
        return int(layer), int(index)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {head!r} is not a (layer, head) pair of integers") from None


@dataclass(frozen=True)
class Intervention:
    """What a sweep does to the model under each condition, and how its rows are labelled."""

    experiment: str                                       # table name (``<out_dir>/<experiment>.csv``)
    plan_for: Callable[["Condition"], Any]                # condition -> the attention Plan around generation
    columns_for: Callable[["Condition"], dict[str, Any]]  # condition -> its own table columns, in order
    cache_name: str | None = None                         # cache folder (None: `experiment`)

    def __post_init__(self) -> None:
        if not self.experiment or not str(self.experiment).replace("_", "").isalnum():
            raise ValueError(f"Intervention.experiment must be a file-name-safe word, got {self.experiment!r}")


# ----------------------------------------------------------------------------------------------------------
# Conditions
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Condition:
    """One intervention of a sweep: which heads, drawn how, and (sink only) the share of sink mass kept."""

    head_set: str                                          # "ocr", "retrieval", a control name, or BASELINE
    k: int                                                 # top-k of the head set (0 for the baseline)
    seed: int = -1                                         # the random draw's seed; -1 for non-random rows
    heads: list[Head] = field(default_factory=list)        # the heads changed, in rank / draw order
    random_pool: str = ""                                  # the rule random heads were drawn under ("" if not random)
    beta: float | None = None                              # sink redistribution only: share of sink mass kept

    def target(self) -> list[Head] | dict[Head, float]:
        """What the intervention changes: the heads (masking), or head -> beta (sink)."""
        if self.beta is None:
            return list(self.heads)
        return {head: self.beta for head in self.heads}

    @property
    def key(self) -> str:
        """The cache file name of this condition (:func:`condition_key`): head set, k, beta, seed and a
        fingerprint of the changed heads."""
        parts: dict[str, Any] = {"head_set": self.head_set, "k": self.k}
        if self.beta is not None:
            parts["beta"] = self.beta
        parts["seed"] = self.seed
        target = self.target()
        return condition_key(**parts, heads=heads_fingerprint(target) if target else "none")

    def describe(self) -> str:
        """"head_set=ocr k=2 seed=-1" (with beta when set), for progress lines."""
        beta = "" if self.beta is None else f" beta={self.beta}"
        return f"head_set={self.head_set} k={self.k}{beta} seed={self.seed}"


def selected_union(head_sets: Mapping[str, Sequence[Head]]) -> list[Head]:
    """Every head of every set, sorted: what random draws avoid by default."""
    return sorted({(int(l), int(h)) for heads in head_sets.values() for l, h in heads})


def top_k_conditions(head_sets: Mapping[str, Sequence[Head]], k: int,
                     draws: Sequence[tuple[str, int, list[Head], str]], beta: float | None = None) -> list[Condition]:
    """The top-k of every head set, then the control `draws` of :func:`control_draws` (all at one k and beta)."""
    beta = None if beta is None else float(beta)
    out = [Condition(name, int(k), -1, [(int(l), int(h)) for l, h in heads[:k]], "", beta)
           for name, heads in head_sets.items()]
    out += [Condition(head_set, int(k), int(seed), heads, pool_name, beta)
            for head_set, seed, heads, pool_name in draws]
    return out


# ----------------------------------------------------------------------------------------------------------
# Random controls
# ----------------------------------------------------------------------------------------------------------


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
    return _top_k_union(ranked_sets, k), "outside top-k"


def _top_k_union(head_sets: Mapping[str, Sequence[Head]], k: int) -> list[Head]:
    """The top-k heads of every set, pooled and sorted."""
    return sorted({(int(l), int(h)) for heads in head_sets.values() for l, h in list(heads)[:k]})


def control_draws(n_layers: int, n_heads: int, head_sets: Mapping[str, Sequence[Head]], k: int,
                  seeds: Sequence[int], exclude: Sequence[Head],
                  layer_matched_to: str | None = "ocr") -> list[tuple[str, int, list[Head], str]]:
    """The random control heads at one k: (head set, seed, heads, pool rule) per seed, first the ``random``
    draws (outside the selected sets, see :func:`random_pool_for`), then the ``random_layer_matched`` draws
    copying the layers of the top-k of `layer_matched_to` (skipped with a warning when a layer has no room)."""
    avoid, pool_name = random_pool_for(n_layers, n_heads, k, exclude, head_sets)
    draws = [(RANDOM, int(seed), random_heads(n_layers, n_heads, k, avoid, seed=seed), pool_name) for seed in seeds]
    if layer_matched_to in head_sets:
        rules = [("outside selected", exclude), ("outside top-k", _top_k_union(head_sets, k))]
        for seed in seeds:
            try:
                heads, matched_pool = layer_matched_heads(n_layers, n_heads, list(head_sets[layer_matched_to])[:k],
                                                          rules, seed=seed)
            except ValueError as error:   # a layer holds too many reference heads: no such control at this k
                warnings.warn(f"no {LAYER_MATCHED} control at k={k}: {error}", stacklevel=3)
                break
            draws.append((LAYER_MATCHED, int(seed), heads, matched_pool))
    return draws


# ----------------------------------------------------------------------------------------------------------
# Running a sweep
# ----------------------------------------------------------------------------------------------------------


def prediction_cache(out_dir: str | Path | None, revision: str | None, experiment: str, task: str,
                     key: str, max_new_tokens: int) -> PredictionCache:
    """The prediction cache of one condition of one task under one token budget:
    ``out_dir/cache/<revision>/<experiment>/<task>/<key>__tokens=<max_new_tokens>.jsonl``. The path holds the
    whole identity (weights revision, experiment, task, condition, budget), and every record carries its hash,
    so predictions of other weights or settings are never reused. ``out_dir=None`` gives an in-memory cache."""
    identity = dict(revision=revision, experiment=experiment, task=task, condition=key, max_new_tokens=max_new_tokens)
    if out_dir is None:
        return PredictionCache(None, identity)
    folder = Path(out_dir) / "cache" / (revision or "unversioned") / experiment / task
    return PredictionCache(folder / f"{key}__tokens={max_new_tokens}.jsonl", identity)


def run_sweep(lm: Any, tasks: Mapping[str, Sequence[Any]], conditions: Sequence[Condition],
              intervention: Intervention, settings: RunSettings) -> pd.DataFrame:
    """Evaluate every task under every condition; the tidy table of the masking and sink experiments.

    One row per (task, condition): model, task, modality, the intervention's columns, ``metric`` (the task's
    headline metric) and :func:`~ocrheads_lib.experiments.evaluate.summarize`'s n, n_failed and per-metric
    mean and CI. With ``settings.out_dir``, predictions are cached per condition (see :func:`prediction_cache`)
    and the table is written atomically to ``out_dir/<experiment>.csv``.
    """
    model_id = settings.name_of(lm)
    revision = getattr(lm, "revision", None)
    experiment = intervention.experiment
    rows = []
    for task, samples in tasks.items():
        samples = list(samples)
        metrics = metrics_for(samples)
        for cond in conditions:
            cache = prediction_cache(settings.out_dir, revision, intervention.cache_name or experiment, task, cond.key,
                                     settings.max_new_tokens)
            preds = evaluate(lm, samples, intervention.plan_for(cond), metrics=metrics, cache=cache,
                             max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
            row = dict(model=model_id, task=task, modality=modality(samples), **intervention.columns_for(cond),
                       metric=primary_metric(metrics))
            row.update(summarize(preds, metrics, n_boot=settings.n_boot, boot_seed=settings.boot_seed))
            rows.append(row)
            if settings.progress:
                print(f"[{experiment}] {task} {cond.describe()} {row['metric']}={row[row['metric']]:.3f} "
                      f"(n={row['n']}, failed={row['n_failed']})")
    table = pd.DataFrame(rows)
    if settings.out_dir is not None:
        write_csv_atomic(table, Path(settings.out_dir) / f"{experiment}.csv")
    return table


# ----------------------------------------------------------------------------------------------------------
# Curves, baselines, figures
# ----------------------------------------------------------------------------------------------------------


def sweep_curves(table: Any, x: str, metric: str | None = None) -> Any:
    """Per (task, head_set, `x`): the metric (default: each task's headline metric). A single row keeps its
    bootstrap CI as lo/hi; several rows (random draws over seeds) give their mean, with lo/hi = min/max.
    Columns: task, modality, head_set, `x`, metric, score, lo, hi, n_seeds."""
    metric_name = metric
    rows = []
    for (task, head_set, at), group in table.groupby(["task", "head_set", x], sort=True):
        metric = metric_name or group["metric"].iloc[0]
        if len(group) == 1:
            score, lo, hi = group[metric].iloc[0], group[f"{metric}_lo"].iloc[0], group[f"{metric}_hi"].iloc[0]
        else:
            score, lo, hi = group[metric].mean(), group[metric].min(), group[metric].max()
        rows.append({"task": task, "modality": group["modality"].iloc[0], "head_set": head_set,
                     x: at.item() if hasattr(at, "item") else at, "metric": metric, "score": float(score),
                     "lo": float(lo), "hi": float(hi), "n_seeds": len(group)})
    return pd.DataFrame(rows)


def task_baselines(table: Any, metric: str | None = None) -> Iterator[tuple[dict[str, Any], float, Any]]:
    """Per task of a sweep table (sorted; tasks without a baseline row are skipped): (the row start
    ``{task, modality, metric}``, the baseline score, the task's non-baseline rows). `metric` None: each
    task's headline metric."""
    for task, sub in table.groupby("task", sort=True):
        name = metric or sub["metric"].iloc[0]
        base_rows = sub[sub.head_set == BASELINE]
        if base_rows.empty:
            continue
        start = dict(task=task, modality=sub["modality"].iloc[0], metric=name)
        yield start, float(base_rows[name].iloc[0]), sub[sub.head_set != BASELINE]


def compare_to_baseline(table: pd.DataFrame, x: str, metric: str | None = None) -> pd.DataFrame:
    """Each head set's change from the unmodified model, per task and `x` ("k" for masking, "beta" for sink).

    One row per (task, head set, x), sorted so: task, modality, metric, head_set, `x`, baseline (the task's
    baseline score), score (mean over seeds), change (score - baseline: < 0 means the intervention hurt),
    worst / best (the lowest / highest score of any seed; the score itself for a single draw), n_seeds.
    `metric` None: each task's headline metric. Tasks without a baseline row are skipped.
    """
    if x not in table:
        raise ValueError(f"compare_to_baseline: the table has no column {x!r}; use 'k' for masking or 'beta' "
                         f"for sink tables (columns: {list(table.columns)})")
    rows = []
    for start, baseline, changed in task_baselines(table, metric):
        name = start["metric"]
        for (head_set, at), group in changed.groupby(["head_set", x], sort=True):
            score = float(group[name].mean())
            rows.append(dict(start, head_set=head_set, **{x: at.item() if hasattr(at, "item") else at},
                             baseline=baseline, score=score, change=score - baseline,
                             worst=float(group[name].min()), best=float(group[name].max()), n_seeds=len(group)))
    columns = ["task", "modality", "metric", "head_set", x, "baseline", "score", "change", "worst", "best", "n_seeds"]
    return pd.DataFrame(rows, columns=columns)


def sweep_figure(curves: Any, x: str, xlabel: str, baseline: str, title: str | None = None,
                 path: str | Path | None = None) -> Any:
    """Score vs `x` per head set (band = lo..hi), one panel per task, image tasks first; the masking and
    sink plots share this so their panels stay comparable. Returns the matplotlib figure.

    curves: tidy table with columns task, modality, head_set, metric, score, lo, hi and `x`.
    baseline: how the unmodified row (head_set "none") is drawn: "start" = the first point of every curve
    (masking's k = 0), "line" = a dashed horizontal line. path: when given, the figure is saved there.
    """
    if baseline not in ("start", "line"):
        raise ValueError(f"baseline must be 'start' or 'line', got {baseline!r}")
    tasks = sorted(curves["task"].unique(), key=lambda t: (curves[curves.task == t].modality.iloc[0] != "image", t))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    colors = {"ocr": "tab:red", "retrieval": "tab:blue", RANDOM: "tab:gray", LAYER_MATCHED: "tab:olive"}
    for ax, task in zip(axes[0], tasks):
        sub = curves[curves.task == task]
        base = sub[sub.head_set == BASELINE]
        if baseline == "line" and not base.empty:
            ax.axhline(base.score.iloc[0], color="black", ls="--", lw=1, label="baseline")
        for name in [h for h in sub.head_set.unique() if h != BASELINE]:
            line = sub[sub.head_set == name].sort_values(x)
            if baseline == "start" and not base.empty:
                line = pd.concat([base.assign(head_set=name), line], ignore_index=True)
            color = colors.get(name)
            ax.plot(line[x], line.score, marker="o", label=name, color=color)
            ax.fill_between(line[x], line.lo, line.hi, alpha=0.15, color=color)
        ax.set_title(f"{task} ({sub.modality.iloc[0]})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(sub.metric.iloc[0])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
