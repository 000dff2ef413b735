"""Run a model over a task under an intervention plan, score the predictions, summarise with CIs.

Every experiment of this package (masking, sink redistribution, chain-of-thought) is "answer every
sample of a task under some :class:`~ocrheads_lib.attention.Plan`, score each answer, average":

    preds = evaluate(lm, samples, Plan(mask=[(3, 1)]), cache=PredictionCache(path))
    summary = summarize(preds, metrics_for(samples))       # {"accuracy": (mean, lo, hi), "n": ..., ...}

* Predictions are greedy (``lm.generate``); the empty plan is the stock model. Sweeps over many conditions
  (masking, sink) are :mod:`ocrheads_lib.experiments.sweep`.
* Per-sample records are appended to a JSONL cache as they are produced, so an interrupted run resumes
  where it stopped and ends with the same numbers (a cache file belongs to one condition: its name says
  which, see :func:`condition_key`).
* A sample that cannot be answered (context too long, bad input) becomes a failed record with its reason;
  failures are counted in the summary and never averaged as zeros silently (``n_failed``).
* Metrics by task: pass-key / NIAH samples (``ImageSample``, ``TextSample``) -> accuracy (gold is a
  substring of the prediction) and exact match; documents (``DocSample``) -> ANLS, EM and token F1
  (by name from :data:`ocrheads_lib.metrics.METRICS`; max over the gold answers). Every task also gets
  ``char_sim`` (:func:`ocrheads_lib.metrics.char_similarity`), the un-thresholded normalised edit similarity:
  a graded score that still moves when a weak model reads a key partly right ("6876" for "8726" scores 0.5
  where accuracy and ANLS give 0).
* Confidence intervals come from the project's one bootstrap (:func:`ocrheads_lib.bootstrap.mean_interval`).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ocrheads_lib import bootstrap
from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.inference import answer, answer_batch, length_hint
from ocrheads_lib.metrics import metric
from ocrheads_lib.models.base import NonFiniteLogitsError
from ocrheads_lib.paths import atomic_write_text
from ocrheads_lib.scoring.batch import is_fault
from ocrheads_lib.types import Head, head_key

PASSKEY_METRICS = ("accuracy", "em", "char_sim")
DOC_METRICS = ("anls", "em", "f1", "char_sim")


# ----------------------------------------------------------------------------------------------------------
# Prompts and predictions
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """One answered (or failed) sample of one condition."""

    id: str
    prediction: str | None
    golds: list[str]
    scores: dict[str, float] = field(default_factory=dict)   # metric -> value for this sample
    failure: str | None = None                               # reason when the sample could not be answered

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "Prediction":
        return cls(id=str(payload["id"]), prediction=payload.get("prediction"), golds=list(payload["golds"]),
                   scores={k: float(v) for k, v in payload.get("scores", {}).items()},
                   failure=payload.get("failure"))


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def metrics_for(samples: Sequence[Any]) -> tuple[str, ...]:
    """The metrics that fit a task: documents -> ANLS/EM/F1, pass keys and needles -> accuracy/EM."""
    kinds = {getattr(s, "kind", None) for s in samples}
    if kinds <= {"doc"} and kinds:
        return DOC_METRICS
    if kinds <= {"image", "text"}:
        return PASSKEY_METRICS
    raise ValueError(f"a task mixes sample kinds {sorted(map(str, kinds))}; evaluate one kind per task")


def primary_metric(metrics: Sequence[str]) -> str:
    """The headline metric of a task: ANLS for documents, accuracy otherwise."""
    return "anls" if "anls" in metrics else "accuracy"


def score_prediction(prediction: str, golds: Sequence[str], metrics: Iterable[str]) -> dict[str, float]:
    """Per-sample metric values by name (:func:`ocrheads_lib.metrics.metric`; each the max over gold answers)."""
    return {name: metric(name)(prediction, list(golds)) for name in metrics}


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


def heads_fingerprint(heads: Iterable[Head] | Mapping[Head, float]) -> str:
    """A short stable hash of a head list (or head -> value map), for cache file names."""
    if isinstance(heads, Mapping):
        payload = sorted((int(l), int(h), round(float(v), 6)) for (l, h), v in heads.items())
    else:
        payload = sorted((int(l), int(h)) for l, h in heads)
    return hashlib.sha1(json.dumps(payload).encode()).hexdigest()[:10]


def condition_key(**parts: Any) -> str:
    """A file-name-safe key for one condition, e.g. ``head_set=ocr__k=5__seed=-1__heads=1a2b...``."""
    text = "__".join(f"{name}={value}" for name, value in parts.items())
    return "".join(c if c.isalnum() or c in "=_-." else "-" for c in text)


class CacheMismatchError(ValueError):
    """A prediction-cache file holds a record made under another identity (condition, budget, weights)."""


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of a cache identity (every setting that can change a prediction)."""
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True, default=str).encode()).hexdigest()[:16]


class PredictionCache:
    """Per-sample predictions of one condition in a JSONL file: loaded on open, appended per sample.

    A cache is valid only for the exact samples, model and condition it was written for. `identity` holds
    every setting that can change a prediction (weights revision, experiment, task, condition, token budget);
    each record carries its hash (``"key"``), and a file holding a record under another key is refused
    (:class:`CacheMismatchError`, naming the file), never reused; `evaluate` also checks that cached golds
    match and that the budget it answers with is the identity's. ``path=None`` gives an in-memory cache.
    """

    def __init__(self, path: str | os.PathLike | None, identity: Mapping[str, Any] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.identity = dict(identity) if identity is not None else None
        self.key = identity_key(identity) if identity is not None else None
        self.records: dict[str, Prediction] = {}
        if self.path is not None and self.path.exists():
            damaged = False
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        payload = json.loads(line)
                        record = Prediction.from_json(payload)
                    except (json.JSONDecodeError, KeyError):
                        damaged = True  # a line cut by an interrupted write: recompute that sample
                        continue
                    if payload.get("key") != self.key:
                        raise CacheMismatchError(
                            f"prediction cache {self.path} holds sample {record.id!r} made under cache key "
                            f"{payload.get('key')!r}, not {self.key!r} ({self.identity}): the file mixes conditions "
                            "or settings; delete it to answer these samples again")
                    if record.id in self.records:
                        raise CacheMismatchError(f"prediction cache {self.path} holds sample {record.id!r} twice; "
                                                 "delete it to answer these samples again")
                    self.records[record.id] = record
            if damaged:  # rewrite the good records so later appends start on a clean line
                atomic_write_text(self.path, "".join(self._line(r) for r in self.records.values()))

    def _line(self, record: Prediction) -> str:
        payload = record.to_json()
        if self.key is not None:
            payload["key"] = self.key
        return json.dumps(payload, sort_keys=True) + "\n"

    def get(self, sample_id: str) -> Prediction | None:
        return self.records.get(sample_id)

    def put(self, record: Prediction) -> None:
        self.records[record.id] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(self._line(record))
            handle.flush()


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------

AnswerFn = Callable[[Any, Any, int], str]


def evaluate(lm: Any, samples: Sequence[Any], plan: Any = None, *, metrics: Sequence[str] | None = None,
             cache: PredictionCache | None = None, max_new_tokens: int = 16,
             answer_fn: AnswerFn | None = None, batch_size: int = 1) -> list[Prediction]:
    """Answer every sample under `plan` (None = stock model) and score the answers.

    answer_fn(lm, sample, max_new_tokens) -> str overrides how a sample is answered (the chain-of-thought
    experiment uses it for its prompts); default: ``ocrheads_lib.inference.answer``. Returns one Prediction
    per sample, in sample order.
    batch_size > 1 (default answer_fn only): the samples missing from the cache are answered that many at a time
    (:func:`ocrheads_lib.inference.answer_batch`); a batch that fails is answered again one sample at a time, so
    failures are recorded per sample exactly as with batch_size=1.
    """
    metrics = tuple(metrics) if metrics is not None else metrics_for(samples)
    plan = plan if plan is not None else Plan()
    cache = cache if cache is not None else PredictionCache(None)
    budget = (cache.identity or {}).get("max_new_tokens", max_new_tokens)
    if budget != max_new_tokens:
        raise CacheMismatchError(f"prediction cache {cache.path} was opened for max_new_tokens={budget}, but "
                                 f"evaluate answers with max_new_tokens={max_new_tokens}; open the cache with the "
                                 "same budget (experiments.sweep.prediction_cache does)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}; 1 answers one sample at a time")
    if batch_size > 1 and answer_fn is None:
        _answer_missing_in_batches(lm, samples, plan, metrics, cache, max_new_tokens, batch_size)
    answer_fn = answer_fn or answer
    out: list[Prediction] = []
    for sample in samples:
        golds = [str(g) for g in sample.golds]
        cached = cache.get(str(sample.id))
        if cached is not None:
            if cached.golds != golds:
                raise ValueError(f"cache {cache.path} holds sample {sample.id} with golds {cached.golds}, but the "
                                 f"task now has {golds}: the cache belongs to other data; delete it or change "
                                 "the results folder")
            if cached.ok and set(metrics) - set(cached.scores):
                cached = Prediction(cached.id, cached.prediction, golds,
                                    score_prediction(cached.prediction or "", golds, metrics))
            out.append(cached)
            continue
        try:
            with apply(lm, plan):
                prediction = answer_fn(lm, sample, max_new_tokens)
        except (NotImplementedError, NonFiniteLogitsError):  # unsupported intervention, or weights gone bad:
            raise                                            # fail loudly, store nothing
        except (ValueError, RuntimeError) as error:  # e.g. context longer than the model's window
            if is_fault(error):   # out of memory or a device error is the machine's: never stored as a result
                raise
            record = Prediction(str(sample.id), None, golds, failure=f"{type(error).__name__}: {error}")
        else:
            record = Prediction(str(sample.id), prediction, golds, score_prediction(prediction, golds, metrics))
        cache.put(record)
        out.append(record)
    return out


def _answer_missing_in_batches(lm: Any, samples: Sequence[Any], plan: Any, metrics: Sequence[str],
                               cache: PredictionCache, max_new_tokens: int, batch_size: int) -> None:
    """Put the batched answers of the samples `cache` lacks into it (a failing batch is left to the caller's
    one-at-a-time loop, which records each sample's own failure)."""
    missing = sorted((s for s in samples if cache.get(str(s.id)) is None), key=length_hint)   # less padding
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        try:
            with apply(lm, plan):
                predictions = answer_batch(lm, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size)
        except (NotImplementedError, NonFiniteLogitsError):
            raise
        except (ValueError, RuntimeError) as error:
            if is_fault(error):
                raise
            continue
        for sample, prediction in zip(chunk, predictions):
            golds = [str(g) for g in sample.golds]
            cache.put(Prediction(str(sample.id), prediction, golds, score_prediction(prediction, golds, metrics)))


# ----------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------


def summarize(predictions: Sequence[Prediction], metrics: Sequence[str], n_boot: int = 1000,
              boot_seed: int = 0) -> dict[str, Any]:
    """Mean and bootstrap CI per metric over the answered samples; counts of answered/failed samples.

    Returns {"n": answered, "n_failed": failed, "<metric>": mean, "<metric>_lo": ..., "<metric>_hi": ...}.
    """
    answered = [p for p in predictions if p.ok]
    row: dict[str, Any] = {"n": len(answered), "n_failed": len(predictions) - len(answered)}
    for name in metrics:
        values = [p.scores[name] for p in answered]
        row[name] = float(np.mean(values)) if values else float("nan")
        row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap.mean_interval(values, n_boot=n_boot, seed=boot_seed)
    return row


def write_csv_atomic(frame: Any, path: str | os.PathLike) -> Path:
    """pandas DataFrame -> CSV through a temp file + rename."""
    return atomic_write_text(path, frame.to_csv(index=False))


def modality(samples: Sequence[Any]) -> str:
    """"image" when the model sees pages, else "text"."""
    first = samples[0] if samples else None
    if first is None:
        return "text"
    return "image" if getattr(first, "pages", None) else "text"


def format_heads(heads: Iterable[Head]) -> str:
    """"l1_h2 l3_h0" (the file format of types.head_key, space separated)."""
    return " ".join(head_key(h) for h in heads)
