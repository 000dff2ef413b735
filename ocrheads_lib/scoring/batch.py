"""Long scoring runs: resumable, shardable, one merge, and one identity per run.

Layout for an output file ``OUT.json``::

    OUT.parts/run.json              the run's metadata (with its fingerprint) and the sample ids, in order
    OUT.parts/shard-000.jsonl       one line per finished sample of process 0 (a SampleScore or a Failure)
    OUT.parts/shard-001.jsonl       ... of process 1
    OUT.json                        the merged HeadScores (written once every sample is done)

* One identity: the run's fingerprint (:func:`~ocrheads_lib.scoring.store.run_fingerprint`) covers the
  model id and weights revision, dtype, device kind, model seed, dataset name, arguments and seed, the
  sample ids and every scoring option. It is stored in ``run.json`` and in the merged file. A run into a
  folder or file that holds a run with another fingerprint is refused (:class:`RunMismatchError`, naming
  the fields that differ); pass ``overwrite=True`` (``--overwrite``) or choose another ``out``. A finished
  run with the same fingerprint is reused: nothing is recomputed.
* Resumable: every finished sample is appended (and flushed) to its process's JSONL as soon as it is
  done; a re-run reads all shard files and skips the ids already there. A torn last line (a kill
  mid-write) is ignored and the sample recomputed. While samples are pending, ``OUT.json`` does not
  exist, so an unfinished run never looks complete.
* Failures and faults are told apart. A :class:`~ocrheads_lib.scoring.store.Failure` (the sample itself
  cannot be scored: a box outside the page, an answer the model did not generate) is a result: it is
  recorded, and rescored only with ``retry_failures=True`` (``--retry-failures``). A *fault* is the
  machine's, not the sample's: out of memory, an interrupt, a device error (:func:`is_fault`). A fault is
  never stored: the sample is retried up to ``fault_retries`` times, then the run stops with
  :class:`FaultError` (an interrupt stops it at once), and a re-run resumes from there. Fault records left
  by older versions of this module are ignored when read, so those samples are rescored.
* One writer: the lock covers the final output for the whole run (:func:`writer_lock`). The ranks of one
  launch (:func:`launch_id`: the explicit shards of one run identity and one ``--shard RANK/WORLD`` layout, or
  the processes of one accelerate launch) write it together, each holding an OS file lock (``filelock``) on
  its rank's ``.OUT.json.rank-NNN.lock`` from its first check to its merge; the launch is recorded in
  ``.OUT.json.launch.json``. Any other writer of the same output, with or without ``--overwrite``, in any
  layout, and a ``merge``, is refused (:class:`RunLockedError`) while a rank of that launch runs, so it can
  neither discard the launch's files nor mix its samples into them.
* Every shard line carries the fingerprint it was made under (``"run"``). A line under another fingerprint
  (a file copied from another run) or a second scored line of one id is refused
  (:class:`RunMismatchError`, naming the file), never merged.
* Shardable: the pending samples are split between processes with accelerate's
  ``PartialState().split_between_processes`` (or an explicit ``shard=(rank, world)``); each process
  writes its own JSONL; the main process merges after all finished.
* The merged file depends only on the dataset and the options, not on the number of processes, the
  interruptions or the faults: samples are ordered by the dataset order and scoring a sample is
  deterministic.
"""
from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ocrheads_lib.paths import atomic_write_json, lock_is_held
from ocrheads_lib.scoring.store import (
    FORMAT,
    Failure,
    HeadScores,
    SampleScore,
    ScoreMeta,
    load_scores,
    meta_differences,
    run_fingerprint,
)

Scorer = Callable[[Any], SampleScore | Failure]
Log = Callable[[str], None]

# Exceptions of the machine rather than of the sample (matched by class name along the MRO, so no device
# library has to be imported) and messages that device runtimes put in a plain RuntimeError.
FAULT_TYPES = ("OutOfMemoryError", "MemoryError", "AcceleratorError", "KeyboardInterrupt", "SystemExit")
FAULT_MESSAGES = ("out of memory", "cuda error", "device-side assert", "cublas_status", "cudnn_status",
                  "nccl error", "hip error", "mps backend", "device lost")
DEFAULT_FAULT_RETRIES = 2


class RunMismatchError(ValueError):
    """The output folder or file holds a run with another fingerprint."""


class RunLockedError(RuntimeError):
    """Another process is writing the same output right now."""


class FaultError(RuntimeError):
    """A fault (out of memory, device error) persisted through the retries; the run stopped, nothing was
    stored for the sample, and a re-run of the same command resumes there."""


def _fault_message(message: str) -> bool:
    message = message.lower()
    return any(text in message for text in FAULT_MESSAGES)


def is_fault(error: BaseException) -> bool:
    """True for a fault of the machine (out of memory, an interrupt, a device error), False for an error
    of the sample."""
    if any(cls.__name__ in FAULT_TYPES for cls in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and _fault_message(str(error))


def is_fault_reason(reason: str) -> bool:
    """True for a Failure reason that records a fault (``"exception: OutOfMemoryError: ..."``, the form the
    scorers give an exception): such a record is not a result of the sample."""
    if not reason.startswith("exception: "):
        return False
    type_name, _, message = reason[len("exception: "):].partition(": ")
    return type_name in FAULT_TYPES or _fault_message(message)


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".parts")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn line from an interrupted write: that sample is recomputed
    return records


def _is_failure(record: dict[str, Any]) -> bool:
    return record.get("type") == "failure"


def read_done(folder: Path, fingerprint: str | None = None) -> dict[str, dict[str, Any]]:
    """id -> finished record, over every shard file of the run. A scored sample wins over a recorded failure
    (``--retry-failures`` appends the rescored result after the failure); a failure after a failure keeps
    the first. Fault records (stored as failures by older versions) are skipped: those samples are pending.

    With `fingerprint`, every record must carry it (``"run"``): a record made under another run identity,
    or a second scored record of one id, raises RunMismatchError naming the shard file."""
    done: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("shard-*.jsonl")):
        for record in _read_jsonl(path):
            if _is_failure(record) and is_fault_reason(str(record.get("reason", ""))):
                continue
            key = str(record["id"])
            if fingerprint is not None and record.get("run") != fingerprint:
                raise RunMismatchError(
                    f"{path} holds sample {key!r} made under run {record.get('run')!r}, not this run's {fingerprint}: "
                    "the parts folder mixes runs; pass --overwrite (overwrite=True) to score again, or use a new --out")
            if key in done and not _is_failure(done[key]) and not _is_failure(record):
                raise RunMismatchError(f"{path} holds sample {key!r} twice: two writers appended to this run; "
                                       "pass --overwrite (overwrite=True) to score again, or use a new --out")
            if key not in done or (_is_failure(done[key]) and not _is_failure(record)):
                done[key] = record
    return done


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o644)


def _repair(path: Path) -> None:
    """End a shard file interrupted mid-write with a newline, so the torn line stays a line of its own
    (ignored when read) and the next record starts cleanly."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
        if last != b"\n":
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n")


def discard(out: str | os.PathLike) -> None:
    """Remove a previous run at `out`: the merged file first (so a killed restart never leaves an old file
    looking complete), then the run's metadata and shard files."""
    out = Path(out)
    folder = parts_dir(out)
    out.unlink(missing_ok=True)
    if folder.exists():
        (folder / "run.json").unlink(missing_ok=True)
        for path in folder.glob("shard-*.jsonl"):
            path.unlink()


def _mismatch(where: Path, state: str, diffs: Sequence[str]) -> RunMismatchError:
    return RunMismatchError(f"{where} holds {state} run with different options ({'; '.join(diffs)}); "
                            "use a new --out, or pass --overwrite (overwrite=True) to discard it")


def _check_run(out: Path, meta: ScoreMeta, ids: Sequence[str], write: bool) -> bool:
    """Write run.json on a fresh run; refuse a folder or file that holds a run with another fingerprint.
    Returns True when `out` is a finished score file of this very run without a parts folder (reuse it)."""
    folder = parts_dir(out)
    run_file = folder / "run.json"
    wanted = meta.identity()
    if run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        diffs = meta_differences(previous["meta"], wanted, previous["ids"], ids)
        if diffs:
            state = "a finished" if out.exists() else "an unfinished"
            raise _mismatch(folder, state, diffs)
        return False
    if out.exists():
        try:
            payload = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunMismatchError(f"{out} exists and is not a readable score file ({type(error).__name__}); "
                                   "use a new --out, or pass --overwrite to replace it") from error
        if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
            raise RunMismatchError(f"{out} exists and is not an ocrheads score file; use a new --out, or pass "
                                   "--overwrite to replace it")
        file_ids = [str(r["id"]) for r in payload.get("samples", [])] + [str(r["id"]) for r in
                                                                         payload.get("failures", [])]
        diffs = meta_differences(payload["meta"], wanted)
        if sorted(file_ids) != sorted(ids):
            diffs.append(f"sample ids: the file holds {len(file_ids)} ids, this run has {len(ids)}")
        if diffs:
            raise _mismatch(out, "a finished", diffs)
        return True
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {"meta": json.loads(json.dumps(_meta_dict(meta), default=str)), "ids": list(ids)})
    return False


def _meta_dict(meta: ScoreMeta) -> dict[str, Any]:
    return {**meta.identity(), "fingerprint": meta.fingerprint}


def _distributed(shard: tuple[int, int] | None) -> tuple[int, int, Any]:
    """(rank, world, state): an explicit shard, else accelerate's PartialState (1 process when not launched)."""
    if shard is not None:
        rank, world = shard
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"shard {rank}/{world}: need WORLD >= 1 and RANK in 0..WORLD-1, e.g. 0/2 and 1/2")
        return rank, world, None
    from accelerate import PartialState   # imports torch: kept here so the command line starts torch-free

    state = PartialState(cpu=True) if not _cuda() else PartialState()
    return state.process_index, state.num_processes, state


def _cuda() -> bool:
    import torch   # here, not at the top: this module (and so the command line) stays torch-free at import

    return torch.cuda.is_available()


def _release_memory() -> None:
    """After an out-of-memory fault: drop garbage and the device's cached blocks before the retry."""
    gc.collect()
    import torch   # here, not at the top: this module (and so the command line) stays torch-free at import

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_with_retries(scorer: Scorer, sample: Any, fault_retries: int = DEFAULT_FAULT_RETRIES,
                       log: Log | None = None) -> SampleScore | Failure:
    """`scorer(sample)`, retried up to `fault_retries` times on a fault (raised, or returned as a Failure
    whose reason records one). Interrupts are re-raised at once; a fault that persists raises FaultError.
    Errors that are not faults propagate unchanged (they stop the run, nothing is stored)."""
    for attempt in range(fault_retries + 1):
        try:
            result = scorer(sample)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - only faults are handled; the rest is re-raised
            if not is_fault(error):
                raise
            reason = f"{type(error).__name__}: {str(error).strip()[:200]}"
        else:
            if not (isinstance(result, Failure) and is_fault_reason(result.reason)):
                return result
            reason = result.reason[len("exception: "):]
        if log is not None and attempt < fault_retries:
            log(f"sample {sample.id}: fault ({reason}); retry {attempt + 1} of {fault_retries}")
        _release_memory()
    raise FaultError(f"sample {sample.id}: fault after {fault_retries + 1} attempts ({reason}); nothing was stored "
                     "for it. Free memory or the device (or use a smaller model/dtype), then re-run the same "
                     "command to resume")


def merge(out: str | os.PathLike) -> HeadScores:
    """Merge the shard files of a finished run into ``out`` (atomically) and return the scores.
    Raises RuntimeError naming the missing samples when the run is not complete, RunLockedError while a run
    writes `out`."""
    with writer_lock(out, layout="a merge"):
        return _merge(out)


def _merge(out: str | os.PathLike) -> HeadScores:
    folder = parts_dir(out)
    run_file = folder / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: no run to merge for {out}")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    done = read_done(folder, run["meta"].get("fingerprint"))
    missing = [i for i in run["ids"] if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(run['ids'])} samples are not done yet (first: {missing[:3]}); "
                           "re-run the same command to resume")
    scores = HeadScores(meta=ScoreMeta(**run["meta"]))
    for sample_id in run["ids"]:
        record = {k: v for k, v in done[sample_id].items() if k != "run"}
        if _is_failure(record):
            scores.failures.append(Failure(str(record["id"]), str(record["reason"])))
        else:
            scores.samples.append(SampleScore.from_json(record))
    scores.check_shapes().save(out)
    return scores


def sample_ids(samples: Sequence[Any]) -> list[str]:
    """The ids of `samples`: its `ids` attribute when it has one (a lazy set such as
    ocrheads_lib.data.lazy.LazySamples, whose samples are built on access), else each sample's id."""
    ids = getattr(samples, "ids", None)
    return [str(i) for i in ids] if ids is not None else [str(sample.id) for sample in samples]


def done_records(out: str | os.PathLike, retry_failures: bool = False,
                 fingerprint: str | None = None) -> dict[str, dict[str, Any]]:
    """id -> finished record of the run at `out` (read_done of its parts folder, records checked against
    `fingerprint` when given); with retry_failures only the scored samples (recorded failures are to be
    scored again)."""
    done = read_done(parts_dir(out), fingerprint)
    if retry_failures:
        done = {key: record for key, record in done.items() if not _is_failure(record)}
    return done


def run(samples: Sequence[Any], scorer: Scorer, meta: ScoreMeta, out: str | os.PathLike, *, resume: bool = True,
        overwrite: bool = False, retry_failures: bool = False, fault_retries: int = DEFAULT_FAULT_RETRIES,
        shard: tuple[int, int] | None = None, limit: int | None = None, progress: bool = False,
        log: Log | None = None) -> HeadScores | None:
    """Score `samples` with `scorer` (sample -> SampleScore | Failure), appending to per-shard JSONL files,
    then merge into `out`. `samples` is a list, or a lazy sequence with an `ids` attribute whose
    `samples[i]` builds sample i on demand (LazySamples): only the samples this call scores are accessed,
    one at a time. Returns the merged scores on the main process once everything is done; None on
    other processes, for an explicit shard, or when stopped early by `limit` (samples scored by this process).

    overwrite (or resume=False): discard any previous run at `out` first. retry_failures: rescore the samples
    recorded as failures. fault_retries: attempts after a fault before the run stops (see the module
    docstring). log: receives one-line progress messages (reuse of a finished run, fault retries)."""
    if fault_retries < 0:
        raise ValueError(f"fault_retries must be >= 0, got {fault_retries}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (samples to score in this call), got {limit}")
    out = Path(out)
    ids = sample_ids(samples)
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"sample ids are not unique (e.g. {duplicates}); the resumable run identifies samples by id")
    meta = replace(meta, fingerprint=run_fingerprint(meta, ids))
    rank, world, state = _distributed(shard)
    launched = state is not None and world > 1
    launch = launch_id(meta.fingerprint, world, _launch_token(state) if launched else None)
    layout = (f"an accelerate launch of {world} processes" if launched else
              f"--shard RANK/{world}" if shard is not None else "one process")
    with ExitStack() as held:
        refusal = None
        try:
            held.enter_context(writer_lock(out, launch, rank, world, layout))
        except RunLockedError as error:
            refusal = error
        if launched:   # every process of the launch stops when one of them is refused (none waits forever)
            from accelerate.utils import gather_object

            refusals = [text for text in gather_object([str(refusal) if refusal else ""]) if text]
            if refusals and refusal is None:
                raise RunLockedError(refusals[0])
        if refusal is not None:
            raise refusal
        return _run_locked(samples, scorer, meta, out, ids, rank, world, state, shard=shard, resume=resume,
                           overwrite=overwrite, retry_failures=retry_failures, fault_retries=fault_retries,
                           limit=limit, progress=progress, log=log)


def _launch_token(state: Any) -> str:
    """A token drawn by rank 0 of an accelerate launch and broadcast to its other processes."""
    from accelerate.utils import broadcast_object_list

    token = [os.urandom(8).hex() if state.is_main_process else None]
    broadcast_object_list(token, from_process=0)
    return str(token[0])


def lock_file(out: str | os.PathLike, rank: int | None = None) -> Path:
    """The lock files of `out`: ``.OUT.json.lock`` (taken briefly to register or join the launch that writes
    `out`) and, for shard `rank`, ``.OUT.json.rank-NNN.lock`` (held by that rank for its whole run)."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock" if rank is None else f".{out.name}.rank-{rank:03d}.lock")


def launch_file(out: str | os.PathLike) -> Path:
    """The record of the launch that writes `out`: ``.OUT.json.launch.json`` (launch id, world size)."""
    out = Path(out)
    return out.with_name(f".{out.name}.launch.json")


def launch_id(fingerprint: str, world: int, token: str | None = None) -> str:
    """Who may write an output together: the ranks of one launch. Explicit shards (and a single process) of one
    run identity and one layout form one launch (``FINGERPRINT/WORLD``): ``--shard 0/2`` and ``--shard 1/2`` run
    side by side, ``--shard 2/3`` does not join them. Processes started together by accelerate add the `token`
    rank 0 drew for them, so two such launches never join each other."""
    return f"{fingerprint}/{world}" + (f"/{token}" if token else "")


def _read_launch(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(launch_file(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None     # none yet, or unreadable: no launch can be shown to be running
    return record if isinstance(record, dict) and isinstance(record.get("world"), int) else None


@contextmanager
def writer_lock(out: str | os.PathLike, launch: str | None = None, rank: int = 0, world: int = 1,
                layout: str = "one process") -> Iterator[None]:
    """Hold `out` for a whole run of rank `rank` of `launch` (:func:`launch_id`; default: a launch of its own).

    The lock covers the final output, not one shard: under the brief ``.OUT.json.lock`` the process reads the
    launch recorded for `out`; when another launch is recorded and any of its ranks still holds its rank lock,
    RunLockedError is raised at once (whatever the layout: ``--shard 2/3`` is refused beside ``--shard 0/2``).
    Otherwise the process records its own launch (a finished one's record is replaced) or joins the recorded
    one, and takes its rank lock, which the OS releases if the process dies. Two processes of one rank of one
    launch are refused too. The lock files stay (deleting them would race with the next writer)."""
    from filelock import FileLock, Timeout

    out = Path(out)
    launch = launch or f"process-{os.getpid()}-{os.urandom(4).hex()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    guard = FileLock(str(lock_file(out)))
    try:
        guard.acquire(timeout=60)
    except Timeout as error:
        raise RunLockedError(f"{lock_file(out)} has been held for 60 s; if no run into {out} is starting, delete "
                             "it and run again") from error
    try:
        record = _read_launch(out)
        if record is not None and record.get("launch") != launch:
            live = [r for r in range(record["world"]) if lock_is_held(lock_file(out, r))]
            if live:
                raise RunLockedError(
                    f"{out} is being written by another run right now ({record.get('layout', 'another launch')}, "
                    f"rank {live[0]} still running; lock {lock_file(out, live[0])}); wait for it to finish (then "
                    "re-run, with --overwrite to replace it), or use a new --out")
        mine = FileLock(str(lock_file(out, rank)))
        try:
            mine.acquire(timeout=0)
        except Timeout as error:
            raise RunLockedError(f"{out} is being written by another run right now (rank {rank} of the same "
                                 f"launch; lock {lock_file(out, rank)}); wait for it to finish (then re-run, with "
                                 "--overwrite to replace it), or use a new --out") from error
        if record is None or record.get("launch") != launch:
            atomic_write_json(launch_file(out), {"launch": launch, "world": world, "layout": layout})
    finally:
        guard.release()
    try:
        yield
    finally:
        mine.release()


def _run_locked(samples: Sequence[Any], scorer: Scorer, meta: ScoreMeta, out: Path, ids: list[str], rank: int,
                world: int, state: Any, *, shard: tuple[int, int] | None, resume: bool, overwrite: bool,
                retry_failures: bool, fault_retries: int, limit: int | None, progress: bool,
                log: Log | None) -> HeadScores | None:
    """`run` while holding the writer lock."""
    folder = parts_dir(out)
    is_main = rank == 0
    if (overwrite or not resume) and is_main:
        discard(out)
    if state is not None:
        state.wait_for_everyone()
    # with explicit shards there is no coordination: every shard may write the (identical) run.json
    finished_file = _check_run(out, meta, ids, is_main or shard is not None)
    if state is not None:
        state.wait_for_everyone()
    done = done_records(out, retry_failures, meta.fingerprint)
    pending = [i for i, sample_id in enumerate(ids) if sample_id not in done]
    if finished_file and retry_failures:
        raise ValueError(f"{out} has no parts folder to rescore failures in; pass --overwrite to score it again")
    if finished_file or (not pending and out.exists()):
        if not is_main or shard is not None:
            return None
        if log is not None:
            log(f"{out}: a finished run with the same options (fingerprint {meta.fingerprint}) is already there; "
                "reused, nothing recomputed (pass --overwrite to score again)")
        return load_scores(out)
    if pending and is_main:
        out.unlink(missing_ok=True)  # samples will change: the old merged file must not look complete
    if state is not None and world > 1:
        # launched processes split what is pending (balanced on resume); every process must have read
        # `done` before any of them appends, or their views of `pending` would differ
        state.wait_for_everyone()
        with state.split_between_processes(pending) as mine:
            mine = list(mine)
    elif world > 1:
        # explicit shards run unsynchronised: split the full, fixed list, then skip what is done
        mine = [i for i in range(len(ids))[rank::world] if ids[i] not in done]
    else:
        mine = pending
    shard_file = folder / f"shard-{rank:03d}.jsonl"
    _repair(shard_file)
    todo = mine if limit is None else mine[:limit]
    iterator: Any = todo
    if progress:
        iterator = tqdm(todo, desc=f"{meta.kind} scores [{rank}/{world}]", position=rank)
    for index in iterator:
        result = score_with_retries(scorer, samples[index], fault_retries, log)
        record = result.to_json()
        record["type"] = "failure" if isinstance(result, Failure) else "sample"
        record["run"] = meta.fingerprint
        _append(shard_file, record)
    stopped_early = limit is not None and len(todo) < len(mine)
    if state is not None:
        state.wait_for_everyone()
    if stopped_early or shard is not None or not is_main:
        return None
    if len(read_done(folder, meta.fingerprint)) < len(ids):  # another process was stopped early
        return None
    return _merge(out)
