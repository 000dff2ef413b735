"""The project's one percentile bootstrap (numpy only): every confidence interval of the library comes from here.

    lo, hi = mean_interval([0.1, 0.4, 0.9], n_boot=1000, seed=0)                 # CI of a mean
    lo, hi = interval(lambda rng: statistic(resample(data, rng)), n_boot=200)    # CI of any statistic

* **Resampling.** One ``np.random.default_rng(seed)`` per interval, shared by the `n_boot` replicates in
  order; a replicate of a mean draws ``rng.integers(0, n, size=n)`` (n indices with replacement). Same
  data and seed, same interval.
* **Percentiles.** The interval is the (alpha/2, 1 - alpha/2) quantile pair of the replicates, linearly
  interpolated (NaN replicates ignored). Two spellings of that interpolation exist and differ in the last
  bit: ``rule="numpy"`` (``np.nanquantile``; the experiment tables, ``analysis``) and ``rule="scipy"``
  (``scipy.stats.bootstrap``'s formula, which the grounding summary was first computed with). Each caller keeps
  the rule its published numbers were written with, so no result changes.

Users: :func:`ocrheads_lib.metrics.aggregate`, :func:`ocrheads_lib.analysis.bootstrap_ci` /
``bootstrap_mean_ci``, the experiment tables (:func:`ocrheads_lib.experiments.evaluate.summarize`) and
:func:`ocrheads_lib.grounding.summarize_grounding`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

RULES = ("numpy", "scipy")


def replicates(statistic: Callable[[np.random.Generator], float], n_boot: int, seed: int = 0) -> np.ndarray:
    """``statistic(rng)`` for `n_boot` replicates drawn in order from ``np.random.default_rng(seed)``; (n_boot,)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}; e.g. n_boot=1000")
    rng = np.random.default_rng(seed)
    return np.array([float(statistic(rng)) for _ in range(n_boot)])


def percentile_interval(values: np.ndarray, alpha: float = 0.05, rule: str = "numpy") -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) quantiles of `values`, linearly interpolated (see the module note on `rule`)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}; 0.05 gives a 95 % interval")
    if rule == "numpy":
        low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
        return float(low), float(high)
    if rule == "scipy":   # Hyndman & Fan's method 7 written as scipy.stats.quantile writes it
        tail = (1 - (1 - alpha)) / 2                       # scipy's (1 - confidence_level) / 2
        ordered = np.sort(np.asarray(values, dtype=float))  # (n,)
        ordered = ordered[~np.isnan(ordered)]
        n = ordered.size
        p = np.array([tail, 1 - tail])
        position = p * n + (1 - p)
        upper = position // 1
        lower = upper - 1
        weight = np.where(lower < 0, 0.0, position % 1)
        lower = np.clip(lower, 0, n - 1).astype(np.int64)
        upper = np.clip(upper, 0, n - 1).astype(np.int64)
        low, high = (1 - weight) * ordered[lower] + weight * ordered[upper]
        return float(low), float(high)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def interval(statistic: Callable[[np.random.Generator], float], n_boot: int, seed: int = 0, alpha: float = 0.05,
             rule: str = "numpy") -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) at level 1 - alpha: `statistic(rng)` computes the statistic on
    one resample drawn with `rng` (see :func:`replicates`)."""
    return percentile_interval(replicates(statistic, n_boot, seed), alpha, rule)


def resample_indices(rng: np.random.Generator, n: int) -> np.ndarray:
    """n indices drawn with replacement from range(n): one bootstrap resample of n items; (n,)."""
    return rng.integers(0, n, size=n)


def mean_interval(values: Iterable[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                  rule: str = "numpy") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`; NaNs for no values, (v, v) for a single value v."""
    data = np.asarray(list(values), dtype=float)  # (n,)
    if data.size == 0:
        return float("nan"), float("nan")
    return interval(lambda rng: data[resample_indices(rng, data.size)].mean(), n_boot, seed, alpha, rule)
