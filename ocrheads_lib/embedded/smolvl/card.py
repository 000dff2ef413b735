"""smol-vl's model card: a held-out evaluation of the shipped weights and the card written from it.

    python -m ocrheads_lib.embedded.smolvl.card --n 200          # evaluate (through load_model) and write the card
    python -m ocrheads_lib.embedded.smolvl.card --write_only     # rewrite card.md from weights/model_card.json
    python -m ocrheads_lib.embedded.smolvl.card --shift_only     # (re)measure only the off-the-grid diagnostic

The evaluation loads `smol-vl` and `smollm2` exactly as the book does (`load_model`), answers greedily
in float32, and scores with the book's pass-key accuracy (the gold occurs in the answer) and exact match,
with Wilson 95 % intervals. Its seeds (`CARD_SEED`) differ from the ones watched during training, so
choosing a checkpoint on the training evaluations does not bias the card.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ocrheads_lib.embedded.cards import read_template, render
from ocrheads_lib.embedded.smolvl.load import WEIGHTS_DIR
from ocrheads_lib.embedded.smolvl.weights_io import RECORD, parts_hash
from ocrheads_lib.paths import atomic_write_json, atomic_write_text

CARD_SEED = 8_000_003
SHIFT_SEED = CARD_SEED + 100       # the off-the-grid diagnostic's keys (the held-out sets use CARD_SEED + 1..5)
CARD_JSON = "model_card.json"
CARD_MD = Path(__file__).resolve().parent / "card.md"
CARD_TEMPLATE = Path(__file__).resolve().parent / "card_template.md"   # the card's static prose
PRECISION = {True: "bfloat16 autocast.",
             False: "float32 (bfloat16 autocast measured 8x slower per linear layer on the training CPU, which "
                    "lacks avx512_bf16; `benchmarks/smolvl_autocast.py`)."}
TARGETS = {"key_aligned": 0.98, "key_unaligned": 0.95, "key_words": 0.95, "key_words_unaligned": 0.95,
           "page_book": 0.97, "niah_book": 0.85}
SHIFT_TARGET = 0.95        # accuracy at every shift of the shift table
GATE_TARGET = 0.99         # per-cell decoding at every shift
GATE_SEED = CARD_SEED + 200   # the per-cell gate's dense pages
CARD_HISTORY = "card_history.json"   # held-out results of earlier shipped weights (same seeds), for "Targets"
BUDGET_CPU_HOURS = 15.0              # the retraining budget of the shipped training record
TARGET_LABELS = {"key_aligned": "key alone, aligned", "key_unaligned": "key alone, any offset",
                 "key_words": "words alone, aligned", "key_words_unaligned": "words alone, any offset",
                 "page_book": "key in a paragraph page", "niah_book": "needle over two pages (word answers)"}
# What the recipe did for each target (method only; the numbers come from the card data and the record).
TRIED = {
    "key_aligned": "the image-side stage (per-cell loss on pages at every offset) before joint training; the "
                   "per-cell loss kept in joint training",
    "key_unaligned": "the image-side stage on pages at random offsets 0-27 px on both axes; joint tasks with half "
                     "of their pages off the grid (`*_mixed`)",
    "key_words": "word-rich keys (`key_words`) as the largest joint task; `text_join`, a text task that maps an "
                 "answer spelled as single characters to its ordinary tokens",
    "key_words_unaligned": "as for words, with half of the pages off the grid",
    "page_book": "paragraph pages half off the grid (`page_book_mixed`) and whole-page transcription (`read_page`)",
    "niah_book": "two-page needle pages half off the grid (`niah_book_mixed`); `text_join` for the word answers",
    "shift": "the image-side stage and the `*_mixed` joint tasks (every offset 0-27 px)",
    "text": "the text KL term to SmolLM2 itself (text tasks), kept in every segment",
    "gate": "the image-side stage: merger and eye trained on the per-cell cross-entropy alone, then kept in joint "
            "training at weight 0.5",
}
SET_NAMES = {
    "key_aligned": "pass key (or 1-3 short words) alone on a page, aligned to the 28-px grid",
    "key_unaligned": "the same, at any pixel offset",
    "key_words": "one to three short words alone on a page, aligned",
    "key_words_unaligned": "the same words, at any pixel offset",
    "page_book": "pass key inside a paragraph page (`passkey_images` book default, 16 x 6 cells)",
    "niah_book": "needle-in-a-haystack word answers on two pages (`niah_images` book default)",
    "text_passkey": "text pass key, 320 characters (`passkey_text` book default), no image",
}


def evaluate_card(n: int, seed: int = CARD_SEED, names: list[str] | None = None) -> dict:
    """Held-out results of the shipped smol-vl, and SmolLM2's own on the same text samples (`names`: only these
    held-out sets; SmolLM2 answers when "text_passkey" is among them)."""
    # imported here: torch and the models load only to evaluate; `--write_only` re-renders the card without them
    from ocrheads_lib.embedded.smolvl.evaluate import evaluate_sets
    from ocrheads_lib.embedded.smolvl.train import heldout_sets
    from ocrheads_lib.models.loading import load_model

    from ocrheads_lib.embedded.smolvl.card_figures import style_accuracy

    sets = heldout_sets(n, seed)
    unknown = sorted(set(names or []) - set(sets))
    if unknown:
        raise ValueError(f"unknown held-out set(s) {unknown}; valid: {sorted(sets)}")
    sets = {k: v for k, v in sets.items() if names is None or k in names}
    started = time.time()
    results = evaluate_sets(load_model("smol-vl", attn="sdpa"), sets)
    if "text_passkey" in sets:
        results["text_passkey_smollm2"] = evaluate_sets(load_model("smollm2", attn="sdpa"),
                                                        {"t": sets["text_passkey"]})["t"]
    return {"n": n, "seed": seed, "seconds": round(time.time() - started), "results": results,
            "styles": style_accuracy(sets, results)}


def evaluate_gate(n: int, seed: int = GATE_SEED) -> dict:
    """The per-cell gate of the shipped smol-vl on `n` dense pages per shift (`evaluate.cell_gate`)."""
    from ocrheads_lib.embedded.smolvl.evaluate import cell_gate, gate_pages
    from ocrheads_lib.models.loading import load_model

    adapter = load_model("smol-vl", attn="sdpa")
    return {"n": n, "seed": seed, "results": cell_gate(adapter.model, adapter.processor, gate_pages(n, seed))}


def evaluate_shift(n: int, seed: int = SHIFT_SEED) -> dict:
    """What a shift off the 28-px grid costs: the same n aligned keys, read at every shift of `SHIFTS`."""
    from ocrheads_lib.embedded.smolvl.evaluate import SHIFTS, evaluate_sets, shift_sets
    from ocrheads_lib.models.loading import load_model

    started = time.time()
    results = evaluate_sets(load_model("smol-vl", attn="sdpa"), shift_sets(n, seed))
    return {"n": n, "seed": seed, "shifts": list(SHIFTS), "seconds": round(time.time() - started),
            "results": results}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def card_markdown(card: dict, record: dict, template: str | Path = CARD_TEMPLATE, history: dict | None = None) -> str:
    """The card for a reader: `template` (the static prose, with $placeholders) filled from the evaluation
    (`card`), the training record and the earlier weights' results (`history`, default: the shipped
    ``weights/card_history.json``)."""
    return render(read_template(template), card_values(card, record, history))


def load_history(weights: str | Path = WEIGHTS_DIR) -> dict:
    """The held-out results of earlier shipped weights ({"cards": [...]}; none when the file is absent)."""
    path = Path(weights) / CARD_HISTORY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"cards": []}


def card_values(card: dict, record: dict, history: dict | None = None) -> dict[str, str]:
    """The template's values: the training summary and recipe, and the evaluation blocks."""
    history = load_history() if history is None else history
    return dict(record=RECORD, **_training(record), **_leading(card, history),
                evaluations="\n".join(_result_lines(card, record) + _targets_lines(card, record, history)
                                      + _style_lines(card) + _shift_lines(card) + _gate_lines(card)),
                history="\n".join(_history_lines(record)))


def _leading(card: dict, history: dict) -> dict[str, str]:
    """The card's opening: what smol-vl answers on one page of each task and how often it is right."""
    results = card.get("results", {})
    if not results:
        return dict(at_a_glance="Not evaluated yet.")
    parts = ["![One held-out page of each task, with the question, the gold answer and smol-vl's answer]"
             "(figures/smolvl/examples.png)", "",
             "![Accuracy per held-out set, per kind of key and per pixel shift, with 95 % Wilson intervals]"
             "(figures/smolvl/accuracy.png)", ""] if any(r.get("first") for r in results.values()) else []
    rows = _target_rows(card, history)
    met = [row[0] for row in rows if row[4] == "met"]
    missed = [row[0] for row in rows if row[4] == "not met"]
    parts.append(f"Of its {len(rows)} targets (Targets, below), smol-vl meets {len(met)}"
                 + (f" ({'; '.join(met)})" if met else "") + (f"; it misses {'; '.join(missed)}." if missed else "."))
    return dict(at_a_glance="\n".join(parts))


def _training(record: dict) -> dict[str, str]:
    segments = record.get("segments", [])
    if not segments:
        return dict(summary="Not trained yet: the training record lists no segments.", recipe="- No recipe recorded.")
    config = next(s["config"] for s in reversed(segments) if s["init"] != "cells")
    wall = sum(s.get("wall_seconds", 0) for s in segments)
    cpu_hours = sum(s.get("wall_seconds", 0) * s.get("threads", 1) for s in segments) / 3600
    summary = (f"{record.get('step')} optimizer steps of {config['batch_size']} examples in {len(segments)} "
               f"segment(s), {wall / 3600:.1f} h wall ({cpu_hours:.1f} CPU-hours) on a shared 2-core CPU. "
               "Precision: " + PRECISION[bool(config["bf16"])])
    recipe = [f"- LoRA rank {config['lora_rank']}, alpha {config['lora_alpha']}; AdamW, {config['warmup_steps']} "
              f"warm-up steps at the start of every segment that begins with a fresh optimizer, cosine to "
              f"{config['min_lr_ratio']} of the rate at step {config['total_steps']}, gradient norm clipped at "
              f"{config['grad_clip']}. One task per step, drawn from the segment's curriculum (from step: task "
              "weights). The segments, in order:"]
    for i, segment in enumerate(segments):
        c = segment["config"]
        if segment["init"] == "cells":
            gate = segment.get("gate") or {}
            recipe.append(
                f"  {i + 1}. the image-side stage (`smolvl/cells.py`), {segment['end_step']} steps of {c['pages']} pages, "
                f"{segment.get('wall_seconds', 0) / 3600:.1f} h on {segment.get('threads', 1)} thread(s), no language "
                f"model: the tiny eye and a new merger output layer (init: {c['init']}) trained with the per-cell "
                f"cross-entropy against SmolLM2's embedding matrix (+ {c['mse_weight']} x relative squared error to the "
                f"character's embedding), output layer {c['head_lr']} (alone for the first {c['head_only_steps']} "
                f"steps), merger {c['merger_lr']}, eye {c['eye_lr']}; its last training gate: "
                + ", ".join(f"{k} {_pct(v['accuracy'])}" for k, v in gate.items() if isinstance(v, dict)))
            continue
        start = {"scratch": "from the least-squares merger and zero deltas", "resume": "resumed (same optimizer)",
                 "from_weights": ("from the previous segment's weights with the image-side stage's eye and merger, "
                                  "fresh optimizer" if segment.get("visual_from") == "cells" else
                                  "from the previous segment's weights, fresh optimizer")}.get(segment["init"], segment["init"])
        head = (f"  {i + 1}. steps {segment['start_step']}-{segment.get('end_step', '?')}, {start}, "
                f"{segment.get('wall_seconds', 0) / 3600:.1f} h on {segment.get('threads', 1)} thread(s): ")
        settings = (f"the settings of segment {i}" if i and c == segments[i - 1]["config"] else
                    f"data seed {c['seed']}; LoRA learning rate {c['lora_lr']}, merger {c['merger_lr']}, eye "
                    f"{'frozen' if not c['eye_lr'] else str(c['eye_lr'])}; text KL weight {c['text_kl_weight']}"
                    + (f"; per-cell loss weight {c['cell_weight']} (+ {c['cell_pages']} extra pages per image step)"
                       if c.get("cell_weight") else ""))
        recipe.append(head + settings + "; " + "; ".join(f"from step {at}: " + ", ".join(f"{t} {w:g}" for t, w in mix)
                                                         for at, mix in _phases(c["curriculum"], segment)))
    return dict(summary=summary, recipe="\n".join(recipe))


def _phases(curriculum: list, segment: dict) -> list[tuple[int, list]]:
    """The curriculum phases a segment trained on (phases start at global steps), each with the step at which
    it took effect inside the segment."""
    first = segment["start_step"]
    last = max(segment.get("end_step", first), first + 1)          # a segment of no steps shows its first phase
    ends = [at for at, _ in curriculum[1:]] + [math.inf]            # phase k runs until phase k + 1 starts
    return [(max(at, first), mix) for (at, mix), end in zip(curriculum, ends) if at < last and end > first]


def _history_lines(record: dict) -> list[str]:
    history = record.get("history", [])
    if not history:
        return []
    names = [k for k in SET_NAMES if any(k in row for row in history)]
    lines = ["## Held-out accuracy during training", "",
             f"Small sets (n = {history[-1][names[0]]['n'] if names else '?'} per set, seed 7,000,003+, greedy) "
             "evaluated while training; the intervals are wide at this size.", "",
             "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in history:
        lines.append(f"| {row['step']} | " + " | ".join(_pct(row[k]["accuracy"]) if k in row else "" for k in names) + " |")
    return lines + [""]


def _result_lines(card: dict, record: dict) -> list[str]:
    results = card.get("results", {})
    if not results:
        return ["## Held-out results", "",
                f"Not evaluated yet: training is in progress (shipped weights: step {record.get('step')}"
                + ("; at step 0 the merger is the least-squares initialisation and the LoRA deltas are zero, so "
                   "the model does not read pages yet" if not record.get("step") else "") + "). "
                "`python -m ocrheads_lib.embedded.smolvl.card --n 200` evaluates them and rewrites this card.", ""]
    lines = ["## Held-out results", "",
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
    return lines


def _target_rows(card: dict, history: dict) -> list[tuple[str, ...]]:
    """(target, goal, earlier weights, today, met / not met, what the recipe did) for every target measured."""
    results = card.get("results", {})
    earlier = (history.get("cards") or [None])[-1]

    def worst(block: dict | None) -> tuple[str, dict] | None:
        rows = {k: v for k, v in (block or {}).items() if k != "x0"}
        return min(rows.items(), key=lambda kv: kv[1]["accuracy"]) if rows else None

    rows = []
    for name, target in TARGETS.items():
        now = results.get(name)
        if now is None:
            continue
        before = (earlier or {}).get("results", {}).get(name)
        rows.append((TARGET_LABELS[name], f">= {_pct(target)}", _cell(before) if before else "not measured",
                     _cell(now), "met" if now["accuracy"] >= target else "not met", TRIED[name]))
    own, ours = results.get("text_passkey_smollm2"), results.get("text_passkey")
    if own and ours:
        before = (earlier or {}).get("results", {}).get("text_passkey")
        rows.append(("text pass key, no image", f">= SmolLM2's {_pct(own['accuracy'])} - 5 points",
                     _cell(before) if before else "not measured", _cell(ours),
                     "met" if ours["accuracy"] >= own["accuracy"] - 0.05 else "not met", TRIED["text"]))
    shift_now = worst(card.get("shift", {}).get("results"))
    shift_before = worst((earlier or {}).get("shift"))
    if shift_now:
        rows.append(("weakest pixel shift (2-14 px, both axes)", f">= {_pct(SHIFT_TARGET)}",
                     f"{shift_before[0]}: {_cell(shift_before[1])}" if shift_before else "not measured",
                     f"{shift_now[0]}: {_cell(shift_now[1])}",
                     "met" if shift_now[1]["accuracy"] >= SHIFT_TARGET else "not met", TRIED["shift"]))
    gate = worst(card.get("gate", {}).get("results"))
    if gate:
        rows.append(("per-cell gate, weakest shift", f">= {_pct(GATE_TARGET)}", "not measured",
                     f"{gate[0]}: {_cell(gate[1])}", "met" if gate[1]["accuracy"] >= GATE_TARGET else "not met",
                     TRIED["gate"]))
    return rows


def _targets_lines(card: dict, record: dict, history: dict) -> list[str]:
    """Every target: the earlier weights' result, today's, whether it is met, and what the recipe did for it;
    then the training budget used."""
    rows = _target_rows(card, history)
    if not rows:
        return []
    earlier = (history.get("cards") or [None])[-1]
    label = f"step {earlier['step']} ({earlier['commit']})" if earlier else "earlier weights"
    lines = ["", "## Targets: where each stands, and what was tried", "",
             f"The same held-out sets (same seeds and sizes) for the earlier weights ({label}) and today's "
             f"(step {record.get('step')}); 95 % Wilson intervals.", "",
             f"| target | goal | {label} | step {record.get('step')} | | what the recipe did for it |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    used = sum(s.get("wall_seconds", 0) * s.get("threads", 1) for s in record.get("segments", [])) / 3600
    missed = sum(1 for row in rows if row[4] == "not met")
    lines += ["", f"{missed} of {len(rows)} targets are not met. The shipped record used {used:.1f} of the "
              f"{BUDGET_CPU_HOURS:g} CPU-hours allowed for training; the rest went to the findings' full-size runs, "
              "which are tied to these weights. The gate shows where the misses start: off the grid, fewer "
              "image tokens name their character, and a key is read only when every one of its cells is."]
    return lines


def _cell(result: dict) -> str:
    return f"{_pct(result['accuracy'])} [{_pct(result['wilson95'][0])}, {_pct(result['wilson95'][1])}]"


def _style_lines(card: dict) -> list[str]:
    from ocrheads_lib.embedded.smolvl.card_figures import STYLE_NAMES

    styles = card.get("styles")
    if not styles:
        return []
    names = sorted({style for rows in styles.values() for style in rows})
    sets = list(styles)
    lines = ["", "## Keys by kind", "", "The key-alone sets split by what the key is (n per cell in brackets).", "",
             "| kind of key | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for style in names:
        row = [f"{_cell(styles[s][style])} (n={styles[s][style]['n']})" if style in styles[s] else "" for s in sets]
        lines.append(f"| {STYLE_NAMES.get(style, style)} | " + " | ".join(row) + " |")
    return lines


def _gate_lines(card: dict) -> list[str]:
    gate = card.get("gate")
    if not gate:
        return []
    results = gate["results"]
    worst = min(results, key=lambda k: results[k]["accuracy"])
    cosine = sum(r["cosine"] * r["cells"] for r in results.values()) / sum(r["cells"] for r in results.values())
    lines = ["", "## What the language half is handed: the per-cell gate", "",
             f"{gate['n']} pages of random characters (letters, digits and punctuation; seed {gate['seed']}), drawn "
             "at each shift. A cell counts as right when its image token, multiplied with SmolLM2's embedding "
             "matrix, scores its own character highest over the whole 49,152-token vocabulary. Cosine: the mean "
             "cosine between an inked cell's image token and its character's embedding.", "",
             "| shift (px right, down) | inked cells | right (95 % Wilson) | mean cosine |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cells']} | {_cell(r)} | {r['cosine']:.2f} |")
    lines += ["", f"The weakest shift is {worst} ({_pct(results[worst]['accuracy'])}; target: at least "
              f"{_pct(GATE_TARGET)} at every shift: {'met' if results[worst]['accuracy'] >= GATE_TARGET else 'not met'}). "
              f"The mean cosine over all shifts is {cosine:.2f}: "
              + ("the image tokens sit close to SmolLM2's own character embeddings, so much of what smol-vl's "
                 "language half does when it reads a page is what it does with spelled-out text."
                 if cosine >= 0.8 else
                 "the image tokens point towards their characters' embeddings without being copies of them; the "
                 "language half reads them through its LoRA deltas.")]
    return lines


def _shift_lines(card: dict) -> list[str]:
    shift = card.get("shift")
    if not shift:
        return []
    results, shifts = shift["results"], [s for s in shift["shifts"] if s]
    aligned = results["x0"]

    def cell(result: dict) -> str:
        return f"{_pct(result['accuracy'])} [{_pct(result['wilson95'][0])}, {_pct(result['wilson95'][1])}]"

    def halved(axis: str) -> int | None:
        """The smallest shift along `axis` that leaves less than half of the aligned accuracy (None: none)."""
        return next((s for s in shifts if results[f"{axis}{s}"]["accuracy"] < aligned["accuracy"] / 2), None)

    worst = min((results[f"{a}{s}"]["accuracy"], f"{a}{s}") for a in "xy" for s in shifts)
    lines = ["", "## Off the grid: what a shift of a few pixels costs", "",
             f"The same {shift['n']} keys alone on a page (seed {shift['seed']}+, greedy, accuracy with 95 % Wilson "
             "intervals), drawn aligned to the 28-px token grid and then moved right (horizontal) or down "
             "(vertical) by a few pixels, on a page one cell larger.", "",
             "| shift | horizontal | vertical |", "|---|---|---|", f"| 0 px (aligned) | {cell(aligned)} | {cell(aligned)} |"]
    lines += [f"| {s} px | {cell(results[f'x{s}'])} | {cell(results[f'y{s}'])} |" for s in shifts]
    x, y = halved("x"), halved("y")
    if x is not None and y is not None:
        verdict = (f"Less than half of the aligned accuracy is left at a shift of {x} px horizontally and {y} px "
                   "vertically: reading off the grid fails whichever way the glyphs move, which is what the "
                   "unaligned set above measures.")
    elif x is not None or y is not None:
        lost, kept = ("horizontal", "vertical") if x is not None else ("vertical", "horizontal")
        verdict = (f"Less than half of the aligned accuracy is left at a {lost} shift of {x if x is not None else y} "
                   f"px; no {kept} shift up to {shifts[-1]} px costs that much.")
    else:
        verdict = f"No shift up to {shifts[-1]} px leaves less than half of the aligned accuracy."
    lines += ["", verdict + f" The weakest shift reads {_pct(worst[0])} ({worst[1]}; target: at least "
              f"{_pct(SHIFT_TARGET)} at every shift: {'met' if worst[0] >= SHIFT_TARGET else 'not met'})."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="samples per held-out set")
    ap.add_argument("--seed", type=int, default=CARD_SEED)
    ap.add_argument("--weights", default=str(WEIGHTS_DIR))
    ap.add_argument("--write_only", action="store_true", help="rewrite card.md from the stored evaluation")
    ap.add_argument("--shift_n", type=int, default=100, help="keys per shift in the off-the-grid diagnostic")
    ap.add_argument("--shift_only", action="store_true",
                    help="measure only the off-the-grid diagnostic; keep the stored held-out results")
    ap.add_argument("--gate_n", type=int, default=50, help="dense pages per shift in the per-cell gate")
    ap.add_argument("--card", default=str(CARD_MD))
    ap.add_argument("--only", choices=["heldout", "shift", "gate"],
                    help="measure one part and merge it into the stored evaluation (parts can run at once, one "
                         "process per core; the stored file is updated under a lock)")
    ap.add_argument("--sets", help="with --only heldout: a comma-separated subset of the held-out sets")
    args = ap.parse_args(argv)
    if args.write_only and (args.shift_only or args.only):
        ap.error("--write_only evaluates nothing; --shift_only and --only evaluate: give one")
    if args.sets and args.only != "heldout":
        ap.error("--sets selects held-out sets: use it with --only heldout")
    weights = Path(args.weights)
    parts = {"shift"} if args.shift_only else {args.only} if args.only else {"heldout", "shift", "gate"}
    if args.write_only:
        parts = set()
    measured: dict = {}
    if "heldout" in parts:
        measured = evaluate_card(args.n, args.seed, args.sets.split(",") if args.sets else None)
    if "shift" in parts:
        measured["shift"] = evaluate_shift(args.shift_n)
    if "gate" in parts:
        measured["gate"] = evaluate_gate(args.gate_n)
    from filelock import FileLock

    with FileLock(str(weights / (CARD_JSON + ".lock"))):
        card = json.loads((weights / CARD_JSON).read_text()) if (weights / CARD_JSON).is_file() else {}
        current = parts_hash(weights)
        if parts and card and card.get("parts_sha256") != current:
            print(f"[card] the stored evaluation is of other weights ({str(card.get('parts_sha256'))[:12]}, these are "
                  f"{current[:12]}): starting a new one", flush=True)
            card = {}
        card["parts_sha256"] = current
        if "heldout" in parts:
            merged = {} if args.sets is None else dict(card.get("results", {}))
            styles = {} if args.sets is None else dict(card.get("styles", {}))
            merged.update(measured.pop("results"))
            styles.update(measured.pop("styles"))
            card.update(measured, results=merged, styles=styles)
        else:
            card.update(measured)
        if parts:
            atomic_write_json(weights / CARD_JSON, card)
    (weights / (CARD_JSON + ".lock")).unlink(missing_ok=True)
    record = json.loads((weights / RECORD).read_text())
    if any(r.get("first") for r in card.get("results", {}).values()):
        from ocrheads_lib.embedded.smolvl.card_figures import FIGURE_DIR, plot_accuracy, plot_examples

        plot_examples(card, FIGURE_DIR / "examples.png")
        plot_accuracy(card, FIGURE_DIR / "accuracy.png")
    atomic_write_text(args.card, card_markdown(card, record, history=load_history(weights)))
    print(f"wrote {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
