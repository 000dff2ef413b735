"""Held-out accuracy of the embedded model with greedy `generate` (no teacher forcing).

    python -m ocrheads_lib.embedded.tiny.evaluate                       # shipped weights, 1,000 samples per set
    python -m ocrheads_lib.embedded.tiny.evaluate --model runs/tiny/model --n 100 --no-card

Sets (fresh seeds, never used in training — training draws from `--seed` 0 and the in-training evals
from 1_000_003+):
  (a) ``a_key_*``    a pass key alone on a page: aligned, unaligned (pixel offsets), two lines unaligned;
  (b) ``b_text_256`` text pass-key retrieval, contexts of 256-400 characters (= tokens: the tokenizer is
                     character-level), so every context is >= 256 tokens;
  (c) ``c_page_*``   the pass key inside a rendered paragraph page at the book's grid default (16x6 cells,
                     5 lines of haystack, aligned), unaligned, and with single-character keys.
Results go into `ocrheads_lib/embedded/tiny/model_card.json` (with the training summary and curves) unless
`--no-card`; the curves figure into book/figures/tiny/.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch

from ocrheads_lib.embedded.tiny import MODEL_CARD, WEIGHTS_DIR
from ocrheads_lib.embedded.tiny.build import user_messages
from ocrheads_lib.embedded.tiny.examples import Example, key_example, page_example, text_example
from ocrheads_lib.metrics import wilson_interval

HELDOUT_SEED = 2_000_003
# Longest answers: three short words, 15 characters = 15 tokens, + <|im_end|>. (Until 2026-11-24 this was
# 12, which cut 12-15-character word answers short and counted them wrong.)
MAX_NEW_TOKENS = 24
TARGETS = {"a_key_aligned": 0.98, "a_key_unaligned": 0.98, "b_text_256": 0.95, "c_page_book": 0.90,
           "c_book_passkey_grid": 0.90, "b_book_passkey_text_320": 0.95}


@dataclass
class SetResult:
    name: str
    n: int
    correct: int
    failures: list[dict]            # first few wrong answers: gold, predicted, meta
    min_tokens: int                 # prompt length range (tokens) of the set
    max_tokens: int
    by_style: dict[str, list[int]] = field(default_factory=dict)   # key style -> [correct, n]

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


# Samples per held-out set on the card: at 1,000 the 95 % interval is about 1 point wide near 98 %, so a
# target like 98 % is judged to about a point (with 200 it was 5 points wide, one page = half a point).
HELDOUT_N = 1000


def heldout_sets(n: int, seed: int = HELDOUT_SEED) -> dict[str, list[Example]]:
    def gen(offset: int, fn) -> list[Example]:
        rng = random.Random(seed + offset)
        return [fn(rng) for _ in range(n)]

    return {
        "a_key_aligned": gen(1, lambda r: key_example(r, "aligned")),
        "a_key_unaligned": gen(2, lambda r: key_example(r, "offset")),
        "a_key_2lines_unaligned": gen(3, lambda r: key_example(r, "2lines_offset")),
        "b_text_256": gen(4, lambda r: text_example(r, 256, 400)),
        "c_page_book": gen(5, lambda r: page_example(r)),
        "c_page_unaligned": gen(6, lambda r: page_example(r, offset=True)),
        "c_page_char": gen(7, lambda r: page_example(r, key_style="char")),
    }


def book_sets(n: int, seed: int = HELDOUT_SEED) -> tuple[dict[str, list[Example]], dict[str, str]]:
    """The same questions built by the book's own generators (ocrheads_lib.data), i.e. exactly what the
    chapters score. Returns (sets, skipped: name -> reason) so a missing generator is reported, not hidden."""
    sets: dict[str, list[Example]] = {}
    skipped: dict[str, str] = {}
    try:
        from ocrheads_lib.data import case_study_images, passkey_images, passkey_text
    except ImportError as error:   # the data package is optional for this module
        return sets, {"book_*": f"ocrheads_lib.data not importable: {error}"}

    def from_images(samples) -> list[Example]:
        return [Example("page", list(s.pages), s.question, s.answer, meta=dict(id=s.id)) for s in samples]

    builders = {
        "c_book_passkey_grid": lambda: from_images(passkey_images(n, seed=seed)),
        "c_book_passkey_grid_unaligned": lambda: from_images(passkey_images(n, seed=seed + 1, grid_offset="random")),
        "c_book_passkey_grid_varied_filler": lambda: from_images(passkey_images(n, seed=seed + 2, filler="varied")),
        "c_book_case_study_chars": lambda: from_images(
            case_study_images(n_per_char=max(1, -(-n // 36)), seed=seed + 3)[:n]),
        "b_book_passkey_text_320": lambda: [Example("text", [], s.prompt, s.answer, meta=dict(id=s.id))
                                            for s in passkey_text(n, seed=seed + 4, context_chars=320)],
    }
    for name, build in builders.items():
        try:
            sets[name] = build()
        except (TypeError, ValueError, RuntimeError) as error:   # generator API changed: say so
            skipped[name] = f"{type(error).__name__}: {error}"
    return sets, skipped


def load(model_dir: str = WEIGHTS_DIR):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"no model in {model_dir}; train one with `python -m ocrheads_lib.embedded.tiny.train` "
                                "and export it with `--export`")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, processor


@torch.no_grad()
def generate_answers(model, processor, examples: list[Example], batch: int = 16,
                     max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], list[int]]:
    """Greedy answers (special tokens stripped, whitespace-trimmed) and prompt lengths in tokens."""
    answers, lengths = [], []
    tok = processor.tokenizer
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        texts = [processor.apply_chat_template(user_messages(len(e.pages), e.prompt), add_generation_prompt=True,
                                               tokenize=False) for e in chunk]
        images = [p for e in chunk for p in e.pages] or None
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)   # (B, T + new)
        new = out[:, enc["input_ids"].shape[1]:]
        answers += [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
        lengths += enc["attention_mask"].sum(-1).tolist()
    return answers, lengths


def evaluate(model_dir: str = WEIGHTS_DIR, n: int = HELDOUT_N, seed: int = HELDOUT_SEED,
             sets: list[str] | None = None) -> dict[str, SetResult]:
    model, processor = load(model_dir)
    out = {}
    all_sets = heldout_sets(n, seed)
    extra, skipped = book_sets(n, seed)
    all_sets.update(extra)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    for name, examples in all_sets.items():
        if sets and name not in sets:
            continue
        preds, lengths = generate_answers(model, processor, examples)
        wrong = [dict(gold=e.answer, pred=p, **{k: v for k, v in e.meta.items()})
                 for e, p in zip(examples, preds) if p != e.answer]
        by_style: dict[str, list[int]] = {}
        for e, p in zip(examples, preds):
            if "style" not in e.meta:     # the book's own samples do not record the kind of key
                continue
            tally = by_style.setdefault(e.meta["style"], [0, 0])
            tally[0] += int(p == e.answer)
            tally[1] += 1
        out[name] = SetResult(name, len(examples), len(examples) - len(wrong), wrong[:10],
                              min(lengths), max(lengths), dict(sorted(by_style.items())))
    return out


# ------------------------------------------------------------------ model card
INGREDIENTS = [
    "real Qwen2VLForConditionalGeneration, random init, trained from scratch (fp32, CPU)",
    "character-level tokenizer (one token per character) with the Qwen2-VL special tokens",
    "text on the 28-px token grid: DejaVu Sans Mono Bold 26 px, one character centred per 28x28 cell "
    "(ocrheads_lib.data.grid); aligned pages first, then pixel offsets of the whole block and two lines",
    "auxiliary loss on the vision tower only: a linear classifier on each merged visual token (merger output) "
    "predicts the character in its cell (or blank), weight 1.0; it ships beside the model "
    "(`cell_classifier.safetensors`, for diagnose and further training) and plays no part in answering",
    "in the last eight segments, extra pages for that loss alone (`--batch_eye`): unaligned paragraph and key "
    "pages through the vision tower only, no decoder pass, because the unaligned reading errors were the "
    "tower's (character-cell accuracy 85 % on unaligned key pages vs 100 % aligned at step 7133)",
    "in the last five segments, half of the unaligned key pages and of those vision-only pages had both offsets drawn "
    "from 10-19 px mod 28 (`--straddle_share 0.5`), where glyphs straddle two tokens and the tower read worst",
    "in the last three segments, 30 %, 40 % and then 50 % of the pass keys on key, page and vision-only pages "
    "were drawn as 2-6 mixed-case letters and digits (`--alnum_share 0.3`, `0.4`, `0.5`; 9 % in the usual mixture), because at step "
    "21933 nearly every unaligned key failure was such a key (tower cell accuracy 84.8 % on them, 98-100 % on the "
    "other kinds)",
    "attention is never supervised",
    "three tasks per step, data generated inline from seed 0: key alone on a page (also 1-3 short words, "
    "'What is written in the image?'), pass key in a paragraph page (16x6 grid page, 1-5 lines), "
    "pass key in a text context; 8 + 8 + 8 examples per step (the segments table gives each segment's batch)",
    "curricula advanced by the running train-batch exact match over 20 steps (>= 0.9; lowered to 0.8, 0.7 and "
    "0.85 in later segments, see the segments table): key layouts aligned -> mixed (1/6 aligned, 1/3 offset, "
    "1/6 two lines, 1/3 two lines offset); page lines 1 -> 2 -> 3 -> 5 -> 5 with 50 % unaligned; text context "
    "60 -> 100 -> 160 -> 240 -> 320 -> 420 -> 520 characters",
    "haystacks: the classic repetitive filler ('The grass is green. ...') or random sentences from a "
    "100-word list; needle 'The pass key is K.' (+ ' Remember it.' 60 %)",
    "keys: 3-6 random digits, the paper's U[1, 10000], single characters 0-9a-z, 2-6 letters/digits",
    "AdamW, betas (0.9, 0.98), weight decay 0.01, clip 1.0; lr 1e-3 after a 50-step warm-up, constant in the "
    "first segments, lower in later ones, and a cosine decay to 5 % in each of the last nine (see the segments "
    "table); loss on the answer tokens + <|im_end|> only; torch.set_flush_denormal(True)",
]
KNOWN_LIMITS = [
    "reads only the grid renderer's font (DejaVu Sans Mono Bold 26 px on 28 px cells); other fonts, sizes "
    "or proportional text are out of distribution",
    "one page per question in training; multi-page inputs are untested",
    "text contexts up to ~520 characters in training; longer contexts are out of distribution",
    "char-level vocabulary of printable ASCII only; no instruction following beyond the trained questions",
    "with the grid-aligned layout one visual token holds exactly one character, the easiest case for OCR heads",
    "unaligned keys still fail most on glyphs that straddle two tokens: on 400 unaligned key pages (step 29733, "
    "python -m ocrheads_lib.embedded.tiny.diagnose ocrheads_lib/embedded/tiny/weights --n 400) the vision tower's character-cell "
    "accuracy is 98.1 % when the horizontal offset mod 28 is 12-15 px and 98.3 % for vertical offsets of 20-23 px, "
    "against 99.1-100 % elsewhere (it was 88 % at 12-15 px before the straddle-oversampling segments); mixed-case "
    "alphanumeric keys are still the weakest kind (cell accuracy 96.8 %, 23 of 28 pages exact teacher-forced, "
    "against 98.0-99.7 % for digits, numbers, single characters and words; it was 84.8 % and 17/28 before the three "
    "`--alnum_share` segments): the tower confuses 1/j, 1/l, i/1, v/y and 9/g; about 1 in 10 unaligned paragraph "
    "pages (up to 75 off-grid characters) is answered wrongly",
    "one shared copy circuit may serve both image and text retrieval (see the head chapters)",
]


# A measured from-scratch run inside the 60-minute budget (2026-11-24, default recipe, seed 0):
# `python -m ocrheads_lib.embedded.tiny.train --out runs/tiny_60 --minutes 55 --threads 2`, then
# `python -m ocrheads_lib.embedded.tiny.evaluate --model runs/tiny_60/model --no-card` (200 held-out samples per set).
SCRATCH_60_PROBE = (
    "A from-scratch run of the default recipe stopped at 55 min (3,574 steps, 6,493 CPU-s) was still on its first "
    "curriculum stages (aligned keys only, 60-character texts) and scored, greedy and held-out: aligned keys 77.5 %, "
    "unaligned keys 2.5 %, 256-token text retrieval 10.0 % (the book's 320-character `passkey_text`: 14.0 %), "
    "paragraph pages 90.0 % (the book's `passkey_images`: 98.0 %)."
)


# Why the 60-minute target is missed, from measurements on this machine (2 cores, 2026-11-29/30). The budget
# run's own numbers come from its budget.json (`scratch_summary`), the width cost from the benchmark; the
# character-cell and error figures quoted here are from
# `python -m ocrheads_lib.embedded.tiny.diagnose runs/budget60/model --n 400` (and on the shipped weights) and from the
# budget model's greedy answers on the first 200 held-out keys of each key set.
SCRATCH_60_WHY = [
    "Most of the shipped run's time went into the vision tower's reading of unaligned glyphs: unaligned keys "
    "reached 90 % after 360 min and 95 % after 684 min, aligned keys 95 % after 148 min (milestones table). "
    "Pretraining the tower alone on dense random-character pages removes that cost: after 13.4 min (2,400 "
    "steps) it reads 99.9 % of the character cells on 400 unaligned key pages (one error in 1,834 characters; "
    "100 % on mixed-case keys), against 99.5 % (96.8 % on mixed-case keys) for the shipped tower after 16 hours.",
    "The decoder takes the rest of the hour. With prose-only reading pages and a constant lr (2,400 joint "
    "steps, 59.5 min in all) it met (b) but read keys at 77.5 % aligned and 65.5 % unaligned, and paragraph "
    "pages at 28.5 % (greedy, 200 held-out each): teacher-forced, only 261 of those 400 key pages were exact "
    "although the tower read their characters at 99.9 %. Most key failures dropped one character (24 of 45 "
    "aligned, 36 of 69 unaligned), and keys holding a repeated character failed more often (aligned 35 % "
    "against 13 %): the copy over image tokens lost its place. Making half of the reading pages random strings "
    "with adjacent repeats, and decaying the lr, fixed most of it (the table below): keys 95.5 % / 94.0 %, pages "
    "80.5 %, text 100 %; but it took 64.8 min (the 2,400 joint steps grow to ~1.6 s once pages reach 5 lines) "
    "and still misses (a) and (c).",
    "The default recipe spends the same hour differently: at 55 min it met (c) but not (a) or (b) (above). No "
    "recipe we measured met (a), (b) and (c) within 60 minutes; the shipped weights needed ~30,000 steps, and "
    "the width makes each step dearer (width table above).",
    "Tried in exploratory runs and not kept (2026-11-29): a cell classifier tied to the decoder's input "
    "embeddings (the tower reached 97.8 % and keys stayed at 0 % after 10 min of joint training); lr 3e-3 for "
    "the decoder (text retrieval did not learn in 10 min); narrower decoders (hidden 128, 8 heads of dim 16 or 4 of "
    "dim 32) take about half the time per text-only step but did not learn text retrieval faster in wall time.",
]


def scratch_summary(budget: dict) -> dict:
    """The model card's record of a `python -m ocrheads_lib.embedded.tiny.budget` run (from its budget.json)."""
    history = budget.get("history") or []
    eye = next((h for h in history if h.get("phase") == "eye"), {})
    last = history[-1] if history else {}
    return dict(command="OMP_NUM_THREADS=2 python -m ocrheads_lib.embedded.tiny.budget --out runs/budget60",
                plan=budget.get("plan"), threads=budget.get("threads"), wall_s=budget.get("wall_s"),
                cpu_s=budget.get("cpu_s"), total_wall_min=budget.get("total_wall_min"),
                eye_cell_acc={k[: -len("_cell_acc")]: v for k, v in eye.items() if k.endswith("_cell_acc")},
                teacher_forced_final={k: v for k, v in last.items() if isinstance(v, float) and not k.endswith("_cell_acc")
                                      and k not in ("wall_s", "cpu_s")},
                curve=[{k: v for k, v in h.items() if k != "curriculum" and not k.endswith("_cell_acc")} for h in history],
                curriculum_final=last.get("curriculum"), heldout=budget.get("heldout"))


def scratch_lines(scratch: dict, shipped: dict[str, float] | None = None) -> list[str]:
    """Markdown for the budget run: what 60 minutes bought, set by set, against the targets and (`shipped`,
    accuracy by set) the shipped weights."""
    shipped = shipped or {}
    plan, held = scratch.get("plan") or {}, scratch.get("heldout") or {}
    wall = scratch.get("wall_s") or {}
    lines = [f"The budget recipe trains from scratch in two phases (`{scratch['command']}`, "
             f"module `ocrheads_lib.embedded.tiny.budget`): {plan.get('eye_steps')} steps of the vision tower alone "
             f"({wall.get('eye', 0) / 60:.1f} min), then {plan.get('joint_steps')} steps of the decoder with the "
             f"tower frozen ({wall.get('joint', 0) / 60:.1f} min): {scratch.get('total_wall_min')} min of training on "
             f"{scratch.get('threads')} threads, evaluations excluded.", ""]
    if scratch.get("eye_cell_acc"):
        cells = ", ".join(f"{k} {100 * v:.1f} %" for k, v in scratch["eye_cell_acc"].items())
        lines += [f"Tower cell accuracy when the decoder starts (every cell of the in-training eval pages, blanks "
                  f"included, {plan.get('eval_n')} pages per set): {cells}.", ""]
    if held:
        lines += ["| held-out set (greedy) | exact match | n | target | shipped weights |", "|---|---|---|---|---|"]
        for name, r in held.items():
            target = TARGETS.get(name)
            verdict = "" if target is None else f"{target:.2f} " + ("met" if r["accuracy"] >= target else "**missed**")
            ref = f"{shipped[name]:.3f}" if name in shipped else ""
            lines.append(f"| {name} | {r['accuracy']:.3f} | {r['n']} | {verdict} | {ref} |")
        lines.append("")
    return lines


# The same unaligned-key sets on earlier weights (2026-11-25, `--no-card --n 1000 --sets ...`), for comparison.
LARGER_KEY_CHECK = (
    "On the same 1,000 samples the earlier weights read 97.0 % of unaligned keys and 97.0 % of two unaligned lines "
    "(step 27333) and 96.1 % and 95.8 % (step 24733); until step 27333 the card used the first 200 of each set."
)


def write_model_card(results: dict[str, SetResult], model_dir: str, card_path: str = MODEL_CARD,
                     figure_dir: str | None = None, eval_wall_s: float = 0.0) -> dict:
    summary_path = os.path.join(model_dir, "training_summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = os.path.join(model_dir, "model.safetensors")
    text_cfg = config.get("text_config", {})
    card = dict(
        name="ocrheads tiny Qwen2-VL",
        architecture="Qwen2VLForConditionalGeneration",
        config=dict(size=summary.get("size"), text_layers=text_cfg.get("num_hidden_layers"),
                    heads_per_layer=text_cfg.get("num_attention_heads"), kv_heads=text_cfg.get("num_key_value_heads"),
                    head_dim=text_cfg.get("head_dim"), hidden=text_cfg.get("hidden_size"),
                    total_heads=(text_cfg.get("num_hidden_layers") or 0) * (text_cfg.get("num_attention_heads") or 0),
                    vocab_size=text_cfg.get("vocab_size"), vision=config.get("vision_config", {}).get("depth")),
        parameters=summary.get("params"),
        weights_bytes=os.path.getsize(weights) if os.path.exists(weights) else None,
        training=dict(command="OMP_NUM_THREADS=2 python -m ocrheads_lib.embedded.tiny.train --replay "
                              "ocrheads_lib/embedded/tiny/weights/training_summary.json --out runs/tiny",
                      export="python -m ocrheads_lib.embedded.tiny.train --out runs/tiny --export ocrheads_lib/embedded/tiny/weights",
                      seed=(summary.get("args") or {}).get("seed", 0), steps=summary.get("steps"),
                      wall_s=summary.get("wall_s"), cpu_s=summary.get("cpu_s"), args=summary.get("args"),
                      curriculum_final=summary.get("curriculum"), curriculum_events=summary.get("events"),
                      segments=summary.get("segments"),
                      milestones=summary.get("milestones")),
        data=dict(generator="ocrheads_lib.embedded.tiny.examples (grid renderer ocrheads_lib.data.grid)",
                  train_seed=(summary.get("args") or {}).get("seed", 0), in_training_eval_seed=1_000_003,
                  heldout_seed=HELDOUT_SEED),
        curves=summary.get("history", []),
        heldout=dict(decoding=f"greedy generate, max_new_tokens {MAX_NEW_TOKENS}, exact match after strip()",
                     eval_wall_s=round(eval_wall_s, 1),
                     sets={k: dict(accuracy=round(r.accuracy, 4), n=r.n, prompt_tokens=[r.min_tokens, r.max_tokens],
                                   target=TARGETS.get(k), by_style=r.by_style, failures=r.failures)
                               for k, r in results.items()}),
        ingredients=INGREDIENTS,
        known_limits=KNOWN_LIMITS,
    )
    tmp = card_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(card, f, indent=1)
    os.replace(tmp, card_path)
    if figure_dir and card["curves"]:
        plot_curves(card["curves"], os.path.join(figure_dir, "curves.png"), summary.get("segments") or [])
    return card


def plot_curves(history: list[dict], path: str, segments: list[dict] = ()) -> None:
    """Teacher-forced held-out exact match vs wall time; dotted lines where a training segment started."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in history[0] if k not in ("step", "wall_s", "cpu_s", "eval_s", "curriculum")
             and not k.endswith("cell_acc")]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    minutes = [h["wall_s"] / 60 for h in history]
    for name in names:
        ax.plot(minutes, [h.get(name, float("nan")) for h in history], label=name, lw=1.4)
    for seg in segments[1:]:   # first eval at or after the segment's first step
        at = next((h["wall_s"] / 60 for h in history if h["step"] > seg["start_step"]), None)
        if at is not None:
            ax.axvline(at, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("wall time (min, 2 shared CPU cores); dotted: a new training segment")
    ax.set_ylabel("exact match (teacher-forced)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("tiny Qwen2-VL: held-out exact match during training", fontsize=9)
    _save_figure(fig, path)


def _save_figure(fig, path: str) -> None:
    """Lay out, write atomically (temporary file + rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def plot_examples(model, processor, path: str, seed: int = HELDOUT_SEED + 100) -> list[dict]:
    """A few held-out pages with the model's greedy answers (a small PNG for the model card)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(seed)
    examples = [key_example(rng, "aligned"), key_example(rng, "offset"), key_example(rng, "2lines_offset"),
                page_example(rng), page_example(rng, offset=True), page_example(rng, key_style="char")]
    titles = ["key, aligned", "key, unaligned", "key, 2 lines, unaligned", "paragraph page (book default)",
              "paragraph page, unaligned", "paragraph page, 1-character key"]
    preds, _ = generate_answers(model, processor, examples)
    fig, axes = plt.subplots(2, 3, figsize=(9, 3.4), dpi=80)
    shown = []
    for ax, e, pred, title in zip(axes.flat, examples, preds, titles):
        ax.imshow(e.pages[0])
        ax.set_xticks([])
        ax.set_yticks([])
        mark = "ok" if pred == e.answer else "WRONG"
        ax.set_title(f"{title}\nQ: {e.prompt}  model: {pred!r} ({mark})", fontsize=7)
        shown.append(dict(kind=title, question=e.prompt, gold=e.answer, model=pred))
    _save_figure(fig, path)
    return shown


def _milestone_rows(card: dict) -> list[str]:
    miles = (card.get("training") or {}).get("milestones") or {}
    names = sorted({k.split("@")[0] for k in miles})
    rows = ["| in-training eval set | 50 % | 90 % | 95 % |", "|---|---|---|---|"]
    for name in names:
        cells = []
        for thr in ("0.5", "0.9", "0.95"):
            m = miles.get(f"{name}@{thr}")
            cells.append(f"step {m['step']} / {m['wall_s'] / 60:.1f} min / {m['cpu_s']:.0f} CPU-s" if m else "not reached")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def status_lines(card: dict) -> list[str]:
    """Bullets saying, from the measured numbers, which of the issue's targets are met."""
    held, tr = card["heldout"]["sets"], card["training"]

    def acc(name: str) -> str:
        r = held.get(name)
        return "not measured" if r is None else f"{100 * r['accuracy']:.1f} %"

    def verdict(name: str) -> str:
        r = held.get(name)
        if r is None or r.get("target") is None:
            return ""
        return " (met)" if r["accuracy"] >= r["target"] else f" (**missed**, target {100 * r['target']:.0f} %)"

    minutes = (tr.get("wall_s") or 0) / 60
    return [
        f"- (a) a key alone on a page: aligned {acc('a_key_aligned')}{verdict('a_key_aligned')}, unaligned "
        f"{acc('a_key_unaligned')}{verdict('a_key_unaligned')}, two unaligned lines {acc('a_key_2lines_unaligned')}. "
        + LARGER_KEY_CHECK,
        f"- (b) text retrieval, >= 256-token contexts: {acc('b_text_256')}{verdict('b_text_256')}; the book's own "
        f"`passkey_text` (320 characters): {acc('b_book_passkey_text_320')}{verdict('b_book_passkey_text_320')}.",
        f"- (c) the pass key in a paragraph page at the book's grid default: {acc('c_page_book')}{verdict('c_page_book')}; "
        f"built by `passkey_images`: {acc('c_book_passkey_grid')}{verdict('c_book_passkey_grid')}; unaligned pages "
        f"{acc('c_page_unaligned')}; case-study characters {acc('c_book_case_study_chars')}.",
        f"- Training time: {minutes:.0f} min of wall time over {len(tr.get('segments') or [])} segments "
        + ("(met: <= 60 min)." if minutes <= 60 else "(**missed** the 60-minute target: the recipe needs more steps "
           "than 60 minutes on two CPU cores give this 32-head model; see the width cost above). "
           + SCRATCH_60_PROBE + _scratch_status(card.get("scratch_60"))),
        "- Unaligned pages are harder for this reader: with the grid-aligned layout one visual token holds exactly "
        "one character. Use `grid_offset=\"aligned\"` (the default) for the OCR-head chapters unless the "
        "unaligned accuracy above is high enough for your question.",
    ]


def _scratch_status(scratch: dict | None) -> str:
    if not scratch or not scratch.get("heldout"):
        return ""
    held = scratch["heldout"]
    pick = [(name, label) for name, label in (("a_key_aligned", "aligned keys"), ("a_key_unaligned", "unaligned keys"),
                                              ("b_text_256", "256-token text retrieval"),
                                              ("c_page_book", "paragraph pages")) if name in held]
    scores = ", ".join(f"{label} {100 * held[name]['accuracy']:.1f} %" for name, label in pick)
    return (f" A two-phase recipe that pretrains the vision tower first (`python -m ocrheads_lib.embedded.tiny.budget`) "
            f"reaches in {scratch.get('total_wall_min')} min: {scores} (greedy, held-out; see \"The 60-minute "
            "target\" below).")


def _style_rows(held: dict) -> list[str]:
    """Held-out exact match of the key-alone sets split by the kind of key (cards before it have no split)."""
    names = [name for name, r in held.items() if name.startswith("a_") and r.get("by_style")]
    if not names:
        return []
    styles = sorted({style for name in names for style in held[name]["by_style"]})
    lines = ["Key-alone sets by kind of key (correct/n): `digits` 3-6 digits, `paper` U[1, 10000], `char` one "
             "character, `alnum` 2-6 mixed-case letters and digits, `words` 1-3 short words.", "",
             "| set | " + " | ".join(styles) + " |", "|---" * (len(styles) + 1) + "|"]
    for name in names:
        cells = [("{}/{}".format(*held[name]["by_style"][style]) if style in held[name]["by_style"] else "")
                 for style in styles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


CARD_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_template.md")


def heldout_table(held: dict) -> str:
    """Markdown table of the held-out sets: exact match with its 95 % Wilson interval, n, prompt tokens, target."""
    rows = ["| set | exact match | 95 % interval | n | prompt tokens | target |", "|---|---:|---:|---:|---:|---|"]
    for name, r in held.items():
        lo, hi = wilson_interval(round(r["accuracy"] * r["n"]), r["n"])
        target = "" if r.get("target") is None else \
            f"{r['target']:.2f} ({'met' if r['accuracy'] >= r['target'] else 'missed'})"
        dash = "\u00a0–\u00a0"           # no-break spaces: a range never wraps inside a narrow column
        rows.append(f"| `{name}` | {r['accuracy']:.3f} | {lo:.3f}{dash}{hi:.3f} | {r['n']} "
                    f"| {r['prompt_tokens'][0]}{dash}{r['prompt_tokens'][1]} | {target} |")
    return "\n".join(rows)


def card_values(card: dict) -> dict[str, str]:
    """The numbers and data-derived blocks the page template (`model_card_template.md`) shows."""
    cfg, tr, held = card["config"], card["training"], card["heldout"]["sets"]
    scratch = card.get("scratch_60") or {}
    sheld = scratch.get("heldout") or {}
    picks = [(name, label) for name, label in (("a_key_aligned", "aligned keys"), ("b_text_256", "text retrieval"),
                                               ("c_page_book", "paragraph pages")) if name in sheld]
    budget = ("The fastest from-scratch recipe we found for a 60-minute budget, `python -m ocrheads_lib.embedded.tiny.budget`, "
              f"reaches in {scratch.get('total_wall_min')} min: "
              + ", ".join(f"{label} {100 * sheld[name]['accuracy']:.1f} %" for name, label in picks)
              + " (greedy, held-out; its full record is in `model_card.json`).") if picks else ""
    return dict(architecture=card["architecture"], layers=cfg["text_layers"], heads_per_layer=cfg["heads_per_layer"],
                head_dim=cfg["head_dim"], kv_heads=cfg["kv_heads"], hidden=cfg["hidden"],
                total_heads=cfg["total_heads"], vision_depth=cfg["vision"], vocab_size=cfg["vocab_size"],
                parameters_m=f"{card['parameters'] / 1e6:.2f}", weights_mib=f"{card['weights_bytes'] / 2**20:.1f}",
                steps=tr["steps"], n_segments=len(tr.get("segments") or []),
                wall_hours=f"{tr['wall_s'] / 3600:.1f}", cpu_hours=f"{tr['cpu_s'] / 3600:.1f}",
                n_per_set=max(r["n"] for r in held.values()), heldout_table=heldout_table(held),
                limits="\n".join(f"- {x}" for x in card["known_limits"]),
                train_command=tr["command"], export_command=tr["export"], budget_line=budget)


def write_markdown(card: dict, path: str = "book/model_card.md", template: str = CARD_TEMPLATE) -> None:
    """The model card page: `template` (markdown with $placeholders) filled from the JSON card."""
    from string import Template

    text = Template(open(template, encoding="utf-8").read()).substitute(card_values(card))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    torch.set_flush_denormal(True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=WEIGHTS_DIR)
    p.add_argument("--n", type=int, default=HELDOUT_N, help="samples per set (the first n of each set's seeded stream)")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--sets", default="", help="comma-separated subset of set names")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-card", action="store_true")
    p.add_argument("--figures", default="book/figures/tiny")
    p.add_argument("--markdown", default="book/model_card.md")
    p.add_argument("--card", default=MODEL_CARD, help="where to write the JSON model card")
    p.add_argument("--width_cost", default="benchmarks/results/tiny_width_cost.json",
                   help="CPU-s per step by decoder width (python benchmarks/tiny_width_cost.py); "
                        "the card keeps its previous table when the file is absent")
    p.add_argument("--scratch_run", default="runs/budget60/budget.json",
                   help="budget.json of `python -m ocrheads_lib.embedded.tiny.budget` (the 60-minute recipe); "
                        "the card keeps its previous record when the file is absent")
    p.add_argument("--render_only", action="store_true",
                   help="no evaluation: re-read the JSON card, add --width_cost/--scratch_run, rewrite the page")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    previous = json.load(open(args.card)) if os.path.exists(args.card) else {}
    if args.render_only:
        if not previous:
            raise SystemExit(f"--render_only needs an existing card at {args.card}; run without it first")
        _write_card_files(_with_measurements(previous, previous, args), args)
        return 0
    t0 = time.time()
    results = evaluate(args.model, args.n, args.seed, [s for s in args.sets.split(",") if s] or None)
    for r in results.values():
        target = TARGETS.get(r.name)
        flag = "" if target is None else (" (target %.2f: %s)" % (target, "met" if r.accuracy >= target else "MISSED"))
        print(f"{r.name:24s} {r.accuracy:.3f}  n={r.n}  prompt tokens {r.min_tokens}-{r.max_tokens}{flag}")
        for f in r.failures[:3]:
            print("    wrong:", f)
    if not args.no_card:
        card = write_model_card(results, args.model, card_path=args.card, figure_dir=args.figures,
                                eval_wall_s=time.time() - t0)
        model, processor = load(args.model)
        card["examples"] = plot_examples(model, processor, os.path.join(args.figures, "examples.png"))
        _write_card_files(_with_measurements(card, previous, args), args)
    return 0


def _with_measurements(card: dict, previous: dict, args) -> dict:
    """Add the width-cost benchmark and the 60-minute run to the card, from their files when present, else
    as the previous card recorded them (so re-evaluating on a fresh clone does not drop them)."""
    if os.path.exists(args.width_cost):
        card["width_cost"] = json.load(open(args.width_cost))
    elif previous.get("width_cost"):
        card["width_cost"] = previous["width_cost"]
    if os.path.exists(args.scratch_run):
        card["scratch_60"] = scratch_summary(json.load(open(args.scratch_run)))
    elif previous.get("scratch_60"):
        card["scratch_60"] = previous["scratch_60"]
    return card


def _write_card_files(card: dict, args) -> None:
    tmp = args.card + ".tmp"
    with open(tmp, "w") as f:
        json.dump(card, f, indent=1)
    os.replace(tmp, args.card)
    write_markdown(card, args.markdown)
    print("model card:", args.card, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
