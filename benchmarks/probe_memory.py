"""Peak memory and wall time of recording answer rows: probe vs eager `output_attentions=True` vs plain sdpa.

Setting: a text-only Qwen2 decoder with Qwen2-VL-7B widths (hidden 3584, 28 query heads, 4 KV heads,
head_dim 128), random float32 weights, a few decoder layers (default 2), CPU, one thread, batch 1. The MLP
defaults to 4736, a quarter of 7B's 18944 (`--mlp 18944` for the full layer), to keep the whole run under
~8 minutes on one shared core: the probe's work is all in attention, so a smaller MLP makes the time ratio
stricter (a cheaper denominator) and leaves the memory overhead of recording unchanged.
Each forward processes n tokens in one pass (no cache), like the teacher-forced scoring pass, and
records the last `--rows` query rows (the answer rows):

* sdpa  -- plain forward with transformers' sdpa attention, nothing recorded (the floor);
* probe -- ocrheads_lib.attention.apply(record="all", rows=last R, topk=5, one key set of 256 positions):
           per layer and head the argmax, top-5 and key-set mass of the R rows;
* eager -- eager attention with output_attentions=True, then the R rows of every layer's full map are
           kept (what the paper's code does).

Memory method: every (method, n) runs in a fresh subprocess. After building the model and inputs and a
short warm-up forward, the worker reads VmRSS from /proc/self/status, resets the kernel's peak-RSS
counter by writing "5" to /proc/self/clear_refs (Linux >= 4.0), runs the measured forward, and reads
VmHWM (peak RSS since the reset). "extra" = VmHWM - VmRSS before the forward: everything the forward
allocated at its peak (activations, attention maps, recorder), seen at the page level, so it includes
torch's CPU allocations (which tracemalloc does not see). If clear_refs is not writable the worker falls
back to sampling VmRSS every millisecond from a thread (torch releases the GIL in its kernels).

Ratios: "probe extra / eager extra" and the recording overhead "(probe - sdpa) / (eager - sdpa)" of the
extra memory; time ratios are wall-time ratios of the measured forward against sdpa. Targets: recording
overhead <= 1/50 of eager at 4k; probe time <= 1.3x sdpa.

Usage: OMP_NUM_THREADS=1 python benchmarks/probe_memory.py [--sizes 1024 2048 4096] [--layers 2]
       [--out benchmarks/results/probe_memory.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not pip-installed

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 3584, 28, 4, 128  # Qwen2-VL-7B language model attention widths
MLP = 4736  # a quarter of Qwen2-VL-7B's 18944 (see the module docstring)
METHODS = ("sdpa", "probe", "eager")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRss:
    """Peak RSS of this process during a `with` block, in kB (clear_refs reset, or 1-ms sampling)."""

    def __enter__(self) -> "PeakRss":
        self.before = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "1-ms VmRSS sampling"
            self._stop = threading.Event()
            self._peak = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kb("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            self.peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._peak


def worker(method: str, n: int, layers: int, mlp: int, rows: int, seed: int, repeats: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ocrheads_lib.attention import Plan, apply, use_probe_attention

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         max_position_embeddings=32768, tie_word_embeddings=False, use_cache=False)
    model = Qwen2ForCausalLM(config).eval()
    use_probe_attention(model, "eager" if method == "eager" else "sdpa")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (1, n), generator=generator)  # (1, n)
    answer_rows = torch.arange(n - rows, n)  # (R,)
    evidence = torch.randperm(n - rows, generator=generator)[:256]  # (256,) a key set to measure mass on
    plan = Plan(record="all", rows=answer_rows, topk=5, key_sets={"evidence": evidence})

    def forward(input_ids: torch.Tensor, plan_rows: torch.Tensor) -> object:
        with torch.no_grad():
            if method == "sdpa":
                return model(input_ids=input_ids, use_cache=False).logits[:, -1]
            if method == "eager":
                out = model(input_ids=input_ids, use_cache=False, output_attentions=True)
                return [weights[:, :, plan_rows].clone() for weights in out.attentions]  # (1, H, R, n) per layer
            with apply(model, Plan(record="all", rows=plan_rows, topk=5, key_sets=plan.key_sets)) as rec:
                model(input_ids=input_ids, use_cache=False)
            return rec

    forward(ids[:, :64], torch.arange(64 - rows, 64))  # warm-up on a short sequence
    wall, cpu, first = [], [], None
    for _ in range(repeats):  # memory from the first measured run; times = fastest run
        with PeakRss() as memory:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = forward(ids, answer_rows)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        del result
        first = first or memory
    return {"method": method, "n": n, "layers": layers, "mlp": mlp, "rows": rows, "seconds": min(wall),
            "cpu_seconds": min(cpu), "all_seconds": wall, "all_cpu_seconds": cpu,
            "rss_before_mb": first.before / 1024, "peak_mb": first.peak / 1024,
            "extra_mb": (first.peak - first.before) / 1024, "memory_method": first.method}


def eager_fits(n: int, layers: int) -> bool:
    """Eager needs ~4 float32 (H, n, n) blocks at its peak (scores, masked scores, softmax, kept maps)."""
    need_kb = 4 * HEADS * n * n * 4 / 1024 + 3 * 1024 * 1024 * layers
    return need_kb < 0.8 * _status_kb_meminfo("MemAvailable")


def _status_kb_meminfo(field: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/meminfo")


def run(sizes: list[int], layers: int, mlp: int, rows: int, seed: int, methods: list[str],
        repeats: int) -> list[dict]:
    results = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for n in sizes:
        for method in methods:
            if method == "eager" and not eager_fits(n, layers):
                print(f"skip eager at n={n}: its attention maps do not fit in the available memory", flush=True)
                continue
            command = [sys.executable, __file__, "--worker", method, "--n", str(n), "--layers", str(layers),
                       "--mlp", str(mlp), "--rows", str(rows), "--seed", str(seed),
                       "--repeats", str(1 if method == "eager" else repeats)]  # eager's time is only context
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{method} n={n} failed (exit {done.returncode}): {done.stderr.strip()[-400:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{method:5s} n={n:5d}  cpu {result['all_cpu_seconds']}  wall {result['all_seconds']}  "
                  f"extra {result['extra_mb']:8.1f} MB", flush=True)
            results.append(result)
    return results


def table(results: list[dict], layers: int, mlp: int, rows: int) -> str:
    by = {(r["method"], r["n"]): r for r in results}
    memory_method = results[0]["memory_method"] if results else "?"
    lines = [
        f"Probe vs eager `output_attentions=True` vs sdpa: {layers} decoder layers with Qwen2-VL-7B attention widths "
        f"(hidden {HIDDEN}, {HEADS} heads, {KV_HEADS} KV heads, head_dim {HEAD_DIM}; MLP {mlp}), float32, batch 1, "
        f"CPU, 1 thread; recording the last {rows} rows of every head (probe: argmax, top-5, mass on one key set; "
        f"eager: the rows of the full maps). Times: process CPU seconds of the forward (fastest of the runs; "
        f"wall time is unreliable on the shared CPU). Extra = peak RSS during the forward minus RSS before it "
        f"({memory_method}); one fresh process per cell.",
        "",
        "| n | sdpa cpu s | probe cpu s | eager cpu s | probe/sdpa time | eager/sdpa time | sdpa extra MB "
        "| probe extra MB | eager extra MB | (probe-sdpa)/(eager-sdpa) extra | probe/eager extra |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for n in sorted({r["n"] for r in results}):
        s, p, e = by.get(("sdpa", n)), by.get(("probe", n)), by.get(("eager", n))
        t_ratio = p["cpu_seconds"] / s["cpu_seconds"] if p and s else None
        te_ratio = e["cpu_seconds"] / s["cpu_seconds"] if e and s else None
        m_ratio = p["extra_mb"] / e["extra_mb"] if p and e else None
        overhead = (p["extra_mb"] - s["extra_mb"]) / (e["extra_mb"] - s["extra_mb"]) if p and e and s else None
        lines.append(
            f"| {n} | {fmt(s and s['cpu_seconds'], '.2f')} | {fmt(p and p['cpu_seconds'], '.2f')} | "
            f"{fmt(e and e['cpu_seconds'], '.2f')} | {fmt(t_ratio, '.3f')} | {fmt(te_ratio, '.2f')} | "
            f"{fmt(s and s['extra_mb'], '.0f')} | {fmt(p and p['extra_mb'], '.0f')} | "
            f"{fmt(e and e['extra_mb'], '.0f')} | {fmt(overhead, '.4f')} | {fmt(m_ratio, '.4f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--mlp", type=int, default=MLP, help="MLP intermediate size (Qwen2-VL-7B: 18944; default a quarter)")
    parser.add_argument("--rows", type=int, default=8, help="answer rows recorded (the last rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="measured forwards per cell (time = fastest)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_memory.md")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.layers, args.mlp, args.rows, args.seed, args.repeats)))
        return
    results = run(args.sizes, args.layers, args.mlp, args.rows, args.seed, args.methods, args.repeats)
    text = table(results, args.layers, args.mlp, args.rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
