"""Where results live: one folder per model under a results root."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def model_slug(model_id: str) -> str:
    """A file-system-safe name for a model id or path: "Qwen/Qwen2-VL-7B-Instruct" -> "Qwen__Qwen2-VL-7B-Instruct"."""
    return str(model_id).rstrip("/").replace("/", "__").replace(":", "_")


def results_dir(model_id: str, root: str | os.PathLike = "results") -> Path:
    """`root/<model_slug>/`, created if missing."""
    path = Path(root) / model_slug(model_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


FILE_MODE = 0o644  # result files are readable by everyone (mkstemp alone would leave them 0600)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path next to `path` to write to (with any writer, e.g. ``torch.save``); when the block
    ends without error it is renamed onto `path` (``os.replace``) with mode 0644, else deleted. A reader
    never sees a half-written file: `path` holds either the old content or the complete new one. This is
    the project's one atomic writer; :func:`atomic_write_text` and :func:`atomic_write_json` use it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to `folder` to fill; when the block ends without error it replaces `folder`
    (folders 0755, files 0644), else it is deleted. A reader never finds a half-written `folder`: a model
    converted or merged into the cache is either absent, the old one, or complete."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield staging
        staging.chmod(0o755)
        for file in staging.rglob("*"):
            file.chmod(0o755 if file.is_dir() else FILE_MODE)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_staging(folder: str | os.PathLike) -> list[Path]:
    """Delete the staging folders :func:`atomic_folder` left next to `folder` when a build was killed
    (``.<name>.<random>``; the lock file is kept). Call it while holding :func:`build_lock` on `folder`, so
    no live build's staging folder is removed. Returns the folders removed."""
    folder = Path(folder)
    removed = [p for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir() and p != lock_path(folder)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of :func:`build_lock` for `folder`."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def lock_is_held(path: str | os.PathLike) -> bool:
    """True when a process (or another open of it in this one) holds the OS file lock `path` (`filelock`) now;
    the probe takes and releases it at once."""
    from filelock import FileLock, Timeout

    probe = FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


@contextmanager
def build_lock(folder: str | os.PathLike, timeout: float = 1800.0) -> Iterator[None]:
    """Hold ``.<folder name>.lock`` next to `folder` (an OS file lock, `filelock`; the empty file stays) while
    `folder` is built into a cache. Two chapters
    of the book run at once and may both find a model's cache folder missing: the first builds it, the
    second waits here, and must then check again whether the folder is complete before building it."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(folder)))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise TimeoutError(f"{folder} has been locked for {timeout:.0f} s by another process building it; if no "
                           f"such process runs, delete {lock_path(folder)}") from exc
    try:
        yield
    finally:
        lock.release()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (:func:`atomic_path`); the file gets mode 0644."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int | None = 1) -> Path:
    """JSON version of `atomic_write_text`."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, sort_keys=False) + "\n")
