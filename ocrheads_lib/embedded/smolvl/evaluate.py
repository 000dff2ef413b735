"""Held-out evaluation of smol-vl: greedy answers through the adapter, scored as the book scores them.

`evaluate_sets(adapter, sets)` answers every example with the adapter's own prompt path
(`ocrheads_lib.inference.answer_prompt`) and reports, per set, the book's pass-key accuracy
(the gold occurs in the answer), exact match, and the Wilson 95 % interval of the accuracy.
`shift_sets(n, seed)` builds the card's off-the-grid diagnostic: the same keys shifted by a few pixels.
"""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from ocrheads_lib.embedded.tiny.examples import Example, key_example, seeded_examples, shifted_key_example
from ocrheads_lib.experiments.evaluate import score_prediction
from ocrheads_lib.inference import answer_prompt
from ocrheads_lib.metrics import wilson_interval

MAX_NEW_TOKENS = 16     # longest gold: 15 characters (three short words) -> at most 15 tokens, + <|im_end|>
SHIFTS = (0, 2, 4, 7, 14)   # pixel shifts off the 28-px grid: small, a quarter cell, half a cell


def shift_sets(n: int, seed: int, shifts: tuple[int, ...] = SHIFTS) -> dict[str, list[Example]]:
    """The same `n` keys alone on a page (`key_example`, aligned, drawn from `seed`), redrawn at every shift:
    "x<s>" moved s pixels right, "y<s>" s pixels down; a shift of 0 gives one set, "x0" (the aligned pages)."""
    if not shifts or any(not isinstance(s, int) or s < 0 for s in shifts):
        raise ValueError(f"shifts = {shifts!r}: give non-negative integer pixel shifts, e.g. {SHIFTS}")
    bases = seeded_examples(n, seed, lambda rng: key_example(rng, "aligned"))
    sets: dict[str, list[Example]] = {}
    for axis in ("x", "y"):
        for shift in shifts:
            if shift == 0 and axis == "y":
                continue
            move = (shift, 0) if axis == "x" else (0, shift)
            sets[f"{axis}{shift}"] = [shifted_key_example(base, *move) for base in bases]
    return sets


def evaluate_sets(adapter: Any, sets: dict[str, list[Example]], max_new_tokens: int = MAX_NEW_TOKENS,
                  progress: bool = True) -> dict[str, dict]:
    """{set name: {n, correct, accuracy, em, wilson95, failures}} (failures: the first 10 wrong answers).
    progress: a bar per set (on stderr)."""
    out: dict[str, dict] = {}
    for name, examples in sets.items():
        correct = exact = 0
        failures = []
        for ex in tqdm(examples, desc=f"[smol-vl] {name}", unit="sample", disable=not progress, leave=False):
            golds = list(ex.meta.get("golds") or [ex.answer])
            prediction = answer_prompt(adapter, list(ex.pages), ex.prompt, max_new_tokens)
            scores = score_prediction(prediction, golds, ("accuracy", "em"))
            correct += int(scores["accuracy"])
            exact += int(scores["em"])
            if not scores["accuracy"] and len(failures) < 10:
                failures.append({"gold": ex.answer, "prediction": prediction})
        n = len(examples)
        out[name] = {"n": n, "correct": correct, "accuracy": round(correct / n, 4) if n else 0.0,
                     "em": round(exact / n, 4) if n else 0.0,
                     "wilson95": [round(x, 4) for x in wilson_interval(correct, n)] if n else [0.0, 1.0],
                     "failures": failures}
    return out
