"""Run a model over a task under an intervention plan, score the predictions, summarise with CIs.

Every experiment of this package (masking, sink redistribution, chain-of-thought) is "answer every
sample of a task under some :class:`~ocrheads_lib.attention.Plan`, score each answer, average":

    preds = evaluate(lm, samples, Plan(mask=[(3, 1)]), cache=PredictionCache(path))
    summary = summarize(preds, metrics_for(samples))       # {"accuracy": (mean, lo, hi), "n": ..., ...}

* Predictions are greedy (``lm.generate``); the empty plan is the stock model.
* Per-sample records are appended to a JSONL cache as they are produced, so an interrupted run resumes
  where it stopped and ends with the same numbers (a cache file belongs to one condition: its name says
  which, see :func:`condition_key`).
* A sample that cannot be answered (context too long, bad input) becomes a failed record with its reason;
  failures are counted in the summary and never averaged as zeros silently (``n_failed``).
* Metrics by task: pass-key / NIAH samples (``ImageSample``, ``TextSample``) -> accuracy (gold is a
  substring of the prediction) and exact match; documents (``DocSample``) -> ANLS, EM and token F1
  (:mod:`ocrheads_lib.metrics`; max over the gold answers). Every task also gets ``char_sim``, the
  un-thresholded normalised edit similarity 1 - lev(pred, gold) / max(len) (lower-cased, whitespace
  collapsed): a graded score that still moves when a weak model reads a key partly right ("6876" for
  "8726" scores 0.5 where accuracy and ANLS give 0).
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

Head = tuple[int, int]

PASSKEY_METRICS = ("accuracy", "em", "char_sim")
DOC_METRICS = ("anls", "em", "f1", "char_sim")


# ----------------------------------------------------------------------------------------------------------
# Prompts and predictions
# ----------------------------------------------------------------------------------------------------------


def sample_inputs(sample: Any) -> tuple[list, str]:
    """(pages, user text) the model sees for a sample, by kind.

    image: pages + question; text: [] + context/question (``TextSample.prompt``); doc: pages + question
    (image documents) or the formatted context + question (text QA such as NQ / HotpotQA).
    """
    kind = getattr(sample, "kind", None)
    if kind == "image":
        return list(sample.pages), sample.question
    if kind == "text":
        return [], sample.prompt
    if kind == "doc":
        if sample.pages:
            return list(sample.pages), sample.question
        return [], f"{sample.context}\n\n{sample.question}" if sample.context else sample.question
    raise TypeError(f"unknown sample kind {kind!r} for sample {getattr(sample, 'id', '?')}: expected an "
                    "ImageSample, TextSample or DocSample from ocrheads_lib.data")


def _default_answer(lm: Any, sample: Any, max_new_tokens: int) -> str:
    """The project's answer function when it exists (ocrheads_lib.inference.answer), else the adapter's
    chat template + greedy generate + decode."""
    try:
        from ocrheads_lib.inference import answer
    except ImportError:
        answer = None
    if answer is not None:
        return answer(lm, sample, max_new_tokens=max_new_tokens)
    pages, text = sample_inputs(sample)
    return generate_text(lm, pages, text, max_new_tokens)


def generate_text(lm: Any, pages: list, text: str, max_new_tokens: int) -> str:
    """Greedy answer to (pages, text) through the adapter: special tokens removed, whitespace stripped."""
    inputs = lm.build_inputs(pages, text)
    new_ids = lm.generate(inputs, max_new_tokens=max_new_tokens)  # (L,)
    return lm.decode(new_ids)


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
    """Per-sample metric values (each the max over gold answers, as in the metrics module)."""
    from ocrheads_lib import metrics as m

    out: dict[str, float] = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = float(max(m.passkey_accuracy(prediction, gold) for gold in golds))
        elif name == "em":
            out[name] = float(m.exact_match(prediction, list(golds)))
        elif name == "f1":
            out[name] = float(m.f1(prediction, list(golds)))
        elif name == "anls":
            out[name] = float(m.anls(prediction, list(golds)))
        elif name == "char_sim":
            out[name] = max(char_similarity(prediction, gold) for gold in golds)
        else:
            raise ValueError(f"unknown metric {name!r}; use accuracy, em, f1, anls or char_sim")
    return out


def char_similarity(prediction: str, gold: str) -> float:
    """1 - Levenshtein(pred, gold) / max(len(pred), len(gold)) after lower-casing and collapsing whitespace;
    1.0 when both are empty."""
    from ocrheads_lib.metrics import levenshtein

    p, g = " ".join(str(prediction).lower().split()), " ".join(str(gold).lower().split())
    longest = max(len(p), len(g))
    return 1.0 if longest == 0 else 1.0 - levenshtein(p, g) / longest


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


class PredictionCache:
    """Per-sample predictions of one condition in a JSONL file: loaded on open, appended per sample.

    A cache is valid only for the exact samples, model and condition it was written for: the caller names
    the file after the condition (:func:`condition_key`) and `evaluate` checks that cached golds match.
    ``path=None`` gives an in-memory cache.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.records: dict[str, Prediction] = {}
        if self.path is not None and self.path.exists():
            damaged = False
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        record = Prediction.from_json(json.loads(line))
                    except (json.JSONDecodeError, KeyError):
                        damaged = True  # a line cut by an interrupted write: recompute that sample
                        continue
                    self.records[record.id] = record
            if damaged:  # rewrite the good records so later appends start on a clean line
                from ocrheads_lib.paths import atomic_write_text

                atomic_write_text(self.path, "".join(json.dumps(r.to_json(), sort_keys=True) + "\n"
                                                     for r in self.records.values()))

    def get(self, sample_id: str) -> Prediction | None:
        return self.records.get(sample_id)

    def put(self, record: Prediction) -> None:
        self.records[record.id] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
            handle.flush()


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------

AnswerFn = Callable[[Any, Any, int], str]


def evaluate(lm: Any, samples: Sequence[Any], plan: Any = None, *, metrics: Sequence[str] | None = None,
             cache: PredictionCache | None = None, max_new_tokens: int = 16,
             answer_fn: AnswerFn | None = None) -> list[Prediction]:
    """Answer every sample under `plan` (None = stock model) and score the answers.

    answer_fn(lm, sample, max_new_tokens) -> str overrides how a sample is answered (the chain-of-thought
    experiment uses it for its prompts); default: ``ocrheads_lib.inference.answer`` (or the adapter's
    generate when that module is absent). Returns one Prediction per sample, in sample order.
    """
    from ocrheads_lib.attention import Plan, apply

    metrics = tuple(metrics) if metrics is not None else metrics_for(samples)
    answer_fn = answer_fn or _default_answer
    plan = plan if plan is not None else Plan()
    cache = cache if cache is not None else PredictionCache(None)
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
        except NotImplementedError:  # the intervention itself is unsupported for this model: fail loudly
            raise
        except (ValueError, RuntimeError) as error:  # e.g. context longer than the model's window
            record = Prediction(str(sample.id), None, golds, failure=f"{type(error).__name__}: {error}")
        else:
            record = Prediction(str(sample.id), prediction, golds, score_prediction(prediction, golds, metrics))
        cache.put(record)
        out.append(record)
    return out


# ----------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (resampling samples with replacement; own RNG from `seed`).
    NaNs for an empty list; (v, v) for a single value."""
    data = np.asarray(list(values), dtype=float)  # (n,)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, data.size, size=(n_boot, data.size))  # (n_boot, n)
    means = data[index].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
        row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_ci(values, n_boot=n_boot, seed=boot_seed)
    return row


def run_sweep(lm: Any, tasks: Mapping[str, Sequence[Any]], conditions: Sequence[dict[str, Any]], *,
              experiment: str, plan_for: Callable[[dict[str, Any]], Any],
              cache_for: Callable[[str, dict[str, Any]], PredictionCache],
              columns_for: Callable[[dict[str, Any]], dict[str, Any]], model_id: str,
              out_csv: str | os.PathLike | None, max_new_tokens: int, n_boot: int, boot_seed: int,
              progress: bool) -> Any:
    """Evaluate every task under every condition; the tidy table shared by the masking and sink experiments.

    plan_for(condition) -> the Plan applied around generation; cache_for(task, condition) -> its prediction
    cache; columns_for(condition) -> the condition's own columns (in table order, after model/task/modality).
    One row per (task, condition): those columns, ``metric`` (the task's headline metric) and
    :func:`summarize`'s n, n_failed and per-metric mean and CI. Written atomically to `out_csv` when given.
    """
    import pandas as pd

    rows = []
    for task, samples in tasks.items():
        samples = list(samples)
        metrics = metrics_for(samples)
        for cond in conditions:
            preds = evaluate(lm, samples, plan_for(cond), metrics=metrics, cache=cache_for(task, cond),
                             max_new_tokens=max_new_tokens)
            row = dict(model=model_id, task=task, modality=modality(samples), **columns_for(cond),
                       metric=primary_metric(metrics))
            row.update(summarize(preds, metrics, n_boot=n_boot, boot_seed=boot_seed))
            rows.append(row)
            if progress:
                where = " ".join(f"{key}={cond[key]}" for key in ("head_set", "k", "beta", "seed") if key in cond)
                print(f"[{experiment}] {task} {where} {row['metric']}={row[row['metric']]:.3f} "
                      f"(n={row['n']}, failed={row['n_failed']})")
    table = pd.DataFrame(rows)
    if out_csv is not None:
        write_csv_atomic(table, out_csv)
    return table


def sweep_curves(table: Any, x: str, metric: str | None = None) -> Any:
    """Per (task, head_set, `x`): the metric (default: each task's headline metric). A single row keeps its
    bootstrap CI as lo/hi; several rows (random draws over seeds) give their mean, with lo/hi = min/max.
    Columns: task, modality, head_set, `x`, metric, score, lo, hi, n_seeds."""
    import pandas as pd

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


def write_csv_atomic(frame: Any, path: str | os.PathLike) -> Path:
    """pandas DataFrame -> CSV through a temp file + rename."""
    from ocrheads_lib.paths import atomic_write_text

    return atomic_write_text(path, frame.to_csv(index=False))


def modality(samples: Sequence[Any]) -> str:
    """"image" when the model sees pages, else "text"."""
    first = samples[0] if samples else None
    if first is None:
        return "text"
    return "image" if getattr(first, "pages", None) else "text"


def format_heads(heads: Iterable[Head]) -> str:
    """"l1_h2 l3_h0" (the official key format, space separated)."""
    return " ".join(f"l{int(l)}_h{int(h)}" for l, h in heads)


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def sweep_figure(curves: Any, x: str, xlabel: str, baseline: str, title: str | None = None,
                 path: str | os.PathLike | None = None) -> Any:
    """Score vs `x` per head set (band = lo..hi), one panel per task, image tasks first; the masking and
    sink plots share this so their panels stay comparable. Returns the matplotlib figure.

    curves: tidy table with columns task, modality, head_set, metric, score, lo, hi and `x`.
    baseline: how the unmodified row (head_set "none") is drawn: "start" = the first point of every curve
    (masking's k = 0), "line" = a dashed horizontal line. path: when given, the figure is saved there.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from ocrheads_lib.experiments.masking import BASELINE, LAYER_MATCHED, RANDOM

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
