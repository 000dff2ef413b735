"""What the embedded model's width costs per training step: CPU-seconds and peak memory by decoder width.

Issue 4 asks for >= 32 decoder heads so that head-level findings mean something, and for the model card
to say what that width cost in training time. The prototype (../shared/prototypes/tiny_vlm) had 16 heads
(4 layers x 4 heads of dim 32, hidden 128). This benchmark times the shipped trainer's `step()` (all
three tasks, forward + backward + AdamW, the auxiliary cell loss included) at several decoder widths,
with everything else equal: the same vision tower, the same seeded batches (8 key + 8 page + 8 text
examples per step) drawn at the final curriculum stage (two-line and unaligned keys, 5-line pages,
520-character texts), one thread.

CPU time is process time with one thread, which other jobs on a shared machine barely disturb. Each
width runs in its own subprocess so that the peak resident memory is that width's ("peak MB" = peak
RSS minus RSS after building the trainer).

    python benchmarks/tiny_width_cost.py        # ~2.5 min on 2 CPU cores
    -> prints a markdown table, writes benchmarks/results/tiny_width_cost.md and .json
       (python -m ocrheads_lib.embedded.tiny.card puts the JSON into the model card)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> TinyConfig overrides (the rest is the shipped TinyConfig)
WIDTHS = {
    "prototype: 4x4 heads of dim 32, hidden 128": dict(hidden=128, heads=4, kv_heads=4),
    "32 heads of dim 16, hidden 128": dict(hidden=128, heads=8, kv_heads=4, head_dim=16, mrope_section=(2, 3, 3)),
    "shipped: 4x8 heads of dim 32, hidden 256": dict(),
    "shipped, MLP 1024": dict(intermediate=1024),
}
BATCH = {"key": 8, "page": 8, "text": 8}
FINAL_STAGE = {"key_layouts": ["2lines", "2lines_offset", "aligned", "offset"], "page_max_lines": 5,
               "page_unaligned_share": 0.5, "text_max_chars": 520}
WARMUP_STEPS, TIMED_STEPS = 2, 12


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(name: str) -> dict:
    """CPU-s per training step of one width (run inside its own subprocess)."""
    import torch

    from ocrheads_lib.embedded.tiny.build import TinyConfig
    from ocrheads_lib.embedded.tiny.train import Batches, TinyTrainer, TrainConfig, curriculum_from

    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    trainer = TinyTrainer(TinyConfig(**WIDTHS[name]), seed=0, config=TrainConfig(batch=Batches(**BATCH)))
    base = rss_mb()
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        trainer.cur = curriculum_from(FINAL_STAGE)   # stay at the final stage whatever the batch scores
        t0 = time.process_time()
        trainer.step()
        if i >= WARMUP_STEPS:
            times.append(time.process_time() - t0)
    size = trainer.size
    return dict(name=name, params=trainer.n_params(), heads=size.layers * size.heads, head_dim=size.head_dim,
                hidden=size.hidden, intermediate=size.intermediate,
                cpu_s_per_step=round(sum(times) / len(times), 3), cpu_s_min=round(min(times), 3),
                peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base, 1))


def table(rows: list[dict]) -> str:
    ref = next(r for r in rows if r["name"].startswith("prototype"))["cpu_s_per_step"]
    lines = [f"Training-step cost of the tiny Qwen2-VL by decoder width: CPU-seconds per optimizer step (process time, "
             f"1 thread, mean of {TIMED_STEPS} steps after {WARMUP_STEPS} warm-up steps), batch "
             f"{BATCH['key']} key + {BATCH['page']} page + {BATCH['text']} text examples at the final curriculum "
             "stage, same seeded batches and vision tower for every width; peak MB = peak RSS above the built trainer.",
             "", "| decoder | heads | parameters | CPU-s / step | x prototype | peak MB |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['heads']} | {r['params'] / 1e6:.2f} M | {r['cpu_s_per_step']:.2f} | "
                     f"{r['cpu_s_per_step'] / ref:.2f}x | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)   # internal: measure one width, print JSON
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tiny_width_cost.md"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = []
    for name in WIDTHS:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((out, text + "\n"), (out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
