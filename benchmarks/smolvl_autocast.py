"""Seconds per smol-vl training step, float32 vs CPU bfloat16 autocast, and the same for one linear layer.

One process, the same batches for both precisions (interleaved, so load from other processes hits both
alike). The training default follows this measurement (`TrainConfig.bf16`): on a CPU without
avx512_bf16 / AMX, autocast emulates bfloat16 matmuls and is several times slower than float32.

Usage: OMP_NUM_THREADS=2 python benchmarks/smolvl_autocast.py [--steps 2] [--tasks key_aligned page_book]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
import tempfile

import torch


def linear_seconds(bf16: bool, repeats: int = 20) -> float:
    """One SmolLM2 MLP projection on a key-page batch's worth of tokens (744 x 576 @ 576 x 1536)."""
    x, w = torch.randn(744, 576), torch.randn(1536, 576)
    started = time.perf_counter()
    for _ in range(repeats):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            torch.nn.functional.linear(x, w)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    from ocrheads_lib.embedded.smolvl import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per task and precision")
    ap.add_argument("--tasks", nargs="+", default=["key_aligned", "page_book"])
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
    print(f"threads {torch.get_num_threads()}, avx512_bf16: {'avx512_bf16' in flags}, amx_bf16: {'amx_bf16' in flags}")
    print(f"| linear 744x576 @ 576x1536 | fp32 {linear_seconds(False):.3f} s | bf16 autocast {linear_seconds(True):.3f} s |")
    trainer = train.Trainer(train.TrainConfig(batch_size=8), Path(tempfile.mkdtemp()), log=lambda message: None)
    for task in args.tasks:
        times: dict[bool, list[float]] = {False: [], True: []}
        for step in range(args.steps):
            for bf16 in (False, True):
                trainer.config = train.TrainConfig(batch_size=8, bf16=bf16, curriculum=((0, ((task, 1.0),)),))
                trainer.step = step        # same batch for both precisions
                times[bf16].append(trainer.train_step()["seconds"])
        print(f"| train step, {task}, batch 8 | fp32 {sum(times[False]) / args.steps:.1f} s | "
              f"bf16 autocast {sum(times[True]) / args.steps:.1f} s |")


if __name__ == "__main__":
    main()
