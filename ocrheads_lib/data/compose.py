"""Shared machinery of the needle generators: put a needle in a haystack, lay it out, box the answer.

A needle document is a single-line text (sentences joined by single spaces) with one needle sentence
at a sentence boundary. Two ways to size it:

* ``context_chars`` given — about that many characters (never more), needle after
  ``round(depth * n_sentences)`` filler sentences; pages fill up in reading order, the last one
  possibly partly empty;
* ``context_chars=None`` — "fill" mode: exactly ``pages * lines_per_page`` full wrapped lines, the
  needle's lines placed at ``depth`` of the window (the embedded model's training pages are built
  this way: a window of wrapped filler lines around the needle).

The answer is glued so it is never split across lines; the whole needle is glued too when it fits
on one line (``keep_needle`` = "auto"). Every box is the exact ink of its unit at its drawn position.
One case escapes the glue: an answer that fills a line with a character attached to it ("climb the
tower." on a 15-character line) is one word too long for the line, and the wrapper cuts it. Where that
cut would fall on a page break, the answer's word starts a new line instead (``NeedleText.line_breaks``,
recorded as ``meta["line_breaks"]``); a cut inside a page is left as it always was, so every sample
that rendered before is unchanged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from . import haystack
from .render import Line, Rendered, RenderError, TextLayout, render_text, wrap
from .samples import ImageSample, TextSample


class ContextTooShortError(ValueError):
    """The requested context cannot hold the needle."""


def sample_rng(tag: str, seed: int, index: int) -> random.Random:
    """The RNG of sample `index` of a set: independent of how many samples are drawn."""
    return random.Random(f"ocrheads:{tag}:{int(seed)}:{int(index)}")


def sample_id(prefix: str, seed: int, index: int) -> str:
    """The id of sample `index` of a generated set ("passkey-0-7"): known without building the sample."""
    return f"{prefix}-{int(seed)}-{int(index)}"


def sample_indices(n: int, indices: Sequence[int] | None) -> Sequence[int]:
    """The indices a generator builds: all of range(n) (indices=None), or the given ones, each in [0, n).
    Sample i depends only on (seed, i), so building a few indices gives exactly those samples of the full set."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if indices is None:
        return range(n)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"indices {bad[:3]} are outside the set of n={n} samples; give integers in [0, {n})")
    return list(indices)


# ------------------------------------------------------------------------------------------ text
@dataclass
class NeedleText:
    """A haystack with one needle: the text and where the needle and its answer sit in it."""

    text: str
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
    depth: float                  # requested depth in [0, 1]
    line_breaks: tuple[int, ...] = ()   # offsets where a new line is forced (see the module docstring)

    @property
    def answer(self) -> str:
        return self.text[self.answer_span[0]:self.answer_span[1]]

    @property
    def actual_depth(self) -> float:
        """Needle start as a fraction of the text length."""
        return self.needle_span[0] / max(1, len(self.text))


def _join(before: list[str], needle: str, after: list[str]) -> tuple[str, int]:
    head = " ".join(before)
    text = (head + " " if head else "") + needle
    start = len(text) - len(needle)
    tail = " ".join(after)
    return (text + " " + tail if tail else text), start


def needle_text(rng: random.Random, needle: str, answer_in_needle: tuple[int, int], context_chars: int,
                depth: float, filler: str = "classic", avoid: tuple[str, ...] = ()) -> NeedleText:
    """Sentence-level composition: <= context_chars characters, needle after round(depth * n) sentences."""
    budget = context_chars - len(needle)
    if budget < 0:
        raise ContextTooShortError(f"context_chars={context_chars} cannot hold the needle {needle!r} "
                                   f"({len(needle)} characters); use context_chars >= {len(needle)}")
    sentences = haystack.filler_sentences(rng, budget, filler, avoid)
    while sentences and sum(len(s) + 1 for s in sentences) > budget:
        sentences.pop()
    pos = int(round(depth * len(sentences)))
    text, start = _join(sentences[:pos], needle, sentences[pos:])
    a0, a1 = answer_in_needle
    return NeedleText(text, (start, start + len(needle)), (start + a0, start + a1), depth)


def glue_spans(nt: NeedleText, width: int, keep_needle: str | bool) -> list[tuple[int, int]]:
    """Spans that must stay on one line: the answer always; the needle when asked ("auto": if it fits;
    "tail": the longest run of the needle's last words, ending after the answer, that fits)."""
    a0, a1 = nt.answer_span
    n0, n1 = nt.needle_span
    if a1 - a0 > width:
        raise RenderError(f"the answer {nt.answer!r} ({a1 - a0} characters) does not fit on a line of "
                          f"{width} characters; use more chars_per_line or a shorter answer")
    if keep_needle is False or keep_needle == "none":
        return [(a0, a1)]
    if n1 - n0 <= width:
        return [(n0, n1)]
    if keep_needle in ("tail", True):
        start = a0
        word_starts = [i for i in range(n0, a0) if i == n0 or nt.text[i - 1] == " "]
        for ws in sorted(word_starts):       # earliest start that still fits
            if n1 - ws <= width:
                start = ws
                break
        end = n1 if n1 - start <= width else a1
        return [(start, end)]
    return [(a0, a1)]


def _line_of(lines: Sequence[Line], pos: int) -> int:
    return next(i for i, ln in enumerate(lines) if ln.start <= pos < ln.start + len(ln.text))


def _answer_crosses_page(lines: Sequence[Line], answer_span: tuple[int, int], lines_per_page: int,
                         first_line: int = 0) -> bool:
    """True when the answer's first and last characters land on different pages (pages of
    `lines_per_page` lines counted from line `first_line`)."""
    a0, a1 = answer_span
    return ((_line_of(lines, a0) - first_line) // lines_per_page
            != (_line_of(lines, a1 - 1) - first_line) // lines_per_page)


def _answer_line_start(text: str, answer_span: tuple[int, int], width: int) -> int:
    """Where to start a new line so the answer sits on one line: at its word's start ('"climb' -> the
    quote), or at the answer itself when the characters before it in that word leave no room."""
    a0, a1 = answer_span
    word_start = text.rfind(" ", 0, a0) + 1
    return word_start if a1 - word_start <= width else a0


def fill_window(rng: random.Random, needle: str, answer_in_needle: tuple[int, int], n_lines: int, width: int,
                depth: float, filler: str, avoid: tuple[str, ...], keep_needle: str | bool,
                lines_per_page: int | None = None) -> NeedleText:
    """Fill mode: exactly n_lines full wrapped lines of `width` characters with the needle's lines at
    `depth` of the window. The window is cut at line boundaries, so re-wrapping gives the same lines.
    lines_per_page: when given, an answer the wrapper would cut across a page break of the window starts
    a new line instead (NeedleText.line_breaks)."""
    if n_lines < 1 or width < 1:
        raise ValueError(f"fill mode needs >= 1 line of >= 1 character (got {n_lines} lines of {width}); "
                         "check pages and lines_per_page")
    capacity = (n_lines + 1) * width
    before = haystack.filler_sentences(rng, capacity, filler, avoid)
    after = haystack.filler_sentences(rng, capacity, filler, avoid)
    text, start = _join(before, needle, after)
    a0, a1 = answer_in_needle
    full = NeedleText(text, (start, start + len(needle)), (start + a0, start + a1), depth)
    glue = glue_spans(full, width, keep_needle)
    breaks: tuple[int, ...] = ()
    lo, lines = _fill_lines(full, wrap(text, width, glue), n_lines, width, depth)
    if lines_per_page is not None and _answer_crosses_page(lines, full.answer_span, lines_per_page, lo):
        breaks = (_answer_line_start(text, full.answer_span, width),)
        lo, lines = _fill_lines(full, wrap(text, width, glue, breaks), n_lines, width, depth)
    window = lines[lo:lo + n_lines]
    c0, c1 = window[0].start, window[-1].start + len(window[-1].text)
    n0, n1 = full.needle_span
    return NeedleText(text[c0:c1], (n0 - c0, n1 - c0), (full.answer_span[0] - c0, full.answer_span[1] - c0), depth,
                      tuple(b - c0 for b in breaks))


def _fill_lines(full: NeedleText, lines: list[Line], n_lines: int, width: int, depth: float) -> tuple[int, list[Line]]:
    """(first line of the window, all lines): the window of n_lines lines with the needle at `depth`."""
    n0, n1 = full.needle_span
    first = next(i for i, ln in enumerate(lines) if ln.start + len(ln.text) > n0)
    last = next(i for i, ln in enumerate(lines) if ln.start + len(ln.text) >= n1)
    span_lines = last - first + 1
    if span_lines > n_lines:
        raise ContextTooShortError(f"the needle {full.text[n0:n1]!r} needs {span_lines} lines of {width} characters "
                                   f"but the context has {n_lines}; use more pages/lines_per_page or a "
                                   "context_chars value")
    lo = first - int(round(depth * (n_lines - span_lines)))
    return max(0, min(lo, len(lines) - n_lines)), lines


# ------------------------------------------------------------------------------------------ samples
def render_needle(nt: NeedleText, layout: TextLayout, unit_spans: Sequence[tuple[int, int]],
                  keep_needle: str | bool, hide_spans: Sequence[tuple[int, int]] = ()
                  ) -> tuple[Rendered, list[tuple[int, tuple[float, float, float, float]]], list[tuple[int, int]],
                             tuple[int, ...]]:
    """Render the needle document; returns (rendered, [(page, box) per unit], glue spans, forced line
    breaks). Breaks: nt.line_breaks, or, when the wrapper would cut the answer across a page break, a new
    line at the answer's word."""
    glue = glue_spans(nt, layout.chars_per_line, keep_needle)
    breaks = tuple(nt.line_breaks)
    if not breaks and _answer_crosses_page(wrap(nt.text, layout.chars_per_line, glue), nt.answer_span,
                                           layout.lines_per_page):
        breaks = (_answer_line_start(nt.text, nt.answer_span, layout.chars_per_line),)
    rendered = render_text(nt.text, layout, glue=glue, special_spans=unit_spans, hide_spans=hide_spans,
                           breaks=breaks)
    placed = []
    for s, e in unit_spans:
        cells = rendered.locate(s, e)
        drawn = "".join(rendered.lines[li].text[c] for li, c in cells)
        if drawn != nt.text[s:e]:
            raise RenderError(f"the answer unit {nt.text[s:e]!r} is not in the rendered text (found {drawn!r})")
        placed.append(rendered.span_box(cells))
    return rendered, placed, glue, breaks


def image_sample(sample_id: str, nt: NeedleText, layout: TextLayout, unit_spans: Sequence[tuple[int, int]],
                 question: str, seed: int, keep_needle: str | bool, meta: dict[str, Any],
                 golds: Sequence[str] = ()) -> ImageSample:
    rendered, placed, glue, breaks = render_needle(nt, layout, unit_spans, keep_needle)
    pages_used = {p for p, _ in placed}
    if len(pages_used) != 1:
        raise RenderError(f"sample {sample_id}: the answer spans pages {sorted(pages_used)}")
    evidence_page = pages_used.pop()
    boxes = [box for _, box in placed]
    width, height = rendered.pages[evidence_page].size
    for box in boxes:
        if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
            raise RenderError(f"sample {sample_id}: box {box} leaves the {width}x{height} page; "
                              "use a larger margin or smaller grid offset")
    coarse = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    meta = dict(meta)
    meta.update(
        layout=layout.mode, layout_params=layout.as_dict(), text=nt.text, needle_span=list(nt.needle_span),
        answer_span=list(nt.answer_span), unit_spans=[list(s) for s in unit_spans], glue_spans=[list(g) for g in glue],
        depth=nt.depth, actual_depth=round(nt.actual_depth, 4), n_pages=len(rendered.pages),
        n_chars=len(nt.text), page_size=list(rendered.pages[0].size),
        page_lines=[rendered.page_lines(p) for p in range(len(rendered.pages))],
    )
    if breaks:                 # only where an answer would have been cut across a page break
        meta["line_breaks"] = list(breaks)
    if layout.mode == "free":
        meta["line_height_px"] = layout.resolved_line_height()
    return ImageSample(id=sample_id, pages=rendered.pages, question=question, answer=nt.answer,
                       evidence_page=evidence_page, boxes=boxes, units=[nt.text[s:e] for s, e in unit_spans],
                       coarse_box=coarse, seed=int(seed), golds=list(golds) or [nt.answer], meta=meta)


def text_version(sample: ImageSample, question: str | None = None) -> TextSample:
    """The plain-text twin of a generated needle ImageSample: the same rendered text as `context`
    (lines joined by spaces), with its needle and answer spans. Raises for samples without them."""
    meta = sample.meta
    if "text" not in meta or "needle_span" not in meta:
        raise ValueError(f"sample {sample.id} has no rendered text in meta (not from a needle generator)")
    n0, n1 = meta["needle_span"]
    a0, a1 = meta["answer_span"]
    return TextSample(id=f"{sample.id}-text", context=meta["text"], question=question or sample.question,
                      answer=sample.answer, needle_span=(n0, n1), answer_span=(a0, a1), seed=sample.seed,
                      golds=list(sample.golds), meta=dict(generator="text_version", image_id=sample.id,
                                                          depth=meta.get("depth")))


def resolve_depth(depth: float | None, rng: random.Random) -> float:
    if depth is None:
        return rng.random()
    depth = float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1] (or None for random), got {depth}")
    return depth
