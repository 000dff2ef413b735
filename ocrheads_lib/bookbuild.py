"""Execute the book's notebooks with papermill, with a cache, for `make book` (scripts/build_book.sh).

Every `notebooks/NN_name.ipynb` is run from the `notebooks/` folder (chapters resolve a relative
`results_dir` against the repository, see `ocrheads_lib.chapter`) with parameters from one book-level YAML file
(`book/params.yml`: a `defaults` mapping for every notebook plus an optional `notebooks` mapping of
per-notebook overrides keyed by the notebook's stem). The executed copy goes to
`book/generated/NN_name.ipynb`, next to a `NN_name.ipynb.key` file holding the cache key.

Cache key of a notebook = sha256 over (its source bytes, its parameters and the bytes of any file a parameter
names, such as shipped records, a hash of every file of the `ocrheads_lib` package, the key of the notebook before
it in sorted order). Chaining the previous
key is deliberate: later chapters read earlier chapters' results, so a change upstream re-runs
everything after it. An unchanged key means the executed copy is reused without starting a kernel.

Reuse needs more than the key: an executed chapter is reused only when the result files it wrote (and, through
its ``ocrheads.needs``, the result files of the chapters it reads) still hold the bytes they held when the build
that ran it ended, and when none of the chapters it needs is re-executed. Those files and their sha256 are kept
next to the key (``NN_name.ipynb.inputs.json``); a chapter re-run by hand with other parameters rewrites its
results, so the next build runs it (and its readers) again instead of showing the old executed copy.

A failed chapter leaves no result that a later chapter can read: each chapter's kernel records what it writes
under its results folder in a journal (:mod:`ocrheads_lib.quarantine`, started by ``chapter.setup``); when the
chapter fails (an error, a dead kernel, printed problems, or the build interrupted by Ctrl-C or SIGTERM), every
file it created or changed is moved to ``<results>/.failed/<chapter>-<UTC time>/`` and the files it changed get
their previous bytes back; the error names them and that folder.

Before anything runs, `book/params.yml` is checked against the chapters' parameter cells
(:mod:`ocrheads_lib.parameters`): an unknown chapter or parameter, or a bad value, stops the build naming it
and the nearest valid name.

Stale notebooks run up to `--jobs` at a time (default: one per core, at most 2; `BOOK_JOBS` overrides), each in
its own one-thread kernel. A notebook's metadata ``ocrheads.needs`` lists the earlier notebooks whose results it
reads (e.g. chapter 04 reads the scores of 02 and 03); it starts when those have finished. A notebook without
that metadata waits for every notebook before it.

Usage (what build_book.sh runs):
    python -m ocrheads_lib.bookbuild --notebooks notebooks --out book/generated --params book/params.yml
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ocrheads_lib import quarantine
from ocrheads_lib.parameters import ParameterError
from ocrheads_lib.paths import atomic_write_text

PACKAGE_ROOT = Path(__file__).resolve().parent
KEY_SUFFIX = ".key"
INPUTS_SUFFIX = ".inputs.json"
MTIME_SLACK_NS = 2 * 10**9     # file times are coarser than time.time_ns(): a file written just after start counts


@dataclass
class NotebookRun:
    """What happened to one notebook in one build."""

    name: str                    # file name, e.g. "02_ocr_heads.ipynb"
    status: str                  # "executed" | "cached" | "failed"
    seconds: float               # wall time spent on it in this build (≈0 when cached)
    key: str                     # cache key (see module docstring)
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str = ""              # one-paragraph reason when status == "failed"


def load_parameters(params_path: str | os.PathLike | None, notebook_stem: str) -> dict[str, Any]:
    """Parameters for one notebook: `defaults` updated with `notebooks[<stem>]` from the YAML file."""
    if params_path is None or not Path(params_path).exists():
        return {}
    config = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    unknown = set(config) - {"defaults", "notebooks"}
    if unknown:
        raise ValueError(f"{params_path}: unknown top-level keys {sorted(unknown)}; "
                         "use 'defaults' (all notebooks) and 'notebooks' (per-notebook overrides by stem)")
    params = dict(config.get("defaults") or {})
    params.update((config.get("notebooks") or {}).get(notebook_stem) or {})
    return params


def check_params_file(params_path: str | os.PathLike | None, sources: list[Path]) -> None:
    """ParameterError when `params_path` names a chapter that is not a notebook, a parameter a chapter does not
    declare (``defaults`` go to every chapter, so each of them must declare it), or a value its rules refuse."""
    from ocrheads_lib.parameters import ParameterError, check_values, nearest, notebook_parameters

    if params_path is None or not Path(params_path).exists():
        return
    config = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    stems = [src.stem for src in sources]
    declared = {src.stem: notebook_parameters(src) for src in sources}
    for stem in (config.get("notebooks") or {}):
        if stem not in stems:
            raise ParameterError(f"{params_path}: notebooks.{stem} is not a chapter{nearest(str(stem), stems)}")
    for key in (config.get("defaults") or {}):
        lacking = [stem for stem in stems if key not in declared[stem]]
        if lacking:
            every = sorted(set.intersection(*(set(d) for d in declared.values())))
            raise ParameterError(f"{params_path}: defaults.{key} is not a parameter of {', '.join(lacking)}"
                                 f"{nearest(str(key), every)}; defaults go to every chapter, put it under "
                                 "notebooks.<chapter> instead")
    for src in sources:
        check_values(load_parameters(params_path, src.stem), declared[src.stem],
                     f"{params_path} for {src.stem}")


def results_root_of(params: dict[str, Any], src: Path) -> Path:
    """The results folder a chapter writes to: its `results_dir` (the parameter, else the notebook's
    default), resolved as the chapter resolves it (``ocrheads_lib.chapter.resolve_results_root``)."""
    from ocrheads_lib.chapter import resolve_results_root   # imports torch: only when a build runs
    from ocrheads_lib.parameters import notebook_parameters

    return resolve_results_root(params.get("results_dir") or notebook_parameters(src).get("results_dir") or "results")


def files_written(root: Path, start_ns: int, end_ns: int) -> list[Path]:
    """Files under `root` modified between `start_ns` and `end_ns` (the chapter's run; a chapter running
    beside it may add its own files: they are checked too, which only costs a re-run when they change)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != quarantine.FAILED
                  and start_ns - MTIME_SLACK_NS <= p.stat().st_mtime_ns <= end_ns + MTIME_SLACK_NS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs_unchanged(inputs_file: Path) -> str:
    """"" when every result file recorded in `inputs_file` still holds its recorded bytes, else why not."""
    if not inputs_file.is_file():
        return "no record of the result files it read and wrote"
    try:
        recorded = json.loads(inputs_file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{inputs_file.name} is unreadable"
    for name, digest in recorded.items():
        path = Path(name)
        if not path.is_file():
            return f"{path} is gone"
        if _sha256(path) != digest:
            return f"{path} changed since the build that ran it"
    return ""


def library_hash(root: str | os.PathLike = PACKAGE_ROOT) -> str:
    """sha256 over the relative paths and bytes of every file of the package (caches excluded)."""
    digest = hashlib.sha256()
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"} or ".ipynb_checkpoints" in path.parts:
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def parameter_files(parameters: dict[str, Any], root: str | os.PathLike) -> dict[str, str]:
    """``{"file:<value>": sha256}`` for every string parameter naming a file under `root` (e.g. the shipped
    records a chapter reads): part of the cache key, so regenerated records re-run the chapter."""
    out = {}
    for value in parameters.values():
        if isinstance(value, str) and value and not Path(value).is_absolute() and (Path(root) / value).is_file():
            out[f"file:{value}"] = _sha256(Path(root) / value)
    return out


def notebook_key(source: bytes, parameters: dict[str, Any], lib_hash: str, previous_key: str) -> str:
    """The cache key of one notebook (see the module docstring); the caller adds the bytes of the files its
    parameters name (:func:`parameter_files`) to `parameters`."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(source).digest())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    digest.update(lib_hash.encode())
    digest.update(previous_key.encode())
    return digest.hexdigest()


def _kernel_check(kernel_name: str) -> None:
    """Fail early, with the fix, when `kernel_name` would not run this Python (the one with the library)."""
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as exc:
        raise RuntimeError(f"no Jupyter kernel named {kernel_name!r}; register one for this environment: "
                           f"{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}") from exc
    exe = spec.argv[0]
    # jupyter_client runs a spec whose argv[0] is plain "python" with the launching interpreter.
    if exe in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        return
    if Path(exe).resolve() != Path(sys.executable).resolve():
        raise RuntimeError(f"kernel {kernel_name!r} runs {exe}, not this environment's {sys.executable}; "
                           f"fix: {sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}")


def _first_error(notebook_path: Path) -> str:
    """The first error output of an executed notebook, as 'ename: evalue' (empty if none)."""
    try:
        nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


# Printed text that means a chapter ran without something it needs (or hid an error): the build fails.
BAD_OUTPUT = ("not found", "Traceback", "No such file")


# What a reader sees is a figure, a formatted table, a widget or glued text; a bare repr is leaked code output.
SHOWN_MIMES = ("text/html", "text/markdown", "text/latex", "application/vnd.jupyter.widget-view+json")
REPR_PATTERN = re.compile(r"PosixPath\(|WindowsPath\(|<[\w.]+ object at 0x[0-9a-f]+>")


def repr_outputs(notebook_path: Path) -> list[str]:
    """The outputs of an executed notebook that show raw code output: a result shown only as text/plain
    (a returned string, path, dict or list, e.g. ``PosixPath('/…')``) or printed text that looks like a
    repr (``<… object at 0x…>``). Figures (image/*), HTML tables, Markdown, widgets and glued values
    (application/papermill.record/*, shown only where the prose pastes them) pass."""
    nb = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    found = []
    for index, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            kind = out.get("output_type")
            if kind in ("execute_result", "display_data"):
                data = out.get("data") or {}
                visible = [m for m in data if not m.startswith("application/papermill.record/")]
                if visible and not any(m in SHOWN_MIMES or m.startswith("image/") for m in visible):
                    text = data.get("text/plain", "")
                    text = "".join(text) if isinstance(text, list) else str(text)
                    found.append(f"cell {index}: raw output {text.strip()[:120]!r}")
            elif kind == "stream":
                text = out.get("text", "")
                text = "".join(text) if isinstance(text, list) else str(text)
                for line in text.splitlines():
                    if REPR_PATTERN.search(line):
                        found.append(f"cell {index}: printed repr {line.strip()[:120]!r}")
    return found


def output_problems(notebook_path: Path) -> list[str]:
    """Lines of an executed notebook's text outputs that contain one of :data:`BAD_OUTPUT`, and every
    raw code output (:func:`repr_outputs`)."""
    nb = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    found = repr_outputs(notebook_path)
    for index, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            texts = [out.get("text", "")]
            texts += [(out.get("data") or {}).get(mime, "") for mime in ("text/plain", "text/html", "text/markdown")]
            for text in texts:
                text = "".join(text) if isinstance(text, list) else str(text)
                for line in text.splitlines():
                    if any(bad in line for bad in BAD_OUTPUT):
                        found.append(f"cell {index}: {line.strip()[:200]}")
    return found


def finish_executed(notebook_path: Path) -> None:
    """Hide papermill's injected-parameters cell behind a toggle, like the defaults cell it overrides."""
    nb = nbformat.read(str(notebook_path), as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            cell.metadata["tags"] = [*tags, "hide-cell"]
    nbformat.write(nb, str(notebook_path))


def notebook_needs(path: Path, earlier: list[str]) -> list[str]:
    """The stems of the notebooks whose results `path` reads: its metadata ``ocrheads.needs`` (a list of
    stems), or, when it declares none, every notebook before it (the safe, serial order)."""
    declared = (nbformat.read(str(path), as_version=4).metadata.get("ocrheads") or {}).get("needs")
    if declared is None:
        return list(earlier)
    unknown = [stem for stem in declared if stem not in earlier]
    if unknown:
        raise ValueError(f"{path.name}: metadata ocrheads.needs names {unknown}, which are not notebooks before it "
                         f"({earlier}); a chapter can only read the results of earlier chapters")
    return list(declared)


def default_jobs() -> int:
    """Notebooks executed at once: one per core, at most 2 (each kernel runs one thread; BOOK_JOBS overrides)."""
    if os.environ.get("BOOK_JOBS"):
        jobs = int(os.environ["BOOK_JOBS"])
        if jobs < 1:
            raise ValueError(f"BOOK_JOBS={jobs}: must be >= 1 (1 runs the chapters one after another)")
        return jobs
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _execute(src: str, tmp: str, params: dict[str, Any], kernel_name: str, cwd: str,
             journal: str) -> tuple[float, str | None]:
    """Run one notebook with papermill (in a worker process): (seconds, None) or (seconds, 'why it failed').
    Its kernel records what it writes in the journal folder `journal` (:mod:`ocrheads_lib.quarantine`)."""
    start = time.perf_counter()
    before = {name: os.environ.get(name) for name in (quarantine.JOURNAL_ENV, quarantine.CHAPTER_ENV)}
    os.environ[quarantine.JOURNAL_ENV], os.environ[quarantine.CHAPTER_ENV] = journal, Path(src).stem
    try:
        papermill.execute_notebook(src, tmp, parameters=params, kernel_name=kernel_name, cwd=cwd,
                                   progress_bar=False, log_output=False)
    except Exception as exc:  # papermill raises PapermillExecutionError and kernel/IO errors alike
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return time.perf_counter() - start, None


@dataclass
class _Pending:
    src: Path
    stem: str
    key: str
    params: dict[str, Any]
    needs: list[str]


def run_notebooks(notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  params_path: str | os.PathLike | None, kernel_name: str = "python3",
                  force: bool = False, failed_dir: str | os.PathLike | None = None,
                  library_root: str | os.PathLike = PACKAGE_ROOT, log=print, jobs: int = 1) -> list[NotebookRun]:
    """Execute (or reuse) every `NN_*.ipynb` of `notebooks_dir`; see module docstring. Returns the runs in
    sorted order.

    Up to `jobs` notebooks run at once, each in its own kernel; a notebook starts once the notebooks it
    needs (:func:`notebook_needs`) have finished. Every notebook is attempted even after a failure (each
    chapter can run alone), so one build reports all broken chapters; but the notebooks after a failed one
    keep no cache key, so the next build re-runs them. A failed notebook's partial output goes to
    `failed_dir` (default `<out_dir>/../../_build/failed`), never into `out_dir`. `library_root`: the files
    whose hash enters every key (the package; tests pass a fixed folder).
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: must be >= 1 (1 runs the notebooks one after another)")
    notebooks_dir, out_dir = Path(notebooks_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    failed_dir = Path(failed_dir) if failed_dir else out_dir.parent.parent / "_build" / "failed"
    sources = sorted(p for p in notebooks_dir.glob("*.ipynb") if p.name[:2].isdigit())
    if not sources:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {notebooks_dir}")
    # Executed copies whose source is gone would still be picked up by the table of contents.
    for stale in out_dir.glob("*.ipynb"):
        if not (notebooks_dir / stale.name).exists():
            log(f"[book] removing stale executed copy {stale.name} (no source notebook)")
            stale.unlink()
            Path(str(stale) + KEY_SUFFIX).unlink(missing_ok=True)
            Path(str(stale) + INPUTS_SUFFIX).unlink(missing_ok=True)

    check_params_file(params_path, sources)
    lib = library_hash(library_root)
    previous_key = ""
    runs: dict[str, NotebookRun] = {}
    pending: list[_Pending] = []
    stems = [src.stem for src in sources]
    needs: dict[str, list[str]] = {}
    for index, src in enumerate(sources):
        params = load_parameters(params_path, src.stem)
        key = notebook_key(src.read_bytes(), {**params, **parameter_files(params, notebooks_dir.parent)}, lib,
                           previous_key)
        previous_key = key
        dst = out_dir / src.name
        key_file = Path(str(dst) + KEY_SUFFIX)
        needs[src.stem] = notebook_needs(src, stems[:index])
        if not force and dst.exists() and key_file.exists() and key_file.read_text().strip() == key:
            rerun = [stem for stem in needs[src.stem] if stem not in runs]
            why = (f"it reads {rerun[0]}, which runs again" if rerun else
                   inputs_unchanged(Path(str(dst) + INPUTS_SUFFIX)))
            if not why:
                runs[src.stem] = NotebookRun(src.name, "cached", 0.0, key, params)
                log(f"[book] {src.name:28s} cached")
                continue
            log(f"[book] {src.name:28s} not reused: {why}")
        # An executed copy in out_dir always matches its key: drop the old one before re-running.
        key_file.unlink(missing_ok=True)
        Path(str(dst) + INPUTS_SUFFIX).unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
        pending.append(_Pending(src, src.stem, key, params, needs[src.stem]))
    if pending:
        _kernel_check(kernel_name)
    windows: dict[str, tuple[int, int]] = {}       # stem -> (start, end) of its execution in this build
    journals: dict[str, tuple[Path, Any]] = {}      # stem -> (journal folder, the build's lock on it) while it runs

    def close_journal(stem: str, failed: bool) -> str:
        """Drop a finished chapter's journal; for a failed one first put aside what it wrote. Returns what
        was put aside ("" when it ended well)."""
        folder, lock = journals.pop(stem)
        message = quarantine.put_aside(folder).message() if failed else ""
        lock.release()
        quarantine.discard(folder)
        return message

    def finish(item: _Pending, seconds: float, error: str | None) -> None:
        windows[item.stem] = (windows[item.stem][0], time.time_ns())
        src, dst = item.src, out_dir / item.src.name
        tmp = out_dir / f".{src.name}.running.ipynb"
        reason = None
        if error is not None:
            failed_dir.mkdir(parents=True, exist_ok=True)
            kept = failed_dir / src.name
            if tmp.exists():
                os.replace(tmp, kept)
            reason = _first_error(kept) or error
            reason = reason.strip().splitlines()[0][:500] if reason.strip() else error
            log(f"[book] {src.name:28s} FAILED after {seconds:.1f} s: {reason}\n"
                f"       executed copy with the traceback: {kept}")
        else:
            problems = output_problems(tmp)
            if problems:
                failed_dir.mkdir(parents=True, exist_ok=True)
                kept = failed_dir / src.name
                os.replace(tmp, kept)
                reason = f"prints that something it needs is missing or failed: {problems[0]}"
                log(f"[book] {src.name:28s} FAILED after {seconds:.1f} s: {reason}\n       executed copy: {kept}")
        if reason is not None:
            aside = close_journal(item.stem, failed=True)
            log(f"       {aside}")
            runs[item.stem] = NotebookRun(src.name, "failed", seconds, item.key, item.params, f"{reason}; {aside}")
            return
        close_journal(item.stem, failed=False)
        finish_executed(tmp)
        os.replace(tmp, dst)
        atomic_write_text(Path(str(dst) + KEY_SUFFIX), item.key + "\n")
        runs[item.stem] = NotebookRun(src.name, "executed", seconds, item.key, item.params)
        log(f"[book] {src.name:28s} executed in {seconds:.1f} s")

    def start(item: _Pending, submit) -> Any:
        windows[item.stem] = (time.time_ns(), 0)
        journals[item.stem] = quarantine.new_journal(results_root_of(item.params, item.src), item.stem,
                                                     quarantine.BUILD_LOCK)
        log(f"[book] {item.src.name:28s} executing with {json.dumps(item.params, sort_keys=True)}")
        return submit(_execute, str(item.src), str(out_dir / f".{item.src.name}.running.ipynb"), item.params,
                      kernel_name, str(notebooks_dir), str(journals[item.stem][0]))

    try:
        if jobs == 1:
            for item in pending:
                finish(item, *start(item, lambda fn, *args: fn(*args)))
        elif pending:
            import multiprocessing
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            waiting, running = list(pending), {}
            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                try:
                    while waiting or running:
                        for item in list(waiting):
                            if len(running) < jobs and all(stem in runs for stem in item.needs):
                                waiting.remove(item)
                                running[start(item, pool.submit)] = item
                        if not running:
                            raise RuntimeError(f"notebooks {[i.src.name for i in waiting]} wait for notebooks that "
                                               "never run")
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            finish(running.pop(future), *future.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    stop_children()      # before the pool's exit, which waits for its workers
                    raise
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM) or broken: no worker or kernel may outlive the build, and the chapters
        # it stopped count as failed: what they wrote is put aside
        stop_children()
        for stem in list(journals):
            log(f"[book] {stem} stopped: {close_journal(stem, failed=True)}")
        raise
    ordered = [runs[stem] for stem in stems]
    # A notebook after a failed one ran without (or before) what the failed one writes: no cache key for it.
    for index, run in enumerate(ordered):
        if run.status == "failed":
            for later in ordered[index + 1:]:
                if later.status == "executed":
                    Path(str(out_dir / later.name) + KEY_SUFFIX).unlink(missing_ok=True)
            break
    _record_inputs(ordered, {src.stem: src for src in sources}, out_dir, windows, needs)
    return ordered


def _record_inputs(ordered: list[NotebookRun], sources: dict[str, Path], out_dir: Path,
                   windows: dict[str, tuple[int, int]], needs: dict[str, list[str]]) -> None:
    """For every chapter executed in this build: the result files it wrote (modified while it ran) and those
    of the chapters it needs, with their sha256 as the build leaves them (``NN.ipynb.inputs.json``)."""
    files: dict[str, set[Path]] = {}
    for run in ordered:
        stem = Path(run.name).stem
        inputs_file = out_dir / f"{run.name}{INPUTS_SUFFIX}"
        if run.status == "cached":
            try:
                files[stem] = {Path(p) for p in json.loads(inputs_file.read_text(encoding="utf-8"))["files"]}
            except (OSError, ValueError, KeyError, TypeError):
                files[stem] = set()
            continue
        written = set(files_written(results_root_of(run.parameters, sources[stem]), *windows[stem])) \
            if stem in windows else set()
        files[stem] = written | {p for need in needs[stem] for p in files.get(need, set())}
        if run.status == "executed" and (out_dir / f"{run.name}{KEY_SUFFIX}").exists():
            atomic_write_text(inputs_file, json.dumps(
                {"files": {str(p): _sha256(p) for p in sorted(files[stem]) if p.is_file()}}, indent=1) + "\n")


def stop_children() -> list[int]:
    """Terminate every process this one started (book workers and their kernels), then kill those left after
    3 s. Returns their pids."""
    import psutil   # a dependency of ipykernel, which the book's kernels need

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=3)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    return [child.pid for child in children]


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default="notebooks")
    parser.add_argument("--out", default="book/generated")
    parser.add_argument("--params", default="book/params.yml")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--force", action="store_true", help="re-execute even when the cache key is unchanged")
    parser.add_argument("--timings", default=None, help="write per-notebook timings as JSON to this file")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks executed at once (default: BOOK_JOBS, else one per core, at most 2)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else default_jobs()
    print(f"[book] executing up to {jobs} notebook(s) at once")
    signal.signal(signal.SIGTERM, _terminate)     # `kill` of the build: clean up like Ctrl-C
    try:
        runs = run_notebooks(args.notebooks, args.out, args.params, args.kernel, args.force, jobs=jobs)
    except ParameterError as error:
        print(f"[book] error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        stop_children()
        print("[book] interrupted; worker processes and kernels stopped", file=sys.stderr)
        return 130
    total = time.perf_counter() - start
    print(f"[book] {'notebook':28s} {'status':9s} seconds")
    for run in runs:
        print(f"[book] {run.name:28s} {run.status:9s} {run.seconds:7.1f}")
    print(f"[book] {'total (notebooks)':28s} {'':9s} {total:7.1f}")
    if args.timings:
        atomic_write_text(args.timings, json.dumps(
            {"total_seconds": round(total, 2),
             "notebooks": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 2), "error": r.error}
                           for r in runs]}, indent=1) + "\n")
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        print(f"[book] {len(failed)} notebook(s) failed:", file=sys.stderr)
        for run in failed:
            print(f"[book]   {run.name}: {run.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
