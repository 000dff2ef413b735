"""Batched greedy answers (left padded) equal one-at-a-time answers (issue 33, item 5).

Padding changes the shapes of the float matmuls, so a greedy step whose two best logits are nearly tied may
flip. Where a batched answer differs, the test measures the one-at-a-time top-2 logit margin at the first
differing step and accepts the difference only below MAX_FLIP_MARGIN, naming it.
"""
import pytest
import torch

from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.data import passkey_images, passkey_text
from ocrheads_lib.experiments.evaluate import PredictionCache, evaluate
from ocrheads_lib.inference import answer, answer_batch, generate_ids, sample_inputs, sample_prompt
from ocrheads_lib.models import load_model

MAX_FLIP_MARGIN = 1e-3     # logits; a flip at a larger margin is a bug, not float noise


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def step_margin(lm, sample, prefix: list[int]) -> float:
    """Top-1 minus top-2 logit of the one-at-a-time model after the answer prefix `prefix`."""
    inputs = sample_inputs(lm, sample, answer=None)
    ids = torch.tensor([prefix], dtype=torch.long)
    tensors = dict(inputs.tensors)
    tensors["input_ids"] = torch.cat([tensors["input_ids"], ids], dim=1)
    tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
    with torch.no_grad():
        logits = lm.model(**tensors).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def compare(lm, samples, max_new_tokens, batch_size):
    """(number equal, [(sample id, margin) of each flip]) of token ids, batched vs one at a time."""
    one = [generate_ids(lm, s, max_new_tokens).tolist() for s in samples]
    batched = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batched += [r.tolist() for r in lm.generate_batch(lm.build_batch([sample_prompt(s) for s in chunk]),
                                                          max_new_tokens)]
    flips = []
    for sample, a, b in zip(samples, one, batched):
        if a != b:
            first = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
            flips.append((sample.id, step_margin(lm, sample, a[:first])))
    return len(samples) - len(flips), flips


def test_tiny_batched_ids_equal_one_at_a_time_with_padding(tiny):
    # one- and two-page samples in one batch: rows of different lengths, so left padding is exercised
    samples = passkey_images(4, seed=1000) + passkey_images(3, seed=1001, pages=2)
    tensors = tiny.build_batch([sample_prompt(s) for s in samples])
    lengths = tensors["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max() and bool((tensors["attention_mask"][:, -1] == 1).all())   # left padded
    equal, flips = compare(tiny, samples, 8, batch_size=7)
    assert all(margin < MAX_FLIP_MARGIN for _, margin in flips), f"flips at logit margins {flips}"
    assert equal == len(samples), f"padding flipped near-ties at margins {flips}"


def test_tiny_answer_batch_under_a_mask_and_in_evaluate(tiny):
    samples = passkey_images(5, seed=1000)
    plan = Plan(mask=[(0, 0), (1, 1)])
    with apply(tiny, plan):
        one = [answer(tiny, s, max_new_tokens=8) for s in samples]
        assert answer_batch(tiny, samples, max_new_tokens=8, batch_size=3) == one
    batched = evaluate(tiny, samples, plan, cache=PredictionCache(None), max_new_tokens=8, batch_size=4)
    assert [p.prediction for p in batched] == one
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(tiny, samples, plan, batch_size=0)


def test_smollm2_batched_equals_one_at_a_time():
    lm = load_model("smollm2")
    samples = [*passkey_text(3, seed=1000, context_chars=200), *passkey_text(3, seed=1001, context_chars=420)]
    tensors = lm.build_batch([sample_prompt(s) for s in samples])
    assert tensors["attention_mask"].sum(dim=1).min() < tensors["input_ids"].shape[1]      # rows are padded
    equal, flips = compare(lm, samples, 10, batch_size=6)
    assert all(margin < MAX_FLIP_MARGIN for _, margin in flips), f"flips at logit margins {flips}"
    if flips:
        pytest.xfail(f"left padding flipped {len(flips)} near-tied greedy step(s); margins {flips}")


def test_a_failing_batch_is_answered_one_at_a_time(tiny):
    """A sample longer than the model's window breaks its batch; each sample then gets its own record, as with
    batch_size=1 (the too-long one a failure, the others their answers)."""
    short = passkey_text(2, seed=1000, context_chars=120)
    long = passkey_text(1, seed=1001, context_chars=4000)          # > 2048 positions with tiny's characters
    samples = [short[0], long[0], short[1]]
    one = evaluate(tiny, samples, None, max_new_tokens=6)
    batched = evaluate(tiny, samples, None, max_new_tokens=6, batch_size=3)
    assert [p.to_json() for p in batched] == [p.to_json() for p in one]
    assert batched[1].failure.startswith("ContextTooLongError") and batched[0].ok and batched[2].ok
