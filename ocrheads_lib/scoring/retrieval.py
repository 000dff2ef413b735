"""The text retrieval score of every head (Wu et al. 2024; PAPER.md §3 for the paper's variant).

``variant="wu"`` (default) — Wu et al.'s copy-paste test, per answer token:
the answer is generated greedily, or forced (``answer_source="gold"``) as the needle spells it: the
needle's own tokens that cover the answer (" lynx" -> ' lyn', 'x' in a byte-level BPE), so that a copy
can hit; an answer whose characters do not coincide with whole needle tokens is a recorded failure.
The scored tokens are the generated tokens that spell the gold answer (character alignment, see
``ocrheads_lib.scoring.align.find_answer``); for each, head (l, h) hits when the argmax key of its row
(``row="emit"``: the query that predicts the token, default; ``"consume"``: the query at the token)
lies inside the needle span AND holds the same token id as the emitted token.
Entry = hits / scored tokens (weight 1; the match weight of the generation, ``weighting``, is kept in
``info`` and a weight of 0 is a failure).

``variant="paper-code"`` — what ``step2_text_retrieval_head.py`` computes (PAPER.md §3):
the scored positions are EVERY position of prompt + answer whose id belongs to the set of the gold
answer's ids (prompt positions included); the argmax is taken over key columns 0 … L-2 (L = prompt
length); a hit when the attended token equals the token at the scored position — the needle is not
checked and the diagonal (a prompt token attending itself) counts. Its native row convention is
``"consume"`` (the default for this variant); ``"emit"`` shifts every row by one. The column
restriction is applied to the probe's top-k keys (``topk=8``): a row whose 8 best keys all lie outside
the columns counts as a miss (rows <= L-2 are exact, since all their keys are inside).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from ocrheads_lib.data.samples import TextSample
from ocrheads_lib.models.base import NonFiniteLogitsError
from ocrheads_lib.scoring.align import align_answer, locate_in_prompt
from ocrheads_lib.scoring.common import (
    SampleFailure,
    answer_ids,
    check_answer_source,
    check_row,
    check_weighting,
    model_facts,
    exception_reason,
    forced_inputs,
    generate_recording,
    match_weight,
    probe_rows,
    query_row,
)
from ocrheads_lib.scoring.ocr import check_passes, maybe_progress
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta

VARIANTS = ("wu", "paper-code")
PAPER_CODE_TOPK = 8


def default_row(variant: str) -> str:
    """The variant's native row convention: wu -> "emit", paper-code -> "consume"."""
    return "consume" if variant == "paper-code" else "emit"


def needle_answer_ids(lm: Any, prompt_ids: list[int], sample: TextSample) -> list[int]:
    """The answer's token ids as the needle spells them: the prompt tokens that cover the answer's
    characters. SampleFailure when those tokens also carry other characters (e.g. one token "7."), since
    then no token sequence is both the answer and a copy of the needle."""
    try:
        positions = locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, sample.answer_span)
    except ValueError as error:
        raise SampleFailure(f"answer not aligned to the needle: {error}") from error
    ids = [prompt_ids[p] for p in positions]
    spelled = lm.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if not positions or spelled.strip() != sample.answer.strip():
        raise SampleFailure(f"answer not aligned to the needle: its tokens spell {spelled!r}, not the answer "
                            f"{sample.answer!r} alone")
    return ids


def _score_wu(lm: Any, sample: TextSample, row: str, answer_source: str, max_new_tokens: int,
              passes: int = 2, weighting: str = "chars") -> SampleScore:
    inputs = lm.build_inputs([], sample.prompt)
    prompt_ids = inputs.input_ids[: inputs.prompt_len].tolist()
    try:
        needle = set(locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, sample.needle_span))
    except ValueError as error:
        raise SampleFailure(f"needle not located: {error}") from error
    if not needle:
        raise SampleFailure(f"needle not located: span {sample.needle_span} covers no prompt token")
    recorded = None
    if passes == 1:
        forced, recorded = generate_recording(lm, inputs, max_new_tokens)
    else:
        gold_ids = needle_answer_ids(lm, prompt_ids, sample) if answer_source == "gold" else None
        forced = answer_ids(lm, inputs, sample.answer, answer_source, max_new_tokens, gold_ids=gold_ids)
    alignment = align_answer(lm.tokenizer, forced.ids, sample.answer)
    weight = match_weight(lm, forced, alignment, sample.answer, weighting)
    if weight <= 0 or alignment is None or not alignment.scored_tokens:
        raise SampleFailure(f"answer not generated: {forced.text[:80]!r} (gold {sample.answer!r}; {weighting} "
                            f"weight {weight:g})")
    scored = alignment.scored_tokens
    rows = [query_row(inputs.prompt_len + k, row) for k in scored]
    unique_rows = sorted(set(rows))
    tensors = forced_inputs(inputs, forced.ids)
    argmax = recorded.take(unique_rows) if recorded is not None else None  # (L, H, R) or None
    if argmax is None:
        argmax, _ = probe_rows(lm, tensors, unique_rows)  # (L, H, R)
    sequence = tensors["input_ids"][0].cpu()  # (T,)
    needle_t = torch.tensor(sorted(needle), dtype=torch.long)  # (m,)
    slot = {r: i for i, r in enumerate(unique_rows)}
    hits = torch.zeros(argmax.shape[:2], dtype=torch.long)  # (L, H)
    for k, r in zip(scored, rows):
        keys = argmax[:, :, slot[r]]  # (L, H)
        same_token = sequence[keys] == forced.ids[k]  # (L, H)
        hits += (torch.isin(keys, needle_t) & same_token).long()
    info = {"answer": forced.text, "answer_source": forced.source, "match": float(weight), "rows": rows,
            "needle_tokens": len(needle)}
    return SampleScore(id=sample.id, weight=1.0, n_rows=len(scored), hits=hits.numpy().astype(np.int64), info=info)


def _score_paper_code(lm: Any, sample: TextSample, row: str, answer_source: str,
                      max_new_tokens: int) -> SampleScore:
    inputs = lm.build_inputs([], sample.prompt)
    forced = answer_ids(lm, inputs, sample.answer, answer_source, max_new_tokens)
    tensors = forced_inputs(inputs, forced.ids)
    sequence = tensors["input_ids"][0].cpu()  # (T,)
    gold_ids = set(lm.tokenizer(str(sample.answer), add_special_tokens=False)["input_ids"])
    positions = [n for n in range(len(sequence)) if int(sequence[n]) in gold_ids]
    positions = [n for n in positions if query_row(n, row) >= 0]
    if not positions:
        raise SampleFailure("no answer tokens: no position of the sequence holds an id of the gold answer")
    rows = [query_row(n, row) for n in positions]
    unique_rows = sorted(set(rows))
    _, top = probe_rows(lm, tensors, unique_rows, topk=PAPER_CODE_TOPK)  # (L, H, R, k)
    last_column = inputs.prompt_len - 2  # the paper keeps columns 0 .. L-2
    allowed = (top >= 0) & (top <= last_column)  # (L, H, R, k)
    first = allowed.float().argmax(dim=-1)  # (L, H, R): first allowed key in the top-k order
    restricted = top.gather(-1, first[..., None])[..., 0]  # (L, H, R)
    restricted = torch.where(allowed.any(dim=-1), restricted, torch.full_like(restricted, -1))
    slot = {r: i for i, r in enumerate(unique_rows)}
    hits = torch.zeros(top.shape[:2], dtype=torch.long)  # (L, H)
    for n, r in zip(positions, rows):
        keys = restricted[:, :, slot[r]]  # (L, H)
        valid = keys >= 0
        attended = sequence[keys.clamp(min=0)]  # (L, H)
        hits += (valid & (attended == sequence[n])).long()
    info = {"answer": forced.text, "answer_source": forced.source, "rows": rows,
            "prompt_rows": sum(1 for n in positions if n < inputs.prompt_len)}
    return SampleScore(id=sample.id, weight=1.0, n_rows=len(positions), hits=hits.numpy().astype(np.int64),
                       info=info)


def score_retrieval_sample(lm: Any, sample: TextSample, *, variant: str = "wu", row: str | None = None,
                           answer_source: str = "generate", max_new_tokens: int = 32,
                           passes: int = 2, weighting: str = "chars") -> SampleScore | Failure:
    """Score one text sample for every head; returns its SampleScore or a Failure with the reason.
    passes=1 (variant "wu" only) records the rows while generating, as in score_ocr_sample."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    row = check_row(row or default_row(variant))
    check_answer_source(answer_source)
    check_passes(passes, answer_source)
    check_weighting(weighting)
    if passes == 1 and variant != "wu":
        raise ValueError("passes=1 is available for variant='wu' only (paper-code also scores prompt rows)")
    try:
        if variant == "wu":
            return _score_wu(lm, sample, row, answer_source, max_new_tokens, passes, weighting)
        return _score_paper_code(lm, sample, row, answer_source, max_new_tokens)
    except SampleFailure as failure:
        return Failure(sample.id, str(failure))
    except NonFiniteLogitsError:  # the model's, not the sample's: stops the run, never stored as a failure
        raise
    except Exception as error:  # noqa: BLE001 - any model error becomes a recorded, counted failure
        return Failure(sample.id, exception_reason(error))


def retrieval_meta(lm: Any, *, variant: str, row: str, answer_source: str, max_new_tokens: int,
                   dataset: str = "", seed: int | None = None, n: int | None = None,
                   weighting: str = "chars") -> ScoreMeta:
    return ScoreMeta(model_id=str(lm.model_id), kind="retrieval", n_layers=int(lm.n_layers),
                     n_heads=int(lm.n_heads), dataset=dataset, seed=seed, n=n,
                     revision=getattr(lm, "revision", None), row=row, **model_facts(lm),
                     options={"variant": variant, "answer_source": answer_source, "max_new_tokens": max_new_tokens,
                              "weighting": weighting})


def score_retrieval(lm: Any, text_samples: Iterable[TextSample], variant: str = "wu", row: str | None = None, *,
                    answer_source: str = "generate", max_new_tokens: int = 32, passes: int = 2, dataset: str = "",
                    seed: int | None = None, progress: bool = False, weighting: str = "chars") -> HeadScores:
    """Text retrieval scores of every head of `lm` over `text_samples` (see the module docstring)."""
    samples = list(text_samples)
    row = check_row(row or default_row(variant))
    meta = retrieval_meta(lm, variant=variant, row=row, answer_source=answer_source, max_new_tokens=max_new_tokens,
                          dataset=dataset, seed=seed, n=len(samples), weighting=weighting)
    scores = HeadScores(meta=meta)
    for sample in maybe_progress(samples, progress, "retrieval scores"):
        result = score_retrieval_sample(lm, sample, variant=variant, row=row, answer_source=answer_source,
                                        max_new_tokens=max_new_tokens, passes=passes, weighting=weighting)
        (scores.samples if isinstance(result, SampleScore) else scores.failures).append(result)
    return scores
