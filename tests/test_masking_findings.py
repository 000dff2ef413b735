"""The shipped masking records read into the chapter's table, dissociation and chance-level verdicts (issue 33):
planted records where OCR masking clearly hurts reading decide "holds", records without an effect stay undecided."""
from __future__ import annotations

import numpy as np
import pytest

from ocrheads_lib import records as rec
from ocrheads_lib.experiments import masking_findings as mf
from ocrheads_lib.splits import Splits

CONTROL_SEEDS = (0, 1, 2)


def planted_records(n: int = 200, ocr_image: float = 0.1, retrieval_text: float = 0.1, rest: float = 0.9,
                    ks: tuple[int, ...] = (5, 20), seed: int = 0) -> list[dict]:
    """Records of a masking run in which each condition answers each sample right with a set probability:
    the OCR heads masked on the image task `ocr_image`, the retrieval heads on the text task `retrieval_text`,
    every other condition (baseline included) `rest`."""
    rng = np.random.default_rng(seed)
    conditions = [("none", 0, -1)] + [(s, k, -1) for k in ks for s in ("ocr", "retrieval")] + \
        [(c, k, d) for k in ks for c in ("random", "random_layer_matched") for d in CONTROL_SEEDS]
    out = []
    for task in ("passkey_image", "passkey_text"):
        for head_set, k, draw in conditions:
            p = ocr_image if (head_set, task) == ("ocr", "passkey_image") else \
                retrieval_text if (head_set, task) == ("retrieval", "passkey_text") else rest
            for i in range(n):
                right = bool(rng.random() < p)
                out.append({"task": task, "condition": f"{head_set}-k{k}-s{draw}", "head_set": head_set, "k": k,
                            "seed": draw, "heads": "", "id": f"{task}-{i}", "golds": ["1234"],
                            "prediction": "1234" if right else "9", "failure": None,
                            "scores": {"accuracy": float(right)}})
    return out


def write(tmp_path, data, weights: str = "w1", model: str = "smol-vl"):
    identity = rec.RunIdentity(model, weights, "masking", {"n_eval": 200, "ks": [5, 20]}, Splits())
    return rec.write_records(tmp_path / f"{model}_masking.jsonl.gz", identity, data)


def test_planted_effect_holds_and_no_effect_is_undecided(tmp_path):
    strong = mf.findings(write(tmp_path, planted_records()), "smol-vl", "w1")
    assert set(strong.dissociation) == {5, 20} and strong.n == 200
    for joint in strong.dissociation.values():
        assert joint.verdict == "holds" and joint.low > 0 and joint.n_boot >= 1000
        assert joint.details["image"]["estimate"] == pytest.approx(0.8, abs=0.1)
    own = strong.controls[[mf.OWN_TASK[s] == t for s, t in zip(strong.controls.head_set, strong.controls.task)]]
    assert len(own) == 8 and all(v.verdict == "holds" for v in own.verdict)
    # off its own task a set costs no more than chance: never "holds"
    other = strong.controls[[mf.OWN_TASK[s] != t for s, t in zip(strong.controls.head_set, strong.controls.task)]]
    assert len(other) == 8 and not any(v.verdict == "holds" for v in other.verdict)

    null = mf.findings(write(tmp_path, planted_records(ocr_image=0.9, retrieval_text=0.9, seed=1)))
    words = [v.words() for v in null.dissociation.values()]
    assert all(v.verdict != "holds" for v in null.dissociation.values())
    assert any(w.startswith("undecided at n = 200") for w in words)


def test_table_summarises_controls_over_their_draws(tmp_path):
    data = planted_records(n=50, ks=(5,))
    table = mf.findings(write(tmp_path, data)).table
    assert len(table) == 2 * 5 and set(table.n) == {50} and table.n_draws.max() == 3
    row = table[(table.task == "passkey_image") & (table.head_set == "random") & (table.k == 5)].iloc[0]
    means = [np.mean([r["scores"]["accuracy"] for r in data if r["task"] == "passkey_image"
                      and r["head_set"] == "random" and r["seed"] == d]) for d in CONTROL_SEEDS]
    assert row.score == pytest.approx(np.mean(means)) and row.draw_low == min(means) and row.draw_high == max(means)
    assert row.low <= row.score <= row.high and row.low < row.high


def test_failures_count_as_wrong_and_missing_metric_is_named(tmp_path):
    data = planted_records(n=20, ks=(5,), rest=1.0, ocr_image=1.0, retrieval_text=1.0)
    data[0] = {**data[0], "failure": "ValueError: context too long", "scores": {}, "prediction": None}
    table = mf.findings(write(tmp_path, data)).table
    base = table[(table.task == data[0]["task"]) & (table.head_set == "none")].iloc[0]
    assert base.n_failed == 1 and base.score == pytest.approx(19 / 20)
    with pytest.raises(ValueError, match="no 'anls' score"):
        mf.per_sample(data, "anls")


def test_records_of_other_weights_or_model_are_refused_naming_make_results(tmp_path):
    path = write(tmp_path, planted_records(n=5, ks=(5,)))
    with pytest.raises(rec.StaleRecordsError, match=r"weights w1.*weights w2.*make results"):
        mf.findings(path, "smol-vl", "w2")
    with pytest.raises(rec.StaleRecordsError, match=r"records of smol-vl.*loaded model is tiny"):
        mf.findings(path, "tiny", "w1")
    with pytest.raises(FileNotFoundError, match="make results"):
        mf.findings(tmp_path / "none.jsonl.gz", "smol-vl", "w1")


def test_verdict_rows_and_sentences_use_the_verdict_words(tmp_path):
    found = mf.findings(write(tmp_path, planted_records()))
    rows = mf.verdict_rows(found)
    assert len(rows) == 2 * 3 + 2 * 2 and {r["verdict"] for r in rows} == {"holds"}
    sentences = mf.headline_sentences(found)
    assert len(sentences) == 3 and "k = 5 holds, margin 0.8" in sentences[1] and "k = 20 holds" in sentences[1]
    assert "8 of 8 comparisons" in sentences[2] and "not:" not in sentences[2]
    null = mf.findings(write(tmp_path, planted_records(ocr_image=0.9, retrieval_text=0.9, seed=1)))
    assert "not: OCR vs random at k = 5 (undecided at n = 200" in mf.headline_sentences(null)[2]
