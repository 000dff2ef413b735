"""Tests of ocrheads_lib.experiments: masking, sink redistribution, case study, chain-of-thought.

The central fixture is a tiny random Qwen2 text model with a *planted reader head*: plain weight surgery
makes head (1, 2) attend, from every query, to the single digit of the context and write that digit's
identity into the residual stream, and makes the unembedding read it back. The model then answers
"which digit is in the text?" correctly, because of that head alone: masking it must destroy the
accuracy, masking any other head must not.
"""
from __future__ import annotations

import random
import string

import numpy as np
import pytest
import torch
from PIL import Image

from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.data.samples import ImageSample, TextSample
from ocrheads_lib.experiments import case_study, cot
from ocrheads_lib.bootstrap import mean_interval
from ocrheads_lib.experiments.evaluate import PredictionCache, evaluate, summarize
from ocrheads_lib.experiments.masking import describe_drops, mask_conditions, run_masking, scale_ks
from ocrheads_lib.experiments.sink import run_sink
from ocrheads_lib.experiments.sweep import (
    Condition,
    RunSettings,
    SweepHeads,
    compare_to_baseline,
    layer_matched_heads,
    random_heads,
)
from ocrheads_lib.models.testing import tiny_random

READER = (1, 2)           # (layer, query head) of the planted reader
DIGITS = string.digits
QUESTION = "Which digit is in the text?"

# Residual-stream coordinates used by the planted circuit (hidden size 64).
IS_DIGIT = 0               # 1 on digit tokens
DIGIT_ID = 1               # 1..10: one-hot digit identity on digit tokens
OUT_ID = 20                # 20..29: the reader writes the digit identity here
LOW_FREQ_DIM = 7           # the rotary pair (7, 15) turns by 3e-4 rad per position: content-only attention


def plant_reader(lm, layer: int = READER[0], head: int = READER[1], strength: float = 5.0) -> None:
    """Weight surgery on a tiny random Qwen2: query head `head` of `layer` copies the context digit."""
    model = lm.model
    d = lm.head_dim
    groups = lm.n_heads // lm.n_kv_heads
    kv = head // groups
    digit_ids = [lm.tokenizer.convert_tokens_to_ids(c) for c in DIGITS]
    attn = lm.decoder_layers[layer].self_attn
    emb = model.get_input_embeddings().weight
    unemb = model.get_output_embeddings().weight
    with torch.no_grad():
        emb[:, [IS_DIGIT, *range(DIGIT_ID, DIGIT_ID + 10), *range(OUT_ID, OUT_ID + 10)]] = 0.0
        for i, token in enumerate(digit_ids):
            emb[token] = 0.0
            emb[token, IS_DIGIT] = 1.0
            emb[token, DIGIT_ID + i] = 1.0
        # query: a constant (bias only) in the low-frequency rotary coordinate
        rows = slice(head * d, (head + 1) * d)
        attn.q_proj.weight[rows] = 0.0
        attn.q_proj.bias[rows] = 0.0
        attn.q_proj.bias[head * d + LOW_FREQ_DIM] = strength
        # key: "is this a digit" in the same coordinate
        attn.k_proj.weight[kv * d + LOW_FREQ_DIM] = 0.0
        attn.k_proj.weight[kv * d + LOW_FREQ_DIM, IS_DIGIT] = strength
        attn.k_proj.bias[kv * d + LOW_FREQ_DIM] = 0.0
        # value: the digit identity; output: write it to OUT_ID..
        for i in range(10):
            attn.v_proj.weight[kv * d + i] = 0.0
            attn.v_proj.weight[kv * d + i, DIGIT_ID + i] = 1.0
            attn.v_proj.bias[kv * d + i] = 0.0
        attn.o_proj.weight[:, head * d:(head + 1) * d] = 0.0
        for i in range(10):
            attn.o_proj.weight[OUT_ID + i, head * d + i] = 1.0
        # unembedding: digit i is read from OUT_ID + i
        for i, token in enumerate(digit_ids):
            unemb[token] = 0.0
            unemb[token, OUT_ID + i] = 3.0


def digit_samples(n: int, seed: int) -> list[TextSample]:
    """Letters-only filler with one digit at a random place; the answer is the digit."""
    rng = random.Random(seed)
    samples = []
    for index in range(n):
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6)))
                 for _ in range(rng.randint(6, 14))]
        digit = DIGITS[index % 10]
        at = rng.randint(0, len(words))
        words.insert(at, digit)
        context = " ".join(words)
        start = len(" ".join(words[:at])) + (1 if at else 0)
        samples.append(TextSample(id=f"digit-{seed}-{index}", context=context, question=QUESTION, answer=digit,
                                  needle_span=(start, start + 1), answer_span=(start, start + 1), seed=seed))
    return samples


@pytest.fixture(scope="module")
def reader_lm():
    lm = tiny_random("qwen2", seed=0)
    plant_reader(lm)
    return lm


@pytest.fixture(scope="module")
def reader_tasks():
    return {"digit_text": digit_samples(8, seed=1)}


@pytest.fixture(scope="module")
def vl_lm():
    return tiny_random("qwen2_vl", seed=0)


def image_sample(index: int = 0) -> ImageSample:
    rng = np.random.default_rng(index)
    page = Image.fromarray(rng.integers(0, 255, size=(112, 168, 3), dtype=np.uint8))
    return ImageSample(id=f"img-{index}", pages=[page], question="What is the pass key?", answer="7",
                       evidence_page=0, boxes=[(28.0, 28.0, 56.0, 56.0)], units=["7"],
                       coarse_box=(28.0, 28.0, 56.0, 56.0), seed=index)


def _logits(lm, sample, plan=None):
    from ocrheads_lib.inference import sample_prompt

    pages, text = sample_prompt(sample)
    inputs = lm.build_inputs(pages, text)
    with torch.no_grad():
        if plan is None:
            return lm.model(**inputs.tensors).logits
        with apply(lm, plan):
            return lm.model(**inputs.tensors).logits


# ------------------------------------------------------------------------------------------ planted reader

def tasks_in(table) -> list[str]:
    return sorted(table["task"].unique())


def test_planted_reader_answers_and_masking_it_breaks_it(reader_lm, reader_tasks):
    samples = reader_tasks["digit_text"]
    base = summarize(evaluate(reader_lm, samples, max_new_tokens=2), ["accuracy"])
    masked = summarize(evaluate(reader_lm, samples, Plan(mask=[READER]), max_new_tokens=2), ["accuracy"])
    assert base["accuracy"] == 1.0
    assert masked["accuracy"] <= 0.2
    others = [h for h in [(l, h) for l in range(2) for h in range(4)] if h != READER]
    for head in others:   # every other single head: the answer survives
        other = summarize(evaluate(reader_lm, samples, Plan(mask=[head]), max_new_tokens=2), ["accuracy"])
        assert other["accuracy"] == 1.0, head


def test_run_masking_table_on_planted_reader(reader_lm, reader_tasks, tmp_path):
    head_sets = {"ocr": [READER, (0, 1)], "retrieval": [(0, 3), (1, 0)]}
    sweep_heads = SweepHeads(head_sets, seeds=[0, 1, 2])
    settings = RunSettings(out_dir=tmp_path, max_new_tokens=2, n_boot=200)
    table = run_masking(reader_lm, reader_tasks, sweep_heads, settings, ks=[1, 2])
    # 1 baseline + per k: 2 head sets + 3 random seeds + 3 layer-matched random seeds
    assert len(table) == 1 + 2 * (2 + 3 + 3)
    expected = {"model", "task", "modality", "head_set", "k", "seed", "n_masked", "random_pool", "heads", "n",
                "n_failed", "metric", "accuracy", "accuracy_lo", "accuracy_hi", "em", "em_lo", "em_hi"}
    assert expected <= set(table.columns)
    assert not table.duplicated(["model", "task", "head_set", "k", "seed"]).any()
    row = table.set_index(["head_set", "k", "seed"])
    assert row.loc[("none", 0, -1), "accuracy"] == 1.0
    assert row.loc[("ocr", 1, -1), "accuracy"] <= 0.2           # the reader is the top OCR head
    for seed in (0, 1, 2):                                        # random heads avoid the selected sets
        assert row.loc[("random", 1, seed), "accuracy"] == 1.0
        assert READER not in [tuple(map(int, h[1:].split("_h"))) for h in row.loc[("random", 1, seed), "heads"].split()]
        matched = [tuple(map(int, h[1:].split("_h"))) for h in row.loc[("random_layer_matched", 2, seed), "heads"].split()]
        assert sorted(layer for layer, _ in matched) == [0, 1]   # the layers of the OCR top-2: READER, (0, 1)
        assert not set(matched) & set(head_sets["ocr"] + head_sets["retrieval"])
        assert row.loc[("random_layer_matched", 1, seed), "accuracy"] == 1.0   # another layer-1 head: harmless
    assert row.loc[("retrieval", 2, -1), "accuracy"] == 1.0
    assert (table["accuracy_lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_hi"]).all()

    comparison = compare_to_baseline(table, "k")
    at = comparison.set_index(["head_set", "k"])
    assert at.loc[("ocr", 1), "change"] <= -0.8 and at.loc[("ocr", 1), "baseline"] == 1.0
    assert at.loc[("random", 1), "worst"] == 1.0 and at.loc[("random", 1), "n_seeds"] == 3   # no seed hurt
    assert at.loc[("retrieval", 1), "change"] == 0.0 and at.loc[("random_layer_matched", 1), "worst"] == 1.0
    k1 = describe_drops(comparison)[0]
    assert "k=1" in k1 and ("(more than the worst random draw, +0.00; more than the worst layer-matched random "
                            "draw, +0.00)") in k1.split("; retrieval")[0]
    assert "retrieval heads drop +0.00 (as much as the worst random draw" in k1
    # a k without layer-matched rows (no room in the reference's layers) says so instead of printing nan
    no_matched = table[~((table.head_set == "random_layer_matched") & (table.k == 2))]
    k2 = describe_drops(compare_to_baseline(no_matched, "k"))[1]
    assert "k=2" in k2 and "no layer-matched random draw at this k" in k2 and "nan" not in k2

    import pandas as pd

    on_disk = pd.read_csv(tmp_path / "masking.csv")
    assert len(on_disk) == len(table)
    # a rerun resumes from the per-sample cache: same table, no new cache lines
    caches = sorted((tmp_path / "cache").rglob("masking/**/*.jsonl"))
    assert len(caches) == len(tasks_in(table)) * len(table.drop_duplicates(["head_set", "k", "seed"]))
    sizes = [p.stat().st_size for p in caches]
    again = run_masking(reader_lm, reader_tasks, sweep_heads, settings, ks=[1, 2])
    assert [p.stat().st_size for p in caches] == sizes
    pd.testing.assert_frame_equal(again, table)


def test_k0_masking_equals_baseline_exactly(reader_lm, reader_tasks, vl_lm):
    sample = reader_tasks["digit_text"][0]
    assert torch.equal(_logits(reader_lm, sample), _logits(reader_lm, sample, Plan(mask=[])))
    img = image_sample()
    assert torch.equal(_logits(vl_lm, img), _logits(vl_lm, img, Plan(mask=[])))
    # the k = 0 row of the table is the stock model's predictions
    base = evaluate(reader_lm, reader_tasks["digit_text"], max_new_tokens=2)
    with_plan = evaluate(reader_lm, reader_tasks["digit_text"], Plan(mask=[]), max_new_tokens=2)
    assert [p.prediction for p in base] == [p.prediction for p in with_plan]
    cond = mask_conditions(2, 4, SweepHeads({"ocr": [READER]}, seeds=[0]), ks=[1])
    assert cond[0] == Condition(head_set="none", k=0, seed=-1, heads=[], random_pool="")


# ------------------------------------------------------------------------------------------ random heads

def test_random_heads_reproducible_disjoint_and_own_rng():
    exclude = [(0, 0), (1, 2), (3, 7)]
    first = random_heads(4, 8, 5, exclude, seed=3)
    random.seed(999)                 # the global RNG (e.g. distractor sampling) must not matter
    np.random.seed(999)
    _ = [random.random() for _ in range(10)]
    assert random_heads(4, 8, 5, exclude, seed=3) == first
    assert random_heads(4, 8, 5, list(reversed(exclude)), seed=3) == first   # order of exclude irrelevant
    assert len(set(first)) == 5 and not set(first) & set(exclude)
    draws = {tuple(random_heads(4, 8, 5, exclude, seed=s)) for s in range(5)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="cannot draw"):
        random_heads(2, 2, 3, [(0, 0), (0, 1)], seed=0)
    # conditions: random rows avoid the selected sets; with a pool too small they avoid the top-k only
    ocr, retrieval = [(0, 0), (0, 1), (0, 2), (0, 3)], [(1, 0), (1, 1)]
    with pytest.warns(UserWarning, match="no random_layer_matched control at k=3"):
        conds = mask_conditions(2, 4, SweepHeads({"ocr": ocr, "retrieval": retrieval}, seeds=[0, 1, 2]), ks=[2, 3])
    matched = [c for c in conds if c.head_set == "random_layer_matched"]
    assert [c.k for c in matched] == [2, 2, 2]             # layer 0 has 4 heads: no 3 outside the OCR top-3
    assert all(sorted(c.heads) != sorted(ocr[:2]) and {l for l, _ in c.heads} == {0} for c in matched)
    rand = [c for c in conds if c.head_set == "random"]
    assert len(rand) == 6
    for c in rand:
        assert len(set(c.heads)) == c.k
        if c.k == 2:
            assert c.random_pool == "outside selected"
            assert not set(c.heads) & set(ocr + retrieval)
        else:   # only 2 heads lie outside the selected sets: avoid the top-3 of each set
            assert c.random_pool == "outside top-k"
            assert not set(c.heads) & set(ocr[:3] + retrieval[:3])
    with pytest.raises(ValueError, match="cannot draw"):
        mask_conditions(2, 4, SweepHeads({"ocr": ocr, "retrieval": retrieval}, seeds=[0]), ks=[4])


def test_layer_matched_heads_copy_the_reference_layers():
    reference = [(3, 2), (3, 5), (2, 2), (3, 0)]              # layer 3 three times, layer 2 once
    selected = [(3, 1), (3, 3), (2, 0)]
    heads, pool = layer_matched_heads(4, 8, reference, [("outside selected", selected)], seed=1)
    assert sorted(layer for layer, _ in heads) == [2, 3, 3, 3]
    assert not set(heads) & set(reference + selected) and pool == "layer-matched outside selected"
    assert layer_matched_heads(4, 8, reference, [("outside selected", selected)], seed=1)[0] == heads
    assert len({tuple(layer_matched_heads(4, 8, reference, [("outside selected", selected)], seed=s)[0])
                for s in range(6)}) > 1
    # layer 3 has 8 heads: 3 reference + 4 selected leave only 1 -> the looser rule (outside the reference)
    crowded = [(3, 1), (3, 3), (3, 4), (3, 6)]
    heads, pool = layer_matched_heads(4, 8, reference, [("outside selected", crowded)], seed=0)
    assert pool == "layer-matched outside reference" and not set(heads) & set(reference)
    assert sorted(layer for layer, _ in heads) == [2, 3, 3, 3]
    with pytest.raises(ValueError, match="layer-matched heads from layer 0"):
        layer_matched_heads(2, 2, [(0, 0), (0, 1)], [], seed=0)
    with pytest.raises(ValueError, match="layer 5"):
        layer_matched_heads(4, 8, [(5, 0)], [], seed=0)


def test_condition_cache_keys():
    """The cache file names of sweep conditions (results on disk are found by them: they must not drift)."""
    mask = Condition("ocr", 2, heads=[(0, 1), (2, 3)])
    assert mask.key == "head_set=ocr__k=2__seed=-1__heads=c7ef67d157"          # sha1('[[0, 1], [2, 3]]')[:10]
    sink = Condition("random", 2, seed=1, heads=[(2, 3), (0, 1)], random_pool="outside selected", beta=0.5)
    assert sink.key == "head_set=random__k=2__beta=0.5__seed=1__heads=4c3c1c9499"   # [[0, 1, 0.5], [2, 3, 0.5]]
    assert sink.target() == {(2, 3): 0.5, (0, 1): 0.5}
    assert Condition("none", 0, beta=1.0).key == "head_set=none__k=0__beta=1.0__seed=-1__heads=none"


def test_scale_ks():
    assert scale_ks(784) == [2, 5, 10, 20]
    assert scale_ks(32) == [2, 5, 8]
    assert scale_ks(8) == [2]


# ------------------------------------------------------------------------------------------ sink

def test_beta_one_equals_baseline(reader_lm, reader_tasks, vl_lm):
    every = [(l, h) for l in range(2) for h in range(4)]
    sample = reader_tasks["digit_text"][0]
    base = _logits(reader_lm, sample)
    same = _logits(reader_lm, sample, Plan(sink={h: 1.0 for h in every}))
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    changed = _logits(reader_lm, sample, Plan(sink={h: 0.0 for h in every}))
    assert not torch.allclose(changed, base, atol=1e-3)
    img = image_sample()
    torch.testing.assert_close(_logits(vl_lm, img, Plan(sink={h: 1.0 for h in every})), _logits(vl_lm, img),
                               rtol=1e-5, atol=1e-5)


def test_run_sink_table(reader_lm, reader_tasks, tmp_path):
    head_sets = {"ocr": [READER, (0, 1)], "retrieval": [(0, 3), (1, 0)]}
    small = {"digit_text": reader_tasks["digit_text"][:5]}
    table = run_sink(reader_lm, small, SweepHeads(head_sets, seeds=[0, 1, 2]),
                     RunSettings(out_dir=tmp_path, max_new_tokens=2, n_boot=100), k=1, betas=(0.0, 0.5, 1.0))
    assert len(table) == 1 + 3 * (2 + 3 + 3)                # per beta: 2 sets, 3 random, 3 layer-matched draws
    matched = table[table.head_set == "random_layer_matched"]
    assert set(matched["heads"]) <= {"l1_h1", "l1_h3"}      # READER's layer, outside the selected heads
    assert {"head_set", "k", "beta", "seed", "sink_key", "accuracy", "accuracy_lo", "accuracy_hi"} <= set(table.columns)
    assert not table.duplicated(["model", "task", "head_set", "k", "beta", "seed"]).any()
    rows = table.set_index(["head_set", "beta", "seed"])
    baseline = rows.loc[("none", 1.0, -1), "accuracy"]
    for name in ("ocr", "retrieval"):                      # beta = 1 is the baseline for every head set
        assert rows.loc[(name, 1.0, -1), "accuracy"] == baseline
    # random draws are the same heads for every beta
    rand = table[table.head_set == "random"]
    assert rand.groupby("seed")["heads"].nunique().eq(1).all()
    assert (tmp_path / "sink.csv").exists()
    summary = compare_to_baseline(table, "beta").set_index(["head_set", "beta"])
    assert summary.loc[("ocr", 1.0), "change"] == 0.0 and summary.loc[("retrieval", 1.0), "change"] == 0.0
    assert summary.loc[("random", 0.5), "n_seeds"] == 3 and "none" not in summary.index.get_level_values(0)


# ------------------------------------------------------------------------------------------ summaries

def test_bootstrap_and_cache(tmp_path):
    lo, hi = mean_interval([1.0] * 10)
    assert lo == hi == 1.0
    lo, hi = mean_interval([0.0, 1.0] * 20, n_boot=500, seed=0)
    assert 0.3 < lo < 0.5 < hi < 0.7
    assert mean_interval([0.0, 1.0] * 20, seed=4) == mean_interval([0.0, 1.0] * 20, seed=4)
    # golden value of the experiment tables' CI (unchanged since the vectorised numpy bootstrap this project
    # used first; ocrheads_lib.bootstrap, the one bootstrap, gives exactly this)
    assert mean_interval([0.1, 0.4, 0.9, 0.3, 0.7, 0.0], n_boot=200, seed=5) == (0.16625, 0.6670833333333334)
    assert summarize([], ["accuracy"])["accuracy_lo"] != summarize([], ["accuracy"])["accuracy_lo"]   # nan
    # a cache line cut by an interrupted write is dropped and the file repaired
    from ocrheads_lib.experiments.evaluate import Prediction

    path = tmp_path / "c.jsonl"
    cache = PredictionCache(path)
    cache.put(Prediction("a", "1", ["1"], {"accuracy": 1.0}))
    with open(path, "a") as handle:
        handle.write('{"id": "b", "predic')
    again = PredictionCache(path)
    assert list(again.records) == ["a"]
    again.put(Prediction("b", "2", ["2"], {"accuracy": 1.0}))
    assert list(PredictionCache(path).records) == ["a", "b"]


# ------------------------------------------------------------------------------------------ case study

def test_case_study_consistency_numbers():
    assert case_study.jaccard([(0, 1), (0, 2)], [(0, 2), (1, 1)]) == pytest.approx(1 / 3)
    sets = {"a": [(0, 0), (0, 1)], "b": [(0, 0), (0, 1)], "c": [(1, 0), (1, 1)]}
    out = case_study.consistency(sets, n_total_heads=8, top=2)
    assert out["mean_pairwise_jaccard"] == pytest.approx((1 + 0 + 0) / 3)
    assert out["head_counts"]["l0_h0"] == 2 and out["head_counts"]["l1_h1"] == 1
    # chance level: N = 4, k = 2 -> overlap 0 (p 1/6, J 0), 1 (p 4/6, J 1/3), 2 (p 1/6, J 1)
    assert case_study.chance_jaccard(4, 2) == pytest.approx(4 / 6 / 3 + 1 / 6)
    rng = np.random.default_rng(0)
    sim = np.mean([case_study.jaccard([(int(x), 0) for x in rng.choice(30, 5, replace=False)],
                                      [(int(x), 0) for x in rng.choice(30, 5, replace=False)]) for _ in range(4000)])
    assert case_study.chance_jaccard(30, 5) == pytest.approx(sim, abs=0.01)
    top = case_study.top_heads(np.array([[0.1, 0.5], [0.5, 0.2]]), 3)
    assert [(l, h) for l, h, _ in top] == [(0, 1), (1, 0), (1, 1)]     # ties layer-major
    assert case_study.top_heads(np.array([[0.0, 0.3], [0.0, 0.0]]), 5) == [(0, 1, 0.3)]   # zeros are not top


def test_run_case_study_writes_json(vl_lm, tmp_path):
    samples = []
    for index, char in enumerate("7a"):
        s = image_sample(index)
        samples.append(ImageSample(id=f"c-{char}", pages=s.pages, question=s.question, answer=char,
                                   evidence_page=0, boxes=s.boxes, units=[char], coarse_box=s.coarse_box, seed=index))
    with pytest.raises(ValueError, match="not one of"):
        case_study.group_by_character(samples, characters="7")
    result = case_study.run_case_study(vl_lm, samples, characters="7a", out_dir=tmp_path,
                                       score_options={"answer_source": "gold"})
    assert set(result["characters"]) == {"7", "a"}
    for char in "7a":
        info = result["characters"][char]
        assert info["n"] == 1 and info["n_scored"] + info["n_failed"] == 1
        assert len(info["answers"]) == 1            # the model's own greedy answer, on every sample
        assert info["accuracy"] == float(char in info["answers"][0])
        assert info["exact"] == float(info["answers"][0].strip() == char)
        if info["n_scored"]:
            assert len(info["top"]) <= 5 and np.array(info["mean"]).shape == (2, 4)
    assert (tmp_path / "case_study.json").exists()
    fig = case_study.plot_case_grid(result)
    assert len(fig.axes) >= 2


# ------------------------------------------------------------------------------------------ chain-of-thought

def test_extract_final_answer():
    assert cot.extract_final_answer("The pass key is 4817. Remember it.\nThe pass key is 4817.") == "4817"
    assert cot.extract_final_answer("4817") == "4817"
    assert cot.extract_final_answer("line: blue sky 12\nanswer 12.") == "12"
    assert cot.extract_final_answer("") == ""
    assert cot.followed_instruction("The pass key is 4817.", "4817")
    assert not cot.followed_instruction("4817", "4817")


def test_run_cot_table(reader_lm, reader_tasks, tmp_path):
    head_sets = {"ocr": [READER], "retrieval": [(0, 3)]}
    small = {"digit_text": reader_tasks["digit_text"][:4]}
    table, heads = cot.run_cot(reader_lm, small, head_sets, RunSettings(out_dir=tmp_path, max_new_tokens=2,
                                                                        n_boot=100), k=1, max_new_tokens_cot=4)
    assert list(table["condition"]) == ["direct", "cot"]
    assert {"accuracy", "final_em", "followed", "scorer", "top1_ocr_score", "top1_retrieval_score",
            "spearman_vs_direct"} <= set(table.columns)
    assert (table["accuracy"] == 1.0).all()            # the planted reader ignores the prompt wording
    assert table["scorer"].eq("retrieval").all()
    assert len(heads) == 2 * 2 * 4
    assert (tmp_path / "cot.csv").exists() and (tmp_path / "cot_heads.csv").exists()


# ------------------------------------------------------------------------------------------ head sets on disk

def test_experiment_heads_reads_results(tmp_path):
    from ocrheads_lib.experiments.head_sets import experiment_heads
    from ocrheads_lib.heads import save_head_set
    from ocrheads_lib.scoring import HeadScores, SampleScore, ScoreMeta

    folder = tmp_path / "m" / "head_sets"
    save_head_set(folder / "ocr.json", {"model": "m", "kind": "ocr", "rule": "readme", "heads": [[1, 2], [0, 1]]})
    save_head_set(folder / "ocr.paper-code.json", {"model": "m", "kind": "ocr", "rule": "paper-code",
                                                   "heads": [[0, 0]]})
    save_head_set(folder / "retrieval.json", {"model": "m", "kind": "retrieval", "rule": "readme", "heads": [[0, 3]]})
    hits = np.zeros((2, 4), dtype=int)
    hits[1, 1], hits[0, 2] = 2, 1
    scores = HeadScores(ScoreMeta(model_id="m", kind="ocr", n_layers=2, n_heads=4),
                        samples=[SampleScore("s0", 1.0, 2, hits)])
    scores.save(tmp_path / "m" / "ocr_scores.json")
    got = experiment_heads(None, tmp_path / "m", rule="readme")
    assert got.selected["ocr"] == [(1, 2), (0, 1)]
    assert got.ranked["ocr"][:4] == [(1, 2), (0, 1), (1, 1), (0, 2)]      # selected first, then by score
    assert len(got.ranked["ocr"]) == 8
    assert got.ranked["retrieval"] == [(0, 3)] and got.exclude == [(0, 1), (0, 3), (1, 2)]
    assert experiment_heads(None, tmp_path / "m", rule="paper-code").selected["ocr"] == [(0, 0)]
    with pytest.raises(FileNotFoundError, match="samples_for"):
        experiment_heads(None, tmp_path / "empty")


def test_experiment_heads_ignores_other_models(tmp_path, reader_lm):
    from ocrheads_lib.experiments.head_sets import experiment_heads
    from ocrheads_lib.heads import save_head_set
    from ocrheads_lib.scoring import HeadScores, ScoreMeta

    folder = tmp_path / "m"
    save_head_set(folder / "head_sets" / "ocr.json", {"model": "another", "kind": "ocr", "rule": "readme",
                                                      "heads": [[0, 0]]})
    HeadScores(ScoreMeta(model_id=reader_lm.model_id, kind="retrieval", n_layers=3, n_heads=4)).save(
        folder / "retrieval_scores.json")
    asked = []

    def samples_for(kind):
        asked.append(kind)
        return digit_samples(2, seed=5) if kind == "retrieval" else []

    got = experiment_heads(reader_lm, folder, samples_for=samples_for)
    assert asked == ["ocr", "retrieval"]                 # both stale files were ignored and recomputed
    assert "ignored" in got.source["ocr"] and "another" in got.source["ocr"]
    assert "head grid" in got.source["retrieval"]
    assert len(got.ranked["retrieval"]) == 8


def test_build_tasks_and_char_similarity():
    from ocrheads_lib.experiments.evaluate import metrics_for, score_prediction
    from ocrheads_lib.metrics import char_similarity
    from ocrheads_lib.experiments.tasks import build_tasks

    tasks, skipped = build_tasks({"pk": "passkey_text", "pk100": ("passkey_text", {"context_chars": 100}),
                                  "docs": "synthetic_docs", "dv": "docvqa"}, n=2, seed=0)
    assert set(tasks) == {"pk", "pk100", "docs"} and "dv" in skipped and "offline" in skipped["dv"]
    assert len(tasks["pk100"][0].context) <= 100 < len(tasks["pk"][0].context)
    assert metrics_for(tasks["docs"]) == ("anls", "em", "f1", "char_sim")
    with pytest.raises(ValueError):
        build_tasks(["no_such_task"], n=1)
    assert char_similarity("6876", "8726") == pytest.approx(0.5)
    assert char_similarity("", "") == 1.0 and char_similarity("abc", "") == 0.0
    scores = score_prediction(" 8726.", ["8726"], ("accuracy", "em", "char_sim"))
    assert scores["accuracy"] == 1.0 and scores["em"] == 1.0 and scores["char_sim"] == pytest.approx(0.8)


def test_first_token_mass_matches_stock_eager_attention(vl_lm):
    """The per-head sink mass equals the stock eager weights on key 0, averaged over the answer rows."""
    from ocrheads_lib.attention import use_probe_attention
    from ocrheads_lib.experiments.sink import first_token_mass
    from ocrheads_lib.inference import sample_inputs as teacher_forced_inputs

    samples = [image_sample(0), image_sample(1)]
    table = first_token_mass(vl_lm, samples)
    expected = []
    for sample in samples:
        inputs = teacher_forced_inputs(vl_lm, sample, answer=sample.answer)
        rows = (inputs.answer_positions - 1).tolist()
        previous = use_probe_attention(vl_lm, "eager")
        try:
            with torch.no_grad():
                out = vl_lm.model(**inputs.tensors, output_attentions=True)
        finally:
            use_probe_attention(vl_lm, previous)
        attentions = out.attentions["language_model"] if isinstance(out.attentions, dict) else out.attentions
        expected.append(torch.stack([a[0, :, rows, 0].float().mean(-1) for a in attentions]))
    expected = torch.stack(expected).mean(0)
    assert table.shape == tuple(expected.shape)
    assert float(expected.max()) > 1e-3      # a random model does attend to its first token: the check has teeth
    np.testing.assert_allclose(table.to_numpy(), expected.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no samples"):
        first_token_mass(vl_lm, [])


def test_evaluate_records_sample_errors_but_never_stores_faults(reader_lm, reader_tasks, tmp_path):
    """A sample error (e.g. a context too long) is a recorded failure; a fault of the machine (out of memory)
    stops the experiment and leaves nothing in the prediction cache, so a rerun retries the sample."""
    from ocrheads_lib.experiments.evaluate import PredictionCache, evaluate

    samples = list(next(iter(reader_tasks.values())))[:2]

    def too_long(lm, sample, max_new_tokens):
        raise ValueError("context of 9000 tokens is longer than the model's 2048 positions")

    failed = evaluate(reader_lm, samples, answer_fn=too_long)
    assert [p.failure for p in failed] == ["ValueError: context of 9000 tokens is longer than the model's 2048 "
                                           "positions"] * 2

    def out_of_memory(lm, sample, max_new_tokens):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cache_path = tmp_path / "cache.jsonl"
    with pytest.raises(torch.OutOfMemoryError):
        evaluate(reader_lm, samples, answer_fn=out_of_memory, cache=PredictionCache(cache_path))
    assert not cache_path.exists() or cache_path.read_text() == ""


# ------------------------------------------------------------------------------------------ settings, comparison

def test_settings_objects_refuse_bad_input():
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 1, got 0"):
        RunSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="n_boot"):
        RunSettings(n_boot=-5)
    with pytest.raises(ValueError, match="boot_seed"):
        RunSettings(boot_seed=1.5)
    with pytest.raises(ValueError, match="model_id"):
        RunSettings(model_id=" ")
    assert RunSettings(model_id="m").name_of(object()) == "m"
    with pytest.raises(ValueError, match="must map head set names"):
        SweepHeads({})
    with pytest.raises(ValueError, match="reserved"):
        SweepHeads({"random": [(0, 1)]})
    with pytest.raises(ValueError, match=r"\(1, 2, 3\) is not a \(layer, head\) pair"):
        SweepHeads({"ocr": [(1, 2, 3)]})
    with pytest.raises(ValueError, match="distinct integers"):
        SweepHeads({"ocr": [(0, 1)]}, seeds=[0, 0])
    with pytest.raises(ValueError, match="outside the model's 2 layers x 4 heads"):
        mask_conditions(2, 4, SweepHeads({"ocr": [(5, 0)]}, seeds=[0]), ks=[1])
    heads = SweepHeads({"ocr": [np.array([1, 2]), (0, 1)], "retrieval": [(0, 3)]}, seeds=[2])
    assert heads.ranked["ocr"] == [(1, 2), (0, 1)] and heads.seeds == (2,)
    assert heads.avoid == [(0, 1), (0, 3), (1, 2)]                     # default: every selected head
    assert SweepHeads({"ocr": [(0, 1)]}, exclude=[(1, 1)]).avoid == [(1, 1)]
    from ocrheads_lib.experiments.sweep import Intervention
    with pytest.raises(ValueError, match="file-name-safe"):
        Intervention("../masking", plan_for=lambda c: None, columns_for=lambda c: {})


def test_compare_to_baseline_by_hand():
    import pandas as pd

    rows = [("t", "none", 0, -1, 0.8)]
    rows += [("t", "ocr", 2, -1, 0.2), ("t", "random", 2, 0, 0.7), ("t", "random", 2, 1, 0.5),
             ("t", "ocr", 4, -1, 0.1), ("u", "ocr", 2, -1, 0.5)]           # task u has no baseline row: skipped
    table = pd.DataFrame([dict(task=t, modality="text", head_set=s, k=k, seed=seed, metric="accuracy", accuracy=a,
                               char_sim=a / 2) for t, s, k, seed, a in rows])
    got = compare_to_baseline(table, "k")
    assert list(got.columns) == ["task", "modality", "metric", "head_set", "k", "baseline", "score", "change",
                                 "worst", "best", "n_seeds"]
    assert got[["head_set", "k"]].values.tolist() == [["ocr", 2], ["ocr", 4], ["random", 2]]
    random_row = got.iloc[2]
    assert random_row["score"] == pytest.approx(0.6) and random_row["change"] == pytest.approx(-0.2)
    assert (random_row["worst"], random_row["best"], random_row["n_seeds"]) == (0.5, 0.7, 2)
    assert got.iloc[0]["change"] == pytest.approx(-0.6) and got.iloc[0]["baseline"] == 0.8
    other = compare_to_baseline(table, "k", metric="char_sim")
    assert other.iloc[0]["baseline"] == 0.4 and other.iloc[0]["metric"] == "char_sim"
    with pytest.raises(ValueError, match="no column 'beta'"):
        compare_to_baseline(table, "beta")
