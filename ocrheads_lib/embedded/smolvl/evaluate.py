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
N_FIRST = 2             # answers kept per set whatever their score (the card shows them beside their pages)
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
    """{set name: {n, correct, accuracy, em, wilson95, failures, first, hits}} (failures: the first 10 wrong
    answers; first: the first N_FIRST answers, right or wrong; hits: "1"/"0" per sample, in order).
    progress: a bar per set (on stderr)."""
    out: dict[str, dict] = {}
    for name, examples in sets.items():
        correct = exact = 0
        failures, first, hits = [], [], []
        for ex in tqdm(examples, desc=f"[smol-vl] {name}", unit="sample", disable=not progress, leave=False):
            golds = list(ex.meta.get("golds") or [ex.answer])
            prediction = answer_prompt(adapter, list(ex.pages), ex.prompt, max_new_tokens)
            scores = score_prediction(prediction, golds, ("accuracy", "em"))
            correct += int(scores["accuracy"])
            exact += int(scores["em"])
            hits.append("1" if scores["accuracy"] else "0")
            if len(first) < N_FIRST:
                first.append({"gold": ex.answer, "prediction": prediction})
            if not scores["accuracy"] and len(failures) < 10:
                failures.append({"gold": ex.answer, "prediction": prediction})
        n = len(examples)
        out[name] = {"n": n, "correct": correct, "accuracy": round(correct / n, 4) if n else 0.0,
                     "em": round(exact / n, 4) if n else 0.0,
                     "wilson95": [round(x, 4) for x in wilson_interval(correct, n)] if n else [0.0, 1.0],
                     "failures": failures, "first": first, "hits": "".join(hits)}
    return out


# ------------------------------------------------------------------------------------------ per-cell gate
# What the language half is handed, before it reads anything: is each image token, decoded through SmolLM2's
# (tied) embedding matrix, the character drawn in its cell? A key is read only if all its cells are right, so
# this gate bounds every reading accuracy above; the card reports it by pixel shift and training logs it.
BASE_VOCAB = 49152
GATE_SHIFTS = ((0, 0), (2, 0), (4, 0), (7, 0), (14, 0), (0, 2), (0, 4), (0, 7), (0, 14), (21, 9), (11, 25))


def shift_name(dx: int, dy: int) -> str:
    """"x0" for the aligned page, "x<dx>" / "y<dy>" for a shift along one axis, "x<dx>y<dy>" for both."""
    if dx and dy:
        return f"x{dx}y{dy}"
    return f"y{dy}" if dy else f"x{dx}"


def cell_token_ids(tokenizer, labels: list[str]) -> list[int]:
    """The target token of each visual token: the SmolLM2 token of the character drawn in it, "Ġ" (the space
    token) for a blank cell, -100 (ignored) for a character that is not one token."""
    space = tokenizer.convert_tokens_to_ids("Ġ")
    out = []
    for char in labels:
        if not char.strip():
            out.append(space)
            continue
        pieces = tokenizer.tokenize(char)
        out.append(tokenizer.convert_tokens_to_ids(pieces[0]) if len(pieces) == 1 else -100)
    return out


def gate_pages(n: int, seed: int, shifts=GATE_SHIFTS) -> dict[str, list[Example]]:
    """n dense random-character pages (`dense_page_example`'s alphabet, drawn once from `seed`), redrawn at every
    shift of `shifts` ((dx, dy) pixels, each in [0, 28)) on a page one cell larger: the same glyphs everywhere."""
    import random

    from ocrheads_lib.data.grid import cell_labels, render_grid
    from ocrheads_lib.embedded.tiny.examples import dense_page_example

    rng = random.Random(seed)
    bases = [dense_page_example(rng) for _ in range(n)]
    sets: dict[str, list[Example]] = {}
    for dx, dy in shifts:
        pages = []
        for base in bases:
            lines = base.meta["lines"]
            cols = max(len(s) for s in lines) + 2
            page = render_grid(lines, cols, len(lines) + 1, dx, dy)
            pages.append(Example("eye", [page.image], "", "", [cell_labels(page)],
                                 meta=dict(lines=lines, x_off=dx, y_off=dy)))
        sets[shift_name(dx, dy)] = pages
    return sets


def visual_tokens(model: Any, processor: Any, examples: list[Example]):
    """The merger's output (one row per visual token, in page order) for the examples' pages."""
    pages = [page for ex in examples for page in ex.pages]
    pixels = processor.image_processor(images=pages, return_tensors="pt")
    out = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
    return out.pooler_output if hasattr(out, "pooler_output") else out


def cell_gate(model: Any, processor: Any, sets: dict[str, list[Example]], batch: int = 16,
              progress: bool = True) -> dict[str, dict]:
    """{set: {cells, correct, accuracy, wilson95, cosine}} over the inked cells of each set's pages: correct when
    the argmax of (image token . SmolLM2 embedding matrix) is the cell's character; cosine: the mean cosine
    between an inked cell's image token and its character's embedding."""
    import torch

    tokenizer = processor.tokenizer
    embed = model.model.language_model.embed_tokens.weight[:BASE_VOCAB].detach().float()
    out: dict[str, dict] = {}
    with torch.no_grad():
        for name, examples in tqdm(sets.items(), desc="[smol-vl] per-cell gate", disable=not progress, leave=False):
            correct = cells = 0
            cosine = 0.0
            for start in range(0, len(examples), batch):
                chunk = examples[start:start + batch]
                tokens = visual_tokens(model, processor, chunk).float()
                labels = [c for ex in chunk for page in ex.cell_labels for c in page]
                if len(labels) != len(tokens):
                    raise RuntimeError(f"set {name}: {len(tokens)} visual tokens but {len(labels)} cell labels")
                targets = torch.tensor(cell_token_ids(tokenizer, labels))
                inked = torch.tensor([bool(c.strip()) for c in labels]) & (targets >= 0)
                guess = (tokens[inked] @ embed.T).argmax(-1)
                correct += int((guess == targets[inked]).sum())
                cells += int(inked.sum())
                cosine += float(torch.nn.functional.cosine_similarity(tokens[inked], embed[targets[inked]], dim=-1).sum())
            out[name] = {"cells": cells, "correct": correct, "accuracy": round(correct / cells, 4) if cells else 0.0,
                         "wilson95": [round(x, 4) for x in wilson_interval(correct, cells)] if cells else [0.0, 1.0],
                         "cosine": round(cosine / cells, 4) if cells else 0.0}
    return out
