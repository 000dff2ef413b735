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

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ocrheads_lib.paths import atomic_write_text

FORMAT = "ocrheads.scores/1"
KINDS = ("ocr", "retrieval")
ROWS = ("emit", "consume")
_HEAD_KEY = re.compile(r"^l(\d+)_h(\d+)$")

Head = tuple[int, int]  # (layer, query head), both 0-based


def head_key(layer: int, head: int) -> str:
    """The official key of a head: (9, 0) -> "l9_h0"."""
    return f"l{layer}_h{head}"


def parse_head_key(key: str) -> Head:
    """"l9_h0" -> (9, 0); raises ValueError naming the key otherwise."""
    match = _HEAD_KEY.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a head key of the form 'l<layer>_h<head>'")
    return int(match.group(1)), int(match.group(2))


def _library_version() -> str:
    from ocrheads_lib import __version__

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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.row is not None and self.row not in ROWS:
            raise ValueError(f"row must be one of {ROWS} (or None for unknown), got {self.row!r}")


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

    def mean(self) -> np.ndarray:
        """(L, H) raw mean score per head (0 for a head without entries)."""
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values)) if len(values) else 0.0
        return out

    def activation_frequency(self, threshold: float = 0.0) -> np.ndarray:
        """(L, H) share of a head's entries that are > threshold (0 for a head without entries)."""
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values > threshold)) if len(values) else 0.0
        return out

    def zero_fraction(self) -> np.ndarray:
        """(L, H) share of a head's entries that are exactly 0."""
        out = np.zeros(self.shape)
        for (l, h), values in self.head_entries().items():
            out[l, h] = float(np.mean(values == 0)) if len(values) else 1.0
        return out

    def mean_dict(self) -> dict[str, float]:
        """{"l{L}_h{H}": mean}: the official ``_mean`` format."""
        means = self.mean()
        return {head_key(l, h): float(means[l, h]) for (l, h) in self.heads}

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
            payload["ragged"] = {head_key(l, h): [float(x) for x in v] for (l, h), v in self.ragged.items()}
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
            ragged = {parse_head_key(k): np.asarray(v, dtype=float) for k, v in payload["ragged"].items()}
        return cls(meta=meta, samples=[SampleScore.from_json(s) for s in payload.get("samples", [])],
                   failures=[Failure(str(f["id"]), str(f["reason"])) for f in payload.get("failures", [])],
                   ragged=ragged)


def from_official(per_head: Mapping[str, Iterable[float]], *, model_id: str = "", kind: str = "ocr",
                  dataset: str = "") -> HeadScores:
    """Wrap an official ``{"l{L}_h{H}": [entries]}`` dict (ragged lists allowed)."""
    ragged = {parse_head_key(key): np.asarray(list(values), dtype=float) for key, values in per_head.items()}
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
        payload = json.load(handle)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return HeadScores.from_json(payload)
    if isinstance(payload, dict) and payload and all(_HEAD_KEY.match(k) for k in payload):
        guessed_model, guessed_kind = _guess_official_meta(path)
        per_head = {k: (v if isinstance(v, list) else [v]) for k, v in payload.items()}
        return from_official(per_head, model_id=model_id or guessed_model, kind=kind or guessed_kind,
                             dataset=path.name)
    raise ValueError(f"{path} is neither an ocrheads score file nor an official "
                     "{'l<L>_h<H>': [...]} score file")
