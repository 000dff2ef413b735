"""What the shipped masking records show: the accuracy table, the dissociation and the chance-level controls.

The records (:mod:`ocrheads_lib.experiments.shipped`, one per task, condition and evaluation sample) are read once
and turned into

* :func:`accuracy_table` -- per task and condition the headline metric with a seeded bootstrap interval over
  samples; the random and layer-matched controls are summarised over their draws (each sample's score is its
  mean over the draws, so the interval is over samples; ``draw_low`` / ``draw_high`` give the range of the
  draws' own means);
* :func:`dissociation` -- per k, the paired difference of drops OCR minus retrieval on the image task (the paper's
  direction: positive) and on the text task (negative), joined by :func:`ocrheads_lib.nulls.double_dissociation`;
* :func:`control_verdicts` -- per task, k and ranked head set, the set's drop against the drop of as many random
  (and layer-matched random) heads, :func:`ocrheads_lib.nulls.baseline_control_test`.

A sample that failed (no answer, e.g. an input too long) scores 0 here: it was not answered correctly, and every
condition keeps the same samples, which the paired tests need. :func:`findings` bundles the three, and
:func:`verdict_rows` / :func:`headline_sentences` turn them into a chapter's "What this run shows".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocrheads_lib import bootstrap, nulls
from ocrheads_lib.experiments.sweep import BASELINE, CONTROLS, LAYER_MATCHED, RANDOM
from ocrheads_lib.records import REGENERATE, RunIdentity, StaleRecordsError, load, regeneration_command

RANKED = ("ocr", "retrieval")
IMAGE_TASK, TEXT_TASK = "passkey_image", "passkey_text"
SET_NAMES = {"ocr": "OCR", "retrieval": "retrieval", BASELINE: "none (unmasked)", **CONTROLS}
# which head set the paper expects to matter on which task (the control comparisons of the verdict table)
OWN_TASK = {"ocr": IMAGE_TASK, "retrieval": TEXT_TASK}


@dataclass(frozen=True)
class MaskingFindings:
    """Everything a chapter or the scorecard says about one masking records file."""

    identity: RunIdentity
    path: str
    table: pd.DataFrame                       # :func:`accuracy_table`
    dissociation: dict[int, nulls.Verdict]    # k -> double dissociation (its details hold both halves)
    controls: pd.DataFrame                    # :func:`control_verdicts`
    n_boot: int

    @property
    def n(self) -> int:
        """Evaluation samples per task."""
        return int(self.table["n"].min()) if len(self.table) else 0


# --------------------------------------------------------------------------- reading
def read_for_model(path: str | Path, model_id: str, weights: str | None) -> tuple[RunIdentity, list[dict[str, Any]]]:
    """The records of `path` when they were made with this model's weights; otherwise
    :class:`~ocrheads_lib.records.StaleRecordsError` (or FileNotFoundError) naming ``make results``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no shipped records at {path}: run `make results` (or `{REGENERATE} --model "
                                f"{model_id} ... --out {path}`), or set shipped_records to None to run live")
    identity, records = load(path)
    found = str(weights or "unversioned")
    if identity.model_id != model_id or identity.weights != found:
        raise StaleRecordsError(
            f"{path} holds records of {identity.model_id} with weights {identity.weights}, but the loaded model is "
            f"{model_id} with weights {found}: its numbers do not belong to this model. Regenerate them with "
            f"`make results` ({regeneration_command(identity, path)}), or set shipped_records to None to run live")
    return identity, records


def per_sample(records: Sequence[Mapping[str, Any]], metric: str = "accuracy"
               ) -> dict[tuple[str, str, int, int], dict[str, float]]:
    """(task, head_set, k, seed) -> {sample id: metric}; a failed sample scores 0 (see the module note)."""
    out: dict[tuple[str, str, int, int], dict[str, float]] = {}
    for record in records:
        key = (str(record["task"]), str(record["head_set"]), int(record["k"]), int(record["seed"]))
        scores = record.get("scores") or {}
        if record.get("failure") is None and metric not in scores:
            raise ValueError(f"record {record['task']}/{record['condition']}/{record['id']} has no {metric!r} score "
                             f"(it has {sorted(scores)}); pick one of those metrics")
        out.setdefault(key, {})[str(record["id"])] = 0.0 if record.get("failure") is not None else float(scores[metric])
    return out


def _draws(scores: Mapping[tuple[str, str, int, int], dict[str, float]], task: str, head_set: str,
           k: int) -> list[dict[str, float]]:
    return [v for (t, s, kk, _), v in sorted(scores.items()) if (t, s, kk) == (task, head_set, k)]


def mean_over_draws(draws: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per sample, the mean score over several draws of one condition (every draw must cover the same samples)."""
    ids = set(draws[0])
    if any(set(d) != ids for d in draws):
        raise ValueError(f"the {len(draws)} draws cover different samples; every draw of a control must answer the "
                         "same evaluation samples (regenerate the records)")
    return {i: float(np.mean([d[i] for d in draws])) for i in sorted(ids)}


# --------------------------------------------------------------------------- the three results
def accuracy_table(records: Sequence[Mapping[str, Any]], metric: str = "accuracy", n_boot: int = nulls.MIN_BOOT,
                   seed: int = 0) -> pd.DataFrame:
    """One row per (task, head_set, k): n samples, n_draws, n_failed, score (mean; controls: mean over draws),
    low / high (95 % bootstrap interval over samples, `n_boot` seeded draws), draw_low / draw_high (the lowest
    and highest draw's mean; the score itself for a single run)."""
    scores = per_sample(records, metric)
    failed: dict[tuple[str, str, int], int] = {}
    for record in records:
        key = (str(record["task"]), str(record["head_set"]), int(record["k"]))
        failed[key] = failed.get(key, 0) + int(record.get("failure") is not None)
    rows = []
    for task, head_set, k in sorted({key[:3] for key in scores}):
        draws = _draws(scores, task, head_set, k)
        values = np.array(list(mean_over_draws(draws).values()))                       # (n,)
        low, high = bootstrap.mean_interval(values, n_boot=n_boot, seed=seed)
        means = [float(np.mean(list(d.values()))) for d in draws]
        rows.append({"task": task, "head_set": head_set, "k": k, "n": len(values), "n_draws": len(draws),
                     "n_failed": failed[task, head_set, k], "score": float(values.mean()), "low": low, "high": high,
                     "draw_low": min(means), "draw_high": max(means)})
    return pd.DataFrame(rows)


def _baseline(scores: Mapping[tuple[str, str, int, int], dict[str, float]], task: str) -> dict[str, float]:
    found = _draws(scores, task, BASELINE, 0)
    if not found:
        raise ValueError(f"the records have no unmasked baseline for {task}; regenerate them (`make results`)")
    return found[0]


def dissociation(records: Sequence[Mapping[str, Any]], image_task: str = IMAGE_TASK, text_task: str = TEXT_TASK,
                 metric: str = "accuracy", n_boot: int = nulls.MIN_BOOT, seed: int = 0) -> dict[int, nulls.Verdict]:
    """k -> :func:`~ocrheads_lib.nulls.double_dissociation` of the image half (OCR masking costs more than
    retrieval masking on `image_task`) and the text half (less on `text_task`), for every k at which both sets
    were masked on both tasks."""
    scores = per_sample(records, metric)
    ks = sorted({k for (t, s, k, _) in scores if s in RANKED and t in (image_task, text_task)})
    out = {}
    for k in ks:
        halves = []
        for task, direction in ((image_task, "greater"), (text_task, "less")):
            ocr, ret = _draws(scores, task, "ocr", k), _draws(scores, task, "retrieval", k)
            if not ocr or not ret:
                break
            halves.append(nulls.dissociation_test(_baseline(scores, task), ocr[0], ret[0], task, direction,
                                                  n_boot, seed))
        if len(halves) == 2:
            out[k] = nulls.double_dissociation(*halves)
    return out


def control_verdicts(records: Sequence[Mapping[str, Any]], metric: str = "accuracy", n_boot: int = nulls.MIN_BOOT,
                     seed: int = 0) -> pd.DataFrame:
    """One row per (task, k, head set, control): does masking the set cost more than masking as many heads of the
    control (each sample's score averaged over the control's draws)? Columns task, k, head_set, control,
    n_draws, verdict (:class:`~ocrheads_lib.nulls.Verdict`)."""
    scores = per_sample(records, metric)
    rows = []
    for task, head_set, k in sorted({(t, s, k) for (t, s, k, _) in scores if s in RANKED}):
        for control in (RANDOM, LAYER_MATCHED):
            draws = _draws(scores, task, control, k)
            if not draws:
                continue
            test = nulls.baseline_control_test(_baseline(scores, task), _draws(scores, task, head_set, k)[0],
                                      mean_over_draws(draws), task, SET_NAMES[head_set],
                                      f"{CONTROLS[control]} (mean of {len(draws)} draws)", n_boot, seed)
            rows.append({"task": task, "k": k, "head_set": head_set, "control": control, "n_draws": len(draws),
                         "verdict": test})
    return pd.DataFrame(rows, columns=["task", "k", "head_set", "control", "n_draws", "verdict"])


def findings(path: str | Path, model_id: str | None = None, weights: str | None = None, metric: str = "accuracy",
             n_boot: int = nulls.MIN_BOOT, seed: int = 0) -> MaskingFindings:
    """Read a masking records file (checked against `model_id` / `weights` when given, see
    :func:`read_for_model`) and compute its table, dissociation and control verdicts."""
    if model_id is not None:
        identity, records = read_for_model(path, model_id, weights)
    else:
        identity, records = load(path)
    return MaskingFindings(identity, str(path), accuracy_table(records, metric, n_boot, seed),
                           dissociation(records, metric=metric, n_boot=n_boot, seed=seed),
                           control_verdicts(records, metric, n_boot, seed), n_boot)


# --------------------------------------------------------------------------- for the book
def interval_text(v: nulls.Verdict, digits: int = 2) -> str:
    """"0.31 [0.24, 0.38]"."""
    return f"{v.estimate:.{digits}f} [{v.low:.{digits}f}, {v.high:.{digits}f}]"


def shown_table(found: MaskingFindings) -> pd.DataFrame:
    """The accuracy table as the chapter shows it: one row per task, head set and k, score with interval."""
    t = found.table
    draws = [f"{lo:.2f}–{hi:.2f}" if n > 1 else "–" for lo, hi, n in zip(t.draw_low, t.draw_high, t.n_draws)]
    return pd.DataFrame({"task": t.task, "masked": [SET_NAMES.get(s, s) for s in t.head_set], "k": t.k, "n": t.n,
                         "score [95 % interval]": [f"{s:.2f} [{lo:.2f}, {hi:.2f}]" for s, lo, hi in
                                                   zip(t.score, t.low, t.high)],
                         "draws": t.n_draws, "range of the draws": draws, "failed": t.n_failed})


def curves(found: MaskingFindings, modalities: Mapping[str, str], metric: str = "accuracy") -> pd.DataFrame:
    """The table in the shape :func:`ocrheads_lib.plots.sweep_panels` draws (task, modality, head_set, k, metric,
    score, lo, hi): ranked sets and the baseline with their interval, controls as their mean over draws with the
    range of the draws. modalities: task -> "image" | "text"."""
    t = found.table
    single = t.n_draws == 1
    return pd.DataFrame({"task": t.task, "modality": [modalities[x] for x in t.task], "head_set": t.head_set,
                         "k": t.k, "metric": metric, "score": t.score, "lo": np.where(single, t.low, t.draw_low),
                         "hi": np.where(single, t.high, t.draw_high), "n_seeds": t.n_draws})


def verdict_rows(found: MaskingFindings) -> list[dict[str, Any]]:
    """The short verdict table: per k, the double dissociation and its two halves, then each ranked set against
    the layer-matched control on its own task (the controls that rule out depth)."""
    rows = []
    for k, joint in sorted(found.dissociation.items()):
        image, text = (nulls.Verdict(**joint.details[name]) for name in ("image", "text"))
        for label, v in ((f"OCR drop − retrieval drop on `{image.details['task']}` (> 0)", image),
                         (f"OCR drop − retrieval drop on `{text.details['task']}` (< 0)", text),
                         ("double dissociation (smaller margin)", joint)):
            rows.append({"claim": label, "k": k, "n": v.n, "estimate [95 % interval]": interval_text(v),
                         "verdict": v.words()})
    matched = found.controls[found.controls.control == LAYER_MATCHED]
    for row in matched.itertuples(index=False):
        if OWN_TASK.get(row.head_set) != row.task:
            continue
        v = row.verdict
        rows.append({"claim": f"{SET_NAMES[row.head_set]} drop − layer-matched drop on `{row.task}` (> 0)", "k": row.k,
                     "n": v.n, "estimate [95 % interval]": interval_text(v), "verdict": v.words()})
    return rows


def headline_sentences(found: MaskingFindings) -> list[str]:
    """At most three sentences: the baselines, the dissociation at every k, and how the ranked sets compare with
    chance (random and layer-matched draws) on their own tasks."""
    t = found.table
    base = t[t.head_set == BASELINE].set_index("task")
    out = [f"On {found.n} held-out samples per task, the unmasked `{found.identity.model_id}` scores "
           + " and ".join(f"{row.score:.2f} [{row.low:.2f}, {row.high:.2f}] on `{task}`" for task, row in base.iterrows())
           + " (heads chosen on a disjoint selection split)."]
    if found.dissociation:
        first = nulls.Verdict(**found.dissociation[min(found.dissociation)].details["image"])
        out.append(f"Double dissociation (OCR minus retrieval drop, > 0 on `{first.details['task']}` and < 0 on the text "
                   "task): " + "; ".join(f"k = {k} {v.words()}, margin {interval_text(v)}"
                                         for k, v in sorted(found.dissociation.items())) + ".")
    own = [row for row in found.controls.itertuples(index=False) if OWN_TASK.get(row.head_set) == row.task]
    if own:
        missed = [r for r in own if r.verdict.verdict != "holds"]
        out.append(f"Against chance, {len(own) - len(missed)} of {len(own)} comparisons of a ranked set with random "
                   "or layer-matched heads on its own task hold (its drop exceeds the control's)"
                   + ("; not: " + ", ".join(f"{SET_NAMES[r.head_set]} vs {CONTROLS[r.control]} at k = {r.k} "
                                            f"({r.verdict.words()})" for r in missed) + "." if missed else "."))
    return out


def controls_table(found: MaskingFindings) -> pd.DataFrame:
    """Every ranked set against every control, per task and k: both drops, their paired difference with its
    interval, and the verdict in words."""
    rows = []
    for row in found.controls.itertuples(index=False):
        v = row.verdict
        rows.append({"task": row.task, "k": row.k, "masked": SET_NAMES[row.head_set],
                     "control": f"{CONTROLS[row.control]} ({row.n_draws} draws)",
                     "drop of the set": v.details["drop_set"], "drop of the control": v.details["drop_control"],
                     "difference [95 % interval]": interval_text(v), "verdict": v.words()})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ShippedView:
    """What chapter 06 shows from shipped records (every piece computed here, the chapter only displays)."""

    found: MaskingFindings
    setup: pd.DataFrame            # the records: file, identity, head sets, tasks
    table: pd.DataFrame            # :func:`shown_table`
    curves: pd.DataFrame           # :func:`curves` of the headline metric
    charsim_curves: pd.DataFrame   # the same with char_sim
    controls: pd.DataFrame         # :func:`controls_table`
    verdicts: list[dict[str, Any]]
    sentences: list[str]


def shipped_view(path: str | Path, model_id: str, weights: str | None, n_boot: int = nulls.MIN_BOOT,
                 seed: int = 0) -> ShippedView:
    """Chapter 06 from a records file made with this model's weights (else StaleRecordsError naming
    ``make results``)."""
    from ocrheads_lib.experiments.evaluate import modality

    identity, records = read_for_model(path, model_id, weights)
    found = MaskingFindings(identity, str(path), accuracy_table(records, "accuracy", n_boot, seed),
                            dissociation(records, n_boot=n_boot, seed=seed),
                            control_verdicts(records, "accuracy", n_boot, seed), n_boot)
    tasks = sorted(set(found.table.task))
    modalities = {task: modality(identity.splits.samples("evaluation", task, 1)) for task in tasks}
    charsim = MaskingFindings(identity, str(path), accuracy_table(records, "char_sim", n_boot, seed), {},
                              found.controls.iloc[0:0], n_boot)
    largest = {}
    for record in records:
        if record["head_set"] in RANKED and int(record["k"]) >= largest.get(record["head_set"], (0, ""))[0]:
            largest[record["head_set"]] = (int(record["k"]), str(record["heads"]))
    params = identity.params
    setup = pd.DataFrame(
        [{"what": "records", "value": f"{Path(path).name}: {len(records)} records, weights {identity.weights}, "
                                      f"run {identity.key()} (audited when the book is built)"},
         {"what": "splits", "value": f"heads chosen on {params.get('n_select')} selection samples (seeds "
                                     f"{identity.splits.selection.first_seed}+), masking answered on "
                                     f"{params.get('n_eval')} evaluation samples per task (seeds "
                                     f"{identity.splits.evaluation.first_seed}+)"}] +
        [{"what": f"top {k} {SET_NAMES[name]} heads", "value": heads.replace(" ", ", ")}
         for name, (k, heads) in sorted(largest.items())] +
        [{"what": f"task {task}", "value": f"{modalities[task]}, {int(found.table[found.table.task == task].n.min())} "
                                          "samples per condition"} for task in tasks])
    return ShippedView(found, setup, shown_table(found), curves(found, modalities),
                       curves(charsim, modalities, "char_sim"), controls_table(found), verdict_rows(found),
                       headline_sentences(found))
