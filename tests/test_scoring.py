"""OCR and retrieval scoring on a tiny random Qwen2-VL: planted heads, row conventions, failures,
token/unit alignment and determinism.

Planted heads (see ocrheads_lib.scoring.planted): the probe attention is wrapped so that one query head
of one layer gets code vectors in reserved query/key coordinates (after RoPE) -- it attends exactly
the keys we choose from the rows we choose; all other heads keep their random weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ocrheads_lib.data.samples import ImageSample, TextSample
from ocrheads_lib.models.testing import tiny_random
from ocrheads_lib.scoring import load_scores, score_ocr, score_retrieval
from ocrheads_lib.scoring.align import align_answer, locate_in_prompt, unit_char_spans
from ocrheads_lib.scoring.planted import ocr_targets, plant

PLANTED = (1, 2)          # layer 1, query head 2 (shares KV head 1 with head 3)
CELL = 28


@pytest.fixture(scope="module")
def lm():
    return tiny_random("qwen2_vl", seed=0, attn="probe")


def image_sample(index: int, answer: str = "4817", n_pages: int = 2, evidence_page: int = 1) -> ImageSample:
    """A 280x168 page per page (10x6 visual tokens, never resized by the tiny processor); the answer's
    characters sit in one cell each on row 2 (their content is irrelevant to a planted head)."""
    pages = [Image.new("RGB", (10 * CELL, 6 * CELL), (255, 255, 255 - 10 * p)) for p in range(n_pages)]
    col0 = 1 + index % 4
    boxes = [(CELL * (col0 + i) + 6, CELL * 2 + 4, CELL * (col0 + i + 1) - 6, CELL * 3 - 4)
             for i in range(len(answer))]
    coarse = (boxes[0][0], boxes[0][1], boxes[-1][2], boxes[-1][3])
    return ImageSample(id=f"img{index}", pages=pages, question="What is the pass key?", answer=answer,
                       evidence_page=evidence_page, boxes=boxes, units=list(answer), coarse_box=coarse, seed=index)


def text_sample(index: int, answer: str = "4817") -> TextSample:
    before = "The grass is green. The sky is blue. " * (1 + index % 2)
    needle = f"The pass key is {answer}. Remember it."
    context = before + needle + " The sun is yellow. Here we go."
    start = len(before) + needle.index(answer)
    return TextSample(id=f"txt{index}", context=context, question="What is the pass key?", answer=answer,
                      needle_span=(len(before), len(before) + len(needle)), answer_span=(start, start + len(answer)),
                      seed=index)


# --------------------------------------------------------------------------- OCR
def test_planted_ocr_head_scores_one(lm) -> None:
    sample = image_sample(0)
    with plant(*PLANTED, targets=ocr_targets(lm, sample)):
        fine = score_ocr(lm, [sample], answer_source="gold")
        coarse = score_ocr(lm, [sample], mode="coarse", answer_source="gold")
        consume = score_ocr(lm, [sample], row="consume", answer_source="gold")
    assert not fine.failures
    entry = fine.samples[0].entry                      # (L, H)
    assert entry[PLANTED] == 1.0
    others = np.delete(entry.reshape(-1), PLANTED[0] * lm.n_heads + PLANTED[1])
    assert others.max() <= 0.5 and others.mean() < 0.2
    assert fine.samples[0].n_rows == 4 and fine.samples[0].info["units"] == [[0], [1], [2], [3]]
    assert coarse.samples[0].entry[PLANTED] == 1.0
    # The planted head reads the *next* character from the emitting row; at the consuming rows (what the
    # paper's code scores) it attends box b+1 or nothing -> 0.
    assert consume.samples[0].entry[PLANTED] == 0.0
    rows = fine.samples[0].info["rows"]
    assert consume.samples[0].info["rows"] == [r + 1 for r in rows]


def test_planted_consume_head_is_found_by_consume_rows(lm) -> None:
    sample = image_sample(1)
    with plant(*PLANTED, targets=ocr_targets(lm, sample, row="consume")):
        consume = score_ocr(lm, [sample], row="consume", answer_source="gold")
        emit = score_ocr(lm, [sample], row="emit", answer_source="gold")
    assert consume.samples[0].entry[PLANTED] == 1.0
    assert emit.samples[0].entry[PLANTED] == 0.0


def test_unplanted_model_scores_near_zero_and_files_are_deterministic(lm, tmp_path: Path) -> None:
    samples = [image_sample(i) for i in range(3)]
    a = score_ocr(lm, samples, answer_source="gold", dataset="toy", seed=0)
    b = score_ocr(lm, samples, answer_source="gold", dataset="toy", seed=0)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    back = load_scores(tmp_path / "a.json")
    assert back.meta.row == "emit" and back.meta.options["mode"] == "fine"
    np.testing.assert_array_equal(back.matrix(), a.matrix())
    assert a.mean().mean() < 0.2


def test_failures_are_kept_with_reasons(lm, monkeypatch: pytest.MonkeyPatch) -> None:
    off_page = image_sample(2)
    off_page.boxes[1] = (1000.0, 1000.0, 1010.0, 1010.0)   # outside the 280x168 page
    generated = image_sample(3)                            # random weights: the answer is not generated
    scores = score_ocr(lm, [image_sample(0), off_page, generated], answer_source="generate")
    reasons = {f.id: f.reason for f in scores.failures}
    assert reasons["img2"].startswith("no evidence tokens: box 1")
    assert reasons["img3"].startswith("answer not generated")
    assert len(scores.samples) + len(scores.failures) == 3

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(lm, "build_inputs", broken)
    failed = score_ocr(lm, [image_sample(4)], answer_source="gold")
    assert failed.samples == [] and failed.failures[0].reason == "exception: RuntimeError: out of memory (simulated)"
    assert failed.failure_counts() == {"exception": 1}


# --------------------------------------------------------------------------- alignment
class _FakeBPE:
    """Decodes ids through a fixed vocabulary, like a byte-level BPE with leading-space tokens."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) -> str:
        return "".join(self.vocab[i] for i in ids)


def test_alignment_handles_spaces_and_multichar_tokens() -> None:
    tok = _FakeBPE(["The", " key", " is", " 48", "1", "7", ".", " blue", " wh", "ale"])
    al = align_answer(tok, [0, 1, 2, 3, 4, 5, 6], "4817", list("4817"))
    assert al.found == "exact"
    assert al.token_units == [[], [], [], [0, 1], [2], [3], []]
    assert al.scored_tokens == [3, 4, 5]
    words = align_answer(tok, [7, 8, 9], "blue whale", ["blue", "whale"])
    assert words.token_units == [[0], [1], [1]]
    partial = align_answer(tok, [3, 4, 6], "4817", list("4817"))   # generated "481." : unit "7" missing
    assert partial.found == "partial" and partial.token_units == [[0, 1], [2], []]
    assert align_answer(tok, [0, 1], "4817", list("4817")) is None
    assert unit_char_spans("Blue Whale", ["blue", "whale"]) == [(0, 4), (5, 10)]
    with pytest.raises(ValueError, match="not found"):
        unit_char_spans("4817", ["4", "9"])


# --------------------------------------------------------------------------- retrieval
def retrieval_targets(lm, sample: TextSample) -> dict[int, list[int]]:
    """Emitting row of answer token k -> the context token holding answer character k (char tokenizer)."""
    inputs = lm.build_inputs([], sample.prompt, answer=sample.answer)
    prompt_ids = inputs.input_ids[: inputs.prompt_len].tolist()
    a = sample.answer_span[0]
    return {int(inputs.answer_positions[k]) - 1: locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, (a + k, a + k + 1))
            for k in range(len(sample.answer))}


def test_planted_retrieval_head_scores_one(lm) -> None:
    sample = text_sample(0)
    with plant(*PLANTED, targets=retrieval_targets(lm, sample)):
        wu = score_retrieval(lm, [sample], answer_source="gold")
    assert not wu.failures
    entry = wu.samples[0].entry
    assert entry[PLANTED] == 1.0
    assert np.delete(entry.reshape(-1), PLANTED[0] * lm.n_heads + PLANTED[1]).max() < 0.5
    assert wu.meta.row == "emit" and wu.meta.options["variant"] == "wu"


def test_self_attending_head_fools_only_the_paper_code_variant(lm) -> None:
    sample = text_sample(1)
    with plant(*PLANTED, diagonal=True):
        wu = score_retrieval(lm, [sample], answer_source="gold")
        paper = score_retrieval(lm, [sample], variant="paper-code", answer_source="gold")
    assert wu.samples[0].entry[PLANTED] == 0.0
    record = paper.samples[0]
    assert paper.meta.row == "consume"
    # every prompt position holding an answer digit attends itself (diagonal) and "copies" it; the generated
    # answer rows cannot (their diagonal is outside the paper's columns 0..L-2)
    assert record.info["prompt_rows"] == 4 and record.n_rows == 8
    assert record.entry[PLANTED] == pytest.approx(0.5)


def test_get_scores_computes_once_then_reads_the_file(lm, tmp_path: Path) -> None:
    from ocrheads_lib.scoring.runs import get_scores, score_path, scoring_samples

    samples = scoring_samples("ocr", 2, seed=0)
    first = get_scores(lm, "ocr", samples, tmp_path, seed=0, model_id="tiny")
    path = score_path("tiny", "ocr", "emit", tmp_path)
    assert path == tmp_path / "tiny" / "ocr_scores.json" and path.exists()
    assert first.meta.options["answer_source"] == "gold"          # "auto" on an untrained model
    stamp = path.stat().st_mtime_ns
    again = get_scores(lm, "ocr", samples, tmp_path, seed=0, model_id="tiny")
    assert path.stat().st_mtime_ns == stamp                        # read back, not recomputed
    np.testing.assert_array_equal(again.matrix(), first.matrix())
    consume = get_scores(lm, "ocr", samples, tmp_path, row="consume", seed=0, model_id="tiny")
    assert consume.meta.row == "consume" and (tmp_path / "tiny" / "ocr_scores.consume.json").exists()
    text = scoring_samples("retrieval", 2, seed=0)
    paper = get_scores(lm, "retrieval", text, tmp_path, seed=0, model_id="tiny", variant="paper-code")
    assert paper.meta.row == "consume" and (tmp_path / "tiny" / "retrieval_scores.paper-code.json").exists()


def test_probe_argmax_matches_eager_attention(lm) -> None:
    """The rows the scorer reads equal the argmax of the full eager attention maps (what the paper indexes)."""
    import torch

    from ocrheads_lib.scoring.common import forced_inputs, probe_rows

    eager = tiny_random("qwen2_vl", seed=0, attn="eager")
    sample = image_sample(5)
    inputs = lm.build_inputs(sample.pages, sample.question)
    gold = lm.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
    tensors = forced_inputs(inputs, gold)
    rows = list(range(inputs.prompt_len - 1, inputs.prompt_len + len(gold)))
    argmax, _ = probe_rows(lm, tensors, rows)                                  # (L, H, R)
    with torch.no_grad():
        out = eager.model(**tensors, output_attentions=True)
    reference = torch.stack([a[0][:, rows].argmax(dim=-1) for a in out.attentions])  # (L, H, R)
    assert torch.equal(argmax, reference)


def test_one_pass_scoring_equals_two_passes(lm) -> None:
    """passes=1 records the rows during greedy generation; it must equal generate + teacher-forced pass.
    The random model cannot answer a pass key, so the sample's gold answer is set to the first word it
    generates (a whole word: the alignment does not match an answer inside a longer word)."""
    sample = image_sample(6)
    generated = lm.decode(lm.generate(lm.build_inputs(sample.pages, sample.question), max_new_tokens=8))
    answer = generated.split()[0]
    assert 2 <= len(answer) <= 9, generated        # one 28-px box per character, from column 1 of 10
    sample = image_sample(4, answer=answer)
    for row in ("emit", "consume"):
        two = score_ocr(lm, [sample], row=row, max_new_tokens=8)
        one = score_ocr(lm, [sample], row=row, max_new_tokens=8, passes=1)
        assert not two.failures and not one.failures
        assert one.samples[0].weight == two.samples[0].weight == 1.0
        np.testing.assert_array_equal(one.samples[0].hits, two.samples[0].hits)
        assert one.samples[0].info == two.samples[0].info
    with pytest.raises(ValueError, match="answer_source='generate'"):
        score_ocr(lm, [sample], passes=1, answer_source="gold")
    # the raw argmax keys (not just the hit counts, which are 0 on a random model) agree row by row
    from ocrheads_lib.scoring.common import forced_inputs, generate_recording, probe_rows

    inputs = lm.build_inputs(sample.pages, sample.question)
    forced, recorded = generate_recording(lm, inputs, max_new_tokens=8)
    rows = list(range(inputs.prompt_len - 1, inputs.prompt_len + len(forced.ids) - 1))
    during = recorded.take(rows)
    after, _ = probe_rows(lm, forced_inputs(inputs, forced.ids), rows)
    assert during is not None and torch.equal(during, after)
    assert len(set(during.reshape(-1).tolist())) > 3               # the keys really vary


def test_one_pass_retrieval_equals_two_passes(lm) -> None:
    sample = text_sample(0)
    generated = lm.decode(lm.generate(lm.build_inputs([], sample.prompt), max_new_tokens=6))
    answer = "".join(ch for ch in generated if ch.isalnum())[:3]
    if len(answer) < 2:
        pytest.skip(f"the random model generated no usable answer: {generated!r}")
    base = text_sample(0)
    context = base.context.replace("4817", answer)
    start = context.index(answer)
    sample = TextSample(id="gen", context=context, question=base.question, answer=answer,
                        needle_span=(base.needle_span[0], base.needle_span[1] - 4 + len(answer)),
                        answer_span=(start, start + len(answer)), seed=0)
    two = score_retrieval(lm, [sample], max_new_tokens=6)
    one = score_retrieval(lm, [sample], max_new_tokens=6, passes=1)
    assert not one.failures and not two.failures
    np.testing.assert_array_equal(one.samples[0].hits, two.samples[0].hits)
