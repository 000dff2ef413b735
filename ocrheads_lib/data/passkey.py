"""Pass-key sets: a number (or one character) hidden in digit-free filler, as pages or as plain text.

    passkey_images(8, seed=0)                     # the book default: the embedded model's grid page
    passkey_images(8, seed=0, layout="free", context_chars=1024, font_size=24)   # paper-like pages
    passkey_images(8, seed=0, font_size=30)       # a free-layout option alone also selects "free"
    passkey_images(8, seed=0, page=PageLayout(grid_offset="random"))   # the layout as one object
    passkey_text(8, seed=0, context_chars=320)    # text retrieval version (needle/answer spans)
    case_study_images(n_per_char=2, seed=0)       # one character 0-9a-z as the pass key

The page layout (layout, font, font_size, line_height, margin, chars_per_line, lines_per_page,
grid_offset, max_pages) is a :class:`~ocrheads_lib.data.layout.PageLayout`, given as ``page=`` and/or
as its flat keys.

Needle: "The pass key is {key}." at a sentence boundary. Boxes: one per digit (exact ink of each
glyph at its drawn position), the coarse box is their union. Same seed -> identical pages; sample i
does not depend on n.
"""
from __future__ import annotations

import random
import string
from typing import Any, Sequence

from .compose import fill_window, image_sample, needle_text, resolve_depth, sample_id, sample_indices, sample_rng
from .layout import PageLayout
from .samples import ImageSample, TextSample

PASSKEY_QUESTION = "What is the pass key?"
NEEDLE_TEMPLATE = "The pass key is {key}."
CASE_STUDY_CHARS = string.digits + string.ascii_lowercase
DEFAULT_TEXT_CHARS = 320
IMAGES_ID, TEXT_ID = "passkey", "passkey-text"     # id prefixes: sample i of seed s is f"{prefix}-{s}-{i}"


def random_key(rng: random.Random, key_digits: int | Sequence[int] = (4, 5)) -> str:
    """A number with a digit count uniform in key_digits=(lo, hi) (or exactly key_digits), no leading zero."""
    lo, hi = (key_digits, key_digits) if isinstance(key_digits, int) else tuple(key_digits)
    if not 1 <= lo <= hi:
        raise ValueError(f"key_digits must be n or (lo, hi) with 1 <= lo <= hi, got {key_digits!r}")
    n = rng.randint(lo, hi)
    return str(rng.randint(1, 9)) + "".join(rng.choice(string.digits) for _ in range(n - 1))


def _needle(template: str, key: str) -> tuple[str, tuple[int, int]]:
    if template.count("{key}") != 1:
        raise ValueError(f"needle template must contain '{{key}}' exactly once, got {template!r}")
    before = template.split("{key}")[0]
    return template.format(key=key), (len(before), len(before) + len(key))


def _check_filler(filler: str) -> None:
    if filler not in ("classic", "varied"):
        raise ValueError(f"filler must be 'classic' or 'varied', got {filler!r}")


def _passkey_document(rng: random.Random, key: str, *, context_chars: int | None, depth: float | None,
                      filler: str, needle_template: str, n_lines: int | None = None, width: int | None = None,
                      keep_needle: Any = "auto", lines_per_page: int | None = None):
    depth_value = resolve_depth(depth, rng)
    needle, ans = _needle(needle_template, key)
    _check_filler(filler)
    if context_chars is None:
        return fill_window(rng, needle, ans, n_lines, width, depth_value, filler, (), keep_needle, lines_per_page)
    return needle_text(rng, needle, ans, int(context_chars), depth_value, filler)


def passkey_images(n: int, seed: int = 0, *, page: PageLayout | None = None, context_chars: int | None = None,
                   depth: float | None = None, key_digits: int | Sequence[int] = (4, 5), pages: int | None = None,
                   filler: str = "classic", needle_template: str = NEEDLE_TEMPLATE, question: str = PASSKEY_QUESTION,
                   indices: Sequence[int] | None = None, **layout_keys: Any) -> list[ImageSample]:
    """n pass-key samples rendered on pages (only those at `indices`, in that order, when given: each sample
    depends on (seed, index) alone, so they equal the same samples of the full set).

    page / layout_keys: the PageLayout (see data/layout.py), as an object and/or its flat keys
      (layout="free", font_size=30, grid_offset="random", ...). Default: "grid", the embedded model's book
      page (15 chars x 5 lines on a 16 x 6 cell page, one character per 28-px cell); a free-layout option
      (font / font_size / line_height / margin) alone selects "free" (DejaVuSans 24 px, 50 x 15).
    context_chars: None = fill `pages` (default 1) full pages with the needle's lines at `depth` of them
      (for the free layout without `pages`, None means 1024 characters, the paper's shortest setting);
      an int = about that many characters (never more), the needle after round(depth * n_sentences)
      sentences, pages filling up in reading order.
    depth: in [0, 1]; None draws it uniformly per sample.
    key_digits: digit count (lo, hi) of the key, or an int. filler: "classic" (the stock five sentences)
      or "varied" (our English generator; digit-free).
    Raises ContextTooShortError, FileNotFoundError (font), RenderError (page limit, line too short),
    ValueError/TypeError (bad layout: see PageLayout).
    """
    wanted = sample_indices(n, indices)
    page = PageLayout.from_keys(page, **layout_keys)
    if page.mode == "free" and context_chars is None and pages is None:
        context_chars = 1024
    pages = 1 if pages is None else int(pages)
    samples = []
    for i in wanted:
        rng = sample_rng("passkey", seed, i)
        key = random_key(rng, key_digits)
        lay = page.text_layout(sample_rng("passkey-offset", seed, i))
        nt = _passkey_document(rng, key, context_chars=context_chars, depth=depth, filler=filler,
                               needle_template=needle_template, n_lines=pages * lay.lines_per_page,
                               width=lay.chars_per_line, lines_per_page=lay.lines_per_page)
        a0 = nt.answer_span[0]
        units = [(a0 + k, a0 + k + 1) for k in range(len(key))]
        meta = dict(generator="passkey_images", context_chars=context_chars, fill_pages=pages if context_chars is None
                    else None, key_digits=list(key_digits) if not isinstance(key_digits, int) else key_digits,
                    filler=filler, grid_offset=[lay.x_off, lay.y_off] if lay.mode == "grid" else None,
                    font=lay.font if lay.mode == "free" else "DejaVuSansMono-Bold (grid)",
                    font_size=lay.font_size if lay.mode == "free" else None, index=i)
        samples.append(image_sample(sample_id(IMAGES_ID, seed, i), nt, lay, units, question, seed, "auto", meta))
    return samples


def passkey_text(n: int, seed: int = 0, *, context_chars: int = DEFAULT_TEXT_CHARS, depth: float | None = None,
                 key_digits: int | Sequence[int] = (4, 5), filler: str = "classic",
                 needle_template: str = NEEDLE_TEMPLATE, question: str = PASSKEY_QUESTION,
                 indices: Sequence[int] | None = None) -> list[TextSample]:
    """Plain-text pass-key samples: context of <= context_chars characters, needle_span / answer_span
    are character offsets in `context`. With the same seed and context_chars, the text equals the
    one passkey_images(layout="free" or an explicit context_chars) renders. indices: as in passkey_images."""
    out = []
    for i in sample_indices(n, indices):
        rng = sample_rng("passkey", seed, i)
        key = random_key(rng, key_digits)
        nt = _passkey_document(rng, key, context_chars=context_chars, depth=depth, filler=filler,
                               needle_template=needle_template)
        out.append(TextSample(id=sample_id(TEXT_ID, seed, i), context=nt.text, question=question, answer=key,
                              needle_span=nt.needle_span, answer_span=nt.answer_span, seed=int(seed), golds=[key],
                              meta=dict(generator="passkey_text", context_chars=context_chars, depth=nt.depth,
                                        actual_depth=round(nt.actual_depth, 4), filler=filler, index=i)))
    return out


def case_study_images(characters: str = CASE_STUDY_CHARS, n_per_char: int = 1, seed: int = 0, *,
                      page: PageLayout | None = None, context_chars: int | None = None, depth: float | None = None,
                      pages: int | None = None, filler: str = "classic", question: str = PASSKEY_QUESTION,
                      **layout_keys: Any) -> list[ImageSample]:
    """One character as the pass key ("The pass key is k."), n_per_char samples per character, ordered
    by character. The needle is never split across lines: it is kept whole on one line when it fits,
    otherwise (the 15-character grid line) its longest tail that fits ("pass key is k.") stays together.
    page / layout_keys and the other options: as in passkey_images."""
    if not characters or any(not isinstance(c, str) or len(c) != 1 or c.isspace() for c in characters):
        raise ValueError(f"characters must be a string of non-space characters (one pass key each), "
                         f"got {characters!r}")
    page = PageLayout.from_keys(page, **layout_keys)
    if page.mode == "free" and context_chars is None and pages is None:
        context_chars = 1024
    pages = 1 if pages is None else int(pages)
    samples = []
    for c in characters:
        for j in range(n_per_char):
            rng = sample_rng(f"case:{c}", seed, j)
            lay = page.text_layout(sample_rng(f"case-offset:{c}", seed, j))
            nt = _passkey_document(rng, c, context_chars=context_chars, depth=depth, filler=filler,
                                   needle_template=NEEDLE_TEMPLATE, n_lines=pages * lay.lines_per_page,
                                   width=lay.chars_per_line, keep_needle="tail", lines_per_page=lay.lines_per_page)
            a0 = nt.answer_span[0]
            meta = dict(generator="case_study_images", character=c, context_chars=context_chars, filler=filler,
                        grid_offset=[lay.x_off, lay.y_off] if lay.mode == "grid" else None, index=j)
            samples.append(image_sample(f"case-{c}-{seed}-{j}", nt, lay, [(a0, a0 + 1)], question, seed, "tail",
                                        meta))
    return samples
