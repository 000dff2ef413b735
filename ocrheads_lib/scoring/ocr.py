"""The OCR score of every head (PAPER.md §2, with the conventions made explicit).

For one image sample:

1. the answer: generated greedily with the model's fast attention (``answer_source="generate"``), or
   the gold answer (``"gold"``: teacher forcing for untrained models and tests; weight 1);
2. answer tokens -> answer units by character offsets (:mod:`ocrheads_lib.scoring.align`: the answer
   is placed where the generation wrote it as a word); tokens that cover no unit are not scored;
3. the sample weight (``weighting``): by default the share of the gold's characters that the generation
   wrote (``"chars"``), or the paper's token-id match score (``"paper-ids"``: longest common run of ids /
   gold ids, PAPER.md §6); a weight of 0 is a failure ("answer not generated");
4. one teacher-forced forward pass under the probe records every head's argmax key at the scored
   rows; ``row="emit"`` uses the query that predicts the answer token (position p-1), ``"consume"`` the
   query at the answer token itself (position p, what the paper's code does, PAPER.md §2.5);
5. a hit when the argmax is an evidence token (image tokens overlapping the box by > ``min_overlap``
   of its area) of the token's unit(s) (``mode="fine"``: unit b <-> box b) or of the coarse box
   (``"coarse"``);
6. the entry of head (l, h) = weight * hits / scored rows.

``passes=1`` merges steps 1 and 4: the probe records the candidate rows during greedy generation (the
rows are absolute positions, so the decode steps reach them) and the teacher-forced pass is skipped;
the result is identical (tested) and a row generation never computed falls back to the second pass.

A sample that cannot be scored becomes a :class:`~ocrheads_lib.scoring.store.Failure` with its reason
(no evidence tokens for a box, answer not generated, units that do not spell the answer, or the
exception the model raised) — all heads or none, never a partial row.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ocrheads_lib.data.samples import ImageSample
from ocrheads_lib.models.base import NonFiniteLogitsError
from ocrheads_lib.scoring.align import align_answer
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
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta

MODES = ("fine", "coarse")


def _evidence_sets(inputs: Any, sample: ImageSample, mode: str, min_overlap: float) -> list[set[int]]:
    boxes = list(sample.boxes) if mode == "fine" else [sample.coarse_box]
    sets = []
    for index, box in enumerate(boxes):
        try:
            positions = inputs.image_tokens.evidence_tokens(sample.evidence_page, box, min_overlap)
        except ValueError as error:  # box outside the page, bad page index
            raise SampleFailure(f"no evidence tokens: box {index}: {error}") from error
        if positions.numel() == 0:
            raise SampleFailure(f"no evidence tokens: box {index} {tuple(round(float(v), 1) for v in box)} on page "
                                f"{sample.evidence_page} overlaps no image token by > {min_overlap:g} of its area")
        sets.append(set(int(p) for p in positions.tolist()))
    return sets


def score_ocr_sample(lm: Any, sample: ImageSample, *, mode: str = "fine", row: str = "emit",
                     min_overlap: float = 0.001, answer_source: str = "generate",
                     max_new_tokens: int = 32, passes: int = 2, weighting: str = "chars") -> SampleScore | Failure:
    """Score one image sample for every head; returns its SampleScore or a Failure with the reason.

    passes: 2 = generate, then one teacher-forced probe pass (default); 1 = record the rows while
    generating (``answer_source="generate"`` only; falls back to the second pass for a row generation
    never computed, e.g. the consume row of a last token cut by max_new_tokens)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_row(row)
    check_answer_source(answer_source)
    check_passes(passes, answer_source)
    check_weighting(weighting)
    try:
        inputs = lm.build_inputs(sample.pages, sample.question)
        evidence = _evidence_sets(inputs, sample, mode, min_overlap)
        recorded = None
        if passes == 1:
            forced, recorded = generate_recording(lm, inputs, max_new_tokens)
        else:
            forced = answer_ids(lm, inputs, sample.answer, answer_source, max_new_tokens)
        try:
            alignment = align_answer(lm.tokenizer, forced.ids, sample.answer, sample.units)
        except ValueError as error:
            raise SampleFailure(f"units do not spell the answer: {error}") from error
        weight = match_weight(lm, forced, alignment, sample.answer, weighting)
        if weight <= 0:
            raise SampleFailure(f"answer not generated: match weight 0 ({weighting}; generated "
                                f"{forced.text[:80]!r}, gold {sample.answer!r})")
        if alignment is None or not alignment.scored_tokens:
            raise SampleFailure(f"answer not generated: no answer character in {forced.text[:80]!r}")
        scored = alignment.scored_tokens                                  # token indices within the answer
        rows = [query_row(inputs.prompt_len + k, row) for k in scored]    # absolute query positions
        unique_rows = sorted(set(rows))
        argmax = recorded.take(unique_rows) if recorded is not None else None  # (L, H, R) or None
        if argmax is None:
            argmax, _ = probe_rows(lm, forced_inputs(inputs, forced.ids), unique_rows)  # (L, H, R)
        slot = {r: i for i, r in enumerate(unique_rows)}
        hits = torch.zeros(argmax.shape[:2], dtype=torch.long)            # (L, H)
        for k, r in zip(scored, rows):
            units = alignment.token_units[k]
            target = set().union(*(evidence[u] for u in units)) if mode == "fine" else evidence[0]
            target_t = torch.tensor(sorted(target), dtype=torch.long)     # (m,)
            hits += torch.isin(argmax[:, :, slot[r]], target_t).long()    # (L, H)
        info = {"answer": forced.text, "answer_source": forced.source, "found": alignment.found,
                "rows": rows, "units": [alignment.token_units[k] for k in scored]}
        return SampleScore(id=sample.id, weight=float(weight), n_rows=len(scored),
                           hits=hits.numpy().astype(np.int64), info=info)
    except SampleFailure as failure:
        return Failure(sample.id, str(failure))
    except NonFiniteLogitsError:  # the model's, not the sample's: stops the run, never stored as a failure
        raise
    except Exception as error:  # noqa: BLE001 - any model error becomes a recorded, counted failure
        return Failure(sample.id, exception_reason(error))


def check_passes(passes: int, answer_source: str) -> None:
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes!r}")
    if passes == 1 and answer_source != "generate":
        raise ValueError("passes=1 records the rows while generating; it needs answer_source='generate'")


def ocr_meta(lm: Any, *, mode: str, row: str, min_overlap: float, answer_source: str, max_new_tokens: int,
             dataset: str = "", seed: int | None = None, n: int | None = None, weighting: str = "chars") -> ScoreMeta:
    return ScoreMeta(model_id=str(lm.model_id), kind="ocr", n_layers=int(lm.n_layers), n_heads=int(lm.n_heads),
                     dataset=dataset, seed=seed, n=n, revision=getattr(lm, "revision", None), row=row, **model_facts(lm),
                     options={"mode": mode, "min_overlap": min_overlap, "answer_source": answer_source,
                              "max_new_tokens": max_new_tokens, "weighting": weighting})


def score_ocr(lm: Any, samples: Iterable[ImageSample], mode: str = "fine", row: str = "emit",
              min_overlap: float = 0.001, *, answer_source: str = "generate", max_new_tokens: int = 32,
              passes: int = 2, dataset: str = "", seed: int | None = None, progress: bool = False,
              weighting: str = "chars") -> HeadScores:
    """OCR scores of every head of `lm` over `samples` (see the module docstring; `passes` as in
    :func:`score_ocr_sample` — the scores do not depend on it, so it is not part of the metadata)."""
    samples = list(samples)
    meta = ocr_meta(lm, mode=mode, row=row, min_overlap=min_overlap, answer_source=answer_source,
                    max_new_tokens=max_new_tokens, dataset=dataset, seed=seed, n=len(samples), weighting=weighting)
    scores = HeadScores(meta=meta)
    for sample in maybe_progress(samples, progress, "OCR scores"):
        result = score_ocr_sample(lm, sample, mode=mode, row=row, min_overlap=min_overlap,
                                  answer_source=answer_source, max_new_tokens=max_new_tokens, passes=passes,
                                  weighting=weighting)
        (scores.samples if isinstance(result, SampleScore) else scores.failures).append(result)
    return scores


def maybe_progress(items: Sequence[Any], enabled: bool, label: str) -> Iterable[Any]:
    if not enabled:
        return items
    return tqdm(items, desc=label)
