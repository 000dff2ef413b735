"""The paper's three findings, as numbers.

1. *Less sparse* — :func:`sparsity_bins`: how many heads fall in each score bin.
2. *Qualitatively distinct* (OCR vs retrieval heads of one model) — :func:`distinctness`: Jaccard of
   the selected sets, Spearman/Kendall between the two per-head means, top-k overlap.
3. *Statically activated* — :func:`static_activation`: activation frequency vs mean score
   (Pearson, Spearman, Kendall) over all heads.

Plus :func:`bootstrap_ci`, the interval of any statistic of a :class:`HeadScores` resampling samples
(:func:`resample`), through the project's one bootstrap (:mod:`ocrheads_lib.bootstrap`). Seeded: same seed,
same interval.

Bins follow the paper's donut figure (PAPER.md §5.1): ``==0``, ``(0, .1]``, ``(.1, .3]``,
``(.3, .5]``, ``(.5, 1]``. :func:`sparsity_bins` bins the RAW mean by default (``filtered=False``):
the paper-code filter zeroes heads that are active in >= 90 % of entries, which is a selection
artefact, not a property of the scores; ``filtered=True`` reproduces the paper's figure exactly.
For the official InternVL2-8B OCR file both give 895/85/32/6/6 (the filter removes nothing there);
for the Qwen2-VL-2B text file raw = 120/158/26/14/18 and filtered = 138/158/26/13/1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from scipy import stats

from ocrheads_lib import bootstrap
from ocrheads_lib.heads import filtered_mean, select, top_k
from ocrheads_lib.scoring.store import Head, HeadScores

BIN_LABELS = ("==0", "(0,0.1]", "(0.1,0.3]", "(0.3,0.5]", "(0.5,1]")
BIN_EDGES = (0.0, 0.1, 0.3, 0.5)          # right-closed upper edges of bins 1..3; bin 4 is > 0.5


class SparsityBins(NamedTuple):
    """Head counts per bin (a tuple, so ``list(bins) == [895, 85, 32, 6, 6]``)."""

    zero: int
    low: int       # (0, 0.1]
    mid: int       # (0.1, 0.3]
    high: int      # (0.3, 0.5]
    top: int       # (0.5, 1]

    @property
    def total(self) -> int:
        return sum(self)

    def shares(self) -> tuple[float, ...]:
        """Percent of heads per bin."""
        return tuple(100.0 * c / self.total for c in self)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(BIN_LABELS, self))


def _values(scores: HeadScores | np.ndarray, filtered: bool) -> np.ndarray:
    if isinstance(scores, HeadScores):
        return filtered_mean(scores) if filtered else scores.mean()
    if filtered:
        raise ValueError("filtered=True needs a HeadScores (the filter reads the per-entry zeros)")
    return np.asarray(scores, dtype=float)


def sparsity_bins(scores: HeadScores | np.ndarray, filtered: bool = False) -> SparsityBins:
    """Counts of heads with mean ==0, (0,.1], (.1,.3], (.3,.5], (.5,1]. ``filtered=True`` bins the
    paper-code filtered mean (PAPER.md §4) as the paper's donut does; default: the raw mean."""
    values = _values(scores, filtered).reshape(-1)
    zero = int(np.sum(values == 0))
    low = int(np.sum((values > 0) & (values <= 0.1)))
    mid = int(np.sum((values > 0.1) & (values <= 0.3)))
    high = int(np.sum((values > 0.3) & (values <= 0.5)))
    top = int(np.sum(values > 0.5))
    return SparsityBins(zero, low, mid, high, top)


# --------------------------------------------------------------------------- distinctness
def jaccard(a: set[Head] | list[Head], b: set[Head] | list[Head], empty: float = float("nan")) -> float:
    """|A ∩ B| / |A ∪ B|; `empty` when both sets are empty (default NaN: nothing to compare)."""
    a, b = set(map(tuple, a)), set(map(tuple, b))
    union = a | b
    return len(a & b) / len(union) if union else empty


def topk_overlap(a: list[Head], b: list[Head], k: int) -> float:
    """|top-k(A) ∩ top-k(B)| / k."""
    return len(set(map(tuple, a[:k])) & set(map(tuple, b[:k]))) / k if k else 1.0


@dataclass
class Distinctness:
    jaccard: float
    n_a: int
    n_b: int
    n_shared: int
    spearman: float
    kendall: float
    topk: dict[int, float]          # k -> overlap of the two top-k lists

    def as_dict(self) -> dict[str, float]:
        out = {"jaccard": self.jaccard, "n_a": self.n_a, "n_b": self.n_b, "n_shared": self.n_shared,
               "spearman": self.spearman, "kendall": self.kendall}
        out.update({f"top{k}_overlap": v for k, v in self.topk.items()})
        return out


def distinctness(a: HeadScores, b: HeadScores, rule: str = "readme", threshold: float = 0.1,
                 ks: tuple[int, ...] = (2, 10, 20)) -> Distinctness:
    """How different two head populations of ONE model are (e.g. OCR vs retrieval heads). Top-k overlaps are
    given for the k in `ks` that do not exceed the model's number of heads."""
    if a.shape != b.shape:
        raise ValueError(f"the two score sets come from different shapes {a.shape} vs {b.shape}; "
                         "compare scores of the same model")
    set_a, set_b = select(a, rule, threshold), select(b, rule, threshold)
    mean_a, mean_b = a.mean().reshape(-1), b.mean().reshape(-1)
    spearman = float(stats.spearmanr(mean_a, mean_b).statistic)
    kendall = float(stats.kendalltau(mean_a, mean_b).statistic)
    n_total = int(np.prod(a.shape))
    topk = {k: topk_overlap(top_k(a, k, rule), top_k(b, k, rule), k) for k in ks if k <= n_total}
    return Distinctness(jaccard=jaccard(set_a, set_b), n_a=len(set_a), n_b=len(set_b),
                        n_shared=len(set(set_a) & set(set_b)), spearman=spearman, kendall=kendall, topk=topk)


# --------------------------------------------------------------------------- static activation
@dataclass
class StaticActivation:
    pearson: float
    spearman: float
    kendall: float
    n_heads: int
    conditional_mean: float          # mean score of a head given it is active, averaged over active heads

    def as_dict(self) -> dict[str, float]:
        return dict(pearson=self.pearson, spearman=self.spearman, kendall=self.kendall, n_heads=self.n_heads,
                    conditional_mean=self.conditional_mean)


def static_activation(scores: HeadScores, threshold: float = 0.0, active_only: bool = False) -> StaticActivation:
    """Correlation over heads between activation frequency (share of entries > threshold) and the raw
    mean score. ``active_only`` restricts to heads with any activation. A correlation near 1 means a
    head's score is mostly *how often* it fires, not *how strongly* ("statically activated")."""
    freq = scores.activation_frequency(threshold).reshape(-1)
    mean = scores.mean().reshape(-1)
    if active_only:
        keep = freq > 0
        freq, mean = freq[keep], mean[keep]
    if len(freq) < 3 or np.all(freq == freq[0]) or np.all(mean == mean[0]):
        nan = float("nan")
        return StaticActivation(nan, nan, nan, len(freq), nan)
    active = freq > 0
    conditional = float(np.mean(mean[active] / freq[active])) if np.any(active) else float("nan")
    return StaticActivation(pearson=float(stats.pearsonr(freq, mean).statistic),
                            spearman=float(stats.spearmanr(freq, mean).statistic),
                            kendall=float(stats.kendalltau(freq, mean).statistic),
                            n_heads=len(freq), conditional_mean=conditional)


# --------------------------------------------------------------------------- bootstrap
def resample(scores: HeadScores, rng: np.random.Generator) -> HeadScores:
    """One bootstrap replicate: samples drawn with replacement. Aligned scores resample whole samples
    (rows of the (N, L, H) matrix, keeping the correlation between heads); ragged official files resample
    each head's list independently (their entries are not aligned, PAPER.md §8.3)."""
    if scores.aligned:
        matrix = scores.matrix()  # (N, L, H)
        idx = bootstrap.resample_indices(rng, matrix.shape[0])
        picked = matrix[idx]  # (N, L, H)
        return scores.with_entries({(l, h): picked[:, l, h] for (l, h) in scores.heads})
    entries = scores.head_entries()
    return scores.with_entries({head: v[bootstrap.resample_indices(rng, len(v))] if len(v) else v
                                for head, v in entries.items()})


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    n_boot: int

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_ci(scores: HeadScores, statistic: Callable[[HeadScores], float], n_boot: int = 200,
                 seed: int = 0, alpha: float = 0.05) -> Interval:
    """Percentile bootstrap interval of ``statistic(scores)`` over samples (seeded: same seed, same interval;
    :func:`ocrheads_lib.bootstrap.interval`). Example: ``bootstrap_ci(s, lambda x: len(select(x)))``."""
    low, high = bootstrap.interval(lambda rng: statistic(resample(scores, rng)), n_boot, seed, alpha)
    return Interval(estimate=float(statistic(scores)), low=low, high=high, n_boot=n_boot)


def summary(scores: HeadScores, threshold: float = 0.1) -> dict[str, object]:
    """One dict with the headline numbers of a score set (for notebooks and reports)."""
    raw = sparsity_bins(scores)
    filt = sparsity_bins(scores, filtered=True)
    readme = select(scores, "readme", threshold)
    paper = select(scores, "paper-code", threshold)
    raw_mean = scores.mean()
    raw_ge = int(np.sum(raw_mean >= threshold))
    dropped = sorted({(l, h) for l, h in zip(*np.nonzero(raw_mean >= threshold))} - set(paper),
                     key=lambda head: -raw_mean[head])
    act = static_activation(scores)
    return {"model": scores.meta.model_id, "kind": scores.meta.kind, "n_heads": raw.total,
            "samples": len(scores.samples) if scores.ragged is None else int(np.median(scores.n_entries())),
            "failures": len(scores.failures), "raw_ge_threshold": raw_ge, "readme": len(readme),
            "paper_code": len(paper), "dropped_by_filter": [(int(l), int(h)) for l, h in dropped],
            "bins_raw": raw.as_dict(), "bins_filtered": filt.as_dict(),
            "pearson_freq_mean": act.pearson, "spearman_freq_mean": act.spearman}
