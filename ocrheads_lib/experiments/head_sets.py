"""The OCR and retrieval head sets an experiment uses: read from ``results/<model>/`` or computed.

Order of preference (so every notebook also runs alone):

1. ``head_sets/*.json`` (written by the scoring chapters) give the *selected* sets, best first;
2. ``ocr_scores.json`` / ``retrieval_scores.json`` give the full ranking (used after the selected heads, so
   top-k is defined for k larger than a selected set) and the selection when no head-set file exists;
3. otherwise the scores are computed here with :func:`ocrheads_lib.scoring.score_ocr` /
   :func:`~ocrheads_lib.scoring.score_retrieval` on small pass-key sets and cached under
   ``results/<model>/cache/experiment_scores/``.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocrheads_lib.heads import load_head_set, ranked, select
from ocrheads_lib.scoring import load_scores, score_ocr, score_retrieval
from ocrheads_lib.types import Head, head_label

KINDS = ("ocr", "retrieval")


@dataclass
class ExperimentHeads:
    """Ranked heads (best first) and selected sets per kind, and where each came from."""

    ranked: dict[str, list[Head]] = field(default_factory=dict)      # kind -> heads best first
    selected: dict[str, list[Head]] = field(default_factory=dict)    # kind -> heads the selection rule keeps
    source: dict[str, str] = field(default_factory=dict)             # kind -> file or "computed"

    @property
    def exclude(self) -> list[Head]:
        """Heads random draws avoid: the union of the selected sets."""
        return sorted({h for heads in self.selected.values() for h in heads})

    def describe(self, k: int = 5) -> str:
        lines = []
        for kind in self.ranked:
            top = " ".join(head_label(h) for h in self.ranked[kind][:k])
            lines.append(f"{kind}: {len(self.selected.get(kind, []))} selected, top-{k} {top}  [{self.source[kind]}]")
        return "\n".join(lines)


def _read_head_set_files(folder: Path, rule: str) -> dict[str, tuple[list[Head], str | None, Path, str | None]]:
    """kind -> (heads, model id or None, path, weights revision or None) from ``folder/*.json`` (files with a "kind" field, or named
    <kind>.json); when several files hold one kind, the one whose "rule" is `rule` wins, else the first."""
    found: dict[str, list[tuple[bool, Path, str | None]]] = {}
    if not folder.is_dir():
        return {}
    for path in sorted(folder.glob("*.json")):
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        meta = payload if isinstance(payload, dict) else {}
        kind = meta.get("kind") or path.stem
        if kind in KINDS:
            found.setdefault(kind, []).append((meta.get("rule") == rule, path, meta.get("model"),
                                               meta.get("revision")))
    out: dict[str, tuple[list[Head], str | None, Path, str | None]] = {}
    for kind, candidates in found.items():
        matching = [c for c in candidates if c[0]] or candidates
        _, path, model, revision = matching[0]
        out[kind] = (load_head_set(path), model, path, revision)
    return out


def ranking_from_scores(scores: Any, selected: Sequence[Head], rule: str = "readme") -> list[Head]:
    """Selected heads first (in their order), then every other head by the rule's value."""
    first = [tuple(map(int, h)) for h in selected]
    rest = [head for head, _ in ranked(scores, rule) if head not in set(first)]
    return first + rest


def _mismatch(lm: Any, model: str | None, shape: tuple[int, int] | None, heads: Sequence[Head] = (),
              revision: str | None = None) -> str:
    """Why results on disk do not belong to `lm` ("" when they may): another model id, other weights
    (revision), another head grid, or heads outside the grid. Without a model (lm None) nothing is checked."""
    if lm is None:
        return ""
    grid = (int(lm.n_layers), int(lm.n_heads))
    if model is not None and str(model) != str(lm.model_id):
        return f"written for model {model!r}, not {lm.model_id!r}"
    if revision is not None and revision != getattr(lm, "revision", None):
        return f"written for weights revision {revision!r}, not {getattr(lm, 'revision', None)!r}"
    if shape is not None and tuple(shape) != grid:
        return f"head grid {tuple(shape)} differs from the model's {grid}"
    if any(not (0 <= l < grid[0] and 0 <= h < grid[1]) for l, h in heads):
        return f"heads outside the model's {grid} grid"
    return ""


def experiment_heads(lm: Any, model_dir: str | Path, *, rule: str = "readme", threshold: float = 0.1,
                     samples_for: Callable[[str], Sequence[Any]] | None = None) -> ExperimentHeads:
    """Head sets for the experiments of one model (see the module docstring).

    model_dir: ``results/<model_slug>/``. samples_for(kind) -> samples to score when nothing usable is on disk
    (image samples for "ocr", text samples for "retrieval"); required only then. Files written for another
    model (model id or head grid differ, e.g. a tiny *random* model's leftovers) are ignored, and
    ``ExperimentHeads.source`` says so.
    """
    model_dir = Path(model_dir)
    files = _read_head_set_files(model_dir / "head_sets", rule)
    out = ExperimentHeads()
    for kind in KINDS:
        scores, notes = None, []
        for candidate in (model_dir / f"{kind}_scores.json", model_dir / "cache" / "experiment_scores" /
                          f"{kind}_scores.json"):
            if not candidate.exists():
                continue
            loaded = load_scores(candidate)
            why = _mismatch(lm, loaded.meta.model_id, loaded.shape, revision=loaded.meta.revision)
            if why:
                notes.append(f"ignored {candidate}: {why}")
                continue
            if not loaded.has_entries():    # e.g. left by a chapter that failed: ranks nothing, never trusted
                raise ValueError(f"{candidate} holds no scored sample ({len(loaded.failures)} failures): a head "
                                 "ranking over zero samples is undefined. Re-run the scoring chapter (02 for ocr, "
                                 "03 for retrieval) with n_samples >= 1, or delete the file")
            scores = loaded
            notes.append(str(candidate))
            break
        head_file = files.get(kind)
        if head_file is not None:
            why = _mismatch(lm, head_file[1], None, head_file[0], revision=head_file[3])
            if why:
                notes.append(f"ignored {head_file[2]}: {why}")
                head_file = None
        if scores is None and head_file is None:
            if samples_for is None:
                raise FileNotFoundError(f"no usable {kind} head set or scores under {model_dir}; run the scoring "
                                        "chapter (02/03) first or pass samples_for=... to compute them here")
            scores = _compute(lm, kind, samples_for(kind))
            path = model_dir / "cache" / "experiment_scores" / f"{kind}_scores.json"
            scores.save(path)
            notes.append(f"computed ({path})")
        if head_file is not None:
            selected = head_file[0]
            notes.insert(0, str(head_file[2]))
        else:
            selected = select(scores, rule, threshold)
        out.ranked[kind] = ranking_from_scores(scores, selected, rule) if scores is not None else list(selected)
        out.selected[kind] = list(selected)
        out.source[kind] = "; ".join(notes)
    return out


def _compute(lm: Any, kind: str, samples: Sequence[Any]) -> Any:
    if kind == "ocr":
        return score_ocr(lm, list(samples))
    return score_retrieval(lm, list(samples))
