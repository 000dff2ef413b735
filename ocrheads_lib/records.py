"""Results as shipped data: per-sample records under a run identity, refused when stale, audited on every build.

A full-size run (hundreds of samples per claim) takes hours on a CPU, so its per-sample records ship inside
the repository and the book reads them. Three guarantees:

* **Identity.** A records file starts with its :class:`RunIdentity` (model, weights hash, experiment,
  parameters, splits). :func:`read_records` refuses a file whose identity differs from the one the reader
  expects -- new weights, other parameters, other splits -- with :class:`StaleRecordsError`, naming the
  command that regenerates it.
* **Determinism.** :func:`encode` writes one canonical JSON line per record (sorted keys, no spaces), records
  sorted by (task, condition, id), gzip with no time stamp or file name: the same records give the same bytes.
* **Audit.** :func:`audit` recomputes a seeded random subset (at least one record per condition and at least
  `fraction` of all, default 1 %) with a caller's function and compares canonical bytes; any difference
  raises :class:`AuditError` naming the regeneration command.

Command line (``make results`` calls it; resumable: every condition's answers are appended to a part file as
they come, so a stopped run continues where it was; progress bars from tqdm)::

    python -m ocrheads_lib.records regenerate --model tiny --n-select 8 --n-eval 8 --ks 2 \\
        --out results/records/tiny_masking.jsonl.gz
    python -m ocrheads_lib.records audit results/records/tiny_masking.jsonl.gz --fraction 0.01

The experiment behind ``regenerate`` is masking on the evaluation split with heads chosen on the selection
split (:mod:`ocrheads_lib.experiments.shipped`), or with ``--experiment window`` Gemma 3's retrieval heads at two
context lengths and their causal test (:mod:`ocrheads_lib.experiments.window_records`).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocrheads_lib.paths import atomic_path
from ocrheads_lib.splits import Splits

FORMAT = "ocrheads-records/1"
RECORD_KEYS = ("task", "condition", "id")      # what makes a record unique, and the sort order
REGENERATE = "python -m ocrheads_lib.records regenerate"


class StaleRecordsError(ValueError):
    """The records were written under another run identity (weights, parameters or splits changed)."""


class AuditError(AssertionError):
    """A recomputed record differs from the shipped one."""


@dataclass(frozen=True)
class RunIdentity:
    """What a set of records depends on. Two runs with equal identities must give byte-identical records."""

    model_id: str
    weights: str                                   # weights fingerprint (``lm.revision``)
    experiment: str                                # e.g. "masking"
    params: Mapping[str, Any] = field(default_factory=dict)   # JSON-able settings (tasks, n, ks, seeds, ...)
    splits: Splits = field(default_factory=Splits)

    def __post_init__(self) -> None:
        for name in ("model_id", "weights", "experiment"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"RunIdentity.{name} must be a non-empty string, got {getattr(self, name)!r}")
        try:
            canonical(dict(self.params))
        except TypeError as error:
            raise ValueError(f"RunIdentity.params must be JSON-able (numbers, strings, lists, dicts): "
                             f"{error}") from None

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "weights": self.weights, "experiment": self.experiment,
                "params": json.loads(canonical(dict(self.params))), "splits": self.splits.as_dict()}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "RunIdentity":
        return cls(str(payload["model_id"]), str(payload["weights"]), str(payload["experiment"]),
                   dict(payload.get("params", {})), Splits.from_dict(payload["splits"]))

    def key(self) -> str:
        """16 hex digits of the sha256 of the canonical identity: stable across processes and machines."""
        return hashlib.sha256(canonical(self.as_dict()).encode()).hexdigest()[:16]

    def command(self, out: str | os.PathLike | None = None) -> str:
        """The command line that regenerates records of this identity."""
        return regeneration_command(self, out)

    def differences(self, other: "RunIdentity") -> list[str]:
        """Which parts differ, in words ("weights a1b2 -> c3d4", ...)."""
        mine, theirs = self.as_dict(), other.as_dict()
        out = []
        for name in ("model_id", "weights", "experiment", "splits"):
            if mine[name] != theirs[name]:
                out.append(f"{name} {mine[name]} -> {theirs[name]}")
        for name in sorted(set(mine["params"]) | set(theirs["params"])):
            if mine["params"].get(name) != theirs["params"].get(name):
                out.append(f"params.{name} {mine['params'].get(name)!r} -> {theirs['params'].get(name)!r}")
        return out


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept, floats in Python's shortest round-trip form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def record_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"a record needs the keys {RECORD_KEYS}; this one lacks {missing}: {dict(record)}")
    return tuple(str(record[k]) for k in RECORD_KEYS)  # type: ignore[return-value]


def regeneration_command(identity: RunIdentity, out: str | os.PathLike | None = None) -> str:
    """``python -m ocrheads_lib.records regenerate ...`` with the identity's model, splits and parameters."""
    params = dict(identity.params)
    parts = [REGENERATE, f"--model {identity.model_id}", f"--experiment {identity.experiment}",
             f"--selection-seeds {identity.splits.selection.first_seed}:{identity.splits.selection.n_seeds}",
             f"--evaluation-seeds {identity.splits.evaluation.first_seed}:{identity.splits.evaluation.n_seeds}"]
    for name in sorted(params):
        value = params[name]
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"--{name.replace('_', '-')} {text}")
    if out is not None:
        parts.append(f"--out {out}")
    return " ".join(parts) + "   (or: make results)"


# --------------------------------------------------------------------------- bytes
def encode(identity: RunIdentity, records: Iterable[Mapping[str, Any]]) -> bytes:
    """The canonical bytes of a records file (uncompressed): a header line, then one line per record, sorted
    by (task, condition, id). Two records with the same key are refused."""
    rows = sorted((dict(r) for r in records), key=record_key)
    keys = [record_key(r) for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1}) if len(set(keys)) != len(keys) else []
    if dupes:
        raise ValueError(f"{len(dupes)} record key(s) appear twice (e.g. {dupes[0]}); a (task, condition, id) "
                         "has one record")
    header = {"format": FORMAT, "identity": identity.as_dict(), "key": identity.key(), "n_records": len(rows)}
    return ("\n".join([canonical(header), *map(canonical, rows)]) + "\n").encode("utf-8")


def compress(data: bytes) -> bytes:
    """gzip without a time stamp or file name (so equal input gives equal bytes)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(data)
    return buffer.getvalue()


def write_records(path: str | os.PathLike, identity: RunIdentity, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records atomically; ``.gz`` paths are gzip-compressed. Same identity and records, same bytes."""
    data = encode(identity, records)
    if str(path).endswith(".gz"):
        data = compress(data)
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def load(path: str | os.PathLike) -> tuple[RunIdentity, list[dict[str, Any]]]:
    """(identity, records) of a file, whatever its identity (see :func:`read_records` for the checked read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no records at {path}; regenerate them with `{REGENERATE} ... --out {path}` "
                                "(or: make results)")
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    lines = text.splitlines()
    header = json.loads(lines[0]) if lines else {}
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a records file ({FORMAT}); regenerate it with `{REGENERATE}`")
    records = [json.loads(line) for line in lines[1:]]
    if len(records) != header.get("n_records"):
        command = regeneration_command(RunIdentity.from_dict(header["identity"]), path)
        raise ValueError(f"{path} holds {len(records)} records but its header says {header.get('n_records')}: "
                         f"the file is cut; regenerate it with `{command}`")
    return RunIdentity.from_dict(header["identity"]), records


def read_records(path: str | os.PathLike, expected: RunIdentity) -> list[dict[str, Any]]:
    """The records of `path`, or :class:`StaleRecordsError` when they were written under another identity
    (the message says what changed and the command that regenerates them)."""
    found, records = load(path)
    if found.key() != expected.key():
        changes = "; ".join(found.differences(expected)[:6]) if found != expected else "identity key"
        raise StaleRecordsError(
            f"{path} was written for another run (in the file -> expected: {changes}; file key {found.key()}, "
            f"expected {expected.key()}): its numbers do not belong to this model or "
            f"these settings. Regenerate: {regeneration_command(expected, path)}")
    return records


# --------------------------------------------------------------------------- audit
@dataclass(frozen=True)
class AuditReport:
    n_records: int
    n_checked: int
    n_conditions: int
    checked: tuple[tuple[str, str, str], ...]      # (task, condition, id) of every recomputed record

    def __str__(self) -> str:
        return (f"audit: {self.n_checked} of {self.n_records} records recomputed ({self.n_conditions} conditions), "
                "all byte-identical")


def audit_sample(records: Sequence[Mapping[str, Any]], fraction: float = 0.01, seed: int = 0) -> list[int]:
    """Indices of the records to recompute: one per (task, condition) drawn with ``random.Random(seed)``, then
    more at random until at least ceil(fraction * n) are chosen; sorted."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}; 0.01 recomputes 1 % of the records")
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        task, condition, _ = record_key(record)
        groups.setdefault((task, condition), []).append(index)
    chosen = {rng.choice(groups[group]) for group in sorted(groups)}
    rest = sorted(set(range(len(records))) - chosen)
    need = max(0, math.ceil(fraction * len(records)) - len(chosen))
    chosen |= set(rng.sample(rest, min(need, len(rest))))
    return sorted(chosen)


def audit(records: Sequence[Mapping[str, Any]], recompute: Callable[[Mapping[str, Any]], Mapping[str, Any]],
          fraction: float = 0.01, seed: int = 0, command: str = f"{REGENERATE} ... (or: make results)") -> AuditReport:
    """Recompute a seeded subset (:func:`audit_sample`) with ``recompute(record) -> record`` and compare canonical
    bytes; :class:`AuditError` naming `command` and the first differing records on any difference."""
    picked = audit_sample(records, fraction, seed)
    differing = []
    for index in picked:
        shipped = canonical(dict(records[index]))
        fresh = canonical(dict(recompute(records[index])))
        if fresh != shipped:
            differing.append((record_key(records[index]), shipped, fresh))
    if differing:
        key, shipped, fresh = differing[0]
        raise AuditError(f"{len(differing)} of {len(picked)} recomputed records differ from the shipped ones, e.g. "
                         f"{key}:\n  shipped:    {shipped[:300]}\n  recomputed: {fresh[:300]}\nThe shipped records "
                         f"are stale or the code changed their meaning; regenerate them: {command}")
    groups = {record_key(r)[:2] for r in records}
    return AuditReport(len(records), len(picked), len(groups), tuple(record_key(records[i]) for i in picked))


# --------------------------------------------------------------------------- command line
def _seeds(text: str) -> tuple[int, int]:
    first, _, count = text.partition(":")
    return int(first), int(count or 1)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m ocrheads_lib.records", description=__doc__.split("\n\n")[0])
    sub = main.add_subparsers(dest="command", required=True)
    regen = sub.add_parser("regenerate", help="compute (or resume) the per-sample records of a run")
    regen.add_argument("--model", default="tiny")
    regen.add_argument("--experiment", default="masking", choices=["masking", "window"],
                       help="masking: smol-vl's masking run; window: Gemma 3's retrieval heads at two lengths")
    regen.add_argument("--selection-seeds", type=_seeds, default=(0, 1), help="first:count (default 0:1)")
    regen.add_argument("--evaluation-seeds", type=_seeds, default=(1000, 1), help="first:count (default 1000:1)")
    regen.add_argument("--tasks", type=lambda t: [x for x in t.split(",") if x],
                       default=["passkey_image", "passkey_text"])
    regen.add_argument("--n-select", type=int, default=8, help="selection-split samples to score heads on")
    regen.add_argument("--n-eval", type=int, default=200, help="evaluation-split samples per task")
    regen.add_argument("--ks", type=_ints, default=[2, 5])
    regen.add_argument("--control-seeds", type=_ints, default=[0, 1, 2])
    regen.add_argument("--max-new-tokens", type=int, default=12)
    regen.add_argument("--batch-size", type=int, default=1)
    regen.add_argument("--settings", type=_names, default=["short", "long"], help="window: lengths scored")
    regen.add_argument("--causal-settings", type=_names, default=["short", "long"],
                       help="window: lengths with the causal test")
    regen.add_argument("--contexts", default=None,
                       help="window: the length definitions' key the records were made with (checked against today's)")
    regen.add_argument("--from-results", default=None,
                       help="window: convert this finished results folder (score files, prediction caches) without "
                            "loading the model")
    regen.add_argument("--out", required=True, help="records file (.jsonl or .jsonl.gz)")
    regen.add_argument("--work", default=None, help="folder of the resumable part files (default: <out>.parts)")
    regen.add_argument("--quiet", action="store_true", help="no progress bars")
    check = sub.add_parser("audit", help="recompute a seeded subset of a records file and compare bytes")
    check.add_argument("path")
    check.add_argument("--fraction", type=float, default=0.01)
    check.add_argument("--seed", type=int, default=0)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ocrheads_lib.experiments import shipped   # the experiments import models and torch: only here
    from ocrheads_lib.splits import Split

    if args.command == "regenerate":
        splits = Splits(Split(*args.selection_seeds), Split(*args.evaluation_seeds))
        if args.experiment == "window":
            return _regenerate_window(args, splits)
        path = shipped.regenerate(model_id=args.model, splits=splits, tasks=args.tasks, n_select=args.n_select,
                                  n_eval=args.n_eval, ks=args.ks, control_seeds=args.control_seeds,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, out=args.out,
                                  work=args.work, progress=not args.quiet)
        print(f"wrote {path}")
        return 0
    try:
        identity, records = load(args.path)
        if identity.experiment == "window":
            from ocrheads_lib.experiments import window_records

            report = window_records.audit_file(args.path, fraction=args.fraction, seed=args.seed)
        else:
            report = shipped.audit_file(args.path, identity, records, fraction=args.fraction, seed=args.seed)
    except (AuditError, StaleRecordsError, FileNotFoundError, ValueError) as error:
        # the build prints this and stops: the message already names the regeneration command
        print(f"audit of {args.path} FAILED ({type(error).__name__}): {error}", file=sys.stderr)
        return 1
    print(f"{args.path}: {report}")
    return 0


def _regenerate_window(args: argparse.Namespace, splits: Splits) -> int:
    from ocrheads_lib.experiments import window_records

    run = window_records.WindowRun(tuple(args.settings), tuple(args.causal_settings), args.n_select, args.n_eval,
                                   tuple(args.ks), tuple(args.control_seeds), args.max_new_tokens, splits)
    today = window_records.contexts_key(run.contexts())
    if args.contexts is not None and args.contexts != today:
        raise SystemExit(f"--contexts {args.contexts} names length definitions that are not today's ({today}): the "
                         "lengths changed since those records were made; drop --contexts to regenerate with today's")
    if args.from_results is not None:
        if args.model != "gemma3-270m":
            raise SystemExit(f"--from-results reads Gemma 3's facts from its converted folder; --model {args.model} is "
                             "not gemma3-270m: drop --from-results to regenerate with the model loaded")
        path = window_records.from_results(args.from_results, args.out, window_records.gemma_facts(), run)
    else:
        path = window_records.regenerate(run, args.out, model_id=args.model, work=args.work)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
