"""Long scoring runs: resumable, shardable, one merge.

Layout for an output file ``OUT.json``::

    OUT.parts/run.json              the run's metadata and the dataset's sample ids, in order
    OUT.parts/shard-000.jsonl       one line per finished sample of process 0 (a SampleScore or a Failure)
    OUT.parts/shard-001.jsonl       ... of process 1
    OUT.json                        the merged HeadScores (written once every sample is done)

* Resumable: every finished sample is appended (and flushed) to its process's JSONL as soon as it is
  done; a re-run reads all shard files and skips the ids already there. A torn last line (a kill
  mid-write) is ignored and the sample recomputed. Failures are results too: they are not retried.
* Shardable: the pending samples are split between processes with accelerate's
  ``PartialState().split_between_processes`` (or an explicit ``shard=(rank, world)``); each process
  writes its own JSONL; the main process merges after all finished.
* The merged file depends only on the dataset and the options, not on the number of processes or
  the interruptions: samples are ordered by the dataset order and scoring a sample is deterministic.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from ocrheads_lib.paths import atomic_write_json
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta

Scorer = Callable[[Any], SampleScore | Failure]


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


def read_done(folder: Path) -> dict[str, dict[str, Any]]:
    """id -> finished record, over every shard file of the run (first record of an id wins)."""
    done: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("shard-*.jsonl")):
        for record in _read_jsonl(path):
            done.setdefault(str(record["id"]), record)
    return done


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


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


def _check_run(folder: Path, meta: ScoreMeta, ids: Sequence[str], is_main: bool) -> None:
    """Write run.json on a fresh run; on resume, refuse a run with different options or samples."""
    run_file = folder / "run.json"
    payload = {"meta": asdict(meta), "ids": list(ids)}
    if run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(payload)):
            raise ValueError(f"{folder} holds an interrupted run with different options or samples; "
                             "re-run with the same options, or delete the folder (or pass resume=False / "
                             "--no-resume) to start over")
    elif is_main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, payload)


def _distributed(shard: tuple[int, int] | None) -> tuple[int, int, Any]:
    """(rank, world, state): an explicit shard, else accelerate's PartialState (1 process when not launched)."""
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {rank}/{world}: rank must be in 0..{world - 1}")
        return rank, world, None
    from accelerate import PartialState

    state = PartialState(cpu=True) if not _cuda() else PartialState()
    return state.process_index, state.num_processes, state


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def merge(out: str | os.PathLike) -> HeadScores:
    """Merge the shard files of a finished run into ``out`` (atomically) and return the scores.
    Raises RuntimeError naming the missing samples when the run is not complete."""
    folder = parts_dir(out)
    run_file = folder / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: no run to merge for {out}")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    done = read_done(folder)
    missing = [i for i in run["ids"] if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(run['ids'])} samples are not done yet (first: {missing[:3]}); "
                           "re-run the same command to resume")
    scores = HeadScores(meta=ScoreMeta(**run["meta"]))
    for sample_id in run["ids"]:
        record = done[sample_id]
        if record.get("type") == "failure":
            scores.failures.append(Failure(str(record["id"]), str(record["reason"])))
        else:
            scores.samples.append(SampleScore.from_json(record))
    scores.save(out)
    return scores


def run(samples: Sequence[Any], scorer: Scorer, meta: ScoreMeta, out: str | os.PathLike, *, resume: bool = True,
        shard: tuple[int, int] | None = None, limit: int | None = None, progress: bool = False) -> HeadScores | None:
    """Score `samples` with `scorer` (sample -> SampleScore | Failure), appending to per-shard JSONL files,
    then merge into `out`. Returns the merged scores on the main process once everything is done; None on
    other processes, for an explicit shard, or when stopped early by `limit` (samples scored by this process)."""
    out = Path(out)
    folder = parts_dir(out)
    ids = [str(sample.id) for sample in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids are not unique; the resumable run identifies samples by id")
    rank, world, state = _distributed(shard)
    is_main = rank == 0
    if not resume and is_main and folder.exists():
        for path in folder.glob("shard-*.jsonl"):
            path.unlink()
        (folder / "run.json").unlink(missing_ok=True)
    if state is not None:
        state.wait_for_everyone()
    # with explicit shards there is no coordination: every shard may write the (identical) run.json
    _check_run(folder, meta, ids, is_main or shard is not None)
    if state is not None:
        state.wait_for_everyone()
    done = read_done(folder)
    pending = [i for i, sample_id in enumerate(ids) if sample_id not in done]
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
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc=f"{meta.kind} scores [{rank}/{world}]", position=rank)
    for index in iterator:
        result = scorer(samples[index])
        record = result.to_json()
        record["type"] = "failure" if isinstance(result, Failure) else "sample"
        _append(shard_file, record)
    stopped_early = limit is not None and len(todo) < len(mine)
    if state is not None:
        state.wait_for_everyone()
    if stopped_early or shard is not None or not is_main:
        return None
    if len(read_done(folder)) < len(ids):  # another process was stopped early
        return None
    return merge(out)
