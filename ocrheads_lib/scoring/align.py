"""Which answer token belongs to which answer unit, and which prompt token to which character.

Tokenizers do not map one-to-one to the units the data provides (one digit / character / word per
box): a byte-level BPE token may carry a leading space (" 48"), cover two digits, or split a word.
We work in characters:

1. decode the generated ids cumulatively, so token k covers characters [start_k, end_k) of the
   generated text (exact for any tokenizer whose decode is prefix-stable);
2. find the gold answer in the generated text (exact, then case-insensitive, then the longest common
   substring), which places every gold character at a generated character;
3. a token *covers* unit u when its character range overlaps the unit's (shifted) character range.
   Spaces are never part of a unit, so a token " 4" covers the unit "4" and a token " " covers none.

A token that covers no unit (surrounding words, punctuation, eos) is not scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CharSpan = tuple[int, int]   # [start, end) character offsets


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[CharSpan]]:
    """(text, spans): the decoded text of `ids` and each token's [start, end) range in it.

    Per-token decoding is tried first (linear); when the concatenation differs from the joint decode
    (multi-byte characters split across tokens, tokenizer clean-ups) the prefix decode is used
    (quadratic but exact)."""
    ids = [int(i) for i in ids]
    text = _decode(tokenizer, ids)
    pieces = [_decode(tokenizer, [i]) for i in ids]
    if "".join(pieces) == text:
        spans, cursor = [], 0
        for piece in pieces:
            spans.append((cursor, cursor + len(piece)))
            cursor += len(piece)
        return text, spans
    spans, previous = [], 0
    for k in range(len(ids)):
        end = len(_decode(tokenizer, ids[: k + 1]))
        spans.append((previous, max(previous, end)))
        previous = max(previous, end)
    return text, spans


def unit_char_spans(answer: str, units: Sequence[str]) -> list[CharSpan]:
    """Character range of each unit inside the answer, found left to right (case-insensitive fallback).
    Raises ValueError naming the unit when the units do not spell the answer."""
    spans, cursor = [], 0
    lowered = answer.lower()
    for index, unit in enumerate(units):
        if not unit:
            raise ValueError(f"unit {index} is empty")
        start = answer.find(unit, cursor)
        if start < 0:
            start = lowered.find(unit.lower(), cursor)
        if start < 0:
            raise ValueError(f"unit {index} {unit!r} not found in the answer {answer!r} after character {cursor}")
        spans.append((start, start + len(unit)))
        cursor = start + len(unit)
    return spans


def longest_common_substring(a: str, b: str) -> tuple[int, int, int]:
    """(start in a, start in b, length) of the longest common contiguous substring; first one on ties."""
    best = (0, 0, 0)
    previous = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        current = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                current[j] = previous[j - 1] + 1
                if current[j] > best[2]:
                    best = (i - current[j], j - current[j], current[j])
        previous = current
    return best


@dataclass
class AnswerAlignment:
    """Where the gold answer sits in the generated text and which tokens cover which units."""

    generated_text: str
    found: str                       # "exact" | "casefold" | "partial"
    offset: int                      # generated index of gold character 0 (partial: of the matched run)
    matched: CharSpan                # gold characters [a, b) that were found in the generated text
    token_units: list[list[int]]     # per generated token: the unit indices it covers (maybe empty)

    @property
    def scored_tokens(self) -> list[int]:
        """Indices (among the generated tokens) of the tokens that cover at least one unit."""
        return [k for k, units in enumerate(self.token_units) if units]


def align_answer(tokenizer: Any, generated_ids: Sequence[int], answer: str,
                 units: Sequence[str] | None = None) -> AnswerAlignment | None:
    """Map generated tokens to answer units (default: the whole answer is one unit). None when no
    character of the answer appears in the generated text."""
    units = list(units) if units else [answer.strip()]
    unit_spans = unit_char_spans(answer, units)
    text, spans = token_char_spans(tokenizer, generated_ids)
    start = text.find(answer)
    found = "exact"
    if start < 0:
        start = text.lower().find(answer.lower())
        found = "casefold"
    if start >= 0:
        matched, offset = (0, len(answer)), start
    else:
        gold_start, gen_start, length = longest_common_substring(answer.lower(), text.lower())
        if length == 0:
            return None
        found, matched, offset = "partial", (gold_start, gold_start + length), gen_start - gold_start
    token_units: list[list[int]] = []
    for a, b in spans:
        covered = []
        for index, (ua, ub) in enumerate(unit_spans):
            # only the part of the unit that was actually generated counts
            ua, ub = max(ua, matched[0]), min(ub, matched[1])
            if ua < ub and a < ub + offset and ua + offset < b:
                covered.append(index)
        token_units.append(covered)
    return AnswerAlignment(generated_text=text, found=found, offset=offset, matched=matched,
                           token_units=token_units)


def locate_in_prompt(tokenizer: Any, prompt_ids: Sequence[int], text: str, span: CharSpan) -> list[int]:
    """Sequence positions of the prompt tokens overlapping characters `span` of `text`, where `text`
    appears verbatim in the decoded prompt. Raises ValueError if it does not."""
    decoded, spans = token_char_spans(tokenizer, prompt_ids)
    base = decoded.find(text)
    if base < 0:
        raise ValueError("the sample's text does not appear verbatim in the decoded prompt "
                         "(the tokenizer normalises it?); cannot locate the needle tokens")
    a, b = span[0] + base, span[1] + base
    return [k for k, (ta, tb) in enumerate(spans) if ta < b and a < tb and tb > ta]


def lcs_run_score(gold_ids: Sequence[int], pred_ids: Sequence[int]) -> float:
    """Longest common contiguous run of ids / len(gold) (PAPER.md §6 compute_score); 0 for empty gold."""
    gold, pred = list(gold_ids), list(pred_ids)
    if not gold:
        return 0.0
    best, previous = 0, [0] * (len(pred) + 1)
    for i in range(1, len(gold) + 1):
        current = [0] * (len(pred) + 1)
        for j in range(1, len(pred) + 1):
            if gold[i - 1] == pred[j - 1]:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best / len(gold)


def match_score(gold_ids: Sequence[int], pred_ids: Sequence[int]) -> float:
    """The DATA engineer's `ocrheads_lib.metrics.match_score` when present, else the local equivalent."""
    try:
        from ocrheads_lib.metrics import match_score as shared
    except ImportError:
        return lcs_run_score(gold_ids, pred_ids)
    return float(shared(list(gold_ids), list(pred_ids)))
