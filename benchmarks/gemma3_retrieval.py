"""Retrieval scoring on the real Gemma 3 270M at ~2k tokens: the probe vs the paper's full-map approach.

Setting: `load_model("gemma3-270m")` (float32, CPU, one thread), one text pass-key sample of ~2,000 tokens
(`ocrheads_lib.experiments.window.LONG`-style haystack, the needle far back), the gold key teacher-forced
after the prompt. Both methods run the same one forward pass over prompt + answer and return the argmax
key of every head (18 x 4) at the rows that write the answer tokens, which is what the Wu hit test needs:

* probe -- what ``scoring.common.probe_rows`` does: the model's attention through ocrheads_lib.attention with
           ``Plan(record="all", rows=answer rows)``; only the (heads, rows, keys) block of each layer exists;
* eager -- the paper's way: eager attention with ``output_attentions=True``, every layer's full (4, n, n) map
           returned, then the rows' argmax.

Both ask for the logits of the last position only (``logits_to_keep=1``): the 262,144-word output layer over
all ~2k positions would add the same 2 GB to both and hide the difference in how attention is recorded.
The two argmax arrays must be equal (the benchmark fails otherwise). Time and memory as in
`probe_memory.py` (its `PeakRss`: peak RSS of the forward minus RSS before it, one fresh process per
method; times are process CPU seconds, fastest of the repeats).

Usage: OMP_NUM_THREADS=1 python benchmarks/gemma3_retrieval.py [--tokens 2000] [--repeats 2]
       [--out benchmarks/results/gemma3_retrieval.md]
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

from probe_memory import PeakRss  # noqa: E402  (this folder is on sys.path when run as a script)

METHODS = ("probe", "eager")


def build(tokens: int):
    """The model, the teacher-forced tensors and the answer rows of one pass-key sample of ~`tokens` tokens."""
    import torch

    from ocrheads_lib.experiments.window import ContextSetting, window_samples
    from ocrheads_lib.models import load_model
    from ocrheads_lib.scoring.common import forced_inputs

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    lm = load_model("gemma3-270m", device="cpu")
    setting = ContextSetting("bench", int(tokens * 3.6), min_needle_distance=600, depths=(0.2,))  # ~3.65 chars/token
    sample = window_samples(lm, setting, 1, seed=0)[0]
    inputs = lm.build_inputs([], sample.prompt)
    gold = lm.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
    tensors = forced_inputs(inputs, gold)
    rows = [inputs.prompt_len - 1 + i for i in range(len(gold))]   # the rows that write each answer token
    return lm, tensors, rows


def worker(method: str, tokens: int, repeats: int) -> dict:
    import torch

    from ocrheads_lib.attention import Plan, apply
    from ocrheads_lib.models.loading import set_language_attention

    lm, tensors, rows = build(tokens)
    if method == "eager":
        set_language_attention(lm.model, "eager")

    def forward(current: dict) -> torch.Tensor:
        with torch.no_grad():
            if method == "probe":
                with apply(lm, Plan(record="all", rows=rows, topk=1)) as rec:
                    lm.model(**current, use_cache=False, logits_to_keep=1)
                return torch.stack([rec.argmax[layer][0] for layer in range(lm.n_layers)])  # (L, H, R)
            out = lm.model(**current, output_attentions=True, use_cache=False, logits_to_keep=1)
            return torch.stack([maps[0][:, rows].argmax(-1) for maps in out.attentions])  # (L, H, R)

    cpu, wall, first, argmax = [], [], None, None
    for _ in range(repeats):
        with PeakRss() as memory:
            start, start_cpu = time.perf_counter(), time.process_time()
            argmax = forward(tensors)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        first = first or memory
    return {"method": method, "n": int(tensors["input_ids"].shape[1]), "rows": len(rows), "cpu_seconds": min(cpu),
            "all_cpu_seconds": cpu, "all_seconds": wall, "extra_mb": (first.peak - first.before) / 1024,
            "rss_before_mb": first.before / 1024, "memory_method": first.method, "argmax": argmax.tolist()}


def run(tokens: int, repeats: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    results = []
    for method in METHODS:
        command = [sys.executable, __file__, "--worker", method, "--tokens", str(tokens), "--repeats", str(repeats)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{method} failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{method:5s} n={result['n']}  cpu {result['all_cpu_seconds']}  extra {result['extra_mb']:.0f} MB",
              flush=True)
        results.append(result)
    if results[0]["argmax"] != results[1]["argmax"]:
        raise RuntimeError("the probe's argmax keys differ from the eager maps' argmax: the comparison is void")
    return results


def table(results: list[dict]) -> str:
    probe, eager = results
    n = probe["n"]
    return "\n".join([
        f"Retrieval scoring pass on the real Gemma 3 270M (`load_model(\"gemma3-270m\")`, 18 layers x 4 heads, "
        f"15 local layers with a 512-key window), float32, CPU, 1 thread, batch 1: one teacher-forced forward over "
        f"{n} tokens (a text pass key with the needle > 600 tokens before the question, the gold key forced), the "
        f"argmax key of every head at the {probe['rows']} answer rows. Probe: ocrheads_lib.attention records only "
        f"those rows; eager: `output_attentions=True` returns every layer's full map (the paper's approach). Both "
        f"give identical argmax keys. CPU seconds of the forward (fastest of the runs); extra = peak RSS during "
        f"the forward minus RSS before it ({probe['memory_method']}), one fresh process per method; logits of the last "
        f"position only in both.",
        "",
        "| method | tokens | cpu s | extra MB | time / probe | memory / probe |",
        "|---|---|---|---|---|---|",
        f"| probe (ours) | {n} | {probe['cpu_seconds']:.2f} | {probe['extra_mb']:.0f} | 1.00 | 1.00 |",
        f"| eager full maps (paper) | {n} | {eager['cpu_seconds']:.2f} | {eager['extra_mb']:.0f} | "
        f"{eager['cpu_seconds'] / probe['cpu_seconds']:.2f} | {eager['extra_mb'] / max(probe['extra_mb'], 1.0):.1f} |",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="approximate prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=2, help="measured forwards per method (time = fastest)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gemma3_retrieval.md")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.repeats)))
        return
    text = table(run(args.tokens, args.repeats))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
