"""Execute the book's notebooks with papermill, with a cache, for `make book` (scripts/build_book.sh).

Every `notebooks/NN_name.ipynb` is run from the `notebooks/` folder (chapters resolve a relative
`results_dir` against the repository, see `ocrheads_lib.chapter`) with parameters from one book-level YAML file
(`book/params.yml`: a `defaults` mapping for every notebook plus an optional `notebooks` mapping of
per-notebook overrides keyed by the notebook's stem). The executed copy goes to
`book/generated/NN_name.ipynb`, next to a `NN_name.ipynb.key` file holding the cache key.

Cache key of a notebook = sha256 over (its source bytes, its parameters, a hash of every file of the
`ocrheads_lib` package, the key of the notebook before it in sorted order). Chaining the previous
key is deliberate: later chapters read earlier chapters' results, so a change upstream re-runs
everything after it. An unchanged key means the executed copy is reused without starting a kernel.

Usage (what build_book.sh runs):
    python -m ocrheads_lib.bookbuild --notebooks notebooks --out book/generated --params book/params.yml
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ocrheads_lib.paths import atomic_write_text

PACKAGE_ROOT = Path(__file__).resolve().parent
KEY_SUFFIX = ".key"


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


def notebook_key(source: bytes, parameters: dict[str, Any], lib_hash: str, previous_key: str) -> str:
    """The cache key of one notebook (see the module docstring)."""
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


def output_problems(notebook_path: Path) -> list[str]:
    """Lines of an executed notebook's text outputs that contain one of :data:`BAD_OUTPUT`."""
    nb = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    found = []
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


def run_notebooks(notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  params_path: str | os.PathLike | None, kernel_name: str = "python3",
                  force: bool = False, failed_dir: str | os.PathLike | None = None,
                  library_root: str | os.PathLike = PACKAGE_ROOT, log=print) -> list[NotebookRun]:
    """Execute (or reuse) every `NN_*.ipynb` of `notebooks_dir` in sorted order; see module docstring.

    Every notebook is attempted even after a failure (each chapter can run alone), so one build
    reports all broken chapters. A failed notebook's partial output goes to `failed_dir`
    (default `<out_dir>/../../_build/failed`), never into `out_dir`. `library_root`: the files whose
    hash enters every key (the package; tests pass a fixed folder).
    """
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

    lib = library_hash(library_root)
    kernel_checked = False
    previous_key = ""
    runs: list[NotebookRun] = []
    for src in sources:
        params = load_parameters(params_path, src.stem)
        key = notebook_key(src.read_bytes(), params, lib, previous_key)
        previous_key = key
        dst = out_dir / src.name
        key_file = Path(str(dst) + KEY_SUFFIX)
        if not force and dst.exists() and key_file.exists() and key_file.read_text().strip() == key:
            runs.append(NotebookRun(src.name, "cached", 0.0, key, params))
            log(f"[book] {src.name:28s} cached")
            continue
        if not kernel_checked:
            _kernel_check(kernel_name)
            kernel_checked = True
        # An executed copy in out_dir always matches its key: drop the old one before re-running.
        key_file.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
        tmp = out_dir / f".{src.name}.running.ipynb"
        log(f"[book] {src.name:28s} executing with {json.dumps(params, sort_keys=True)}")
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=kernel_name,
                                       cwd=str(notebooks_dir), progress_bar=False, log_output=False)
        except Exception as exc:  # papermill raises PapermillExecutionError and kernel/IO errors alike
            seconds = time.perf_counter() - start
            failed_dir.mkdir(parents=True, exist_ok=True)
            kept = failed_dir / src.name
            if tmp.exists():
                os.replace(tmp, kept)
            reason = _first_error(kept) or f"{type(exc).__name__}: {exc}"
            reason = reason.strip().splitlines()[0][:500] if reason.strip() else type(exc).__name__
            runs.append(NotebookRun(src.name, "failed", seconds, key, params, reason))
            log(f"[book] {src.name:28s} FAILED after {seconds:.1f} s: {reason}\n"
                f"       executed copy with the traceback: {kept}")
            previous_key = f"failed:{key}"
            continue
        seconds = time.perf_counter() - start
        problems = output_problems(tmp)
        if problems:
            failed_dir.mkdir(parents=True, exist_ok=True)
            kept = failed_dir / src.name
            os.replace(tmp, kept)
            reason = f"prints that something it needs is missing or failed: {problems[0]}"
            runs.append(NotebookRun(src.name, "failed", seconds, key, params, reason))
            log(f"[book] {src.name:28s} FAILED after {seconds:.1f} s: {reason}\n       executed copy: {kept}")
            previous_key = f"failed:{key}"
            continue
        finish_executed(tmp)
        os.replace(tmp, dst)
        atomic_write_text(key_file, key + "\n")
        runs.append(NotebookRun(src.name, "executed", seconds, key, params))
        log(f"[book] {src.name:28s} executed in {seconds:.1f} s")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default="notebooks")
    parser.add_argument("--out", default="book/generated")
    parser.add_argument("--params", default="book/params.yml")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--force", action="store_true", help="re-execute even when the cache key is unchanged")
    parser.add_argument("--timings", default=None, help="write per-notebook timings as JSON to this file")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    runs = run_notebooks(args.notebooks, args.out, args.params, args.kernel, args.force)
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
