"""Head scores as data: one object per (model, kind, dataset), saved as JSON, loaded back.

A *score entry* is one number per (sample, head). For our own runs it is

    entry[s, l, h] = weight_s * hits_s[l, h] / n_rows_s

where ``n_rows_s`` is the number of scored answer rows of sample ``s`` (answer tokens for the OCR
score, answer tokens inside the needle for the retrieval score), ``hits_s[l, h]`` how many of those
rows had head (l, h)'s argmax on the right key, and ``weight_s`` the sample weight (the match score of
the generated answer for OCR, 1.0 for retrieval). So our entries are aligned: every head has exactly
one entry per scored sample, and a sample that could not be scored is a :class:`Failure` with a
reason, never a partial row.

The official release (PAPER.md §8.3) stores ``{"l{L}_h{H}": [entries...]}`` with one entry per
(example, box) for OCR and per example for text, in processing order and *not* aligned across heads
(InternVL2-8B: ``l0_h0`` has 550 entries, the other 1 023 heads 51). :func:`load_scores` reads both;
an official file becomes a :class:`HeadScores` whose per-head lists are kept as they are
(``ragged``), with ``meta.source == "official"``.

File format written by :meth:`HeadScores.save` (``"format": "ocrheads.scores/1"``)::

    {"format": ..., "meta": {...ScoreMeta...},
     "samples": [{"id": str, "weight": float, "n_rows": int, "hits": [[int]*H]*L, "info": {...}}, ...],
     "failures": [{"id": str, "reason": str}, ...]}

Saving is atomic (temp file + rename) and deterministic (no timestamps), so the same run gives a
byte-identical file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ocrheads_lib import __version__

from ocrheads_lib.paths import atomic_write_text
from ocrheads_lib.types import Head, head_key, is_head_key, parse_head

FORMAT = "ocrheads.scores/1"
KINDS = ("ocr", "retrieval")
ROWS = ("emit", "consume")
def _library_version() -> str:
    return __version__


@dataclass
class ScoreMeta:
    """Where a score file comes from. Everything needed to re-run it, nothing time-dependent."""

    model_id: str
    kind: str                      # "ocr" | "retrieval"
    n_layers: int
    n_heads: int
    dataset: str = ""
    seed: int | None = None
    n: int | None = None           # samples requested
    revision: str | None = None
    library_version: str = field(default_factory=_library_version)
    row: str | None = "emit"       # "emit" | "consume" | None (unknown, official files)
    source: str = "ocrheads"       # "ocrheads" | "official"
    options: dict[str, Any] = field(default_factory=dict)  # mode, variant, min_overlap, answer_source ...
    dtype: str | None = None       # the weights' dtype ("float32", "bfloat16"); None: not recorded
    device: str | None = None      # device kind the run used ("cpu", "cuda"); None: not recorded
    model_seed: int | None = None  # seed of an untrained tiny-random model (None for trained weights)
    dataset_args: dict[str, Any] = field(default_factory=dict)   # extra keyword arguments of the generator
    fingerprint: str | None = None  # run_fingerprint(meta, sample ids) of a command-line run

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.row is not None and self.row not in ROWS:
            raise ValueError(f"row must be one of {ROWS} (or None for unknown), got {self.row!r}")
        for name in ("n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScoreMeta.{name} must be a positive int, got {value!r}")

    def identity(self) -> dict[str, Any]:
        """Every field that decides a result (all but the fingerprint itself), as plain JSON values."""
        payload = json.loads(json.dumps(asdict(self), sort_keys=True, default=str))
        payload.pop("fingerprint", None)
        return payload


def run_fingerprint(meta: ScoreMeta, ids: Iterable[str]) -> str:
    """A short hash of everything that decides a run's result: the metadata (model id and weights revision,
    dtype, device kind, model seed, dataset name, arguments, seed and size, every scoring option, library
    version) and the sample ids in order. Two runs with the same fingerprint give byte-identical files."""
    payload = json.dumps({"meta": meta.identity(), "ids": [str(i) for i in ids]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def meta_differences(old: Mapping[str, Any], new: Mapping[str, Any], old_ids: Sequence[str] | None = None,
                     new_ids: Sequence[str] | None = None) -> list[str]:
    """Human-readable differences between two metadata dicts (``ScoreMeta.identity()``) and their sample
    ids: ``["dtype: 'float32' -> 'bfloat16'", "dataset_args.layout: (unset) -> 'free'"]``."""
    def flat(meta: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in meta.items():
            if key == "fingerprint":
                continue
            if isinstance(value, Mapping):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    a, b = flat(old), flat(new)
    unset = "(unset)"
    diffs = [f"{key}: {a.get(key, unset)!r} -> {b.get(key, unset)!r}".replace(repr(unset), unset)
             for key in sorted(set(a) | set(b)) if a.get(key, unset) != b.get(key, unset)]
    if old_ids is not None and new_ids is not None and list(old_ids) != list(new_ids):
        first = next((i for i, (x, y) in enumerate(zip(old_ids, new_ids)) if x != y), min(len(old_ids), len(new_ids)))
        diffs.append(f"sample ids: {len(old_ids)} -> {len(new_ids)} ids, first difference at position {first}")
    return diffs


@dataclass
class SampleScore:
    """The per-head result of one scored sample."""

    id: str
    weight: float                  # sample weight (OCR: match score of the generated answer; retrieval: 1)
    n_rows: int                    # scored answer rows (> 0)
    hits: np.ndarray               # (L, H) int: rows whose argmax landed on the right key
    info: dict[str, Any] = field(default_factory=dict)   # generated answer, rows used, ...

    def __post_init__(self) -> None:
        self.hits = np.asarray(self.hits, dtype=np.int64)  # (L, H)
        if self.n_rows <= 0:
            raise ValueError(f"sample {self.id}: n_rows must be > 0 (a sample without rows is a Failure)")
        if self.hits.ndim != 2:
            raise ValueError(f"sample {self.id}: hits must be a (layers, heads) matrix, got shape "
                             f"{tuple(self.hits.shape)}")
        if self.hits.size and (int(self.hits.min()) < 0 or int(self.hits.max()) > self.n_rows):
            raise ValueError(f"sample {self.id}: hits must lie in 0..n_rows={self.n_rows} (a head hits at most "
                             f"once per scored row), got {int(self.hits.min())}..{int(self.hits.max())}")
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise ValueError(f"sample {self.id}: weight must be a match score in [0, 1], got {self.weight!r}")

    @property
    def entry(self) -> np.ndarray:
        """(L, H) float: weight * hits / n_rows."""
        return self.weight * self.hits / self.n_rows  # (L, H)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "weight": float(self.weight), "n_rows": int(self.n_rows),
                "hits": self.hits.tolist(), "info": self.info}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "SampleScore":
        return cls(id=str(payload["id"]), weight=float(payload["weight"]), n_rows=int(payload["n_rows"]),
                   hits=np.asarray(payload["hits"], dtype=np.int64), info=dict(payload.get("info", {})))


@dataclass
class Failure:
    """A sample that produced no entry, and why."""

    id: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason}


@dataclass
class HeadScores:
    """Scores of every head of one model on one dataset.

    Our runs fill ``samples`` (aligned entries). Official files fill ``ragged`` (per-head lists of
    possibly different lengths). Use :meth:`head_entries`, :meth:`mean` and
    :meth:`activation_frequency`, which work for both.
    """

    meta: ScoreMeta
    samples: list[SampleScore] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ragged: dict[Head, np.ndarray] | None = None

    # ----------------------------------------------------------------- views
    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.n_layers, self.meta.n_heads

    @property
    def heads(self) -> list[Head]:
        """All (layer, head) pairs, layer-major."""
        return [(layer, head) for layer in range(self.meta.n_layers) for head in range(self.meta.n_heads)]

    @property
    def aligned(self) -> bool:
        """True when every head has one entry per sample (always for our runs)."""
        if self.ragged is None:
            return True
        lengths = {len(values) for values in self.ragged.values()}
        return len(lengths) <= 1 and len(self.ragged) == self.meta.n_layers * self.meta.n_heads

    def matrix(self) -> np.ndarray:
        """(N, L, H) entries; raises for ragged official files (see :meth:`head_entries`)."""
        if self.ragged is None:
            if not self.samples:
                return np.zeros((0, *self.shape))
            return np.stack([sample.entry for sample in self.samples])  # (N, L, H)
        if not self.aligned:
            lengths = sorted({len(v) for v in self.ragged.values()})
            raise ValueError(f"entries are not aligned across heads (lengths {lengths[:5]}...); "
                             "use head_entries() for per-head lists")
        return np.stack([np.stack([self.ragged[(l, h)] for h in range(self.meta.n_heads)], axis=-1)
                         for l in range(self.meta.n_layers)], axis=1)  # (N, L, H)

    def head_entries(self) -> dict[Head, np.ndarray]:
        """(layer, head) -> 1-D array of that head's entries (lengths may differ for official files)."""
        if self.ragged is not None:
            return {head: self.ragged.get(head, np.zeros(0)) for head in self.heads}
        matrix = self.matrix()  # (N, L, H)
        return {(l, h): matrix[:, l, h] for (l, h) in self.heads}

    def n_entries(self) -> np.ndarray:
        """(L, H) int: entries per head."""
        out = np.zeros(self.shape, dtype=np.int64)
        for (l, h), values in self.head_entries().items():
            out[l, h] = len(values)
        return out

    def check_shapes(self) -> "HeadScores":
        """Raise ValueError naming the sample when a sample's hits are not (n_layers, n_heads)."""
        for sample in self.samples:
            if sample.hits.shape != self.shape:
                raise ValueError(f"sample {sample.id}: hits have shape {tuple(sample.hits.shape)}, but the metadata "
                                 f"says {self.shape[0]} layers x {self.shape[1]} heads; the file is corrupt or "
                                 "mixes models: re-score it")
        return self

    def has_entries(self) -> bool:
        """True when at least one head has an entry (a score set of zero scored samples has none)."""
        if self.ragged is None:
            return bool(self.samples)
        return any(len(values) for values in self.ragged.values())

    def require_entries(self, what: str = "a head ranking") -> None:
        """ValueError when no sample was scored, naming the failures' reasons."""
        if not self.has_entries():
            reasons = self.failure_counts()
            raise ValueError(f"no scored samples ({len(self.failures)} failures{': ' + str(reasons) if reasons else ''}"
                             f"): {what} over zero samples is undefined; check the failures' reasons or give samples")

    def mean(self) -> np.ndarray:
        """(L, H) raw mean score per head (0 for a head without entries). A score set without any scored
        sample gives NaN everywhere (undefined, not a plausible-looking 0): no threshold selects a head."""
        if not self.has_entries():
            return np.full(self.shape, np.nan)
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values)) if len(values) else 0.0
        return out

    def activation_frequency(self, threshold: float = 0.0) -> np.ndarray:
        """(L, H) share of a head's entries that are > threshold (0 for a head without entries; NaN when no
        sample was scored)."""
        if not self.has_entries():
            return np.full(self.shape, np.nan)
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values > threshold)) if len(values) else 0.0
        return out

    def zero_fraction(self) -> np.ndarray:
        """(L, H) share of a head's entries that are exactly 0 (NaN when no sample was scored)."""
        if not self.has_entries():
            return np.full(self.shape, np.nan)
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values == 0)) if len(values) else 1.0
        return out

    def mean_dict(self) -> dict[str, float]:
        """{"l{L}_h{H}": mean}: the official ``_mean`` format."""
        means = self.mean()
        return {head_key((l, h)): float(means[l, h]) for (l, h) in self.heads}

    def failure_counts(self) -> dict[str, int]:
        """How many samples failed for each reason (reason text up to the first ':')."""
        counts: dict[str, int] = {}
        for failure in self.failures:
            key = failure.reason.split(":", 1)[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def with_entries(self, entries: Mapping[Head, np.ndarray]) -> "HeadScores":
        """A copy holding the given per-head entries (used by bootstrap resampling)."""
        return HeadScores(meta=self.meta, ragged={head: np.asarray(v, dtype=float) for head, v in entries.items()},
                          failures=list(self.failures))

    # ----------------------------------------------------------------- files
    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"format": FORMAT, "meta": asdict(self.meta)}
        if self.ragged is not None:
            payload["ragged"] = {head_key((l, h)): [float(x) for x in v] for (l, h), v in self.ragged.items()}
        payload["samples"] = [sample.to_json() for sample in self.samples]
        payload["failures"] = [failure.to_json() for failure in self.failures]
        return payload

    def save(self, path: str | os.PathLike) -> Path:
        """Write our JSON format atomically; samples are written one per line so diffs stay readable."""
        payload = self.to_json()
        samples = payload.pop("samples")
        failures = payload.pop("failures")
        head = json.dumps(payload, sort_keys=True)[:-1]
        lines = [head + ',\n "samples": [']
        lines.append(",\n".join("  " + json.dumps(s, sort_keys=True) for s in samples))
        lines.append('],\n "failures": [')
        lines.append(",\n".join("  " + json.dumps(f, sort_keys=True) for f in failures))
        lines.append("]}\n")
        return atomic_write_text(path, "\n".join(lines))

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "HeadScores":
        meta = ScoreMeta(**payload["meta"])
        ragged = None
        if payload.get("ragged") is not None:
            ragged = {parse_head(k): np.asarray(v, dtype=float) for k, v in payload["ragged"].items()}
        scores = cls(meta=meta, samples=[SampleScore.from_json(s) for s in payload.get("samples", [])],
                     failures=[Failure(str(f["id"]), str(f["reason"])) for f in payload.get("failures", [])],
                     ragged=ragged)
        ids = [s.id for s in scores.samples] + [f.id for f in scores.failures]
        seen: set[str] = set()
        twice = [i for i in ids if i in seen or seen.add(i)]
        if twice:
            raise ValueError(f"sample {twice[0]!r} is in the file twice ({len(twice)} duplicated ids): it would be "
                             "counted twice; re-score it")
        return scores.check_shapes()


def from_official(per_head: Mapping[str, Iterable[float]], *, model_id: str = "", kind: str = "ocr",
                  dataset: str = "") -> HeadScores:
    """Wrap an official ``{"l{L}_h{H}": [entries]}`` dict (ragged lists allowed)."""
    ragged = {parse_head(key): np.asarray(list(values), dtype=float) for key, values in per_head.items()}
    if not ragged:
        raise ValueError("the official score dict is empty")
    n_layers = max(l for l, _ in ragged) + 1
    n_heads = max(h for _, h in ragged) + 1
    meta = ScoreMeta(model_id=model_id, kind=kind, n_layers=n_layers, n_heads=n_heads, dataset=dataset,
                     row=None, source="official")
    return HeadScores(meta=meta, ragged=ragged)


def _guess_official_meta(path: Path) -> tuple[str, str]:
    """Model id and kind from an official file name: "InternVL2-8B_fg_2.json" -> ("InternVL2-8B", "ocr")."""
    stem = path.stem
    match = re.match(r"^(?P<model>.+?)_(?P<tag>fg|cg|te|mean_te|fg_mean)_?\d*$", stem)
    if match is None:
        return stem, "ocr"
    kind = "retrieval" if "te" in match.group("tag") else "ocr"
    return match.group("model"), kind


def load_scores(path: str | os.PathLike, *, kind: str | None = None, model_id: str | None = None) -> HeadScores:
    """Read a score file: ours (``"format": "ocrheads.scores/1"``) or the official
    ``{"l{L}_h{H}": [...]}`` release (kind and model guessed from the file name unless given;
    ``*_te_*`` -> retrieval, otherwise ocr). Official ``_mean`` files (head -> float) are read as one
    entry per head."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score file {path} does not exist; compute it with "
                                "`python -m ocrheads_lib score ...` or ocrheads_lib.scoring.score_ocr")
    with open(path, encoding="utf-8") as handle:
        try:
            payload = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"score file {path} is not valid JSON ({error.msg} at line {error.lineno}, column "
                             f"{error.colno}): truncated or corrupt; re-score it") from error
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        try:
            return HeadScores.from_json(payload)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"score file {path}: {error}") from error
    if isinstance(payload, dict) and payload and all(is_head_key(k) for k in payload):
        guessed_model, guessed_kind = _guess_official_meta(path)
        per_head = {k: (v if isinstance(v, list) else [v]) for k, v in payload.items()}
        return from_official(per_head, model_id=model_id or guessed_model, kind=kind or guessed_kind,
                             dataset=path.name)
    raise ValueError(f"{path} is neither an ocrheads score file nor an official "
                     "{'l<L>_h<H>': [...]} score file")
