"""A failed chapter leaves no result that a later chapter can read.

While a chapter runs, a *journal* records every file it writes under its results folder: a Python audit hook
(:func:`sys.addaudithook`) in the chapter's own kernel sees each file opened for writing, renamed onto,
truncated or removed, so a chapter running beside it (the book runs two at a time into the same folder) is
never mistaken for it. Before a file that existed is first changed, its bytes are kept (a hard link when it
is replaced or removed, a copy when it is written in place).

When the chapter fails (a cell raised, its kernel died, the build was interrupted), :func:`put_aside` moves
every file it created or changed into ``<results>/.failed/<chapter>-<UTC time>/`` (same relative paths) and
puts each changed file's previous bytes back, so the results folder holds what it held before the chapter
started; readers never look in ``.failed``. When it succeeds, the journal is dropped.

Layout of a journal: ``<results>/.failed/.journal-<chapter>-<token>/`` holding ``journal.jsonl`` (one line per
file: its path relative to the results folder and the name of its kept copy, if it existed), ``backup/``,
``meta.json`` (chapter name) and two lock files: ``kernel.lock`` (held by the chapter's kernel) and
``build.lock`` (held by the book build that runs it). A journal whose locks nobody holds belongs to a chapter
that stopped without ending (a killed kernel run by hand): the next chapter started on that folder puts it
aside (:func:`orphans`). ``outcome.json`` records what a put-aside moved and restored.
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocrheads_lib.paths import atomic_write_json, lock_is_held

FAILED = ".failed"                  # under a results folder: what failed chapters wrote; never read
JOURNAL_PREFIX = ".journal-"
JOURNAL_ENV = "OCRHEADS_JOURNAL"    # set by the book build: the journal folder the chapter's kernel fills
CHAPTER_ENV = "OCRHEADS_CHAPTER"    # set by the book build: the chapter's name (notebook stem)
KERNEL_LOCK, BUILD_LOCK = "kernel.lock", "build.lock"
NO_FD = (None, -1)                  # an audit event's dir_fd when the path is not relative to a folder descriptor
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def failed_root(results_root: str | os.PathLike) -> Path:
    return Path(results_root) / FAILED


def new_journal(results_root: str | os.PathLike, chapter: str, which: str) -> tuple[Path, Any]:
    """Create an empty journal folder for `chapter` under `results_root`, holding its lock `which`
    (:data:`KERNEL_LOCK` or :data:`BUILD_LOCK`); returns the folder and the lock."""
    parent = failed_root(results_root)
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{JOURNAL_PREFIX}{chapter}-{os.getpid()}-{os.urandom(4).hex()}"
    (folder / "backup").mkdir(parents=True)
    lock = hold(folder, which)
    atomic_write_json(folder / "meta.json", {"chapter": chapter})    # last: a journal without it is being made
    return folder, lock


def hold(folder: Path, which: str = BUILD_LOCK) -> Any:
    """Take the lock `which` of a journal (released by the OS when the process dies); returns the lock."""
    from filelock import FileLock

    lock = FileLock(str(folder / which))
    lock.acquire(timeout=10)
    return lock


def orphans(results_root: str | os.PathLike) -> list[Path]:
    """Journals under `results_root` whose chapter stopped without ending: no kernel and no build holds them."""
    parent = failed_root(results_root)
    if not parent.is_dir():
        return []
    return sorted(folder for folder in parent.glob(f"{JOURNAL_PREFIX}*") if (folder / "meta.json").is_file()
                  and not lock_is_held(folder / KERNEL_LOCK) and not lock_is_held(folder / BUILD_LOCK))


class Journal:
    """What one chapter's kernel writes under one results folder (see the module docstring)."""

    def __init__(self, folder: Path, kernel_lock: Any = None) -> None:
        self.folder = Path(folder)
        self.root = self.folder.parent.parent.resolve()
        self.prefix = str(self.root) + os.sep
        self.seen: set[str] = set()
        self.created_dirs: list[str] = []
        self.lock = threading.Lock()
        self.kernel_lock = kernel_lock or hold(self.folder, KERNEL_LOCK)
        self.handle = open(self.folder / "journal.jsonl", "a", encoding="utf-8")

    def relative(self, path: Any) -> str | None:
        """`path` relative to the results folder, or None when it lies outside it (or in ``.failed``)."""
        if isinstance(path, int):
            return None
        full = os.path.realpath(os.fsdecode(path))
        if not full.startswith(self.prefix):
            return None
        rel = full[len(self.prefix):]
        return None if rel == FAILED or rel.startswith(FAILED + os.sep) else rel

    def touch(self, path: Any, in_place: bool) -> None:
        """Record that the chapter is about to change the file at `path`; keep its bytes the first time."""
        rel = self.relative(path)
        if rel is None or rel in self.seen:
            return
        full = self.root / rel
        if full.is_dir():
            return
        backup = None
        if full.is_file():
            backup = f"{len(self.seen):06d}"
            copy = self.folder / "backup" / backup
            if in_place:
                shutil.copy2(full, copy)
            else:
                try:
                    os.link(full, copy)        # a replaced or removed file's inode keeps the old bytes
                except OSError:                # another file system, or no hard links: copy instead
                    shutil.copy2(full, copy)
        self.seen.add(rel)
        self.handle.write(json.dumps({"path": rel, "backup": backup}) + "\n")
        self.handle.flush()

    def made_dir(self, path: Any) -> None:
        rel = self.relative(path)
        if rel is not None and not (self.root / rel).exists():
            self.created_dirs.append(rel)
            self.handle.write(json.dumps({"path": rel, "dir": True}) + "\n")
            self.handle.flush()

    def removed_tree(self, path: Any) -> None:
        for file in sorted(Path(os.fsdecode(path)).rglob("*")):
            if file.is_file():
                self.touch(file, in_place=False)

    def close(self) -> None:
        self.handle.close()
        self.kernel_lock.release()


_JOURNALS: list[Journal] = []
_BUSY = threading.local()
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    """The audit hook: route every file change of this process to the journal whose folder holds it."""
    if not _JOURNALS or getattr(_BUSY, "on", False):
        return
    if event == "open":
        path, mode, flags = args
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else mode is None and bool(flags & WRITE_FLAGS))
        if not writing:
            return
        in_place, paths = True, [path]
    elif event == "os.rename":
        if args[2] not in NO_FD or args[3] not in NO_FD:
            return
        in_place, paths = False, [args[0], args[1]]
    elif event in ("os.remove", "os.truncate", "os.mkdir", "shutil.rmtree"):
        if event != "os.truncate" and args[-1] not in NO_FD:    # a path relative to a folder descriptor
            return
        in_place, paths = event == "os.truncate", [args[0]]
    else:
        return
    _BUSY.on = True
    try:
        for journal in list(_JOURNALS):
            with journal.lock:
                for path in paths:
                    if event == "os.mkdir":
                        journal.made_dir(path)
                    elif event == "shutil.rmtree":
                        journal.removed_tree(path)
                    else:
                        journal.touch(path, in_place)
    finally:
        _BUSY.on = False


def watch(folder: Path, kernel_lock: Any = None) -> Journal:
    """Record this process's writes under the journal `folder`'s results folder from now on (holding its
    kernel lock: `kernel_lock` when :func:`new_journal` took it, else taken here)."""
    global _HOOKED
    journal = Journal(folder, kernel_lock)
    _JOURNALS.append(journal)
    if not _HOOKED:
        sys.addaudithook(_audit)      # audit hooks cannot be removed: one per process, idle without journals
        _HOOKED = True
    return journal


def stop(journal: Journal) -> None:
    """Stop recording into `journal` (its folder stays for :func:`put_aside` or :func:`discard`)."""
    if journal in _JOURNALS:
        _JOURNALS.remove(journal)
    journal.close()


@dataclass
class Outcome:
    """What :func:`put_aside` did for one failed chapter."""

    chapter: str
    destination: str = ""                              # the .failed/<chapter>-<time> folder ("" if nothing moved)
    moved: list[str] = field(default_factory=list)     # files the chapter created or changed, now there
    restored: list[str] = field(default_factory=list)  # files the chapter changed, back to their previous bytes

    def message(self) -> str:
        if not self.moved and not self.restored:
            return f"{self.chapter} failed before writing any result file"
        parts = [f"{self.chapter} failed: none of its result files is left where a later chapter reads"]
        if self.moved:
            names = ", ".join(self.moved[:5]) + (f" and {len(self.moved) - 5} more" if len(self.moved) > 5 else "")
            parts.append(f"{len(self.moved)} file(s) it wrote were moved to {self.destination} ({names})")
        if self.restored:
            names = ", ".join(self.restored[:5]) + (f" and {len(self.restored) - 5} more"
                                                    if len(self.restored) > 5 else "")
            parts.append(f"{len(self.restored)} file(s) it changed hold their previous bytes again ({names})")
        return "; ".join(parts) + "; fix the error and run the chapter again"


def _entries(folder: Path) -> Iterator[dict[str, Any]]:
    path = folder / "journal.jsonl"
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:       # a line torn by a killed kernel: its file was not changed yet
            continue


def _destination(root: Path, chapter: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate, n = root / FAILED / f"{chapter}-{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = root / FAILED / f"{chapter}-{stamp}-{n}"
    return candidate


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def put_aside(folder: str | os.PathLike) -> Outcome:
    """Undo a failed chapter's writes recorded in the journal `folder` (see the module docstring) and record
    the outcome in ``folder/outcome.json``. A journal already put aside returns its recorded outcome."""
    folder = Path(folder)
    if (folder / "outcome.json").is_file():
        return Outcome(**json.loads((folder / "outcome.json").read_text(encoding="utf-8")))
    root = folder.parent.parent
    chapter = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["chapter"]
    outcome = Outcome(chapter)
    destination = _destination(root, chapter)
    entries = list(_entries(folder))
    for entry in entries:
        if entry.get("dir"):
            continue
        current, backup = root / entry["path"], entry.get("backup")
        kept = folder / "backup" / backup if backup else None
        if kept is not None and current.is_file() and (os.path.samefile(current, kept)
                                                       or filecmp.cmp(current, kept, shallow=False)):
            continue                                   # opened for writing, left as it was
        if current.is_file():
            _move(current, destination / entry["path"])
            outcome.moved.append(entry["path"])
        if kept is not None:
            _move(kept, current)
            outcome.restored.append(entry["path"])
    for entry in reversed(entries):                    # folders the chapter made, now empty
        if entry.get("dir"):
            try:
                (root / entry["path"]).rmdir()
            except OSError:                            # not empty (other files live there) or already gone
                continue
    if outcome.moved:
        outcome.destination = str(destination)
    atomic_write_json(folder / "outcome.json", outcome.__dict__)
    shutil.rmtree(folder / "backup", ignore_errors=True)
    (folder / "journal.jsonl").unlink(missing_ok=True)
    return outcome


def discard(folder: str | os.PathLike) -> None:
    """Drop a journal: the chapter ended (successfully, or its failure has been put aside and reported)."""
    shutil.rmtree(folder, ignore_errors=True)
