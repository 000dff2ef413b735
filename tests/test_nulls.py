"""Nulls and verdicts of every claim (issue 33, item 2): golden values by hand, planted effects that must be
detected, nulls that must not be."""
from __future__ import annotations

import numpy as np
import pytest

from ocrheads_lib import nulls
from ocrheads_lib.experiments.case_study import chance_jaccard
from ocrheads_lib.scoring import HeadScores, SampleScore, ScoreMeta


def scores(entries: np.ndarray, kind: str = "ocr", prefix: str = "s") -> HeadScores:
    """(N, L, H) entries in quarters -> aligned HeadScores (one sample = 4 answer rows)."""
    n, n_layers, n_heads = entries.shape
    meta = ScoreMeta(model_id="toy", kind=kind, n_layers=n_layers, n_heads=n_heads, dataset="toy", seed=0, n=n)
    return HeadScores(meta=meta, samples=[SampleScore(id=f"{prefix}{i}", weight=1.0, n_rows=4,
                                                      hits=np.rint(entries[i] * 4).astype(int)) for i in range(n)])


def firing(n: int, rates: np.ndarray, seed: int, value: float = 1.0) -> np.ndarray:
    """(n, L, H): a head fires (entry = value) with its rate, else 0."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, *rates.shape)) < rates) * value


# --------------------------------------------------------------------------- the rule
def test_decide_and_the_n_that_would_decide_by_hand():
    assert nulls.decide(0.1, 0.02, 0.2, 0.0, 50) == ("holds", None)
    assert nulls.decide(-0.2, -0.3, -0.1, 0.0, 50) == ("fails", None)
    assert nulls.decide(-0.2, -0.3, -0.1, 0.0, 50, "less") == ("holds", None)
    # half-width towards the null 0.15, gap 0.1: 100 * (0.15 / 0.1)^2 = 225
    assert nulls.decide(0.1, -0.05, 0.25, 0.0, 100) == ("undecided", 225)
    assert nulls.n_to_decide(0.0, -0.1, 0.1, 0.0, 100) is None
    v = nulls.Verdict("c", 0.1, -0.05, 0.25, 0.0, 100, "undecided", 225)
    assert v.words() == "undecided at n = 100 (n ~ 225 would decide)"
    with pytest.raises(ValueError, match="verdict must be one of"):
        nulls.Verdict("c", 0, 0, 0, 0, 1, "maybe")
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1000"):
        nulls.sparsity_test(scores(np.ones((3, 2, 2))), scores(np.ones((3, 2, 2))), n_boot=200)


# --------------------------------------------------------------------------- distinctness
def test_chance_overlap_by_hand_and_by_simulation():
    # 4 heads, two random 2-sets: P(share 0, 1, 2) = 1/6, 4/6, 1/6; J = 0, 1/3, 1 -> E[J] = 4/18 + 3/18 = 7/18
    got = nulls.chance_overlap(4, 2, 2, 1)
    assert got.expected_jaccard == pytest.approx(7 / 18)
    assert got.jaccard == pytest.approx(1 / 3) and got.expected_shared == 1.0
    assert got.p_value == pytest.approx(5 / 6)
    assert got.excess == pytest.approx((1 / 3 - 7 / 18) / (1 - 7 / 18))
    assert nulls.chance_overlap(270, 5, 5, 0).expected_jaccard == pytest.approx(chance_jaccard(270, 5))
    sizes = (30, 6, 9)
    simulated = nulls.simulated_overlap(*sizes, n_draws=4000, seed=1).mean()
    assert simulated == pytest.approx(nulls.chance_overlap(*sizes, 0).expected_jaccard, abs=0.01)
    with pytest.raises(ValueError, match="n_shared"):
        nulls.chance_overlap(10, 2, 3, 4)


def test_distinct_sets_hold_and_the_same_set_fails():
    rates_a = np.zeros((4, 5)); rates_a.flat[:6] = 0.7
    rates_b = np.zeros((4, 5)); rates_b.flat[14:] = 0.7
    ocr = scores(firing(40, rates_a, 0))
    distinct = nulls.distinctness_test(ocr, scores(firing(40, rates_b, 1), "retrieval"), ks=(5,), seed=0)
    assert distinct.verdict == "holds" and distinct.details["n_shared"] == 0
    assert distinct.details["expected_jaccard"] == pytest.approx(nulls.chance_overlap(20, 6, 6, 0).expected_jaccard)
    assert distinct.details["topk"][5] == {"overlap": 0.0, "expected": 0.25, "p_value": 1.0}
    same = nulls.distinctness_test(ocr, scores(firing(40, rates_a, 2), "retrieval"), ks=(5,))
    assert same.verdict == "fails" and same.estimate == pytest.approx(1.0) and same.p_value < 1e-4


# --------------------------------------------------------------------------- sparsity
def test_sparsity_detects_a_planted_difference_and_not_a_null():
    many = np.zeros((4, 5)); many.flat[:10] = 0.6
    few = np.zeros((4, 5)); few.flat[:3] = 0.6
    planted = nulls.sparsity_test(scores(firing(60, many, 0)), scores(firing(60, few, 1), "retrieval"))
    assert planted.verdict == "holds" and planted.estimate == pytest.approx(10 / 20 - 3 / 20)
    assert planted.n == 60 and planted.n_boot == 1000 and planted.details["paired"]
    edge = np.zeros((4, 5)); edge.flat[:8] = 0.1          # means near the 0.1 threshold: selection flips
    null = nulls.sparsity_test(scores(firing(60, edge, 3)), scores(firing(60, edge, 4), "retrieval"))
    assert null.verdict == "undecided" and null.low <= 0 <= null.high
    assert null.n_to_decide is None or null.n_to_decide > 60
    again = nulls.sparsity_test(scores(firing(60, edge, 3)), scores(firing(60, edge, 4), "retrieval"))
    assert (again.low, again.high) == (null.low, null.high)        # seeded
    # two models (the paper's release: OCR scores of one, retrieval of another): shares of each model's heads
    other = np.zeros((2, 5)); other.flat[:1] = 0.6
    with pytest.raises(ValueError, match="different shapes"):
        nulls.sparsity_test(scores(firing(60, many, 0)), scores(firing(40, other, 5), "retrieval"))
    across = nulls.sparsity_test(scores(firing(60, many, 0)), scores(firing(40, other, 5), "retrieval", "t"),
                                 across_models=True)
    assert across.verdict == "holds" and across.estimate == pytest.approx(10 / 20 - 1 / 10)
    assert not across.details["paired"] and "two models" in across.claim


# --------------------------------------------------------------------------- static activation
def test_static_activation_planted():
    rates = np.linspace(0.1, 0.9, 20).reshape(4, 5)
    ocr = scores(firing(80, rates, 0))                    # score = frequency: Spearman 1
    rng = np.random.default_rng(5)
    # retrieval: frequent heads fire weakly, rare heads strongly: the mean no longer follows the frequency
    strength = np.ceil((1 - rates) * 4) / 4                # (L, H) quarters
    ret_entries = (rng.random((80, 4, 5)) < rates) * strength
    ret_entries[:, 0, 0] = 0                              # an all-zero head: excluded from both Spearmans
    result = nulls.static_activation_test(ocr, scores(ret_entries, "retrieval"))
    assert result.details["spearman_ocr"] == pytest.approx(1.0)
    assert result.details["n_active_retrieval"] == 19 and result.details["spearman_retrieval"] < 0.5
    assert result.verdict == "holds"
    same = nulls.static_activation_test(ocr, scores(firing(80, rates, 9), "retrieval"))
    assert same.verdict == "undecided"


# --------------------------------------------------------------------------- case study
def test_case_study_ties_are_random_and_chance_is_among_active_heads():
    tied = np.array([[0.5, 0.5, 0.1, 0.0]])
    picks = {nulls.top_k_random_ties(tied, 1, seed)[0] for seed in range(20)}
    assert picks == {(0, 0), (0, 1)}                      # not always the layer-major first
    assert nulls.top_k_random_ties(tied, 4, 0)[-1] == (0, 2)   # the zero head is never a top head
    per = {"a": np.array([[0.9, 0.2, 0.1, 0.0]]), "b": np.array([[0.8, 0.0, 0.3, 0.0]])}
    result = nulls.case_study_test(per, [(0, 0)], k=1, seed=0)
    # both characters' top-1 is (0, 0); chance = 1 of the 3 active heads; P(two random hits) = 1/9
    assert (result.estimate, result.null, result.details["n_active"]) == (1.0, pytest.approx(1 / 3), 3)
    assert result.verdict == "holds" and result.p_value == pytest.approx(1 / 9, abs=0.03)
    with pytest.raises(ValueError, match=r"fewer than 10 samples"):
        nulls.case_study_test(per, [(0, 0)], k=1, counts={"a": 12, "b": 3})


# --------------------------------------------------------------------------- masking
def test_dissociation_golden_planted_and_null():
    ids = ["s1", "s2", "s3", "s4"]
    base = dict.fromkeys(ids, 1.0)
    ocr = dict(zip(ids, [0.0, 0.0, 1.0, 0.0]))
    ret = dict(zip(ids, [1.0, 1.0, 1.0, 0.0]))
    small = nulls.dissociation_test(base, ocr, ret, "passkey_image")
    # drops: OCR 1,1,0,1 (0.75), retrieval 0,0,0,1 (0.25); paired differences 1,1,0,0 -> 0.5
    assert (small.estimate, small.details["drop_ocr"], small.details["drop_retrieval"]) == (0.5, 0.75, 0.25)
    assert small.low == 0.0 and small.words() == "undecided at n = 4 (n ~ 5 would decide)"
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"e{i}" for i in range(n)]
    base = dict.fromkeys(ids, 1.0)
    planted = nulls.dissociation_test(base, dict(zip(ids, (rng.random(n) > 0.6) * 1.0)),
                                      dict(zip(ids, (rng.random(n) > 0.1) * 1.0)), "passkey_image")
    assert planted.verdict == "holds" and planted.p_value < 0.001
    text = nulls.dissociation_test(base, dict(zip(ids, (rng.random(n) > 0.3) * 1.0)),
                                   dict(zip(ids, (rng.random(n) > 0.3) * 1.0)), "passkey_text", "less")
    assert text.verdict == "undecided" and (text.n_to_decide is None or text.n_to_decide > n)
    both = nulls.double_dissociation(planted, text)
    assert both.verdict == "undecided" and both.n_to_decide == text.n_to_decide
    with pytest.raises(ValueError, match="cover different samples"):
        nulls.dissociation_test(base, {"e0": 1.0}, base, "passkey_image")


# --------------------------------------------------------------------------- chain of thought
def test_cot_change_against_the_two_seed_noise_floor():
    rates = np.full((3, 3), 0.2)
    heads = [(0, 0), (1, 1)]
    direct, seed_a, seed_b = (scores(firing(100, rates, s)) for s in (0, 1, 2))
    raised = rates.copy(); raised[0, 0] = raised[1, 1] = 0.7
    planted = nulls.cot_change_test(direct, scores(firing(100, raised, 3)), seed_a, seed_b, heads)
    assert planted.verdict == "holds" and planted.estimate > planted.null > 0
    null = nulls.cot_change_test(direct, scores(firing(100, rates, 4)), seed_a, seed_b, heads)
    assert null.verdict != "holds"
