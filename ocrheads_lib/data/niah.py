"""Needle-in-a-haystack sets: a short-answer needle sentence in a varied English haystack.

    niah_images(8, seed=0)                                # grid pages (the book default)
    niah_images(8, seed=0, layout="free", context_chars=2048)
    niah_text(8, seed=0, context_chars=400)

The haystack is generated offline by :mod:`ocrheads_lib.data.haystack` (our own templates and word
lists; never contains the answer). Boxes: one per word of the answer, at the needle's own occurrence
(the answer's character span is known by construction, never searched for). Optionally the needles
and haystack of OpenCompass NeedleBench through ``datasets`` (``source="needlebench"``; needs the
dataset in the local Hugging Face cache).
"""
from __future__ import annotations

import random
import re
from typing import Any, Sequence

from . import haystack
from .compose import (ContextTooShortError, NeedleText, fill_window, image_sample, needle_text, resolve_depth,
                      sample_id, sample_indices, sample_rng)
from .layout import PageLayout
from .loaders import DatasetUnavailableError
from .samples import ImageSample, TextSample

DEFAULT_TEXT_CHARS = 400
IMAGES_ID, TEXT_ID = "niah", "niah-text"     # id prefixes: sample i of seed s is f"{prefix}-{s}-{i}"


def _pick_needle(rng: random.Random, max_answer_chars: int | None) -> tuple[str, tuple[int, int], str, str]:
    """(needle sentence, answer span inside it, answer, question) from our needle list."""
    template, question, answers = rng.choice(haystack.NIAH_NEEDLES)
    fitting = [a for a in answers if max_answer_chars is None or len(a) <= max_answer_chars]
    if not fitting:
        raise ValueError(f"no answer of needle {template!r} fits on a line of {max_answer_chars} characters")
    answer = rng.choice(fitting)
    before = template.split("{answer}")[0]
    return template.format(answer=answer), (len(before), len(before) + len(answer)), answer, question


def _word_spans(nt: NeedleText) -> list[tuple[int, int]]:
    a0, _ = nt.answer_span
    return [(a0 + m.start(), a0 + m.end()) for m in re.finditer(r"\S+", nt.answer)]


def _needlebench(rng: random.Random, max_answer_chars: int | None):
    """A NeedleBench English needle and haystack text (needs the dataset locally)."""
    try:
        import datasets  # optional dependency: imported where needed, so the rest works without it
    except ImportError as error:
        raise DatasetUnavailableError("source='needlebench' needs the `datasets` package "
                                      "(pip install datasets)") from error
    try:
        needles = datasets.load_dataset("opencompass/NeedleBench", "retrieval_needles", split="test")
        hay = datasets.load_dataset("opencompass/NeedleBench", "en_haystack_texts", split="test")
    except Exception as error:  # datasets raises many types when offline; re-raised with the fix
        raise DatasetUnavailableError(
            "NeedleBench is not available offline: download opencompass/NeedleBench (configs retrieval_needles and "
            "en_haystack_texts) into the Hugging Face cache on a machine with hub access, or use source='ours' "
            f"(the default). Cause: {type(error).__name__}: {error}") from error
    rows = [r for r in needles if r.get("arg2") and r["arg2"] in r["needle"] and r["needle"].isascii()
            and str(r.get("language", "English")).lower().startswith("en")
            and (max_answer_chars is None or len(r["arg2"]) <= max_answer_chars)]
    if not rows:
        raise DatasetUnavailableError("NeedleBench retrieval_needles has no usable English needle")
    row = rng.choice(rows)
    needle = " ".join(row["needle"].split())
    answer = row["arg2"].strip()
    a0 = needle.index(answer)
    text = " ".join(" ".join(hay["text"]).split())
    return needle, (a0, a0 + len(answer)), answer, row["retrieval_question"], text


def _needlebench_text(rng: random.Random, needle: str, ans: tuple[int, int], hay: str, context_chars: int,
                      depth: float) -> NeedleText:
    budget = context_chars - len(needle) - 1
    if budget < 0:
        raise ContextTooShortError(f"context_chars={context_chars} cannot hold the needle ({len(needle)} chars)")
    start = rng.randrange(0, max(1, len(hay) - budget))
    chunk = hay[start:start + budget]
    cut = chunk.rfind(". ", 0, int(depth * len(chunk)) + 1)
    cut = 0 if cut < 0 else cut + 2
    left, right = chunk[:cut].strip(), chunk[cut:].strip()
    text = (left + " " if left else "") + needle + (" " + right if right else "")
    n0 = len(left) + (1 if left else 0)
    return NeedleText(text, (n0, n0 + len(needle)), (n0 + ans[0], n0 + ans[1]), depth)


def _document(rng: random.Random, *, source: str, context_chars: int | None, depth: float | None,
              n_lines: int | None, width: int | None, keep_needle: Any = "auto", lines_per_page: int | None = None):
    depth_value = resolve_depth(depth, rng)
    if source == "ours":
        for attempt in range(20):
            needle, ans, answer, question = _pick_needle(rng, width)
            avoid = (answer,)
            try:
                if context_chars is None:
                    nt = fill_window(rng, needle, ans, n_lines, width, depth_value, "varied", avoid, keep_needle,
                                     lines_per_page)
                else:
                    nt = needle_text(rng, needle, ans, int(context_chars), depth_value, "varied", avoid)
                break
            except ContextTooShortError:
                if attempt == 19:
                    raise         # no needle fits this context; the error names the sizes
    elif source == "needlebench":
        needle, ans, answer, question, hay = _needlebench(rng, width)
        nt = _needlebench_text(rng, needle, ans, hay, int(context_chars or 1024), depth_value)
    else:
        raise ValueError(f"source must be 'ours' or 'needlebench', got {source!r}")
    return nt, question


def niah_images(n: int, seed: int = 0, *, page: PageLayout | None = None, context_chars: int | None = None,
                depth: float | None = None, pages: int | None = None, source: str = "ours",
                indices: Sequence[int] | None = None, **layout_keys: Any) -> list[ImageSample]:
    """n NIAH samples on pages; one fine box per answer word (units = the words), coarse = their union.
    indices: build only the samples at these indices (equal to the same samples of the full set).

    page / layout_keys: the PageLayout, as in passkey_images (grid default: fill `pages` (2) 16 x 6 cell
    pages, since a needle sentence takes 3-5 of a page's five 15-character lines; free: DejaVuSans 24 px,
    context_chars default 1024). A needle too long for the context is redrawn (up to 20 times).
    The answer is never split across lines; the whole needle is
    kept on one line when it fits.
    """
    wanted = sample_indices(n, indices)
    page = PageLayout.from_keys(page, **layout_keys)
    if (page.mode == "free" and pages is None or source == "needlebench") and context_chars is None:
        context_chars = 1024
    pages = 2 if pages is None else int(pages)
    samples = []
    for i in wanted:
        rng = sample_rng("niah", seed, i)
        lay = page.text_layout(sample_rng("niah-offset", seed, i))
        nt, question = _document(rng, source=source, context_chars=context_chars, depth=depth,
                                 n_lines=pages * lay.lines_per_page, width=lay.chars_per_line,
                                 lines_per_page=lay.lines_per_page)
        meta = dict(generator="niah_images", source=source, context_chars=context_chars,
                    fill_pages=pages if context_chars is None else None,
                    grid_offset=[lay.x_off, lay.y_off] if lay.mode == "grid" else None,
                    font=lay.font if lay.mode == "free" else "DejaVuSansMono-Bold (grid)",
                    font_size=lay.font_size if lay.mode == "free" else None, index=i)
        samples.append(image_sample(sample_id(IMAGES_ID, seed, i), nt, lay, _word_spans(nt), question, seed, "auto",
                                    meta))
    return samples


def niah_text(n: int, seed: int = 0, *, context_chars: int = DEFAULT_TEXT_CHARS, depth: float | None = None,
              source: str = "ours", indices: Sequence[int] | None = None) -> list[TextSample]:
    """Plain-text NIAH samples (needle_span / answer_span are offsets in `context`); indices: as in niah_images."""
    out = []
    for i in sample_indices(n, indices):
        rng = sample_rng("niah", seed, i)
        nt, question = _document(rng, source=source, context_chars=context_chars, depth=depth, n_lines=None,
                                 width=None)
        out.append(TextSample(id=sample_id(TEXT_ID, seed, i), context=nt.text, question=question, answer=nt.answer,
                              needle_span=nt.needle_span, answer_span=nt.answer_span, seed=int(seed),
                              golds=[nt.answer], meta=dict(generator="niah_text", source=source,
                                                           context_chars=context_chars, depth=nt.depth,
                                                           actual_depth=round(nt.actual_depth, 4), index=i)))
    return out
