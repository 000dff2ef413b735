"""The masking run whose per-sample records ship with the repository (:mod:`ocrheads_lib.records`).

Heads are scored on the *selection* split (OCR heads on pass-key pages, retrieval heads on the same needle as
text) and every masking condition answers the *evaluation* split (:mod:`ocrheads_lib.splits`); the two are
checked disjoint. Conditions are the masking chapter's (:func:`~ocrheads_lib.experiments.masking.mask_conditions`:
baseline, top-k OCR / retrieval heads, random and layer-matched random draws per control seed).

One record per (task, condition, sample)::

    {"task", "condition" (the condition's cache key), "head_set", "k", "seed", "heads" ("l1_h2 l3_h0"),
     "id", "golds", "prediction", "failure", "scores" {metric: value}}

Resumable: head scores and every condition's answers are kept under a work folder (``<out>.parts/``) as they
are produced (the scores as JSON, the answers in :class:`~ocrheads_lib.experiments.evaluate.PredictionCache`
files), so an interrupted ``regenerate`` starts again where it stopped. The audit recomputes a record by
answering its sample under its own ``heads`` one at a time, so it checks the answers (not the head choice,
which the identity pins through the selection split and the weights).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.experiments.evaluate import Prediction, PredictionCache, evaluate, format_heads, metrics_for, \
    score_prediction
from ocrheads_lib.experiments.head_sets import ranking_from_scores
from ocrheads_lib.experiments.masking import mask_conditions
from ocrheads_lib.experiments.sweep import Condition, SweepHeads
from ocrheads_lib.heads import select
from ocrheads_lib.inference import answer
from ocrheads_lib.records import AuditReport, RunIdentity, StaleRecordsError, audit, load, regeneration_command, \
    write_records
from ocrheads_lib.scoring import load_scores, score_ocr, score_retrieval
from ocrheads_lib.splits import Splits, check_tasks_disjoint
from ocrheads_lib.types import Head, parse_head

SELECTION_TASKS = {"ocr": "passkey_image", "retrieval": "passkey_text"}
RULE, THRESHOLD = "readme", 0.1


def identity_for(model_id: str, weights: str, splits: Splits, *, tasks: Sequence[str], n_select: int, n_eval: int,
                 ks: Sequence[int], control_seeds: Sequence[int], max_new_tokens: int) -> RunIdentity:
    """The run identity of a masking records file (batch size is not part of it: answers are the same)."""
    return RunIdentity(model_id, weights, "masking", {
        "tasks": list(tasks), "n_select": int(n_select), "n_eval": int(n_eval), "ks": [int(k) for k in ks],
        "control_seeds": [int(s) for s in control_seeds], "max_new_tokens": int(max_new_tokens)}, splits)


def choose_heads(lm: Any, splits: Splits, n_select: int, work: Path | None = None,
                 progress: bool = False) -> dict[str, list[Head]]:
    """kind -> ranked heads (selected first), scored on the selection split; scores cached in `work`."""
    ranked: dict[str, list[Head]] = {}
    for kind, task in SELECTION_TASKS.items():
        path = None if work is None else work / "heads" / f"{kind}_scores.json"
        if path is not None and path.is_file():
            scores = load_scores(path)
        else:
            samples = splits.samples("selection", task, n_select)
            scorer = score_ocr if kind == "ocr" else score_retrieval
            scores = scorer(lm, samples, dataset=task, seed=splits.selection.first_seed, progress=progress)
            if path is not None:
                scores.save(path)
        ranked[kind] = ranking_from_scores(scores, select(scores, RULE, THRESHOLD), RULE)
    return ranked


def record_of(task: str, condition: Condition, prediction: Prediction) -> dict[str, Any]:
    """The shipped record of one answered (or failed) sample under one condition."""
    return {"task": task, "condition": condition.key, "head_set": condition.head_set, "k": int(condition.k),
            "seed": int(condition.seed), "heads": format_heads(condition.heads), "id": prediction.id,
            "golds": list(prediction.golds), "prediction": prediction.prediction, "failure": prediction.failure,
            "scores": {name: float(value) for name, value in sorted(prediction.scores.items())}}


def regenerate(*, model_id: str, splits: Splits, tasks: Sequence[str], n_select: int, n_eval: int, ks: Sequence[int],
               control_seeds: Sequence[int], max_new_tokens: int, out: str | Path, batch_size: int = 1,
               work: str | Path | None = None, progress: bool = True, lm: Any = None) -> Path:
    """Compute (or resume) every record of the run and write them to `out` (see the module note)."""
    from ocrheads_lib.models import load_model

    lm = lm if lm is not None else load_model(model_id)
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".parts")
    identity = identity_for(model_id, str(lm.revision or "unversioned"), splits, tasks=tasks, n_select=n_select,
                            n_eval=n_eval, ks=ks, control_seeds=control_seeds, max_new_tokens=max_new_tokens)
    work = work / identity.key()                       # parts of another identity are never reused
    evaluation = {task: splits.samples("evaluation", task, n_eval) for task in tasks}
    selection = {task: splits.samples("selection", task, n_select) for task in SELECTION_TASKS.values()}
    check_tasks_disjoint(selection, evaluation)
    ranked = choose_heads(lm, splits, n_select, work, progress)
    conditions = mask_conditions(lm.n_layers, lm.n_heads, SweepHeads(ranked, seeds=tuple(control_seeds)), ks)
    records = []
    bar = tqdm(total=len(tasks) * len(conditions), desc=f"{model_id} masking records", unit="condition",
               disable=not progress)
    for task, samples in evaluation.items():
        metrics = metrics_for(samples)
        for condition in conditions:
            bar.set_postfix_str(f"{task} {condition.describe()}")
            cache = PredictionCache(work / task / f"{condition.key}.jsonl",     # keyed as every cache is
                                    {"run": identity.key(), "task": task, "condition": condition.key,
                                     "max_new_tokens": max_new_tokens})
            preds = evaluate(lm, samples, Plan(mask=condition.heads), metrics=metrics, cache=cache,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
            records += [record_of(task, condition, p) for p in preds]
            bar.update(1)
    bar.close()
    return write_records(out, identity, records)


def recompute_fn(lm: Any, identity: RunIdentity) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """record -> the same record recomputed: its sample (rebuilt from the evaluation split) answered one at a time
    under its own heads masked."""
    params = identity.params
    samples: dict[str, dict[str, Any]] = {}

    def sample_of(task: str, sample_id: str) -> Any:
        if task not in samples:
            built = identity.splits.samples("evaluation", task, int(params["n_eval"]))
            samples[task] = {str(s.id): s for s in built}
        return samples[task][sample_id]

    def recompute(record: Mapping[str, Any]) -> dict[str, Any]:
        sample = sample_of(str(record["task"]), str(record["id"]))
        return recompute_prediction(lm, sample, record, int(params["max_new_tokens"]))

    return recompute


def recompute_prediction(lm: Any, sample: Any, record: Mapping[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """A prediction record (:func:`record_of`) recomputed: `sample` answered once, greedily, under the record's own
    ``heads`` masked."""
    heads = [parse_head(key) for key in str(record["heads"]).split()]
    golds = [str(g) for g in sample.golds]
    metrics = metrics_for([sample])
    try:
        with apply(lm, Plan(mask=heads)):
            text = answer(lm, sample, max_new_tokens=max_new_tokens)
        prediction = Prediction(str(sample.id), text, golds, score_prediction(text, golds, metrics))
    except (ValueError, RuntimeError) as error:
        prediction = Prediction(str(sample.id), None, golds, failure=f"{type(error).__name__}: {error}")
    condition = Condition(str(record["head_set"]), int(record["k"]), int(record["seed"]), heads)
    return record_of(str(record["task"]), condition, prediction)


def audit_file(path: str | Path, identity: RunIdentity | None = None,
               records: Sequence[Mapping[str, Any]] | None = None, *, fraction: float = 0.01, seed: int = 0,
               lm: Any = None) -> AuditReport:
    """Audit a masking records file: the model must still have the weights the records were made with (else
    :class:`~ocrheads_lib.records.StaleRecordsError`), and a seeded subset must recompute byte for byte."""
    from ocrheads_lib.models import load_model

    if identity is None or records is None:
        identity, records = load(path)
    lm = lm if lm is not None else load_model(identity.model_id)
    weights = str(lm.revision or "unversioned")
    if weights != identity.weights:
        raise StaleRecordsError(f"{path} was made with weights {identity.weights} of {identity.model_id}, which now "
                                f"has weights {weights}. Regenerate: {regeneration_command(identity, path)}")
    return audit(records, recompute_fn(lm, identity), fraction, seed, regeneration_command(identity, path))
