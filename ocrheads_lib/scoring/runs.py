"""Score files for notebooks and later chapters: compute once, reuse from ``results/<model_slug>/``.

    lm = load_scoring_model("tiny")
    samples = scoring_samples("ocr", n=12, seed=0)
    scores = get_scores(lm, "ocr", samples, results_dir="../results", row="emit", seed=0)

``get_scores`` reads ``results/<slug>/ocr_scores.json`` (``ocr_scores.consume.json`` for the other
row convention, ``retrieval_scores.json`` ...) when the file's metadata matches the request, and
otherwise computes and saves it (atomically). Samples come from the DATA generators
(``ocrheads_lib.data.passkey_images`` / ``passkey_text``); when those are not installed a small built-in
pass-key set on the book's grid page is used instead (and a warning says so).
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Sequence

from ocrheads_lib.paths import results_dir as _results_dir
from ocrheads_lib.scoring.store import HeadScores, load_scores

TINY_RANDOM_FALLBACK = "qwen2_vl"


# --------------------------------------------------------------------------- models
def load_scoring_model(model_id: str = "tiny", seed: int = 0) -> Any:
    """`load_model(model_id, attn="probe")`; "tiny-random-<family>" gives an untrained tiny model. If the
    embedded model's weights are not there yet, "tiny" falls back to tiny-random-qwen2_vl (with a warning)."""
    from ocrheads_lib.cli import load_lm

    try:
        return load_lm(model_id, seed=seed)
    except Exception as error:  # noqa: BLE001 - only the missing-tiny-weights case is recovered below
        if model_id != "tiny":
            raise
        warnings.warn(f"the embedded model could not be loaded ({type(error).__name__}: {error}); using an "
                      f"untrained tiny-random-{TINY_RANDOM_FALLBACK} model with the gold answer teacher-forced",
                      stacklevel=2)
        return load_lm(f"tiny-random-{TINY_RANDOM_FALLBACK}", seed=seed)


def resolve_answer_source(lm: Any, answer_source: str = "auto") -> str:
    """"auto": untrained (tiny-random) models cannot generate the answer -> "gold"; others -> "generate"."""
    if answer_source != "auto":
        return answer_source
    return "gold" if str(lm.model_id).startswith("tiny-random") else "generate"


# --------------------------------------------------------------------------- samples
def scoring_samples(kind: str, n: int, seed: int = 0, dataset: str | None = None, **kwargs: Any) -> list[Any]:
    """Samples for a scoring task: ImageSamples for "ocr", TextSamples for "retrieval"."""
    from ocrheads_lib import cli

    name = dataset or ("passkey" if kind == "ocr" else "passkey-text")
    try:
        generator = cli.resolve_dataset(name)
    except (ImportError, ValueError) as error:
        if dataset is not None:
            raise
        warnings.warn(f"DATA generator for {name!r} not available ({error}); using the built-in pass-key set",
                      stacklevel=2)
        return builtin_passkey_images(n, seed) if kind == "ocr" else builtin_passkey_text(n, seed)
    if kind == "ocr" and name == "passkey":
        kwargs.setdefault("layout", "grid")
    return list(generator(n, seed=seed, **kwargs))


def _key(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 5)))


def builtin_passkey_images(n: int, seed: int = 0) -> list[Any]:
    """A minimal pass-key set on the book's grid page (one page; "The pass key is K." among filler)."""
    from ocrheads_lib.data.grid import BOOK_LAYOUT, BOOK_PAGE, render_grid, wrap_words
    from ocrheads_lib.data.samples import ImageSample

    rng = random.Random(seed)
    samples = []
    for i in range(n):
        key = _key(rng)
        lines = wrap_words(f"The pass key is {key}. Keep it.", BOOK_LAYOUT["line_chars"])[: BOOK_LAYOUT["max_lines"]]
        page = render_grid(lines, **BOOK_PAGE)
        line = next(li for li, text in enumerate(lines) if key in text)
        start = lines[line].index(key)
        chars = [page.char_at(line, start + k) for k in range(len(key))]
        boxes = [tuple(float(v) for v in c.ink_box) for c in chars]
        coarse = (boxes[0][0], min(b[1] for b in boxes), boxes[-1][2], max(b[3] for b in boxes))
        samples.append(ImageSample(id=f"builtin-passkey-{seed}-{i}", pages=[page.image],
                                   question="What is the pass key?", answer=key, evidence_page=0, boxes=boxes,
                                   units=list(key), coarse_box=coarse, seed=seed, meta={"source": "builtin"}))
    return samples


def builtin_passkey_text(n: int, seed: int = 0) -> list[Any]:
    """A minimal text pass-key set: filler sentences with the needle "The pass key is K." inside."""
    from ocrheads_lib.data.samples import TextSample

    filler = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
              "There and back again."]
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        key = _key(rng)
        before = " ".join(rng.choice(filler) for _ in range(rng.randint(1, 4)))
        after = " ".join(rng.choice(filler) for _ in range(rng.randint(1, 4)))
        needle = f"The pass key is {key}. Remember it."
        context = f"{before} {needle} {after}"
        n0 = len(before) + 1
        a0 = n0 + needle.index(key)
        samples.append(TextSample(id=f"builtin-passkey-text-{seed}-{i}", context=context,
                                  question="What is the pass key?", answer=key, needle_span=(n0, n0 + len(needle)),
                                  answer_span=(a0, a0 + len(key)), seed=seed, meta={"source": "builtin"}))
    return samples


# --------------------------------------------------------------------------- cached score files
def score_path(model_id: str, kind: str, row: str = "emit", results_dir: str | Path = "results",
               variant: str | None = None) -> Path:
    """results/<slug>/ocr_scores.json (emit), ocr_scores.consume.json, retrieval_scores[.paper-code].json ..."""
    base = "ocr_scores" if kind == "ocr" else "retrieval_scores"
    tags = []
    if variant and variant != "wu":
        tags.append(variant)
    default_row = "consume" if variant == "paper-code" else "emit"
    if row != default_row:
        tags.append(row)
    name = ".".join([base, *tags]) + ".json"
    return _results_dir(model_id, results_dir) / name


def get_scores(lm: Any, kind: str, samples: Sequence[Any], results_dir: str | Path = "results", *,
               row: str | None = None, seed: int | None = None, dataset: str = "", answer_source: str = "auto",
               model_id: str | None = None, recompute: bool = False, **options: Any) -> HeadScores:
    """The scores of `lm` on `samples`, read from the results folder when an identical run is there,
    otherwise computed (``score_ocr`` / ``score_retrieval``) and saved. `options`: mode/min_overlap for
    OCR, variant for retrieval. `model_id` names the results folder (default: ``lm.model_id``)."""
    from ocrheads_lib.scoring.ocr import score_ocr
    from ocrheads_lib.scoring.retrieval import default_row, score_retrieval

    source = resolve_answer_source(lm, answer_source)
    variant = options.get("variant", "wu") if kind == "retrieval" else None
    row = row or (default_row(variant) if kind == "retrieval" else "emit")
    path = score_path(model_id or lm.model_id, kind, row, results_dir, variant)
    ids = [str(s.id) for s in samples]
    if path.exists() and not recompute:
        cached = load_scores(path)
        cached_ids = [s.id for s in cached.samples] + [f.id for f in cached.failures]
        wanted = {**options, "answer_source": source}
        same_options = all(cached.meta.options.get(k) == v for k, v in wanted.items())
        if (cached.meta.model_id == lm.model_id and cached.meta.row == row and same_options
                and sorted(cached_ids) == sorted(ids) and cached.meta.seed == seed):
            return cached
    if kind == "ocr":
        scores = score_ocr(lm, samples, row=row, answer_source=source, dataset=dataset, seed=seed, **options)
    elif kind == "retrieval":
        scores = score_retrieval(lm, samples, row=row, answer_source=source, dataset=dataset, seed=seed, **options)
    else:
        raise ValueError(f"kind must be 'ocr' or 'retrieval', got {kind!r}")
    scores.save(path)
    return scores
