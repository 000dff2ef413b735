"""Train the embedded tiny Qwen2-VL from scratch on a CPU.

    OMP_NUM_THREADS=2 python -m ocrheads_lib.embedded.tiny.train --minutes 60 --out runs/tiny
    python -m ocrheads_lib.embedded.tiny.train --resume --out runs/tiny          # continue an interrupted run
    python -m ocrheads_lib.embedded.tiny.train --export ocrheads_lib/embedded/tiny/weights --out runs/tiny   # ship a checkpoint
    python -m ocrheads_lib.embedded.tiny.train --replay ocrheads_lib/embedded/tiny/weights/training_summary.json --out runs/replay
                                             # re-run the shipped weights' recorded segments, in order

Recipe (see model_card.json / book/model_card.md for what each ingredient does):
- three tasks per step, data generated inline from a seeded rng (:mod:`ocrheads_lib.embedded.tiny.examples`):
  read a key alone on a page, find the key in a paragraph page, find the key in a text context;
- curricula driven by the running train-batch exact match (>= 0.9 over 20 steps advances):
  key pages aligned first, then offsets and two lines; paragraph pages 1 -> 5 lines, then offsets;
  text contexts 60 -> ... -> 520 characters;
- an auxiliary loss on the vision tower only: a linear classifier on every merged visual token (the
  merger output, i.e. the <|image_pad|> embeddings) predicts the character whose cell it covers.
  Attention is never supervised: the heads the book studies emerge on their own;
- AdamW 1e-3 with warm-up, loss on the answer tokens (+ <|im_end|>) only.
"""
from __future__ import annotations

import torch

torch.set_flush_denormal(True)   # first: denormals made early CPU steps 10-25x slower

import argparse
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Qwen2VLForConditionalGeneration

from ocrheads_lib.embedded.checkpoint import load_checkpoint
from ocrheads_lib.embedded.tiny.build import (CHARACTERS, TinyConfig, build_config, build_generation_config,
                                              build_processor, build_tokenizer, user_messages)
from ocrheads_lib.embedded.tiny.examples import Example, key_example, page_example, seeded_examples, text_example
from ocrheads_lib.paths import atomic_folder, atomic_path, atomic_write_json

AUX_CLASSES = [""] + CHARACTERS            # class 0 = blank cell
AUX_INDEX = {c: i for i, c in enumerate(AUX_CLASSES)}
KEY_LAYOUTS = {0: ["aligned"], 1: ["aligned", "offset", "offset", "2lines", "2lines_offset", "2lines_offset"]}
PAGE_STAGES = [(1, 0.0), (2, 0.0), (3, 0.0), (5, 0.0), (5, 0.5)]      # (max lines, share of unaligned pages)
TEXT_STAGES = [60, 100, 160, 240, 320, 420, 520]                     # max context characters
STRADDLE_BAND = (10, 20)   # offsets (mod the 28-px cell) whose glyphs straddle two tokens: the eye's weak spot
EVAL_SEED = 1_000_003                                                # held-out eval sets (train uses --seed)
CELL_CLASSIFIER = "cell_classifier.safetensors"   # the auxiliary cell classifier, in exported folders


@dataclass
class Batches:
    """Examples per task in one optimizer step (0 = the task is skipped)."""

    key: int = 8    # a pass key alone on a page
    page: int = 8   # the pass key inside a paragraph page
    text: int = 8   # the pass key inside a text context
    eye: int = 0    # extra unaligned pages seen by the vision tower only (auxiliary cell loss, no decoder pass)


@dataclass
class TrainConfig:
    """Every knob of one training segment. A segment's record in the training summary is `asdict(config)`
    (plus where and when it started), and `replay_commands` turns it back into command-line options."""

    threads: int = 2                  # torch CPU threads; other counts may change the last bits of float sums
    lr: float = 1e-3                  # AdamW's peak learning rate, reached after the warm-up
    warmup: int = 50                  # linear warm-up steps, counted from the step the optimizer started at
    aux: float = 1.0                  # weight of the vision tower's cell-classifier loss
    advance_at: float = 0.9           # running train-batch exact match (20 steps) that advances a curriculum
    aligned_only: bool = False        # grid-aligned pages only (no pixel offsets), e.g. to polish the book default
    straddle_share: float = 0.0       # share of unaligned key and eye pages with offsets in STRADDLE_BAND
    alnum_share: float = 0.0          # share of pass keys drawn as mixed-case letters and digits (confusable glyphs)
    decay_steps: int = 0              # cosine-decay the lr over this many steps from the segment's start (0 = no)
    decay_floor: float = 0.05         # the decay's final lr, as a fraction of `lr`
    batch: Batches = field(default_factory=Batches)   # examples per task and step

    def __post_init__(self) -> None:
        for name in ("straddle_share", "alnum_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}; pass a share such as 0.5 (--{name})")
        if self.warmup < 1:
            raise ValueError(f"warmup must be at least 1 step, got {self.warmup} (--warmup)")


@dataclass
class Curriculum:
    key_phase: int = 0
    page_stage: int = 0
    text_stage: int = 0
    running: dict = field(default_factory=lambda: {"key": [], "page": [], "text": []})
    window: int = 20
    threshold: float = 0.9

    def update(self, task: str, em: float) -> bool:
        """Record a batch EM; advance that task's curriculum when the running mean passes the threshold."""
        run = self.running[task] = (self.running[task] + [em])[-self.window:]
        if len(run) < self.window or sum(run) / len(run) < self.threshold:
            return False
        if task == "key" and self.key_phase == 0:
            self.key_phase = 1
        elif task == "page" and self.page_stage < len(PAGE_STAGES) - 1:
            self.page_stage += 1
        elif task == "text" and self.text_stage < len(TEXT_STAGES) - 1:
            self.text_stage += 1
        else:
            return False
        self.running[task] = []
        return True

    def describe(self) -> dict:
        lines, off = PAGE_STAGES[self.page_stage]
        return dict(key_layouts=sorted(set(KEY_LAYOUTS[self.key_phase])), page_max_lines=lines,
                    page_unaligned_share=off, text_max_chars=TEXT_STAGES[self.text_stage])


# ------------------------------------------------------------------ batches
def draw_batch(rng: random.Random, task: str, n: int, cur: Curriculum, aligned_only: bool = False,
               straddle_share: float = 0.0, alnum_share: float = 0.0) -> list[Example]:
    """`straddle_share`: the share of unaligned key pages and eye pages whose offsets are drawn from
    STRADDLE_BAND (glyphs straddling two token rows and columns).
    `alnum_share`: the share of pass keys on key, page and eye pages drawn in the "alnum" style (mixed-case
    letters and digits: the confusable glyphs g/9, S/5, B/6, j/1, J/j), on top of the usual mixture.
    At 0 neither option draws an extra random number, so earlier segments replay unchanged."""

    def band() -> tuple[int, int] | None:
        return STRADDLE_BAND if straddle_share > 0 and rng.random() < straddle_share else None

    def style() -> str | None:
        return "alnum" if alnum_share > 0 and rng.random() < alnum_share else None

    def key(layout: str) -> Example:
        return key_example(rng, layout, band=band() if layout.endswith("offset") else None, key_style=style())

    if task == "key":
        layouts = KEY_LAYOUTS[cur.key_phase]
        if aligned_only:
            layouts = [x for x in layouts if not x.endswith("offset")]
        return [key(rng.choice(layouts)) for _ in range(n)]
    if task == "page":
        max_lines, off_share = PAGE_STAGES[cur.page_stage]
        off_share = 0.0 if aligned_only else off_share
        # one page size per batch (no padding waste): the book's 16x6 page, or another size so the
        # reader is not tied to it
        cols, rows = (None, None) if rng.random() < 0.8 else (rng.randint(10, 20), rng.randint(3, 8))
        return [page_example(rng, n_lines=rng.randint(1, min(max_lines, (rows or 6) - 1)),
                             offset=rng.random() < off_share, cols=cols, rows=rows, key_style=style())
                for _ in range(n)]
    if task == "eye":
        # vision-tower-only pages for the auxiliary cell loss: unaligned paragraph pages of random size
        # (up to 19 off-grid characters per line) and unaligned key pages; the decoder never sees them
        cols, rows = rng.randint(8, 20), rng.randint(2, 8)
        layouts = ["2lines", "aligned"] if aligned_only else ["offset", "2lines_offset"]
        return [page_example(rng, n_lines=rng.randint(1, rows - 1), offset=not aligned_only, cols=cols, rows=rows,
                             band=None if aligned_only else band(), key_style=style())
                if rng.random() < 0.5 else key(rng.choice(layouts))
                for _ in range(n)]
    if task == "text":
        # one length band per batch (contexts in [0.85 L, L]), so the batch is not padded to the maximum
        longest = rng.randint(40, TEXT_STAGES[cur.text_stage])
        return [text_example(rng, max(40, int(0.85 * longest)), longest) for _ in range(n)]
    raise ValueError(f"unknown task {task!r}")


def collate(examples: list[Example], processor) -> dict:
    """Chat-templated inputs with the answer appended; labels on the answer + <|im_end|> only."""
    texts = [processor.apply_chat_template(user_messages(len(e.pages), e.prompt), add_generation_prompt=True,
                                           tokenize=False) + e.answer + "<|im_end|>" for e in examples]
    images = [p for e in examples for p in e.pages]
    enc = dict(processor(text=texts, images=images or None, return_tensors="pt", padding=True))
    ids = enc["input_ids"]                                              # (B, T), left-padded
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n = len(e.answer) + 1                                           # char tokens + <|im_end|>
        labels[i, -n:] = ids[i, -n:]
    enc["labels"] = labels
    if images:
        aux = [AUX_INDEX.get(c, 0) for e in examples for page in e.cell_labels for c in page]
        enc["aux_labels"] = torch.tensor(aux)                           # (N_visual_tokens,)
    return enc


def exact_match(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced exact match per sample: every labelled token is the argmax."""
    pred = logits[:, :-1].argmax(-1)                                    # (B, T-1)
    tgt = labels[:, 1:]
    ok = (pred == tgt) | (tgt == -100)
    return ok.all(-1).float()                                           # (B,)


class TinyTrainer:
    """Model + aux head + optimizer + curriculum; one `step()` = one optimizer step over all tasks."""

    def __init__(self, size: TinyConfig, seed: int, config: TrainConfig | None = None):
        config = config or TrainConfig()
        torch.manual_seed(seed)
        self.tokenizer = build_tokenizer()
        self.processor = build_processor(self.tokenizer)
        self.size = size
        self.model = Qwen2VLForConditionalGeneration(build_config(self.tokenizer, size))
        self.model.generation_config = build_generation_config(self.tokenizer)
        self.aux_head = nn.Linear(size.hidden, len(AUX_CLASSES))
        self._merged: list[torch.Tensor] = []
        self.model.model.visual.merger.register_forward_hook(lambda m, i, o: self._merged.append(o))
        self.params = list(self.model.parameters()) + list(self.aux_head.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, betas=(0.9, 0.98), weight_decay=0.01)
        self.config = config
        self.rng = random.Random(seed)
        self.cur = Curriculum(threshold=config.advance_at)
        self.step_count = 0
        self.events: list[dict] = []
        self.decay: tuple[int, int, float] | None = None   # (start step, steps, final lr fraction): cosine
        self.warmup_from = 0        # the step a fresh optimizer started at (--from_weights): warm up from there

    def start_segment(self) -> None:
        """Apply the segment's config to a fresh, resumed or loaded trainer: its curriculum threshold, and a
        cosine decay from this step when `decay_steps` is set (else a decay in progress continues)."""
        self.cur.threshold = self.config.advance_at
        if self.config.decay_steps:
            self.decay = (self.step_count, self.config.decay_steps, self.config.decay_floor)

    def lr_at(self, step: int) -> float:
        """Linear warm-up from step 0 (or from the step a fresh optimizer started at), then constant, or a
        cosine decay over a segment when `decay` is set."""
        lr = self.config.lr * min(1.0, (step - self.warmup_from + 1) / self.config.warmup)
        if self.decay is not None:
            start, steps, floor = self.decay
            done = min(1.0, max(0.0, (step - start) / steps))
            lr *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))
        return lr

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, enc: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        self._merged.clear()
        inputs = {k: v for k, v in enc.items() if k not in ("labels", "aux_labels")}
        out = self.model(**inputs, labels=enc["labels"])
        aux = None
        if "aux_labels" in enc:
            aux = F.cross_entropy(self.cell_logits(), enc["aux_labels"])
        return out.loss, out.logits, aux

    def clear_cells(self) -> None:
        """Forget the merged visual tokens the cell-classifier hook kept (e.g. after a forward pass whose
        cells are not classified)."""
        self._merged.clear()

    def cell_logits(self) -> torch.Tensor:
        """The cell classifier on the merged visual tokens of the last forward pass: (N_visual_tokens, classes)."""
        return self.aux_head(torch.cat(self._merged, 0))

    def eye_loss(self, enc: dict) -> torch.Tensor:
        """The auxiliary cell loss from the vision tower alone (no decoder pass)."""
        self._merged.clear()
        self.model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
        return F.cross_entropy(self.cell_logits(), enc["aux_labels"])

    def step(self) -> dict:
        self.model.train()
        lr = self.lr_at(self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        total = 0.0
        stats: dict = {}
        config = self.config
        for task, n in asdict(config.batch).items():
            if n <= 0:
                continue
            enc = collate(draw_batch(self.rng, task, n, self.cur, config.aligned_only, config.straddle_share,
                                      config.alnum_share),
                          self.processor)
            if task == "eye":
                aux = self.eye_loss(enc)
                total = total + config.aux * aux
                stats["aux_eye"] = round(aux.item(), 4)
                continue
            loss, logits, aux = self.forward(enc)
            total = total + loss + (config.aux * aux if aux is not None else 0.0)
            em = exact_match(logits.detach(), enc["labels"]).mean().item()
            stats[f"loss_{task}"] = round(loss.item(), 4)
            if aux is not None:
                stats[f"aux_{task}"] = round(aux.item(), 4)
            stats[f"em_{task}"] = em
            if self.cur.update(task, em):
                self.events.append(dict(step=self.step_count + 1, task=task, now=self.cur.describe()))
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.step_count += 1
        stats["lr"] = lr
        return stats

    @torch.no_grad()
    def evaluate_teacher_forced(self, sets: dict[str, list[Example]], batch: int = 32) -> dict:
        self.model.eval()
        out = {}
        for name, examples in sets.items():
            ok, aux_ok, aux_n = 0.0, 0, 0
            for i in range(0, len(examples), batch):
                enc = collate(examples[i:i + batch], self.processor)
                _, logits, _ = self.forward(enc)
                ok += exact_match(logits, enc["labels"]).sum().item()
                if "aux_labels" in enc:
                    pred = self.cell_logits().argmax(-1)
                    aux_ok += (pred == enc["aux_labels"]).sum().item()
                    aux_n += len(pred)
            out[name] = round(ok / len(examples), 4)
            if aux_n:
                out[name + "_cell_acc"] = round(aux_ok / aux_n, 4)
        self.model.train()
        return out

    # ---------------------------------------------------------- persistence
    def state(self) -> dict:
        return dict(model=self.model.state_dict(), aux_head=self.aux_head.state_dict(),
                    opt=self.opt.state_dict(), rng=self.rng.getstate(), torch_rng=torch.get_rng_state(),
                    curriculum=asdict(self.cur), step=self.step_count, events=self.events, decay=self.decay,
                    warmup_from=self.warmup_from)

    def load_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.aux_head.load_state_dict(st["aux_head"])
        self.opt.load_state_dict(st["opt"])
        self.rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        self.cur = Curriculum(**st["curriculum"])
        self.step_count = st["step"]
        self.events = st["events"]
        self.warmup_from = st.get("warmup_from", 0)
        decay = st.get("decay")
        # an interrupted decay continues; a finished one does not bind the next segment
        self.decay = tuple(decay) if decay and self.step_count < decay[0] + decay[1] else None

    def export(self, out_dir: str, dtype: torch.dtype = torch.float32) -> None:
        """Write a loadable folder: model.safetensors + config + generation_config + processor files, and
        the auxiliary cell classifier (CELL_CLASSIFIER, 100 KB), so training can continue from the folder."""
        export_model_folder(self.model, self.processor, out_dir, dtype,
                            extra_tensors={CELL_CLASSIFIER: self.aux_head.state_dict()})

    def load_weights(self, folder: str) -> bool:
        """Load an exported folder's model weights, and its cell classifier when it has one (returned)."""
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            raise SystemExit(f"{folder} has no model.safetensors; pass a folder written by --export "
                             "(e.g. ocrheads_lib/embedded/tiny/weights)")
        src = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
        self.model.load_state_dict(src.state_dict())
        classifier = os.path.join(folder, CELL_CLASSIFIER)
        if os.path.exists(classifier):
            self.aux_head.load_state_dict(load_file(classifier))
        return os.path.exists(classifier)

    def fit_cell_classifier(self, steps: int, batch: int = 24, seed: int = 0, lr: float = 3e-3) -> float:
        """Fit the auxiliary cell classifier from scratch on the frozen vision tower (a linear probe on the
        merged tokens), e.g. for weights exported without one. Returns the cell accuracy of the last batch."""
        rng = random.Random(seed)
        torch.manual_seed(seed)
        self.aux_head.reset_parameters()      # from scratch, whatever the folder held
        head_opt = torch.optim.Adam(self.aux_head.parameters(), lr=lr)
        self.model.eval()
        acc = 0.0
        for _ in range(steps):
            enc = collate(draw_batch(rng, "eye", batch, self.cur, straddle_share=self.config.straddle_share,
                                     alnum_share=self.config.alnum_share), self.processor)
            with torch.no_grad():
                self._merged.clear()
                self.model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
            logits = self.cell_logits()
            loss = F.cross_entropy(logits, enc["aux_labels"])
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            head_opt.step()
            acc = (logits.argmax(-1) == enc["aux_labels"]).float().mean().item()
        self.model.train()
        return acc


def curriculum_from(described: dict) -> Curriculum:
    """The curriculum stages that `Curriculum.describe()` wrote (running windows start empty)."""
    try:
        return Curriculum(key_phase=int(len(described["key_layouts"]) > 1),
                          page_stage=PAGE_STAGES.index((described["page_max_lines"], described["page_unaligned_share"])),
                          text_stage=TEXT_STAGES.index(described["text_max_chars"]))
    except (KeyError, ValueError) as err:
        raise ValueError(f"unknown curriculum {described}: {err}") from err


def export_model_folder(model, processor, out_dir: str, dtype: torch.dtype = torch.float32,
                        extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """save_pretrained into a staging folder that replaces `out_dir` once complete (`paths.atomic_folder`:
    readers never see a half-written folder; files 0644, as the package ships them). `extra_tensors`: more
    safetensors files to write into the folder, {file name: state dict}. A `model_card.json` already in
    `out_dir` (owned by others) is kept."""
    src = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    kept = os.path.join(out_dir, "model_card.json")
    with atomic_folder(out_dir) as staging:
        src.save_pretrained(staging)
        processor.save_pretrained(staging)
        for name, tensors in (extra_tensors or {}).items():
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(staging, name))
        if os.path.isfile(kept):
            shutil.copy2(kept, os.path.join(staging, "model_card.json"))


def eval_sets(n: int, seed: int = EVAL_SEED) -> dict[str, list[Example]]:
    """Held-out teacher-forced eval sets (seeds disjoint from training's)."""
    def gen(offset: int, make) -> list[Example]:
        return seeded_examples(n, seed + offset, make)

    return {
        "key_aligned": gen(1, lambda r: key_example(r, "aligned")),
        "key_offset": gen(2, lambda r: key_example(r, "offset")),
        "key_2lines_offset": gen(3, lambda r: key_example(r, "2lines_offset")),
        "page_book": gen(4, lambda r: page_example(r)),
        "page_book_offset": gen(5, lambda r: page_example(r, offset=True)),
        "page_char": gen(6, lambda r: page_example(r, key_style="char")),
        "text_40_150": gen(7, lambda r: text_example(r, 40, 150)),
        "text_256_400": gen(8, lambda r: text_example(r, 256, 400)),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line; a segment's `TrainConfig` comes from it (`train_config`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tiny", help="run folder (checkpoint, log.jsonl, model/)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget, including resumed time")
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0 = no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--aux", type=float, default=1.0, help="weight of the vision cell-classifier loss")
    p.add_argument("--batch_key", type=int, default=8)
    p.add_argument("--batch_page", type=int, default=8)
    p.add_argument("--batch_text", type=int, default=8)
    p.add_argument("--batch_eye", type=int, default=0,
                   help="extra unaligned pages per step seen by the vision tower only (auxiliary cell loss)")
    p.add_argument("--eval_every", type=float, default=240.0, help="seconds between held-out evals")
    p.add_argument("--eval_n", type=int, default=32, help="samples per held-out eval set")
    p.add_argument("--ckpt_every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--stop_at", type=float, default=0.99, help="stop early when every eval set reaches this twice")
    p.add_argument("--size", default="", help="JSON overrides of TinyConfig, e.g. '{\"hidden\":64}'")
    p.add_argument("--advance_at", type=float, default=0.9,
                   help="running train-batch exact match (20 steps) that advances a curriculum")
    p.add_argument("--aligned_only", action="store_true",
                   help="train on grid-aligned pages only (no pixel offsets), e.g. to polish the book default")
    p.add_argument("--straddle_share", type=float, default=0.0,
                   help="share of unaligned key pages and eye pages whose x and y offsets (mod 28 px) are drawn "
                        f"from {STRADDLE_BAND}, where glyphs straddle two tokens")
    p.add_argument("--alnum_share", type=float, default=0.0,
                   help="share of pass keys drawn as mixed-case letters and digits (the confusable glyphs), "
                        "in key, page and vision-only pages; 0 = the usual mixture")
    p.add_argument("--decay_steps", type=int, default=0,
                   help="cosine-decay the lr over this many steps from the segment's start, then stop "
                        "(sets --max_steps when it is 0); --resume without it continues a decay in progress")
    p.add_argument("--decay_floor", type=float, default=0.05, help="final lr as a fraction of --lr")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--from_weights", default="",
                   help="start a new segment from an exported folder (e.g. ocrheads_lib/embedded/tiny/weights) instead of "
                        "a checkpoint: its weights, step count, curriculum and history carry on; the optimizer "
                        "starts fresh and warms up again")
    p.add_argument("--refit_cells", type=int, default=0,
                   help="with --from_weights: first fit the cell classifier alone for this many steps on the "
                        "frozen tower (needed when the folder has no cell_classifier.safetensors)")
    p.add_argument("--export", default="", help="only export OUT/checkpoint.pt to this folder and exit")
    p.add_argument("--replay", default="",
                   help="a training_summary.json: re-run its recorded segments in order into OUT, then exit")
    return p


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The segment's config from the parsed command line."""
    return TrainConfig(threads=args.threads, lr=args.lr, warmup=args.warmup, aux=args.aux,
                       advance_at=args.advance_at, aligned_only=args.aligned_only,
                       straddle_share=args.straddle_share, alnum_share=args.alnum_share,
                       decay_steps=args.decay_steps, decay_floor=args.decay_floor,
                       batch=Batches(key=args.batch_key, page=args.batch_page, text=args.batch_text,
                                     eye=args.batch_eye))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replay:
        for seg_argv in replay_commands(json.load(open(args.replay)), args.out):
            print("REPLAY segment:", " ".join(seg_argv), flush=True)
            main(seg_argv)
        return 0
    if args.from_weights and (args.resume or args.export):
        raise SystemExit("--from_weights starts a segment from an exported folder; do not combine it with "
                         "--resume or --export")
    config = train_config(args)
    torch.set_num_threads(config.threads)
    os.makedirs(args.out, exist_ok=True)
    size = TinyConfig(**json.loads(args.size)) if args.size else TinyConfig()
    trainer = TinyTrainer(size, args.seed, config)
    meta = _open_run(trainer, args)
    if args.export:
        trainer.export(args.export)
        atomic_write_json(os.path.join(args.export, "training_summary.json"), _summary(trainer, meta))
        print(f"exported step {trainer.step_count} to {args.export}", flush=True)
        return 0
    cell_classifier = ""
    if args.from_weights:
        meta, cell_classifier = _start_from_weights(trainer, args)
    trainer.start_segment()
    if trainer.decay is not None:   # a decay (new, or resumed mid-way) ends the run where it ends
        args.max_steps = args.max_steps or trainer.decay[0] + trainer.decay[1]
    meta.setdefault("segments", []).append(dict(start_step=trainer.step_count, **asdict(config),
                                                 **(dict(from_weights=True, cell_classifier=cell_classifier)
                                                    if args.from_weights else {}),
                                                 started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    return _run_segment(trainer, meta, args)


def _open_run(trainer: TinyTrainer, args: argparse.Namespace) -> dict:
    """The run's metadata: new, or (--resume, --export) the checkpoint's, with the trainer's state loaded."""
    meta = dict(history=[], milestones={}, wall_s=0.0, cpu_s=0.0, args=vars(args))
    if not (args.resume or args.export):
        return meta
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if not os.path.exists(ckpt_path):
        raise SystemExit(f"no checkpoint at {ckpt_path}; start without --resume or point --out at the run")
    st = load_checkpoint(ckpt_path)
    trainer.load_state(st)
    meta = st["meta"]
    if not args.export:     # an export keeps the arguments the weights were trained with
        meta["args"] = vars(args)
    print(f"resumed at step {trainer.step_count}, wall {meta['wall_s']:.0f} s", flush=True)
    return meta


def _run_segment(trainer: TinyTrainer, meta: dict, args: argparse.Namespace) -> int:
    """Train until the time or step budget or the stop criterion; evaluate, checkpoint and export on the way."""
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    sets = eval_sets(args.eval_n)
    log = open(os.path.join(args.out, "log.jsonl"), "a")
    print(f"params {trainer.n_params() / 1e6:.3f} M; size {trainer.size.to_dict()}", flush=True)
    wall0, cpu0 = time.time() - meta["wall_s"], time.process_time() - meta["cpu_s"]
    last_eval, last_ckpt, good_evals = -1e9, time.time(), 0

    def checkpoint() -> None:
        meta["wall_s"], meta["cpu_s"] = time.time() - wall0, time.process_time() - cpu0
        st = trainer.state()
        st["meta"] = meta
        with atomic_path(ckpt_path) as tmp:
            torch.save(st, tmp)

    stop_requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))   # checkpoint, then exit

    while True:
        stats = trainer.step()
        if stop_requested:
            checkpoint()
            print(f"STOPPED by signal at step {trainer.step_count}; resume with --resume", flush=True)
            return 0
        wall, cpu = time.time() - wall0, time.process_time() - cpu0
        for ev in trainer.events:
            if not ev.get("logged"):
                ev["logged"] = True
                ev["wall_s"] = round(wall, 1)
                print("EVENT", json.dumps({k: v for k, v in ev.items() if k != "logged"}), flush=True)
        if trainer.step_count % 10 == 0:
            print(f"step {trainer.step_count} wall {wall:.0f}s cpu {cpu:.0f}s " + " ".join(
                f"{k}={v:.2e}" if k == "lr" else f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in stats.items()), flush=True)
        done = wall >= args.minutes * 60 or (args.max_steps and trainer.step_count >= args.max_steps)
        if wall - last_eval >= args.eval_every or done or trainer.step_count == 1:
            t = time.time()
            res = trainer.evaluate_teacher_forced(sets)
            last_eval = wall
            rec = dict(step=trainer.step_count, wall_s=round(wall, 1), cpu_s=round(cpu, 1),
                       eval_s=round(time.time() - t, 1), curriculum=trainer.cur.describe(), **res)
            meta["history"].append(rec)
            for k, v in res.items():
                for thr in (0.5, 0.9, 0.95):
                    if not k.endswith("cell_acc") and v >= thr and f"{k}@{thr}" not in meta["milestones"]:
                        meta["milestones"][f"{k}@{thr}"] = dict(step=rec["step"], wall_s=rec["wall_s"], cpu_s=rec["cpu_s"])
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print("EVAL", json.dumps(rec), flush=True)
            core = [v for k, v in res.items() if not k.endswith("cell_acc")]
            last_stage = trainer.cur.key_phase == 1 and trainer.cur.page_stage == len(PAGE_STAGES) - 1 \
                and trainer.cur.text_stage == len(TEXT_STAGES) - 1
            good_evals = good_evals + 1 if (last_stage and min(core) >= args.stop_at) else 0
            if good_evals >= 2:
                done = True
        if done or time.time() - last_ckpt >= args.ckpt_every:
            checkpoint()
            last_ckpt = time.time()
        if done:
            break
    trainer.export(os.path.join(args.out, "model"))
    atomic_write_json(os.path.join(args.out, "model", "training_summary.json"), _summary(trainer, meta))
    atomic_write_json(os.path.join(args.out, "summary.json"), _summary(trainer, meta))
    print(f"DONE step {trainer.step_count} wall {meta['wall_s']:.0f}s cpu {meta['cpu_s']:.0f}s", flush=True)
    return 0


def _start_from_weights(trainer: TinyTrainer, args) -> tuple[dict, str]:
    """Load an exported folder into a fresh trainer: weights, cell classifier (loaded or refit), step count,
    curriculum, events and the recorded history. The rng streams are reseeded from (seed, step) and the
    optimizer warms up again from this step. Returns the run metadata and how the classifier was obtained."""
    folder = args.from_weights
    summary_path = os.path.join(folder, "training_summary.json")
    if not os.path.exists(summary_path):
        raise SystemExit(f"{folder} has no training_summary.json; pass a folder written by --export")
    summary = json.load(open(summary_path))
    if summary.get("size") and summary["size"] != trainer.size.to_dict():
        raise SystemExit(f"{folder} holds a model of size {summary['size']}; pass it with --size '<that JSON>'")
    has_classifier = trainer.load_weights(folder)
    trainer.step_count = summary["steps"]
    trainer.cur = curriculum_from(summary["curriculum"])      # its threshold: `start_segment`
    trainer.events = summary.get("events", [])
    for ev in trainer.events:
        ev["logged"] = True
    trainer.warmup_from = trainer.step_count
    stream_seed = args.seed * 1_000_003 + trainer.step_count
    trainer.rng = random.Random(stream_seed)
    torch.manual_seed(stream_seed)
    fit_wall, fit_cpu = time.time(), time.process_time()
    if args.refit_cells > 0:
        acc = trainer.fit_cell_classifier(args.refit_cells, seed=stream_seed)
        how = f"refit {args.refit_cells} steps"
        print(f"cell classifier refit on the frozen tower: {args.refit_cells} steps, last batch cell accuracy "
              f"{acc:.3f}", flush=True)
    elif has_classifier:
        how = "loaded"
    else:
        raise SystemExit(f"{folder} has no {CELL_CLASSIFIER} (weights exported before it was shipped); "
                         "pass --refit_cells 300 to fit one on the frozen tower first")
    meta = dict(history=summary.get("history", []), milestones=summary.get("milestones", {}),
                wall_s=summary.get("wall_s", 0.0) + time.time() - fit_wall,      # the refit counts as training
                cpu_s=summary.get("cpu_s", 0.0) + time.process_time() - fit_cpu, args=vars(args),
                segments=summary.get("segments", []))
    print(f"starting from {folder} at step {trainer.step_count} (fresh optimizer, cell classifier {how})", flush=True)
    return meta, how


def replay_commands(summary: dict, out: str) -> list[list[str]]:
    """The argument lists that re-run a summary's training segments, in order.

    Each segment ends where the next one starts (the last at the summary's final step); the training
    trajectory depends only on the step count (data come from the seeded rng, evaluations use their own
    seeds), so the same segments replay the same curriculum. Different thread counts may change the last
    bits of the floating-point sums, so a replay matches the recipe, not necessarily every bit.
    """
    segments = summary.get("segments") or []
    if not segments or segments[0].get("start_step") != 0:
        raise ValueError("the summary has no segment list starting at step 0; it cannot be replayed "
                         "(segments are recorded by this trainer since the embedded model's first run)")
    last_args = summary.get("args") or {}
    shared = ["--out", out, "--seed", str(last_args.get("seed", 0)), "--minutes", "1e9", "--stop_at", "2",
              "--eval_n", str(last_args.get("eval_n", 32))]
    if summary.get("size"):
        shared += ["--size", json.dumps(summary["size"])]
    commands = []
    for i, seg in enumerate(segments):
        if i and seg.get("from_weights"):   # export the replayed run where this segment started, then go on
            start_folder = os.path.join(out, f"weights_at_step{seg['start_step']}")
            commands.append(["--out", out, "--export", start_folder]
                            + (["--size", json.dumps(summary["size"])] if summary.get("size") else []))
        end = segments[i + 1]["start_step"] if i + 1 < len(segments) else summary["steps"]
        batch = seg.get("batch") or dict(key=8, page=8, text=8)
        # warm-up and aux weight: per segment since they were recorded there, else the last arguments'
        argv = [*shared, "--warmup", str(seg.get("warmup", last_args.get("warmup", 50))),
                "--aux", str(seg.get("aux", last_args.get("aux", 1.0))),
                "--max_steps", str(end), "--threads", str(seg.get("threads", 1)), "--lr", str(seg.get("lr", 1e-3)),
                "--advance_at", str(seg.get("advance_at", 0.9)), "--batch_key", str(batch["key"]),
                "--batch_page", str(batch["page"]), "--batch_text", str(batch["text"]),
                "--batch_eye", str(batch.get("eye", 0))]
        if seg.get("aligned_only"):
            argv.append("--aligned_only")
        if seg.get("straddle_share"):
            argv += ["--straddle_share", str(seg["straddle_share"])]
        if seg.get("alnum_share"):
            argv += ["--alnum_share", str(seg["alnum_share"])]
        if seg.get("decay_steps"):
            argv += ["--decay_steps", str(seg["decay_steps"]), "--decay_floor", str(seg.get("decay_floor", 0.05))]
        if i and seg.get("from_weights"):
            argv += ["--from_weights", start_folder]
            refit = seg.get("cell_classifier", "").removeprefix("refit ").removesuffix(" steps")
            if refit.isdigit():
                argv += ["--refit_cells", refit]
        elif i:
            argv.append("--resume")
        commands.append(argv)
    return commands


def _summary(trainer: TinyTrainer, meta: dict) -> dict:
    return dict(steps=trainer.step_count, wall_s=round(meta["wall_s"], 1), cpu_s=round(meta["cpu_s"], 1),
                params=trainer.n_params(), size=trainer.size.to_dict(), args=meta["args"],
                curriculum=trainer.cur.describe(), events=[{k: v for k, v in e.items() if k != "logged"}
                                                           for e in trainer.events],
                history=meta["history"], milestones=meta["milestones"], segments=meta.get("segments", []))


if __name__ == "__main__":
    sys.exit(main())
