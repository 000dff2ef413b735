"""Which answer token belongs to which answer unit, and which prompt token to which character.

Tokenizers do not map one-to-one to the units the data provides (one digit / character / word per
box): a byte-level BPE token may carry a leading space (" 48"), cover two digits, or split a word.
We work in characters:

1. decode the generated ids cumulatively, so token k covers characters [start_k, end_k) of the
   generated text (exact for any tokenizer whose decode is prefix-stable);
2. find the gold answer in the generated text (`find_answer`: the longest stretch of it written as a
   whole word, case-insensitively; see its docstring for the rule), which places every gold character
   at a generated character;
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


def _is_word_char(char: str) -> bool:
    return char.isalnum()


@dataclass(frozen=True)
class AnswerMatch:
    """A stretch of the gold answer found in the generated text: gold characters [gold_start, gold_end)
    equal (case-insensitively) generated characters [text_start, text_start + gold_end - gold_start)."""

    gold_start: int
    gold_end: int
    text_start: int
    exact_case: bool

    @property
    def length(self) -> int:
        return self.gold_end - self.gold_start


def find_answer(answer: str, text: str) -> AnswerMatch | None:
    """Where the generation wrote the answer. THE RULE: the longest stretch of the answer that the
    generated text spells as a whole word, compared case-insensitively; a stretch that starts the answer
    must not follow a letter or digit in the text, and a stretch that ends the answer must not be
    followed by one. Ties go to the stretch written with the gold's case, then to the first in the text.

    So for the answer "7", "In 2017 the pass key was 7." is matched at the final "7" (not inside 2017),
    and for the answer "a", "The pass key is a." at the lone "a" (not inside "pass"); a wrong key
    "4812" for "4817" matches "481" (a partial answer). None when no stretch qualifies."""
    gold, generated = answer.casefold(), text.casefold()
    if len(gold) != len(answer) or len(generated) != len(text):   # casefold changed lengths (e.g. "ß")
        gold, generated = answer.lower(), text.lower()
    if len(gold) != len(answer) or len(generated) != len(text):
        gold, generated = answer, text
    n, best = len(gold), None
    for shift in range(-n + 1, len(generated)):            # one diagonal: text index = gold index + shift
        a = max(0, -shift)
        while a < n and a + shift < len(generated):
            if gold[a] != generated[a + shift]:
                a += 1
                continue
            b = a
            while b < n and b + shift < len(generated) and gold[b] == generated[b + shift]:
                b += 1
            # the maximal common run is gold[a:b]; trim the ends that would cut a word of the text
            start, end = a, b
            if start == 0 and shift > 0 and _is_word_char(text[shift - 1]):
                start = 1
            if end == n and end + shift < len(text) and _is_word_char(text[end + shift]):
                end = n - 1
            if end > start:
                candidate = AnswerMatch(start, end, start + shift, answer[start:end] == text[start + shift:end + shift])
                if best is None or _better(candidate, best):
                    best = candidate
            a = b
    return best


def _better(candidate: AnswerMatch, best: AnswerMatch) -> bool:
    return (candidate.length, candidate.exact_case, -candidate.text_start) > (best.length, best.exact_case,
                                                                               -best.text_start)


@dataclass
class AnswerAlignment:
    """Where the gold answer sits in the generated text and which tokens cover which units."""

    generated_text: str
    found: str                       # "exact" | "casefold" | "partial"
    offset: int                      # generated index of gold character 0 (partial: of the matched run)
    matched: CharSpan                # gold characters [a, b) that were found in the generated text
    token_units: list[list[int]]     # per generated token: the unit indices it covers (maybe empty)
    answer: str = ""                 # the gold answer

    @property
    def scored_tokens(self) -> list[int]:
        """Indices (among the generated tokens) of the tokens that cover at least one unit."""
        return [k for k, units in enumerate(self.token_units) if units]

    @property
    def weight(self) -> float:
        """The match weight in characters: the share of the answer's non-space characters that the
        generation wrote (1.0 for an exact or case-insensitive match; spaces, including a leading one,
        never count)."""
        total = sum(1 for char in self.answer if not char.isspace())
        found = sum(1 for char in self.answer[self.matched[0]:self.matched[1]] if not char.isspace())
        return found / total if total else 0.0


def align_answer(tokenizer: Any, generated_ids: Sequence[int], answer: str,
                 units: Sequence[str] | None = None) -> AnswerAlignment | None:
    """Map generated tokens to answer units (default: the whole answer is one unit), placing the answer
    where `find_answer` finds it. None when no stretch of the answer appears as a word of the generated
    text."""
    units = list(units) if units else [answer.strip()]
    unit_spans = unit_char_spans(answer, units)
    text, spans = token_char_spans(tokenizer, generated_ids)
    match = find_answer(answer, text)
    if match is None:
        return None
    whole = match.gold_start == 0 and match.gold_end == len(answer)
    found = ("exact" if match.exact_case else "casefold") if whole else "partial"
    matched, offset = (match.gold_start, match.gold_end), match.text_start - match.gold_start
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
                           token_units=token_units, answer=answer)


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
