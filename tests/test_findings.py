"""findings: the comparisons chapter 04 makes between OCR heads and retrieval heads, on hand-built scores."""
from __future__ import annotations

import numpy as np
import pytest

from ocrheads_lib import findings
from ocrheads_lib.scoring import HeadScores, SampleScore, ScoreMeta


def _toy(entries: np.ndarray, kind: str) -> HeadScores:
    """entries (N, L, H) in {0, 1}: one scored row per sample."""
    n, n_layers, n_heads = entries.shape
    meta = ScoreMeta(model_id="toy", kind=kind, n_layers=n_layers, n_heads=n_heads, dataset="toy", seed=0, n=n)
    return HeadScores(meta=meta, samples=[SampleScore(id=f"s{i}", weight=1.0, n_rows=1, hits=entries[i].astype(int))
                                          for i in range(n)])


def _comparison(ocr: HeadScores, retrieval: HeadScores) -> findings.Comparison:
    return findings.Comparison("toy", findings.ScoreSet("OCR toy", "toy", "ocr", ocr),
                               findings.ScoreSet("retrieval toy", "toy", "retrieval", retrieval), "same model")


def test_compare_golden_by_hand() -> None:
    # 1 layer x 4 heads, 4 samples. OCR selects heads 0, 1 (means 1.0, 0.5); retrieval selects 1, 2 (1.0, 0.75).
    ocr = np.zeros((4, 1, 4))
    ocr[:, 0, 0] = 1
    ocr[:2, 0, 1] = 1
    retrieval = np.zeros((4, 1, 4))
    retrieval[:, 0, 1] = 1
    retrieval[:3, 0, 2] = 1
    row = findings.compare(_comparison(_toy(ocr, "ocr"), _toy(retrieval, "retrieval")), n_boot=50, seed=0)
    # shared {1} of union {0, 1, 2}: Jaccard 1/3
    assert (row["n_a"], row["n_b"], row["n_shared"]) == (2, 2, 1)
    assert row["jaccard"] == pytest.approx(1 / 3)
    # A resample of the OCR samples always keeps head 0 (on in every sample). It keeps head 1 when it draws s0 or
    # s1 (Jaccard 1/3 again) and loses it when it draws neither (probability 1/16: OCR {0}, Jaccard 0). So every
    # replicate is 0 or 1/3, and with 50 replicates (about 3 zeros expected) the 95 % interval is [0, 1/3].
    assert (row["jaccard_low"], row["jaccard_high"]) == (pytest.approx(0.0), pytest.approx(1 / 3))
    assert row["relation"] == "same model" and row["heads"] == "OCR toy" and row["reference"] == "retrieval toy"


def test_comparison_refuses_unknown_relation() -> None:
    scores = _toy(np.ones((2, 1, 4)), "ocr")
    one = findings.ScoreSet("OCR toy", "toy", "ocr", scores)
    with pytest.raises(ValueError, match="relation 'after' is not one of"):
        findings.Comparison("toy", one, one, "after")


def test_compare_refuses_different_networks() -> None:
    a = _toy(np.ones((2, 1, 4)), "ocr")
    b = _toy(np.ones((2, 2, 4)), "retrieval")
    with pytest.raises(ValueError, match=r"\(1, 4\) heads .* \(2, 4\)"):
        findings.compare(_comparison(a, b), n_boot=10)


def test_scoring_settings_validate() -> None:
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        findings.ScoringSettings(n_samples=0, seed=0, results_root=".")
    assert findings.LANGUAGE_HALVES["smol-vl"] == "smollm2"


def _row(model: str, reference: str, relation: str, jaccard: float, low: float, high: float,
         heads: str | None = None) -> dict:
    return {"model": model, "heads": heads or f"OCR {model}", "reference": reference, "relation": relation, "n_a": 10,
            "n_b": 8, "n_shared": 3, "jaccard": jaccard, "jaccard_low": low, "jaccard_high": high, "spearman": 0.4}


def test_model_comparison_sentences() -> None:
    from ocrheads_lib import conclusions

    rows = [_row("tiny", "retrieval tiny", "same model", 0.8, 0.7, 0.9),
            _row("smol-vl", "retrieval smol-vl", "same model", 0.6, 0.5, 0.7),
            _row("smol-vl", "retrieval smollm2 (before)", "language half before VLM training", 0.1, 0.05, 0.2)]
    text = " ".join(conclusions.model_comparison_sentences(rows, chosen="tiny"))
    assert "`tiny`" not in text                       # the chosen model's own pair is findings_chapter's sentence
    assert "heads of retrieval smollm2 (before) share 3 (Jaccard 0.10, interval 0.05–0.20" in text
    assert ": distinct." in text and ": overlapping substantially." in text
    assert "0.60, is higher than their Jaccard with the language half's retrieval heads before it, 0.10" in text
    assert text.endswith("the training pulled the retrieval heads toward the heads that read pages.")
    rows[1].update(jaccard=0.15, jaccard_low=0.1, jaccard_high=0.25)   # intervals overlap: no verdict
    assert conclusions.model_comparison_sentences(rows, chosen="tiny")[-1].endswith(
        "the two intervals overlap, so this run cannot tell whether the training moved them.")
    # the retrieval heads after vs before: its own sentence, after the OCR sentences, never an "OCR heads" one
    rows.append(_row("smol-vl", "retrieval smollm2 (before)", "retrieval heads after vs before VLM training",
                     0.87, 0.8, 0.9, heads="retrieval smol-vl"))
    sentences = conclusions.model_comparison_sentences(rows, chosen="tiny")
    assert sentences[-1] == ("`smol-vl`'s 10 retrieval heads after the VLM training and the 8 heads of retrieval "
                             "smollm2 (before) share 3 (Jaccard 0.87, interval 0.80–0.90; Spearman 0.40): the training kept "
                             "most of the language half's retrieval heads.")
    assert sum("OCR heads" in s for s in sentences) == 3
    rows[-1].update(jaccard=0.2)
    assert conclusions.model_comparison_sentences(rows, chosen="tiny")[-1].endswith(
        "the training replaced most of the language half's retrieval heads.")


def test_sparsity_and_static_sentences_name_the_compared_model() -> None:
    from ocrheads_lib import conclusions
    from ocrheads_lib.analysis import Interval

    text = conclusions.sparsity_sentences("smol-vl", Interval(40.0, 35.0, 45.0, 50), Interval(5.0, 3.0, 7.0, 50))
    assert text[0].startswith("Sparsity on `smol-vl`: 40.0 % of heads score above 0.1 as OCR heads and 5.0 %")
    assert text[1] == "So the paper's first claim (OCR heads are less sparse) holds on this model."
    static = conclusions.static_sentences(0.9, float("nan"), "smol-vl")
    assert static == ["Static activation on `smol-vl` (OCR): activation frequency and mean score correlate with "
                      "Spearman 0.90 — a head's score is mostly how often it fires."]     # NaN: no sentence
    assert conclusions.static_sentences(0.5, 0.7)[1] == ("Static activation (retrieval): activation frequency and "
                                                         "mean score correlate with Spearman 0.70.")
