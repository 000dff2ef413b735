"""A null and a test for every claim the book makes, each ending in a :class:`Verdict`.

The one rule (:func:`decide`): a claim gets a verdict only when its interval excludes the null value.
``holds`` when the interval lies wholly on the claim's side of the null, ``fails`` when it lies wholly on the
other side, otherwise ``undecided at n = ...`` together with the n that would decide. That n comes from a
plain extrapolation: an interval's half-width shrinks like 1 / sqrt(n), so with estimate e, null v and the
half-width h on the null's side at n samples, the interval would just clear the null at
``n * (h / |e - v|) ** 2`` samples if the estimate stayed where it is (no such n when e == v). It is a planning
figure, not a promise: the estimate moves as n grows.

Claims (paper direction first):

* :func:`sparsity_test` -- OCR heads are *less sparse* than retrieval heads: the share of heads one threshold
  rule selects is larger for OCR scores. Joint bootstrap over both score sets (>= 1,000 draws).
* :func:`distinctness_test` -- OCR and retrieval heads are *distinct*: their overlap is measured against
  random head sets of the same sizes among all heads (hypergeometric: exact expected Jaccard and top-k overlap,
  exact permutation p-value), and the verdict is on the chance-corrected Jaccard
  ``(J - E[J]) / (1 - E[J])`` (0 = as much overlap as random sets, 1 = the same set): *distinct* means its
  interval lies below :data:`DISTINCT_EXCESS_BELOW`, *shared* (the claim fails) means above it.
* :func:`static_activation_test` -- OCR heads are *statically activated*: over heads that fire at least once
  (all-zero heads excluded), Spearman(activation frequency, mean score) is higher for OCR than retrieval heads.
* :func:`case_study_test` -- the heads that read single characters are the OCR heads: per character the top-k
  heads (ties broken at random with a seed, zero-score heads never counted) hit the reference set more often
  than a random active head would (chance = share of active heads in the reference set).
* :func:`dissociation_test` -- masking OCR heads hurts an image task more than masking as many retrieval heads
  (and the reverse on a text task): the paired difference of drops per sample, bootstrap and sign-flip tests;
  :func:`double_dissociation` joins the two tasks; :func:`baseline_control_test` compares a head set's drop with
  that of random heads (chance level) in the same way.
* :func:`control_test` -- masking a head set costs more than masking as many random (or layer-matched random)
  heads: the paired difference per sample, bootstrap and sign-flip tests (Wu's causal test).
* :func:`cot_change_test` -- chain-of-thought changes a head set's score by more than two seeds of the same
  condition do (the noise floor).

Every random step takes a seed; same inputs and seed, same Verdict.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ocrheads_lib import bootstrap
from ocrheads_lib.analysis import resample, topk_overlap
from ocrheads_lib.heads import select, top_k
from ocrheads_lib.scoring.store import HeadScores
from ocrheads_lib.types import Head

VERDICTS = ("holds", "fails", "undecided")
DIRECTIONS = ("greater", "less")
MIN_BOOT = 1000                      # bootstrap draws of every verdict (issue 33: >= 1,000)
DISTINCT_EXCESS_BELOW = 0.3          # chance-corrected Jaccard below this: the two head sets are distinct
MIN_PER_CHARACTER = 10               # case study: samples behind each character's scores


@dataclass(frozen=True)
class Verdict:
    """A claim, its estimate with a (1 - alpha) interval, the null it is tested against and the outcome."""

    claim: str                       # the claim in words, with its direction
    estimate: float
    low: float
    high: float
    null: float                      # the value the interval must exclude
    n: int                           # sample size behind the interval (samples, characters, ...)
    verdict: str                     # "holds" | "fails" | "undecided"
    n_to_decide: int | None = None   # undecided: n at which the interval would clear the null (see module note)
    p_value: float | None = None     # one-sided, in the claim's direction, where a test gives one
    n_boot: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def words(self) -> str:
        """``holds`` / ``fails`` / ``undecided at n = 40 (n ~ 160 would decide)``."""
        if self.verdict != "undecided":
            return self.verdict
        need = f" (n ~ {self.n_to_decide} would decide)" if self.n_to_decide else ""
        return f"undecided at n = {self.n}{need}"

    def __str__(self) -> str:
        p = f", p = {self.p_value:.3g}" if self.p_value is not None else ""
        return (f"{self.claim}: {self.words()} -- {self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] vs "
                f"{self.null:.4g}{p}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the rule
def n_to_decide(estimate: float, low: float, high: float, null: float, n: int) -> int | None:
    """n at which the interval's half-width on the null's side would shrink (like 1/sqrt(n)) to the gap between
    estimate and null; None when estimate == null or the interval is degenerate."""
    gap = abs(estimate - null)
    half = (estimate - low) if estimate > null else (high - estimate)
    if gap == 0 or not np.isfinite(gap) or not np.isfinite(half) or half <= 0 or n < 1:
        return None
    return max(n + 1, int(math.ceil(round(n * (half / gap) ** 2, 9))))   # round: 0.15 / 0.1 is 1.5000000000000002


def decide(estimate: float, low: float, high: float, null: float, n: int,
           direction: str = "greater") -> tuple[str, int | None]:
    """(verdict, n to decide) of a one-directional claim "the statistic is `direction` than `null`": holds when
    the interval lies wholly on that side, fails when wholly on the other, else undecided."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undecided", None
    above, below = low > null, high < null
    if above or below:
        return ("holds" if above == (direction == "greater") else "fails"), None
    return "undecided", n_to_decide(estimate, low, high, null, n)


def verdict(claim: str, estimate: float, replicates: np.ndarray, null: float, n: int, direction: str = "greater",
            alpha: float = 0.05, p_value: float | None = None, **details: Any) -> Verdict:
    """A Verdict from bootstrap `replicates` of the statistic (percentile interval, :func:`decide`)."""
    low, high = bootstrap.percentile_interval(replicates, alpha)
    word, need = decide(estimate, low, high, null, n, direction)
    return Verdict(claim, float(estimate), low, high, float(null), int(n), word, need, p_value, len(replicates),
                   dict(details))


def bootstrap_p(replicates: np.ndarray, null: float, direction: str) -> float:
    """Share of bootstrap replicates on the null's side (a rough one-sided p-value of the claim), at least
    1 / (draws + 1)."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan")
    bad = np.sum(values <= null) if direction == "greater" else np.sum(values >= null)
    return float(max(bad, 1) / (values.size + 1)) if bad == 0 else float(bad / values.size)


def _check_boot(n_boot: Any) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < MIN_BOOT:
        raise ValueError(f"n_boot must be an integer >= {MIN_BOOT} for a verdict, got {n_boot!r}; e.g. n_boot=1000")
    return int(n_boot)


# --------------------------------------------------------------------------- joint resampling of two score sets
def _paired(a: HeadScores, b: HeadScores) -> bool:
    """True when both score sets are aligned over the same sample ids (then they are resampled together)."""
    return (a.ragged is None and b.ragged is None and len(a.samples) == len(b.samples) > 0
            and [s.id for s in a.samples] == [s.id for s in b.samples])


def _n_samples(scores: HeadScores) -> int:
    if scores.ragged is None:
        return len(scores.samples)
    return int(np.median(scores.n_entries()))


def resample_pair(a: HeadScores, b: HeadScores, rng: np.random.Generator) -> tuple[HeadScores, HeadScores]:
    """One joint bootstrap replicate of two score sets: the same sample indices for both when they cover the same
    samples (:func:`_paired`), else each resampled on its own, both from `rng`."""
    if _paired(a, b):
        ma, mb = a.matrix(), b.matrix()                         # (N, L, H) each
        idx = bootstrap.resample_indices(rng, ma.shape[0])
        return (a.with_entries({(l, h): ma[idx, l, h] for (l, h) in a.heads}),
                b.with_entries({(l, h): mb[idx, l, h] for (l, h) in b.heads}))
    return resample(a, rng), resample(b, rng)


def _joint(a: HeadScores, b: HeadScores, statistic: Callable[[HeadScores, HeadScores], float], n_boot: int,
           seed: int) -> np.ndarray:
    return bootstrap.replicates(lambda rng: statistic(*resample_pair(a, b, rng)), n_boot, seed)


def _same_model(a: HeadScores, b: HeadScores) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the two score sets come from different shapes {a.shape} vs {b.shape}; compare OCR and "
                         "retrieval scores of the same model")


# --------------------------------------------------------------------------- sparsity
def selected_share(scores: HeadScores, rule: str = "readme", threshold: float = 0.1) -> float:
    """Share of all heads the rule selects at `threshold` (:func:`ocrheads_lib.heads.select`)."""
    return len(select(scores, rule, threshold)) / (scores.shape[0] * scores.shape[1])


def sparsity_test(ocr: HeadScores, retrieval: HeadScores, rule: str = "readme", threshold: float = 0.1,
                  n_boot: int = MIN_BOOT, seed: int = 0, alpha: float = 0.05, across_models: bool = False) -> Verdict:
    """OCR heads are less sparse than retrieval heads (the paper's direction): share of heads selected by ONE
    rule and threshold, OCR minus retrieval, > 0. Joint bootstrap over both score sets' samples.
    across_models: the two score sets may come from two models (each share is of its own model's heads, the sets
    resampled independently), as in the paper's release (OCR scores of one model, retrieval of another)."""
    if not across_models:
        _same_model(ocr, retrieval)
    n_boot = _check_boot(n_boot)

    def stat(a: HeadScores, b: HeadScores) -> float:
        return selected_share(a, rule, threshold) - selected_share(b, rule, threshold)

    reps = _joint(ocr, retrieval, stat, n_boot, seed)
    share_ocr, share_ret = selected_share(ocr, rule, threshold), selected_share(retrieval, rule, threshold)
    where = ", shares of two models' heads" if across_models else ""
    return verdict(f"OCR heads are less sparse than retrieval heads (share selected by {rule} >= {threshold}, "
                   f"OCR minus retrieval > 0{where})", share_ocr - share_ret, reps, 0.0,
                   min(_n_samples(ocr), _n_samples(retrieval)), "greater", alpha,
                   bootstrap_p(reps, 0.0, "greater"), share_ocr=share_ocr, share_retrieval=share_ret,
                   rule=rule, threshold=threshold, paired=_paired(ocr, retrieval))


# --------------------------------------------------------------------------- distinctness
@dataclass(frozen=True)
class ChanceOverlap:
    """Overlap of two head sets against random sets of the same sizes among `n_total` heads."""

    n_total: int
    n_a: int
    n_b: int
    n_shared: int
    jaccard: float
    expected_jaccard: float          # E[J] of random sets of sizes n_a, n_b (exact, hypergeometric)
    expected_shared: float           # n_a * n_b / n_total
    p_value: float                   # P(random sets share >= n_shared heads): exact permutation p-value

    @property
    def excess(self) -> float:
        """Chance-corrected Jaccard (J - E[J]) / (1 - E[J]): 0 = chance overlap, 1 = identical sets."""
        return chance_corrected(self.jaccard, self.expected_jaccard)


def chance_corrected(observed: float, expected: float) -> float:
    return (observed - expected) / (1.0 - expected) if expected < 1 else float("nan")


def chance_overlap(n_total: int, n_a: int, n_b: int, n_shared: int) -> ChanceOverlap:
    """Exact chance level of two head sets' overlap. For random sets of sizes n_a and n_b drawn among n_total
    heads the number shared X is Hypergeometric(n_total, n_a, n_b); E[J] = sum_x P(X = x) * x / (n_a + n_b - x),
    and the permutation p-value is P(X >= n_shared) (the permutation distribution, enumerated)."""
    if not 0 <= n_a <= n_total or not 0 <= n_b <= n_total or not 0 <= n_shared <= min(n_a, n_b):
        raise ValueError(f"need 0 <= n_shared ({n_shared}) <= min(n_a, n_b) and n_a ({n_a}), n_b ({n_b}) <= n_total "
                         f"({n_total}); pass the sizes of two head sets of one model")
    law = stats.hypergeom(n_total, n_a, n_b)
    support = np.arange(max(0, n_a + n_b - n_total), min(n_a, n_b) + 1)
    union = n_a + n_b - support
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(union > 0, support / np.maximum(union, 1), 0.0)
    expected = float(np.sum(law.pmf(support) * ratio)) if n_a + n_b else float("nan")
    observed = n_shared / (n_a + n_b - n_shared) if n_a + n_b else float("nan")
    return ChanceOverlap(n_total, n_a, n_b, n_shared, observed, expected, n_a * n_b / n_total if n_total else 0.0,
                         float(law.sf(n_shared - 1)))


def simulated_overlap(n_total: int, n_a: int, n_b: int, n_draws: int = 10_000, seed: int = 0) -> np.ndarray:
    """Jaccard of `n_draws` pairs of random head sets of sizes n_a, n_b among n_total (a check of the exact law)."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_draws)
    for i in range(n_draws):
        a = set(rng.choice(n_total, n_a, replace=False).tolist())
        b = set(rng.choice(n_total, n_b, replace=False).tolist())
        out[i] = len(a & b) / len(a | b) if a | b else float("nan")
    return out


def distinctness_test(ocr: HeadScores, retrieval: HeadScores, rule: str = "readme", threshold: float = 0.1,
                      ks: Sequence[int] = (5, 10, 20), n_boot: int = MIN_BOOT, seed: int = 0,
                      alpha: float = 0.05) -> Verdict:
    """OCR and retrieval heads are distinct: the chance-corrected Jaccard of the two selected sets lies below
    :data:`DISTINCT_EXCESS_BELOW` (holds), or above it (fails: they share heads well beyond chance). Details hold
    the observed Jaccard, its exact expectation for random sets of the same sizes, the permutation p-value of
    the overlap, and per k the top-k overlap with its chance level k / n_heads and p-value."""
    _same_model(ocr, retrieval)
    n_boot = _check_boot(n_boot)
    n_total = ocr.shape[0] * ocr.shape[1]

    def overlap(a: HeadScores, b: HeadScores) -> ChanceOverlap:
        set_a, set_b = set(select(a, rule, threshold)), set(select(b, rule, threshold))
        return chance_overlap(n_total, len(set_a), len(set_b), len(set_a & set_b))

    observed = overlap(ocr, retrieval)
    reps = _joint(ocr, retrieval, lambda a, b: overlap(a, b).excess, n_boot, seed)
    topk = {}
    for k in ks:
        if k > n_total:
            continue
        shared = round(topk_overlap(top_k(ocr, k, rule), top_k(retrieval, k, rule), k) * k)
        chance = chance_overlap(n_total, k, k, shared)
        topk[int(k)] = {"overlap": shared / k, "expected": k / n_total, "p_value": chance.p_value}
    return verdict(f"OCR and retrieval heads are distinct (chance-corrected Jaccard < {DISTINCT_EXCESS_BELOW})",
                   observed.excess, reps, DISTINCT_EXCESS_BELOW, min(_n_samples(ocr), _n_samples(retrieval)),
                   "less", alpha, observed.p_value, jaccard=observed.jaccard,
                   expected_jaccard=observed.expected_jaccard, n_ocr=observed.n_a, n_retrieval=observed.n_b,
                   n_shared=observed.n_shared, n_heads=n_total, topk=topk)


# --------------------------------------------------------------------------- static activation
def active_spearman(scores: HeadScores, active: np.ndarray) -> float:
    """Spearman(activation frequency, mean score) over the heads flagged in `active` ((L, H) bool)."""
    freq = scores.activation_frequency(0.0)[active]
    mean = scores.mean()[active]
    if freq.size < 3 or np.all(freq == freq[0]) or np.all(mean == mean[0]):
        return float("nan")
    return float(stats.spearmanr(freq, mean).statistic)


def static_activation_test(ocr: HeadScores, retrieval: HeadScores, n_boot: int = MIN_BOOT, seed: int = 0,
                           alpha: float = 0.05) -> Verdict:
    """OCR heads are more statically activated than retrieval heads: over heads that fire at least once in the
    full data (all-zero heads excluded, the same heads in every replicate), Spearman(frequency, mean) of OCR
    minus that of retrieval > 0. Details give each Spearman and the number of active heads."""
    _same_model(ocr, retrieval)
    n_boot = _check_boot(n_boot)
    act_a, act_b = ocr.activation_frequency(0.0) > 0, retrieval.activation_frequency(0.0) > 0

    def stat(a: HeadScores, b: HeadScores) -> float:
        return active_spearman(a, act_a) - active_spearman(b, act_b)

    rho_a, rho_b = active_spearman(ocr, act_a), active_spearman(retrieval, act_b)
    reps = _joint(ocr, retrieval, stat, n_boot, seed)
    return verdict("OCR heads are more statically activated than retrieval heads (Spearman of activation frequency "
                   "vs mean score over heads that fire, OCR minus retrieval > 0)", rho_a - rho_b, reps, 0.0,
                   min(_n_samples(ocr), _n_samples(retrieval)), "greater", alpha, bootstrap_p(reps, 0.0, "greater"),
                   spearman_ocr=rho_a, spearman_retrieval=rho_b, n_active_ocr=int(act_a.sum()),
                   n_active_retrieval=int(act_b.sum()))


# --------------------------------------------------------------------------- case study
def top_k_random_ties(values: np.ndarray, k: int, seed: int = 0) -> list[Head]:
    """The k best heads of an (L, H) score matrix with value > 0, ties broken by a seeded random order (not by
    layer-major position, which would favour early layers)."""
    n_layers, n_heads = values.shape
    flat = values.reshape(-1)
    tiebreak = np.random.default_rng(seed).permutation(flat.size)
    order = np.lexsort((tiebreak, -flat))                     # by value desc, then the random key
    return [(int(i // n_heads), int(i % n_heads)) for i in order[:k] if flat[i] > 0]


def case_study_test(per_character: Mapping[str, np.ndarray], reference: Sequence[Head], k: int = 5, seed: int = 0,
                    n_boot: int = MIN_BOOT, counts: Mapping[str, int] | None = None,
                    min_per_character: int = MIN_PER_CHARACTER, alpha: float = 0.05) -> Verdict:
    """The heads that read single characters are the reference (OCR) heads: the share of each character's top-k
    (seeded random ties) that lies in `reference`, averaged over characters, exceeds chance = the share of
    active heads (score > 0 for some character) that are in `reference`. Bootstrap over characters; the p-value
    is P(mean hit share of random top-k draws among active heads >= observed), by `n_boot` seeded draws.
    counts: samples behind each character's scores; characters with fewer than `min_per_character` are refused."""
    n_boot = _check_boot(n_boot)
    if counts is not None:
        thin = {c: int(counts.get(c, 0)) for c in per_character if counts.get(c, 0) < min_per_character}
        if thin:
            raise ValueError(f"characters {sorted(thin)[:5]} have fewer than {min_per_character} samples ({thin}); "
                             f"score at least {min_per_character} samples per character")
    chars = list(per_character)
    if not chars:
        raise ValueError("case_study_test needs at least one character's (L, H) scores")
    stack = np.stack([np.asarray(per_character[c], dtype=float) for c in chars])        # (C, L, H)
    ref = {(int(l), int(h)) for l, h in reference}
    active = np.any(stack > 0, axis=0)                                                   # (L, H)
    active_heads = [(int(l), int(h)) for l, h in zip(*np.nonzero(active))]
    chance = len(ref & set(active_heads)) / len(active_heads) if active_heads else float("nan")
    hits = np.array([len(set(top_k_random_ties(stack[i], k, seed + i)) & ref) / k for i in range(len(chars))])
    rng = np.random.default_rng(seed)
    in_ref = np.array([head in ref for head in active_heads])
    take = min(k, len(active_heads))
    null = np.array([np.mean([in_ref[rng.choice(len(active_heads), take, replace=False)].sum() / k
                              for _ in chars]) for _ in range(n_boot)]) if active_heads else np.zeros(1)
    p = float((np.sum(null >= hits.mean()) + 1) / (null.size + 1))
    reps = bootstrap.replicates(lambda r: hits[bootstrap.resample_indices(r, hits.size)].mean(), n_boot, seed)
    return verdict(f"the top-{k} heads of each character are OCR heads more often than chance among active heads",
                   float(hits.mean()), reps, chance, len(chars), "greater", alpha, p, n_active=len(active_heads),
                   per_character=dict(zip(chars, hits.tolist())))


# --------------------------------------------------------------------------- masking dissociation
def _aligned_values(by_id: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    ids = [set(m) for m in by_id]
    if any(s != ids[0] for s in ids):
        sizes = {name: len(s) for name, s in zip(names, ids)}
        raise ValueError(f"the conditions cover different samples ({sizes}); compare per-sample scores of the same "
                         "evaluation samples (run every condition on the same split)")
    order = sorted(ids[0])
    return np.array([[float(m[i]) for i in order] for m in by_id])                        # (conditions, n)


def sign_flip_p(differences: np.ndarray, direction: str = "greater", n_draws: int = 10_000, seed: int = 0) -> float:
    """One-sided paired permutation p-value of the mean difference: each sample's sign flipped at random."""
    d = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_draws, d.size))
    null = (signs * d).mean(axis=1)
    observed = d.mean()
    extreme = np.sum(null >= observed) if direction == "greater" else np.sum(null <= observed)
    return float((extreme + 1) / (n_draws + 1))


def dissociation_test(baseline: Mapping[str, float], ocr_masked: Mapping[str, float],
                      retrieval_masked: Mapping[str, float], task: str, direction: str = "greater",
                      n_boot: int = MIN_BOOT, seed: int = 0, alpha: float = 0.05) -> Verdict:
    """Masking the OCR heads costs more than masking as many retrieval heads on `task` ("greater": an image task)
    or less ("less": a text task). Per sample (id -> score): drop = baseline - masked; the statistic is the mean
    of the paired difference OCR drop - retrieval drop, with a bootstrap interval over samples and a sign-flip
    p-value."""
    base, ocr, ret = _aligned_values([baseline, ocr_masked, retrieval_masked], ["baseline", "ocr", "retrieval"])
    side = "more" if direction == "greater" else "less"
    return paired_difference_test((base - ocr) - (base - ret),                          # (n,)
                                  f"on {task}, masking OCR heads costs {side} than masking as many retrieval heads",
                                  direction, n_boot, seed, alpha, task=task, drop_ocr=float((base - ocr).mean()),
                                  drop_retrieval=float((base - ret).mean()))


def paired_difference_test(differences: Any, claim: str, direction: str = "greater", n_boot: int = MIN_BOOT,
                           seed: int = 0, alpha: float = 0.05, **details: Any) -> Verdict:
    """The claim "the mean of these per-sample paired differences is `direction` than 0": bootstrap interval
    over samples (seeded) and a sign-flip p-value; the verdict by :func:`decide`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    n_boot = _check_boot(n_boot)
    diff = np.asarray(differences, dtype=float)                                         # (n,)
    if diff.size == 0:
        raise ValueError("no samples to compare; give per-sample scores of at least one sample")
    reps = bootstrap.replicates(lambda r: diff[bootstrap.resample_indices(r, diff.size)].mean(), n_boot, seed)
    return verdict(claim, float(diff.mean()), reps, 0.0, diff.size, direction, alpha,
                   sign_flip_p(diff, direction, seed=seed), **details)


def baseline_control_test(baseline: Mapping[str, float], masked: Mapping[str, float], control_masked: Mapping[str, float],
                 task: str, head_set: str, control: str, n_boot: int = MIN_BOOT, seed: int = 0,
                 alpha: float = 0.05) -> Verdict:
    """Masking a head set costs more on `task` than masking as many heads of a random control (chance level):
    per sample, the set's drop minus the control's drop (= control score - set score; the control's score per
    sample may be a mean over its random draws) > 0."""
    base, own, chance = _aligned_values([baseline, masked, control_masked], ["baseline", head_set, control])
    return paired_difference_test(chance - own, f"on {task}, masking the {head_set} heads costs more than masking "
                                  f"as many {control} heads", "greater", n_boot, seed, alpha, task=task,
                                  drop_set=float((base - own).mean()), drop_control=float((base - chance).mean()))


def control_test(masked: Mapping[str, float], controls: Sequence[Mapping[str, float]], what: str,
                 control: str, n_boot: int = MIN_BOOT, seed: int = 0, alpha: float = 0.05) -> Verdict:
    """Masking `what` costs more than masking as many `control` heads (Wu's causal test). Per sample (id ->
    score): the mean score over the control draws minus the score with the set masked, so > 0 when the set
    matters more; the statistic is its mean, with a bootstrap interval over samples (the draws stay fixed:
    the interval is the samples' uncertainty) and a sign-flip p-value."""
    if not controls:
        raise ValueError(f"control_test needs at least one draw of {control} heads, got none; run >= 3 draws")
    n_boot = _check_boot(n_boot)
    values = _aligned_values([masked, *controls], ["masked", *[f"{control} draw {i}" for i in range(len(controls))]])
    diff = values[1:].mean(axis=0) - values[0]                                           # (n,)
    if diff.size == 0:
        raise ValueError("no samples to compare; give per-sample scores of at least one sample")
    reps = bootstrap.replicates(lambda r: diff[bootstrap.resample_indices(r, diff.size)].mean(), n_boot, seed)
    return verdict(f"masking {what} costs more than masking as many {control} heads", float(diff.mean()), reps,
                   0.0, diff.size, "greater", alpha, sign_flip_p(diff, "greater", seed=seed),
                   masked=float(values[0].mean()), control_mean=float(values[1:].mean()), n_draws=len(controls))


def double_dissociation(image: Verdict, text: Verdict) -> Verdict:
    """Both halves of the double dissociation: holds when both hold, fails when either fails, else undecided
    (at the larger n that would decide). The estimate is the smaller margin (image: +, text: -)."""
    parts = (image, text)
    word = "holds" if all(v.verdict == "holds" for v in parts) else \
        "fails" if any(v.verdict == "fails" for v in parts) else "undecided"
    needs = [v.n_to_decide for v in parts if v.verdict == "undecided" and v.n_to_decide]
    margin = min(image.estimate, -text.estimate)
    low = min(image.low, -text.high)
    high = min(image.high, -text.low)
    return Verdict("OCR and retrieval heads doubly dissociate (each costs more on its own modality)", margin, low,
                   high, 0.0, min(image.n, text.n), word, max(needs) if word == "undecided" and needs else None,
                   None, min(image.n_boot, text.n_boot), {"image": image.as_dict(), "text": text.as_dict()})


# --------------------------------------------------------------------------- chain-of-thought noise floor
def _set_mean_change(a: HeadScores, b: HeadScores, heads: Sequence[Head]) -> float:
    ma, mb = a.mean(), b.mean()
    return float(np.mean([mb[l, h] - ma[l, h] for l, h in heads]))


def cot_change_test(direct: HeadScores, cot: HeadScores, seed_a: HeadScores, seed_b: HeadScores,
                    heads: Sequence[Head], n_boot: int = MIN_BOOT, seed: int = 0, alpha: float = 0.05) -> Verdict:
    """Chain-of-thought changes the mean score of `heads` by more than the noise floor. The change is cot minus
    direct (the same samples: resampled jointly). The noise floor is the same comparison between two seeds of
    ONE condition (`seed_a`, `seed_b`: e.g. direct answers on two evaluation seeds): the larger absolute end of
    its bootstrap interval. Holds when the change's interval lies beyond +-floor, fails when it lies within
    [-floor, +floor], else undecided (n to decide: towards the nearer edge)."""
    n_boot = _check_boot(n_boot)
    heads = [(int(l), int(h)) for l, h in heads]
    if not heads:
        raise ValueError("cot_change_test needs at least one head (e.g. the top-k OCR heads)")
    change = _set_mean_change(direct, cot, heads)
    reps = _joint(direct, cot, lambda a, b: _set_mean_change(a, b, heads), n_boot, seed)
    noise = _joint(seed_a, seed_b, lambda a, b: _set_mean_change(a, b, heads), n_boot, seed + 1)
    noise_low, noise_high = bootstrap.percentile_interval(noise, alpha)
    floor = float(max(abs(noise_low), abs(noise_high)))
    low, high = bootstrap.percentile_interval(reps, alpha)
    n = min(_n_samples(direct), _n_samples(cot))
    if low > floor or high < -floor:
        word, need = "holds", None
    elif -floor <= low and high <= floor:
        word, need = "fails", None
    else:
        word = "undecided"
        edge = floor if change >= 0 else -floor
        need = n_to_decide(change, low, high, edge, n)
    return Verdict("chain-of-thought changes the head set's mean score beyond the two-seed noise floor", change,
                   low, high, floor, n, word, need, bootstrap_p(np.abs(reps), floor, "greater"), n_boot,
                   {"noise_change": _set_mean_change(seed_a, seed_b, heads), "noise_low": noise_low,
                    "noise_high": noise_high, "heads": heads})
