"""Data: generated needle sets, document-QA loaders, rendering, contact sheets.

Generators (seeded; sample i does not depend on n; the needle sets also take indices=[...] to build only
those samples, and lazy.lazy_samples(generator, n, seed, **kw) builds them one at a time on access):
    passkey_images(n, seed, layout="grid"|"free", ...)   -> list[ImageSample]  (per-digit boxes)
    niah_images(n, seed, ...)                             -> list[ImageSample]  (per-word boxes)
    case_study_images(characters, n_per_char, seed, ...)  -> list[ImageSample]  (one-character keys)
Page layout of those three: PageLayout(layout, font, font_size, ..., grid_offset, max_pages) as `page=`,
or its fields as flat keys (layout="free", grid_offset="random": book/params.yml, --dataset-arg).
    passkey_text(n, seed, context_chars) / niah_text(...) -> list[TextSample]   (needle/answer spans)
    synthetic_docs(n, seed, kinds)                        -> list[DocSample]    (offline document QA)
Loaders (need local copies; clear DatasetUnavailableError otherwise):
    load_docvqa, load_mpdocvqa, load_nq, load_hotpotqa
    load_dataset_by_name(name, n, seed, **kw)
    text_version(image_sample)                            -> TextSample (same text as the pages)
Figures: contact_sheet(samples, path, cols=4, all_pages=False), draw_evidence(sample) -> PIL image.
"""
from __future__ import annotations

from typing import Any, Callable

from .compose import ContextTooShortError, text_version
from .contact import contact_sheet, draw_evidence
from .docs import synthetic_docs
from .loaders import (DatasetUnavailableError, load_docvqa, load_hotpotqa, load_mpdocvqa, load_nq)
from .niah import niah_images, niah_text
from .layout import PageLayout
from .passkey import CASE_STUDY_CHARS, PASSKEY_QUESTION, case_study_images, passkey_images, passkey_text
from .render import RenderError, TextLayout
from .samples import DocSample, ImageSample, TextSample


def _docvqa(n: int, seed: int = 0, **kw: Any):
    return load_docvqa(kw.pop("split", "validation"), n, seed=seed, **kw)


def _mpdocvqa(n: int, seed: int = 0, **kw: Any):
    return load_mpdocvqa(kw.pop("split", "val"), n, seed=seed, **kw)


def _nq(n: int, seed: int = 0, **kw: Any):
    return load_nq(kw.pop("path", kw.pop("path_or_id", None)), n, seed, **kw)


def _hotpot(n: int, seed: int = 0, **kw: Any):
    return load_hotpotqa(kw.pop("path", None), n, seed, **kw)


def _case(n: int, seed: int = 0, **kw: Any):
    """n samples cycling through the case-study characters round-robin (n_per_char = ceil(n / len(chars)))."""
    characters = kw.pop("characters", CASE_STUDY_CHARS)
    per = max(1, -(-n // len(characters)))
    samples = case_study_images(characters, per, seed, **kw)          # ordered by character
    return [samples[c * per + j] for j in range(per) for c in range(len(characters))][:n]


DATASETS: dict[str, Callable[..., list]] = {
    "passkey": passkey_images, "passkey_images": passkey_images, "passkey_image": passkey_images,
    "passkey_text": passkey_text, "niah": niah_images, "niah_images": niah_images, "niah_image": niah_images,
    "niah_text": niah_text, "case_study": _case, "synthetic_docs": synthetic_docs, "docvqa": _docvqa,
    "mpdocvqa": _mpdocvqa, "nq": _nq, "hotpotqa": _hotpot, "hotpot": _hotpot,
}


def load_dataset_by_name(name: str, n: int, seed: int = 0, **kw: Any) -> list:
    """Build or load a dataset by name; extra keyword arguments go to the generator/loader."""
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known names: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](n, seed=seed, **kw)


__all__ = [
    "ImageSample", "TextSample", "DocSample", "passkey_images", "passkey_text", "niah_images", "niah_text",
    "case_study_images", "synthetic_docs", "load_docvqa", "load_mpdocvqa", "load_nq", "load_hotpotqa",
    "load_dataset_by_name", "contact_sheet", "DatasetUnavailableError", "ContextTooShortError", "RenderError",
    "TextLayout", "PageLayout", "PASSKEY_QUESTION", "DATASETS", "text_version", "draw_evidence",
]
