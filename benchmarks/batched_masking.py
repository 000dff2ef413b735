"""Greedy evaluation of masking conditions on smol-vl: batched (left padded) vs one sample at a time.

Setting: `load_model("smol-vl")` (30 layers x 9 heads, float32, CPU, one thread), the pass-key pages of the
evaluation split (`passkey_images(n, seed=1000)`, the book's grid page; `--task` for another set),
`max_new_tokens=12` (the masking chapter's budget; `--max-new-tokens`) and three masking-style conditions: the stock model and `k` = 5 and 20 random heads zeroed
(`sweep.random_heads`, seed 0), each answered under `attention.apply(lm, Plan(mask=heads))`.

* one     -- `inference.answer` per sample (what `experiments.evaluate` does by default);
* batched -- `inference.answer_batch(..., batch_size=B)`: B samples per `generate`, left padded by the
             Qwen2-VL processor.

Each mode runs in a fresh process (so its peak memory is its own): process CPU seconds over every
condition (wall time is unreliable on a shared machine) give samples per CPU-minute; peak RSS is VmHWM
after the model is loaded and warmed up (probe_memory's PeakRss), reported with the extra over the RSS
before answering. The parent compares the answers of the two modes sample by sample.

Usage: OMP_NUM_THREADS=1 python benchmarks/batched_masking.py [--n 8] [--batch-size 8] [--task passkey_image]
       [--max-new-tokens 12] [--out benchmarks/results/batched_masking.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent))      # probe_memory's PeakRss

from probe_memory import PeakRss  # noqa: E402  (a sibling script, not a package)

from ocrheads_lib.paths import atomic_write_text  # noqa: E402

MODES = ("one", "batched")
KS = (0, 5, 20)
MAX_NEW_TOKENS = 12


def worker(mode: str, n: int, batch_size: int, task: str, max_new_tokens: int) -> dict:
    import torch

    from ocrheads_lib.attention import Plan, apply
    from ocrheads_lib.data import load_dataset_by_name
    from ocrheads_lib.experiments.sweep import random_heads
    from ocrheads_lib.inference import answer, answer_batch
    from ocrheads_lib.models import load_model

    torch.set_num_threads(1)
    lm = load_model("smol-vl")
    samples = load_dataset_by_name(task, n, seed=1000)
    answer(lm, samples[0], max_new_tokens=2)                     # warm-up: first-call allocations
    answers: dict[str, list[str]] = {}
    with PeakRss() as peak:
        start = time.process_time()
        for k in KS:
            plan = Plan(mask=random_heads(lm.n_layers, lm.n_heads, k, seed=0)) if k else Plan()
            with apply(lm, plan):
                if mode == "one":
                    answers[str(k)] = [answer(lm, s, max_new_tokens=max_new_tokens) for s in samples]
                else:
                    answers[str(k)] = answer_batch(lm, samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
        cpu = time.process_time() - start
    return {"mode": mode, "cpu_s": cpu, "n_answers": n * len(KS), "peak_mb": peak.peak / 1024,
            "extra_mb": (peak.peak - peak.before) / 1024, "answers": answers}


def run(mode: str, n: int, batch_size: int, task: str, max_new_tokens: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--worker", mode, "--n", str(n), "--batch-size", str(batch_size),
               "--task", task, "--max-new-tokens", str(max_new_tokens)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="samples per condition")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--task", default="passkey_image", help="evaluation task (passkey_image, niah_image, ...)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "batched_masking.md"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.batch_size, args.task, args.max_new_tokens)))
        return
    results = {mode: run(mode, args.n, args.batch_size, args.task, args.max_new_tokens) for mode in MODES}
    one, batched = results["one"], results["batched"]
    same = sum(a == b for k in one["answers"] for a, b in zip(one["answers"][k], batched["answers"][k]))
    rate = {mode: 60.0 * r["n_answers"] / r["cpu_s"] for mode, r in results.items()}
    lines = [f"Greedy answers of smol-vl on {args.n} evaluation-split `{args.task}` samples (seed 1000) under "
             f"{len(KS)} masking conditions (k = {', '.join(map(str, KS))} random heads zeroed), "
             f"max_new_tokens={args.max_new_tokens}, CPU, 1 thread, one fresh process per mode. Samples per CPU-minute "
             "from process CPU seconds; peak RSS = VmHWM (extra = over the RSS before answering). Target: "
             "batched >= 2x one at a time.", "",
             "| mode | batch size | answers | CPU s | samples / CPU-min | speed-up | peak RSS (MB) | extra (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        size = 1 if mode == "one" else args.batch_size
        lines.append(f"| {mode} | {size} | {r['n_answers']} | {r['cpu_s']:.1f} | {rate[mode]:.1f} | "
                     f"{rate[mode] / rate['one']:.2f}x | {r['peak_mb']:.0f} | {r['extra_mb']:.0f} |")
    lines += ["", f"Answers equal between the two modes: {same} of {one['n_answers']}."]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
