"""Answer metrics: ANLS, exact match, token F1, pass-key accuracy, the paper's match score, and
bootstrap aggregates.

* ``anls(prediction, golds, tau=0.5)`` — Average Normalized Levenshtein Similarity for one question
  (Biten et al. 2019, the DocVQA standard): both strings lower-cased, stripped of surrounding
  whitespace and with inner whitespace runs collapsed to one space (as the Robust Reading
  Competition's scoring script does); NL = edit distance / max(len(pred), len(gold));
  score = 1 - NL if NL < tau else 0; the max over golds. Exactly at the threshold (NL == tau) scores 0.
  (Some re-implementations keep similarity >= 0.5, i.e. NL <= tau; that differs only at NL == tau.)
* ``exact_match`` / ``f1`` — SQuAD normalisation (lower-case, drop punctuation, drop the articles
  a/an/the, collapse whitespace); F1 over normalised tokens with multiset overlap; max over golds.
  (The paper additionally passes strings through ftfy; we do not depend on it.)
* ``passkey_accuracy(prediction, gold)`` — 1.0 if str(gold) is a substring of the prediction.
* Inputs: a prediction must be a ``str`` (``""`` for an empty answer); a gold a ``str`` or an ``int``
  (pass keys). ``None`` or any other type raises ``TypeError`` naming the argument: a missing prediction
  is a failure to record, not an answer to score (``str(None) == "none"`` would otherwise match the gold
  "None", and "on" would contain it). Edit distances come from rapidfuzz (C++, linear memory): two
  20,000-character strings take milliseconds (``benchmarks/anls_speed.py``).
* ``match_score(gold_ids, pred_ids)`` — longest common contiguous run of ids / len(gold_ids)
  (0.0 for an empty gold), the per-example multiplier of the paper's OCR score.
* ``char_similarity(prediction, gold)`` — 1 - Levenshtein / max(len) after lower-casing and collapsing
  whitespace: a graded score that still moves when a weak model reads a key partly right.
* ``METRICS`` / ``metric(name)`` — the per-sample metrics by name (``accuracy``, ``em``, ``f1``, ``anls``,
  ``char_sim``), each ``f(prediction, golds) -> float`` taking the max over the gold answers; the one
  dispatch the experiments and :func:`score_all` use.
* ``aggregate(values, n_boot, seed)`` — mean with a seeded percentile-bootstrap CI
  (:func:`ocrheads_lib.bootstrap.mean_interval`).
* ``wilson_interval(successes, n)`` — the Wilson score interval of a proportion (closed form, no
  resampling; sensible at 0 % and 100 %, where a bootstrap interval collapses to a point).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from rapidfuzz.distance import Levenshtein

from ocrheads_lib import bootstrap

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _prediction(value: object, function: str) -> str:
    """The prediction as a string, or a TypeError naming the function and what was passed."""
    if isinstance(value, str):
        return value
    raise TypeError(f"{function}: the prediction must be a str ('' for an empty answer), got "
                    f"{type(value).__name__} {value!r}; record a missing prediction as a failure instead of scoring it")


def _gold(value: object, function: str) -> str:
    """A gold answer as a string (ints allowed: pass keys), or a TypeError."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{function}: a gold answer must be a str (or an int pass key), got {type(value).__name__} "
                    f"{value!r}")


def _as_golds(golds: str | Sequence[str], function: str = "metric") -> list[str]:
    if isinstance(golds, (str, int)) and not isinstance(golds, bool):
        return [_gold(golds, function)]
    if golds is None or not isinstance(golds, Iterable):
        raise TypeError(f"{function}: golds must be a str or a list of str, got {type(golds).__name__} {golds!r}")
    golds = [_gold(g, function) for g in golds]
    if not golds:
        raise ValueError("golds is empty: give at least one gold answer")
    return golds


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, all cost 1), by rapidfuzz."""
    return int(Levenshtein.distance(_prediction(a, "levenshtein"), _prediction(b, "levenshtein")))


def anls_single(prediction: str, gold: str, tau: float = 0.5) -> float:
    prediction, gold = _prediction(prediction, "anls"), _gold(gold, "anls")
    p, g = " ".join(prediction.lower().split()), " ".join(gold.lower().split())
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0                     # both empty: identical
    nl = levenshtein(p, g) / longest
    return 1.0 - nl if nl < tau else 0.0


def anls(prediction: str, golds: str | Sequence[str], tau: float = 0.5) -> float:
    """ANLS of one prediction: max over golds of (1 - NL if NL < tau else 0)."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    prediction = _prediction(prediction, "anls")
    return max(anls_single(prediction, g, tau) for g in _as_golds(golds, "anls"))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, remove punctuation, remove articles, collapse whitespace."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    p = normalize_answer(_prediction(prediction, "exact_match"))
    return max(float(p == normalize_answer(g)) for g in _as_golds(golds, "exact_match"))


def f1_single(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
    prediction = _prediction(prediction, "f1")
    return max(f1_single(prediction, g) for g in _as_golds(golds, "f1"))


def passkey_accuracy(prediction: str, gold: str | int) -> float:
    """1.0 if the gold key (as a string) occurs in the prediction, else 0.0 (the paper's accuracy)."""
    gold = _gold(gold, "passkey_accuracy")
    if not gold:
        raise ValueError("passkey_accuracy: empty gold")
    return float(gold in _prediction(prediction, "passkey_accuracy"))


def char_similarity(prediction: str, gold: str) -> float:
    """1 - Levenshtein(pred, gold) / max(len(pred), len(gold)) after lower-casing and collapsing whitespace;
    1.0 when both are empty."""
    p = " ".join(_prediction(prediction, "char_similarity").lower().split())
    g = " ".join(_gold(gold, "char_similarity").lower().split())
    longest = max(len(p), len(g))
    return 1.0 if longest == 0 else 1.0 - levenshtein(p, g) / longest


Metric = Callable[[str, Sequence[str]], float]

# name -> f(prediction, golds): one sample's value, the max over its gold answers
METRICS: dict[str, Metric] = {
    "accuracy": lambda p, golds: float(max(passkey_accuracy(p, g) for g in _as_golds(golds, "passkey_accuracy"))),
    "em": lambda p, golds: float(exact_match(p, golds)),
    "f1": lambda p, golds: float(f1(p, golds)),
    "anls": lambda p, golds: float(anls(p, golds)),
    "char_sim": lambda p, golds: max(char_similarity(p, g) for g in _as_golds(golds, "char_similarity")),
}


def metric(name: str) -> Metric:
    """The per-sample metric called `name` (see :data:`METRICS`)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(sorted(METRICS))}")
    return METRICS[name]


def match_score(gold_ids: Sequence[int], pred_ids: Sequence[int]) -> float:
    """Longest common contiguous run of ids between gold and prediction, divided by len(gold_ids)."""
    gold, pred = list(gold_ids), list(pred_ids)
    if not gold:
        return 0.0
    best = 0
    previous = [0] * (len(pred) + 1)
    for i in range(1, len(gold) + 1):
        current = [0] * (len(pred) + 1)
        for j in range(1, len(pred) + 1):
            if gold[i - 1] == pred[j - 1]:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best = current[j]
        previous = current
    return best / len(gold)


# ------------------------------------------------------------------------------------------ aggregates
@dataclass
class Aggregate:
    mean: float
    lo: float             # bootstrap percentile CI (nan when n == 0)
    hi: float
    n: int
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def aggregate(values: Iterable[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Aggregate:
    """Mean of `values` with a seeded percentile bootstrap CI (n_boot resamples, the project's bootstrap)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        nan = float("nan")
        return Aggregate(nan, nan, nan, 0, level)
    mean = sum(vals) / n
    if n == 1 or n_boot <= 0:
        return Aggregate(mean, mean, mean, n, level)
    lo, hi = bootstrap.mean_interval(vals, n_boot=n_boot, seed=seed, alpha=1.0 - level)
    return Aggregate(mean, lo, hi, n, level)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (default 95 %) of the proportion successes / n."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def score_all(predictions: Sequence[str], golds: Sequence[Sequence[str]], metrics: Sequence[str] = ("anls", "em", "f1"),
              n_boot: int = 1000, seed: int = 0) -> dict[str, Aggregate]:
    """Per-metric aggregates over a list of predictions and their gold lists (metrics by name, :data:`METRICS`)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold lists")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}")
    return {m: aggregate([metric(m)(p, g) for p, g in zip(predictions, golds)], n_boot, seed) for m in metrics}
