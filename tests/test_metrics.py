"""Metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ocrheads_lib import metrics as m


def test_levenshtein():
    assert m.levenshtein("kitten", "sitting") == 3
    assert m.levenshtein("", "abc") == 3
    assert m.levenshtein("abc", "abc") == 0
    assert m.levenshtein("flaw", "lawn") == 2


@pytest.mark.parametrize("pred, golds, expected", [
    ("abc", ["abc"], 1.0),
    ("  ABC ", ["abc"], 1.0),                 # case and surrounding whitespace ignored
    ("abcd", ["abce"], 0.75),                 # NL = 1/4
    ("abc", ["abcd"], 0.75),                  # NL = 1/4 (max length 4)
    ("ab", ["abcd"], 0.0),                    # NL = 2/4 = 0.5 = tau exactly -> 0
    ("abc", ["abcdef"], 0.0),                 # NL = 3/6 = 0.5 -> 0
    ("abcde", ["abcdefg"], 1 - 2 / 7),        # NL = 2/7 < 0.5
    ("", ["abc"], 0.0),                       # empty prediction
    ("", [""], 1.0),                          # both empty
    ("cat", ["dog", "cart"], 0.75),           # max over golds: dog -> 0, cart -> 1 - 1/4
    ("a  b", ["a b"], 1.0),                   # inner whitespace runs collapse to one space
    ("a b", ["ab"], 2 / 3),                   # ... but a space still counts: NL = 1/3
    ("abc", "abc", 1.0),                      # a single gold string is accepted
])
def test_anls_golden(pred, golds, expected):
    assert m.anls(pred, golds) == pytest.approx(expected)


def test_anls_tau():
    assert m.anls("ab", ["abcd"], tau=0.6) == pytest.approx(0.5)
    assert m.anls("abcd", ["abce"], tau=0.25) == 0.0           # NL = 0.25 = tau
    with pytest.raises(ValueError):
        m.anls("a", ["a"], tau=0.0)
    with pytest.raises(ValueError, match="golds is empty"):
        m.anls("a", [])


def test_normalize_and_exact_match():
    assert m.normalize_answer("  The Cat, sat!  on a   mat. ") == "cat sat on mat"
    assert m.exact_match("The Cat!", ["cat"]) == 1.0
    assert m.exact_match("a cat", ["the cat"]) == 1.0
    assert m.exact_match("cats", ["cat"]) == 0.0
    assert m.exact_match("4.50", ["450"]) == 1.0                  # punctuation removed
    assert m.exact_match("x", ["y", "X."]) == 1.0


def test_f1_golden():
    assert m.f1("the big cat", ["big dog"]) == pytest.approx(0.5)          # P = R = 1/2
    assert m.f1("cat cat dog", ["cat dog dog"]) == pytest.approx(2 / 3)    # multiset overlap 2
    assert m.f1("big red cat", ["cat"]) == pytest.approx(0.5)              # P = 1/3, R = 1 -> 2*(1/3)/(4/3)
    assert m.f1("", [""]) == 1.0
    assert m.f1("", ["x"]) == 0.0
    assert m.f1("a an the", ["."]) == 1.0                                  # both normalise to empty
    assert m.f1("dog", ["cat", "the dog"]) == 1.0


def test_passkey_accuracy():
    assert m.passkey_accuracy("The pass key is 12345.", 12345) == 1.0
    assert m.passkey_accuracy("1234", "12345") == 0.0
    assert m.passkey_accuracy("k", "k") == 1.0
    with pytest.raises(ValueError):
        m.passkey_accuracy("x", "")


def test_match_score():
    assert m.match_score([1, 2, 3, 4], [9, 2, 3, 7, 1, 2, 3]) == pytest.approx(0.75)
    assert m.match_score([1, 2], [2, 1]) == pytest.approx(0.5)
    assert m.match_score([5, 6, 7], [5, 6, 7]) == 1.0
    assert m.match_score([], [1, 2]) == 0.0
    assert m.match_score([1, 2], []) == 0.0


def test_aggregate():
    a = m.aggregate([0, 1, 1, 0, 1, 1, 1, 0], n_boot=500, seed=3)
    assert a.mean == pytest.approx(5 / 8) and a.n == 8
    assert 0.0 <= a.lo <= a.mean <= a.hi <= 1.0 and a.hi - a.lo > 0.1
    assert m.aggregate([0, 1, 1, 0, 1, 1, 1, 0], n_boot=500, seed=3) == a
    const = m.aggregate([0.5] * 5)
    assert const.lo == const.hi == const.mean == 0.5
    empty = m.aggregate([])
    assert empty.n == 0 and math.isnan(empty.mean)
    scores = m.score_all(["abc", "x"], [["abc"], ["y"]], metrics=("anls", "em", "f1", "accuracy"), n_boot=50)
    assert scores["anls"].mean == 0.5 and scores["em"].mean == 0.5 and scores["accuracy"].mean == 0.5
    with pytest.raises(ValueError, match="unknown metrics"):
        m.score_all(["a"], [["a"]], metrics=("bleu",))


def test_wilson_interval_matches_hand_computed_values():
    # 0 of 10: lower 0, upper z^2 / (n + z^2) = 3.8416 / 13.8416
    assert m.wilson_interval(0, 10) == pytest.approx((0.0, 3.8416 / 13.8416), abs=1e-12)
    assert m.wilson_interval(10, 10) == pytest.approx((1 - 3.8416 / 13.8416, 1.0), abs=1e-12)
    # 186 of 200 (the tiny model's unaligned keys): centre (0.93 + 0.009604) / 1.019208, half-width
    # 1.96 / 1.019208 * sqrt(0.93 * 0.07 / 200 + 3.8416 / 160000)
    centre = (0.93 + 0.009604) / 1.019208
    half = 1.96 / 1.019208 * math.sqrt(0.93 * 0.07 / 200 + 3.8416 / 160000)
    assert m.wilson_interval(186, 200) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert m.wilson_interval(186, 200)[0] == pytest.approx(0.8859, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        m.wilson_interval(3, 2)


def test_metric_registry_dispatches_by_name():
    assert set(m.METRICS) == {"accuracy", "em", "f1", "anls", "char_sim"}
    assert m.metric("accuracy")("the key is 4817", ["9", "4817"]) == 1.0
    assert m.metric("em")("The Cat", ["cat"]) == 1.0
    assert m.metric("anls")("abcd", ["abce"]) == pytest.approx(0.75)
    assert m.metric("char_sim")("6876", ["0000", "8726"]) == pytest.approx(0.5)   # max over golds
    with pytest.raises(ValueError, match="unknown metric 'bleu'; choose from accuracy, anls, char_sim, em, f1"):
        m.metric("bleu")


def test_bootstrap_golden_values_by_hand():
    from ocrheads_lib import bootstrap

    # linear interpolation between order statistics: the 0.25 / 0.75 quantiles of 0..4 sit on 1 and 3,
    # the 0.1 / 0.9 quantiles at 0.4 and 3.6
    assert bootstrap.percentile_interval(np.arange(5.0), alpha=0.5) == (1.0, 3.0)
    assert bootstrap.percentile_interval(np.arange(5.0), alpha=0.2) == pytest.approx((0.4, 3.6))
    assert bootstrap.percentile_interval(np.arange(5.0), alpha=0.2, rule="scipy") == pytest.approx((0.4, 3.6))
    # default_rng(0) draws the index triples [2 1 1], [0 0 0], [0 0 0]: resample means of [0, 3, 6] are
    # 4, 0, 0; sorted 0, 0, 4 -> the 0.25 quantile is 0 and the 0.75 quantile halfway between 0 and 4
    assert bootstrap.mean_interval([0.0, 3.0, 6.0], n_boot=3, seed=0, alpha=0.5) == (0.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap.mean_interval([]))
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1"):
        bootstrap.mean_interval([1.0], n_boot=0)
    with pytest.raises(ValueError, match="rule must be one of"):
        bootstrap.percentile_interval(np.arange(3.0), rule="bca")


def test_bootstrap_scipy_rule_equals_scipy_bootstrap():
    """The grounding summary's intervals were first computed with scipy.stats.bootstrap (percentile method):
    the one bootstrap's "scipy" rule reproduces them bit for bit."""
    from scipy import stats

    from ocrheads_lib import bootstrap

    rng = np.random.default_rng(11)
    for n, n_boot, seed in [(7, 200, 0), (23, 999, 3), (40, 2000, 5)]:
        values = rng.random(n) if n % 2 else (rng.random(n) > 0.5).astype(float)
        res = stats.bootstrap((values,), np.mean, n_resamples=n_boot, method="percentile",
                              random_state=np.random.default_rng(seed))
        expected = (float(res.confidence_interval.low), float(res.confidence_interval.high))
        assert bootstrap.mean_interval(values, n_boot=n_boot, seed=seed, rule="scipy") == expected
