"""Score files for notebooks and later chapters: compute once, reuse from ``results/<model_slug>/``.

    lm = load_scoring_model("tiny")
    samples = scoring_samples("ocr", n=12, seed=0)
    scores = get_scores(lm, "ocr", samples, results_dir="../results", row="emit", seed=0)

``get_scores`` reads ``results/<slug>/ocr_scores.json`` (``ocr_scores.consume.json`` for the other
row convention, ``retrieval_scores.json`` ...) when the file's metadata matches the request, and
otherwise computes and saves it (atomically). Samples come from the data generators
(``ocrheads_lib.data.passkey_images`` / ``passkey_text``).
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ocrheads_lib import data
from ocrheads_lib.models import load_model
from ocrheads_lib.models.testing import tiny_random
from ocrheads_lib.paths import results_dir as _results_dir
from ocrheads_lib.scoring.batch import FaultError, is_fault_reason
from ocrheads_lib.scoring.common import model_facts
from ocrheads_lib.scoring.ocr import score_ocr
from ocrheads_lib.scoring.retrieval import default_row, score_retrieval
from ocrheads_lib.scoring.store import HeadScores, load_scores

# --------------------------------------------------------------------------- models
def load_scoring_model(model_id: str = "tiny", seed: int = 0, device: str = "cpu", dtype: str | None = None) -> Any:
    """`load_model(model_id, attn="probe")`; "tiny-random-<family>" gives an untrained tiny model of that family
    (float32, CPU, built from `seed`). The notebooks and the command line load their models here.

    There is deliberately no fallback: if the embedded model's weights are missing, the error says how to
    build them, rather than a chapter silently scoring an untrained model."""
    if model_id.startswith("tiny-random-"):
        if device not in ("auto", "cpu") or dtype not in (None, "float32"):
            raise ValueError(f"{model_id} is built in float32 on the CPU; device {device!r} / dtype {dtype!r} do "
                             "not apply to it (drop them, or use a trained model)")
        return tiny_random(model_id[len("tiny-random-"):], seed=seed, attn="probe")
    return load_model(model_id, device=device, dtype=dtype, attn="probe")


def resolve_answer_source(lm: Any, answer_source: str = "auto") -> str:
    """"auto": untrained (tiny-random) models cannot generate the answer -> "gold"; others -> "generate"."""
    if answer_source != "auto":
        return answer_source
    return "gold" if str(lm.model_id).startswith("tiny-random") else "generate"


# --------------------------------------------------------------------------- samples
DATASET_ALIASES = {"passkey": "passkey_images", "niah": "niah_images", "passkey-text": "passkey_text",
                   "niah-text": "niah_text"}


def resolve_dataset(name: str) -> Callable[..., Sequence[Any]]:
    """A dataset name -> the function that builds its samples: a generator of ``ocrheads_lib.data`` by its
    name or alias (:data:`DATASET_ALIASES`), or ``package.module:function`` / ``path/to/file.py:function``."""
    if ":" in name:
        target, function = name.rsplit(":", 1)
        if target.endswith(".py"):
            path = Path(target)
            if not path.exists():
                raise FileNotFoundError(f"dataset file {path} does not exist; give an existing 'file.py:function'")
            spec = importlib.util.spec_from_file_location(f"_ocrheads_dataset_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        if not callable(getattr(module, function, None)):
            raise ValueError(f"dataset {name!r}: {target} has no function {function!r}")
        return getattr(module, function)
    function = DATASET_ALIASES.get(name, name)
    if not callable(getattr(data, function, None)):
        available = sorted(k for k, v in vars(data).items() if callable(v) and not k.startswith("_")
                           and k[0].islower())
        raise ValueError(f"unknown dataset {name!r}: ocrheads_lib.data has no generator {function!r}. "
                         f"Known aliases: {sorted(DATASET_ALIASES)}; generators: {available}; or give "
                         "'module:function' / 'file.py:function'")
    return getattr(data, function)


def scoring_samples(kind: str, n: int, seed: int = 0, dataset: str | None = None, **kwargs: Any) -> list[Any]:
    """Samples for a scoring task: ImageSamples for "ocr" (the book's grid pass-key pages by default),
    TextSamples for "retrieval"."""
    name = dataset or ("passkey" if kind == "ocr" else "passkey-text")
    generator = resolve_dataset(name)
    if kind == "ocr" and name == "passkey":
        kwargs.setdefault("layout", "grid")
    return list(generator(n, seed=seed, **kwargs))


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
    if not samples:
        raise ValueError(f"get_scores({kind!r}) got no samples: a score file of zero samples ranks nothing; "
                         "pass n >= 1 samples")
    source = resolve_answer_source(lm, answer_source)
    variant = options.get("variant", "wu") if kind == "retrieval" else None
    row = row or (default_row(variant) if kind == "retrieval" else "emit")
    path = score_path(model_id or lm.model_id, kind, row, results_dir, variant)
    ids = [str(s.id) for s in samples]
    facts = model_facts(lm)
    if path.exists() and not recompute:
        cached = load_scores(path)
        cached_ids = [s.id for s in cached.samples] + [f.id for f in cached.failures]
        wanted = {**options, "answer_source": source}
        same_options = all(cached.meta.options.get(k) == v for k, v in wanted.items())
        # files written before dtype/device were recorded (None) were float32 CPU runs
        same_machine = all(getattr(cached.meta, k) in (v, None if v in ("float32", "cpu") else v)
                           for k, v in facts.items())
        if (cached.meta.model_id == lm.model_id and cached.meta.revision == getattr(lm, "revision", None)
                and cached.meta.row == row and same_options and same_machine
                and sorted(cached_ids) == sorted(ids) and cached.meta.seed == seed):
            return cached
    if kind == "ocr":
        scores = score_ocr(lm, samples, row=row, answer_source=source, dataset=dataset, seed=seed, **options)
    elif kind == "retrieval":
        scores = score_retrieval(lm, samples, row=row, answer_source=source, dataset=dataset, seed=seed, **options)
    else:
        raise ValueError(f"kind must be 'ocr' or 'retrieval', got {kind!r}")
    faults = [f for f in scores.failures if is_fault_reason(f.reason)]
    if faults:  # out of memory or a device error is the machine's, not the samples': never saved as results
        raise FaultError(f"{len(faults)} of {len(ids)} samples hit a fault (first: {faults[0].id}: {faults[0].reason}); "
                         f"nothing was saved to {path}. Free memory or the device, then call again")
    scores.save(path)
    return scores
