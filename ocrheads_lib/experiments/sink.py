"""Sink redistribution: move part of a head's attention on the sink key to the other keys, and measure.

PAPER.md §5.4: in the top-2 OCR heads, for every query row, the sink key keeps beta * a_sink and the other
visible keys share (1 - beta) * a_sink in proportion to their weights. The paper's Qwen code ignored beta
(hard-coded 0.4), had no causal mask in the recomputed prefill, and ran no baseline. Here the mechanism is
:func:`ocrheads_lib.attention.apply` with ``Plan(sink={head: beta}, sink_key=...)`` (exact causal semantics;
beta = 1 is the unmodified model), swept over beta, in the top-k OCR heads vs the top-k retrieval heads vs
k random heads (own RNG, outside the selected sets) vs k random heads from the OCR heads' layers, with the
baseline in the same run.

Table: one row per (model, task, head_set, k, beta, seed); the baseline row has head_set="none", k=0 and
beta=1.0. Written atomically to ``results/<model>/sink.csv``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ocrheads_lib import attention
from ocrheads_lib.experiments.evaluate import format_heads
from ocrheads_lib.experiments.sweep import (
    BASELINE,
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
from ocrheads_lib.experiments.tasks import build_tasks
from ocrheads_lib.heads import ranked, select
from ocrheads_lib.inference import sample_inputs
from ocrheads_lib.paths import model_slug
from ocrheads_lib.scoring.runs import get_scores, load_scoring_model
from ocrheads_lib.scoring.runs import scoring_samples as make_scoring_samples
from ocrheads_lib.types import Head

DEFAULT_BETAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def sink_conditions(n_layers: int, n_heads: int, heads: SweepHeads, k: int,
                    betas: Sequence[float]) -> list[Condition]:
    """Baseline, then for every beta: top-k of each head set and the random controls of k heads per seed
    (``random`` and ``random_layer_matched``, see :func:`ocrheads_lib.experiments.sweep.control_draws`;
    the same draw for every beta, so the beta curve of one seed is one set of heads)."""
    heads.check_fits(n_layers, n_heads)
    draws = control_draws(n_layers, n_heads, heads.ranked, k, heads.seeds, heads.avoid, heads.layer_matched_to)
    conditions = [Condition(BASELINE, 0, beta=1.0)]
    for beta in betas:
        conditions += top_k_conditions(heads.ranked, int(k), draws, beta=beta)
    return conditions


def sink_intervention(sink_key: str | int = "first") -> Intervention:
    """Move sink mass (key `sink_key`) in the condition's heads by its beta; cached under ``sink_<key>``."""
    return Intervention(
        "sink", cache_name=f"sink_{sink_key}",
        plan_for=lambda cond: attention.Plan(sink=cond.target(), sink_key=sink_key),
        columns_for=lambda cond: dict(head_set=cond.head_set, k=cond.k, beta=cond.beta, seed=cond.seed,
                                      sink_key=str(sink_key), n_heads_changed=len(cond.target()),
                                      random_pool=cond.random_pool, heads=format_heads(cond.heads)))


def run_sink(lm: Any, tasks: Mapping[str, Sequence[Any]], heads: SweepHeads, settings: RunSettings, *, k: int = 2,
             betas: Sequence[float] = DEFAULT_BETAS, sink_key: str | int = "first") -> pd.DataFrame:
    """Sweep beta in the top-k heads of each head set and in k random heads; returns the tidy table.

    sink_key: "first" (the first visible key, the paper's choice), "max" (each row's most attended key) or
    an absolute key position. `heads` and `settings` as for :func:`ocrheads_lib.experiments.masking.run_masking`.
    Columns: model, task, modality, head_set, k, beta, seed, sink_key, n_heads_changed, random_pool, heads, n,
    n_failed, metric, then ``<m>, <m>_lo, <m>_hi`` per metric. Table in ``out_dir/sink.csv``.
    """
    n_layers, n_heads = int(lm.n_layers), int(lm.n_heads)
    conditions = sink_conditions(n_layers, n_heads, heads, k, betas)
    return run_sweep(lm, tasks, conditions, sink_intervention(sink_key), settings)


def sink_curves(table: Any, metric: str | None = None) -> Any:
    """Per (task, head_set, beta): primary metric; random rows averaged over seeds (lo/hi = min/max of seeds);
    see :func:`~ocrheads_lib.experiments.sweep.sweep_curves`."""
    return sweep_curves(table, "beta", metric)


def plot_sink(table: Any, path: str | Path | None = None, title: str | None = None,
              metric: str | None = None) -> Any:
    """Score vs beta per head set (baseline as a dashed line), one panel per task. Returns the figure."""
    return sweep_figure(sink_curves(table, metric), "beta", "beta (share of sink mass kept)", baseline="line",
                        title=title, path=path)


def first_token_mass(lm: Any, samples: Sequence[Any]) -> Any:
    """Mean attention mass each head puts on the sequence's first token (the default sink key), over the
    query rows that predict each answer token (teacher-forced), averaged over `samples`.

    Returns a DataFrame (rows: layer, columns: head). Sink redistribution with ``sink_key="first"`` can only
    move what is there: a head whose mass here is ~0 is left unchanged by every beta.
    """
    if not samples:
        raise ValueError("first_token_mass: no samples given; pass a non-empty list (e.g. one task's samples)")
    total: torch.Tensor | None = None
    for sample in samples:
        inputs = sample_inputs(lm, sample, answer=sample.answer)
        rows = inputs.answer_positions - 1                        # the rows that emit each answer token
        plan = attention.Plan(record="all", rows=rows, key_sets={"first": [0]})
        with torch.no_grad(), attention.apply(lm, plan) as recorder:
            lm.model(**inputs.tensors)
        per_layer = recorder.mass["first"]
        mass = torch.stack([per_layer[layer][0].float().mean(-1) for layer in sorted(per_layer)])   # (L, H)
        total = mass if total is None else total + mass
    assert total is not None
    table = pd.DataFrame((total / len(samples)).numpy())
    table.index.name, table.columns.name = "layer", "head"
    return table


def run_text_model_sink(model_id: str, results_root: str | Path, *, k: int = 2,
                        betas: Sequence[float] = DEFAULT_BETAS, seeds: Sequence[int] = (0,), n: int = 8,
                        scoring_samples: int = 16, seed: int = 0, sink_key: str | int = "first",
                        device: str = "cpu", max_new_tokens: int = 12,
                        task: str = "niah_text") -> tuple[Any, Any, list[Head]]:
    """The β sweep on a text model (e.g. "smollm2", which has real sinks) in its top-k retrieval heads,
    against random and layer-matched random heads, on `n` samples of a text `task` (default NIAH with word
    answers, which leaves SmolLM2 room to improve; "passkey_text" is the other).

    The retrieval ranking is the Wu score over `scoring_samples` text pass keys (read from
    ``results_root/<model>/retrieval_scores.json`` when chapter 03 wrote the same run, else computed).
    `max_new_tokens` is used for the scoring run too (chapter 03 uses the same, so its file is reused).
    Returns (the sweep table of :func:`run_sink`, the first-token mass (L, H) DataFrame over the same samples,
    the ranked retrieval heads)."""
    lm = load_scoring_model(model_id, seed=seed, device=device)
    scores = get_scores(lm, "retrieval", make_scoring_samples("retrieval", scoring_samples, seed=seed), results_root,
                        seed=seed, variant="wu", model_id=model_id, max_new_tokens=max_new_tokens)
    order = [head for head, _ in ranked(scores)]
    tasks, _ = build_tasks([task], n=n, seed=seed + 200)
    heads = SweepHeads({"retrieval": order}, seeds=seeds, exclude=select(scores), layer_matched_to="retrieval")
    settings = RunSettings(model_id=model_id, out_dir=Path(results_root) / model_slug(model_id),
                           max_new_tokens=max_new_tokens)
    table = run_sink(lm, tasks, heads, settings, k=k, betas=betas, sink_key=sink_key)
    return table, first_token_mass(lm, tasks[task]), order
