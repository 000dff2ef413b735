"""Peak memory of a command-line scoring run that scores a few samples of a large generated set.

Command (issue 22, item 9: the CLI held every sample's pages for the whole run):

    python -m ocrheads_lib score --model tiny-random-qwen2_vl --task ocr --dataset passkey --n 200 --limit 5

and the same with paper-like free-layout pages (``--dataset-arg layout=free``: 1024 characters of
DejaVuSans 24 px, larger pages). Each run is a fresh process with its checkout first on PYTHONPATH, one
thread, into a new temporary --out; the peak RSS is the kernel's ru_maxrss of that process (os.wait4), so
it includes torch, the model and every sample held. Give several checkouts to compare code versions
(e.g. a `git archive` of an older commit unpacked outside the repository):

Usage: OMP_NUM_THREADS=1 python benchmarks/cli_memory.py [--checkout LABEL=PATH ...]
       [--out benchmarks/results/cli_memory.md]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["score", "--model", "tiny-random-qwen2_vl", "--task", "ocr", "--dataset", "passkey", "--n", "200",
           "--limit", "5"]
CASES = {"grid pages (default)": [], "free layout": ["--dataset-arg", "layout=free"]}


def measure(checkout: Path, extra: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one run of COMMAND + extra with `checkout`'s library."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "ocrheads_lib", *COMMAND, *extra, "--out", str(Path(folder) / "s.json")]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert process.stderr is not None
        error = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {checkout} failed ({process.returncode}): {error.decode()[-500:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="LABEL=PATH",
                        help="a checkout to measure (default: this repository, labelled 'this checkout')")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cli_memory.md"))
    args = parser.parse_args()
    checkouts = [item.split("=", 1) for item in args.checkout] or [["this checkout", str(REPO)]]
    lines = ["Peak RSS of `python -m ocrheads_lib " + " ".join(COMMAND) + "` (one fresh process per row, CPU, "
             "1 thread; ru_maxrss, includes torch and the model). Wall time is indicative only (shared machine).",
             "", "| dataset | code | peak RSS (MB) | wall (s) |", "|---|---|---|---|"]
    for case, extra in CASES.items():
        for label, path in checkouts:
            rss, seconds = measure(Path(path).resolve(), extra)
            lines.append(f"| {case} | {label} | {rss:.0f} | {seconds:.1f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
