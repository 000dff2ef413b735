"""Answer alignment with real byte-level BPE tokenizers (SmolLM2's and Qwen's), where a character-level
toy tokenizer cannot show the defects:

- D1: the answer is placed where the generation wrote it as a word, not at the first substring match;
- D2: the match weight compares characters, so a leading space or a sentence around the answer costs
  nothing (the paper's token-id weight stays available as weighting="paper-ids");
- D3: a gold answer is teacher-forced as the needle spells it, so its tokens can be copies.
"""
from types import SimpleNamespace

import pytest

from ocrheads_lib.scoring.align import align_answer, find_answer
from ocrheads_lib.scoring.common import ForcedAnswer, match_weight

from real_tokenizers import qwen_tokenizer, smollm2_tokenizer


@pytest.fixture(scope="module", params=["smollm2", "qwen"])
def tok(request):
    return smollm2_tokenizer() if request.param == "smollm2" else qwen_tokenizer()


def scored_pieces(tok, text: str, answer: str) -> list[str]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    alignment = align_answer(tok, ids, answer)
    assert alignment is not None, text
    return [tok.decode([ids[k]]) for k in alignment.scored_tokens]


# ------------------------------------------------------------------------------------------ D1
def test_d1_answer_inside_another_word_is_not_matched(tok):
    # first substring match: the "a" of " pass"
    assert scored_pieces(tok, "The pass key is a.", "a") == [" a"]


def test_d1_answer_inside_a_number_is_not_matched(tok):
    pieces = scored_pieces(tok, "In 2017 the pass key was 7.", "7")
    assert "".join(pieces).strip() == "7"
    ids = tok("In 2017 the pass key was 7.", add_special_tokens=False)["input_ids"]
    alignment = align_answer(tok, ids, "7")
    assert alignment.offset == len("In 2017 the pass key was ")


def test_d1_rule_by_hand():
    """find_answer's rule on strings, golden values by hand."""
    match = find_answer("7", "In 2017 the pass key was 7.")
    assert (match.text_start, match.length) == (25, 1)
    assert find_answer("a", "The pass key is b.") is None                   # no lone "a": not generated
    partial = find_answer("4817", "The pass key is 4812.")
    assert (partial.gold_start, partial.gold_end, partial.text_start) == (0, 3, 16)
    assert find_answer("4817", "the key 48171").length == 3                 # "4817" is not a whole word there
    first = find_answer("42", "42 and 42")
    assert first.text_start == 0                                             # ties: the first in the text
    cased = find_answer("Blue", "blue or Blue")
    assert cased.text_start == 8 and cased.exact_case                       # ties: the gold's case first
    assert find_answer("swim at dawn", "The answer is swim at dawn.").length == len("swim at dawn")


# ------------------------------------------------------------------------------------------ D2
@pytest.mark.parametrize("generated, gold, paper_ids", [
    (" hello", "hello", 0.0),
    ("The pass key is hello.", "hello", 0.0),
    ("The answer is swim at dawn.", "swim at dawn", None),
])
def test_d2_weight_counts_characters(tok, generated, gold, paper_ids):
    lm = SimpleNamespace(tokenizer=tok)
    ids = tok(generated, add_special_tokens=False)["input_ids"]
    forced = ForcedAnswer(ids=ids, source="generate", text=generated)
    alignment = align_answer(tok, ids, gold)
    assert match_weight(lm, forced, alignment, gold, "chars") == 1.0
    paper = match_weight(lm, forced, alignment, gold, "paper-ids")   # the paper's weight, kept by name
    assert paper < 1.0
    if paper_ids is not None:
        assert paper == paper_ids


def test_d2_partial_answer_weight_by_hand(tok):
    lm = SimpleNamespace(tokenizer=tok)
    ids = tok("The pass key is 4812.", add_special_tokens=False)["input_ids"]
    forced = ForcedAnswer(ids=ids, source="generate", text="")
    assert match_weight(lm, forced, align_answer(tok, ids, "4817"), "4817", "chars") == 0.75
    words = tok("swim at noon", add_special_tokens=False)["input_ids"]
    alignment = align_answer(tok, words, "swim at dawn")
    assert match_weight(lm, ForcedAnswer(words, "generate", ""), alignment, "swim at dawn", "chars") == 6 / 10


# ------------------------------------------------------------------------------------------ D3
@pytest.fixture(scope="module")
def smollm2_lm():
    from ocrheads_lib.models.loading import load_model

    return load_model("smollm2")


def test_d3_gold_answer_is_forced_as_the_needle_spells_it(smollm2_lm):
    from ocrheads_lib.data import niah_text
    from ocrheads_lib.scoring.common import SampleFailure
    from ocrheads_lib.scoring.retrieval import needle_answer_ids

    lm = smollm2_lm
    copyable = alone_copyable = total = 0
    for sample in niah_text(50, seed=0):
        inputs = lm.build_inputs([], sample.prompt)
        prompt_ids = inputs.input_ids[: inputs.prompt_len].tolist()
        try:
            ids = needle_answer_ids(lm, prompt_ids, sample)
        except SampleFailure as failure:   # recorded, never a silent zero
            assert "answer not aligned to the needle" in str(failure)
            continue
        assert lm.tokenizer.decode(ids).strip() == sample.answer
        alone = lm.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        needle_ids = set(prompt_ids)
        copyable += sum(i in needle_ids for i in ids)
        alone_copyable += sum(i in needle_ids for i in alone)
        total += len(ids)
    assert total >= 50 and copyable == total                 # every forced token occurs in the prompt
    assert alone_copyable < total                            # the gold tokenized alone does not


def test_d3_word_answer_scores_copies_with_gold_forcing(smollm2_lm):
    """A retrieval score with gold forcing on a real model: the needle-spelled answer is copied by some head."""
    from ocrheads_lib.data import niah_text
    from ocrheads_lib.scoring import score_retrieval

    samples = niah_text(3, seed=1)
    scores = score_retrieval(smollm2_lm, samples, answer_source="gold")
    assert not scores.failures, scores.failures
    assert max(float(s.hits.max()) for s in scores.samples) >= 1
