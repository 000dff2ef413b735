"""What 60 minutes of from-scratch training on two CPU cores buy: the fastest recipe we found, measured.

    OMP_NUM_THREADS=2 python -m ocrheads_lib.embedded.tiny.budget --out runs/budget60      # ~60 min on 2 cores
    python -m ocrheads_lib.embedded.tiny.budget --out runs/budget60 --resume               # after an interruption
    -> runs/budget60/budget.json (plan, phase times, curves, greedy held-out accuracies), runs/budget60/model/

Issue 4 asks for training from scratch in <= 60 min on two CPU cores. The shipped weights took ~16 h
(`train.py`, see the model card), and a 55-minute run of that recipe was still on its first curriculum
stages. This module keeps the two-phase recipe we measured for a 60-minute budget, so that the card's numbers
about it can be re-measured. It comes close but does not meet the image targets within the hour; the card
says by how much and why (the eye is solved in 13 minutes, the decoder takes the rest). Two phases:

1. eye (~13 min): the vision tower and the linear cell classifier alone, no decoder, on dense
   random-character pages (`dense_page_example`, 75 %) and the trainer's vision-only key and paragraph
   pages (25 %, 30 % at straddling offsets, 30 % mixed-case keys); bf16 autocast, lr 3e-3, cosine to 5 %.
   The shipped recipe spent most of its ~16 h teaching the tower to read unaligned glyphs.
2. joint (~46 min): the tower frozen; the decoder learns from 16 key + 8 paragraph + 8 text examples per
   step plus 8 whole-page reading examples (`read_page_example`; half of them random strings with
   adjacent repeats, where the copy slipped most), with a language-model loss of weight 0.5 on the context
   characters of the text task (it speeds up text retrieval); bf16 autocast, lr 1e-3 with a cosine decay.

Attention is never supervised, as in `train.py`. Budgets are in steps, so a run is reproducible from its
seed; `budget.json` records the wall and CPU time the steps took on the machine that ran them.
"""
from __future__ import annotations

import torch

torch.set_flush_denormal(True)   # first: denormals made early CPU steps 10-25x slower

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch.nn.functional as F
from tqdm.auto import tqdm

from ocrheads_lib.embedded.checkpoint import load_checkpoint
from ocrheads_lib.embedded.tiny.build import SPECIAL_TOKENS, TinyConfig
from ocrheads_lib.embedded.tiny.evaluate import evaluate_heldout
from ocrheads_lib.embedded.tiny.examples import Example, dense_page_example, read_page_example
from ocrheads_lib.embedded.tiny.train import (Batches, Curriculum, TinyTrainer, TrainConfig, collate,
                                              draw_batch, eval_sets, exact_match)
from ocrheads_lib.paths import atomic_path, atomic_write_json

CHECKPOINT = "checkpoint.pt"
RESULT = "budget.json"


@dataclass
class BudgetPlan:
    """Everything that decides a budget run (recorded in budget.json)."""

    seed: int = 0
    eye_steps: int = 2400          # ~13 min at 2 threads (0.33 s per step of 32 pages, bf16)
    eye_batch: int = 32
    eye_lr: float = 3e-3
    dense_share: float = 0.75      # share of dense random-character pages among the eye pages
    joint_steps: int = 2400        # ~45 min at 2 threads (~1.1 s per step)
    joint_lr: float = 1e-3
    joint_decay: bool = True       # cosine decay to 5 % over the joint phase (else constant after warm-up)
    batch: dict = field(default_factory=lambda: dict(key=16, page=8, text=8, read=8))
    context_lm: float = 0.5        # weight of the language-model loss on the text task's context characters
    read_random_share: float = 0.5  # share of reading pages with random strings (adjacent repeats)
    warmup: int = 50
    bf16: bool = True
    eval_every: int = 300          # steps between checkpoints (and, in the joint phase, teacher-forced evals)
    eval_n: int = 64
    heldout_n: int = 200           # greedy held-out samples per set at the end (0: skip)
    size: dict = field(default_factory=dict)   # TinyConfig overrides


def _lr(base: float, step: int, steps: int, warmup: int, decay: bool) -> float:
    lr = base * min(1.0, (step + 1) / warmup)
    if decay:
        lr *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, steps))))
    return lr


def _context_mask(enc: dict, labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets that are user-text characters (not special tokens, not the answer, not padding)."""
    target = enc["input_ids"][:, 1:]
    return (target >= len(SPECIAL_TOKENS)) & (labels[:, 1:] == -100) & (enc["attention_mask"][:, 1:] == 1)


class BudgetRun:
    """The two phases on one TinyTrainer (model, processor, cell classifier); resumable at any eval."""

    def __init__(self, plan: BudgetPlan, out: str):
        self.plan, self.out = plan, out
        os.makedirs(out, exist_ok=True)
        # the trainer holds the model, processor and cell classifier; the phases below draw their own batches
        idle = Batches(key=0, page=0, text=0, eye=0)
        self.trainer = TinyTrainer(TinyConfig(**plan.size), plan.seed,
                                   TrainConfig(lr=plan.eye_lr, warmup=plan.warmup, batch=idle))
        self.tower = self.trainer.model.model.visual
        self.eye_params = list(self.tower.parameters()) + list(self.trainer.aux_head.parameters())
        self.decoder_params = [p for n, p in self.trainer.model.named_parameters() if not n.startswith("model.visual.")]
        self.opt = self._optimizer("eye")
        self.phase, self.step = "eye", 0
        self.rng = random.Random(plan.seed)
        self.cur = Curriculum(key_phase=1)
        self.history: list[dict] = []
        self.wall_s = {"eye": 0.0, "joint": 0.0}
        self.cpu_s = {"eye": 0.0, "joint": 0.0}
        self.sets = eval_sets(plan.eval_n)
        read_rng = random.Random(plan.seed + 7)
        self.sets["read"] = [read_page_example(read_rng, plan.read_random_share) for _ in range(plan.eval_n)]

    def _optimizer(self, phase: str) -> torch.optim.Optimizer:
        params = self.eye_params if phase == "eye" else self.decoder_params
        lr = self.plan.eye_lr if phase == "eye" else self.plan.joint_lr
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    # ---------------------------------------------------------- phase 1: the eye
    def eye_step(self) -> float:
        plan = self.plan
        for g in self.opt.param_groups:
            g["lr"] = _lr(plan.eye_lr, self.step, plan.eye_steps, plan.warmup, decay=True)
        pages = [dense_page_example(self.rng) if self.rng.random() < plan.dense_share
                 else draw_batch(self.rng, "eye", 1, self.cur, straddle_share=0.3, alnum_share=0.3)[0]
                 for _ in range(plan.eye_batch)]
        enc = collate(pages, self.trainer.processor)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16):
            loss = self.trainer.eye_loss(enc)
        self._update(loss, self.eye_params)
        return loss.item()

    # ---------------------------------------------------------- phase 2: the decoder, tower frozen
    def _loss(self, examples: list[Example], context_lm: float) -> tuple[torch.Tensor, float]:
        enc = collate(examples, self.trainer.processor)
        enc.pop("aux_labels", None)
        labels = enc.pop("labels")
        self.trainer.clear_cells()     # the cell-classifier hook keeps merger outputs; not needed here
        logits = self.trainer.model(**enc).logits
        flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=-100)
        if context_lm:
            target = enc["input_ids"][:, 1:].masked_fill(~_context_mask(enc, labels), -100)
            loss = loss + context_lm * F.cross_entropy(flat, target.reshape(-1), ignore_index=-100)
        return loss, exact_match(logits.detach(), labels).mean().item()

    def joint_step(self) -> dict:
        plan = self.plan
        for g in self.opt.param_groups:
            g["lr"] = _lr(plan.joint_lr, self.step, plan.joint_steps, plan.warmup, plan.joint_decay)
        total, stats = 0.0, {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16):
            for task, n in plan.batch.items():
                if n <= 0:
                    continue
                if task == "read":
                    examples = [read_page_example(self.rng, plan.read_random_share) for _ in range(n)]
                else:
                    examples = draw_batch(self.rng, task, n, self.cur)
                loss, em = self._loss(examples, plan.context_lm if task == "text" else 0.0)
                total = total + loss
                stats[task] = em
                if task != "read":
                    self.cur.update(task, em)
        self._update(total, self.decoder_params)
        return stats

    def _update(self, loss: torch.Tensor, params: list) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        self.step += 1

    def freeze_tower(self) -> None:
        for p in self.tower.parameters():
            p.requires_grad_(False)

    # ---------------------------------------------------------- evaluation, persistence
    def evaluate(self) -> dict:
        """The trainer's teacher-forced evaluation (exact match; on image sets the cell classifier's accuracy over
        every visual token, blanks included, where `diagnose` counts character cells only), under bf16 autocast."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.plan.bf16):
            return self.trainer.evaluate_teacher_forced(self.sets)

    def record(self) -> None:
        row = dict(phase=self.phase, step=self.step, wall_s=round(sum(self.wall_s.values()), 1),
                   cpu_s=round(sum(self.cpu_s.values()), 1), curriculum=self.cur.describe())
        row.update(self.evaluate())
        self.history.append(row)

    def save(self) -> None:
        state = dict(plan=asdict(self.plan), phase=self.phase, step=self.step, model=self.trainer.model.state_dict(),
                     aux_head=self.trainer.aux_head.state_dict(), opt=self.opt.state_dict(), rng=self.rng.getstate(),
                     torch_rng=torch.get_rng_state(), cur=asdict(self.cur), history=self.history,
                     wall_s=self.wall_s, cpu_s=self.cpu_s)
        path = os.path.join(self.out, CHECKPOINT)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load(self) -> None:
        path = os.path.join(self.out, CHECKPOINT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {CHECKPOINT} in {self.out} to resume from; run without --resume to start")
        state = load_checkpoint(path)
        if state["plan"] != asdict(self.plan):
            raise ValueError(f"the checkpoint in {self.out} was made with another plan ({state['plan']}); "
                             "resume with the same options or choose a new --out")
        self.trainer.model.load_state_dict(state["model"])
        self.trainer.aux_head.load_state_dict(state["aux_head"])
        self.phase, self.step = state["phase"], state["step"]
        if self.phase == "joint":
            self.freeze_tower()
            self.opt = self._optimizer("joint")
        self.opt.load_state_dict(state["opt"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.cur = Curriculum(**state["cur"])
        self.history, self.wall_s, self.cpu_s = state["history"], state["wall_s"], state["cpu_s"]

    # ---------------------------------------------------------- the whole run
    def run(self, progress: bool = True) -> dict:
        plan = self.plan
        for phase, steps, step_fn in (("eye", plan.eye_steps, self.eye_step), ("joint", plan.joint_steps, self.joint_step)):
            if self.phase == "joint" and phase == "eye":
                continue   # resumed after the eye phase
            bar = tqdm(total=steps, initial=self.step, desc=phase, disable=not progress)
            t_wall, t_cpu = time.time(), time.process_time()
            while self.step < steps:
                stats = step_fn()
                bar.update(1)
                bar.set_postfix(stats if isinstance(stats, dict) else {"cell_loss": round(stats, 4)}, refresh=False)
                if self.step % plan.eval_every == 0 or self.step == steps:   # evaluate (joint) and checkpoint
                    self.wall_s[phase] += time.time() - t_wall
                    self.cpu_s[phase] += time.process_time() - t_cpu
                    if phase == "joint":
                        self.record()
                    self.save()
                    t_wall, t_cpu = time.time(), time.process_time()
            bar.close()
            if phase == "eye":
                self.record()          # the tower's cell accuracy when the decoder starts
                self.freeze_tower()
                self.phase, self.step, self.opt = "joint", 0, self._optimizer("joint")
                self.save()
        return self.finish()

    def summary(self) -> dict:
        """training_summary.json of the exported folder (what `diagnose` and the card read: size, steps, time)."""
        return dict(recipe="ocrheads_lib.embedded.tiny.budget", plan=asdict(self.plan), size=self.trainer.size.to_dict(),
                    params=self.trainer.n_params(), steps=self.plan.eye_steps + self.step,
                    wall_s=round(sum(self.wall_s.values()), 1), cpu_s=round(sum(self.cpu_s.values()), 1),
                    args=dict(seed=self.plan.seed), curriculum=self.cur.describe())

    def finish(self) -> dict:
        model_dir = os.path.join(self.out, "model")
        self.trainer.export(model_dir)
        atomic_write_json(os.path.join(model_dir, "training_summary.json"), self.summary())
        heldout = {}
        if self.plan.heldout_n:
            heldout = {name: dict(accuracy=round(r.accuracy, 4), n=r.n)
                       for name, r in evaluate_heldout(model_dir, self.plan.heldout_n).items()}
        result = dict(plan=asdict(self.plan), params=self.trainer.n_params(),
                      wall_s={k: round(v, 1) for k, v in self.wall_s.items()},
                      cpu_s={k: round(v, 1) for k, v in self.cpu_s.items()},
                      total_wall_min=round(sum(self.wall_s.values()) / 60, 1), threads=torch.get_num_threads(),
                      history=self.history, heldout=heldout, model=model_dir)
        atomic_write_json(os.path.join(self.out, RESULT), result)
        return result


SCALAR_OPTIONS = ("seed", "eye_steps", "eye_batch", "eye_lr", "dense_share", "joint_steps", "joint_lr", "context_lm",
                  "read_random_share", "warmup", "eval_every", "eval_n", "heldout_n")   # BudgetPlan fields on the CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/budget60")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (same options)")
    p.add_argument("--threads", type=int, default=2)
    defaults = BudgetPlan()
    for name in SCALAR_OPTIONS:
        p.add_argument(f"--{name}", type=type(getattr(defaults, name)), default=getattr(defaults, name))
    p.add_argument("--joint_decay", action=argparse.BooleanOptionalAction, default=defaults.joint_decay)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--batch", default="key=16,page=8,text=8,read=8", help="examples per joint step, by task")
    p.add_argument("--size", default="", help="TinyConfig overrides as JSON (default: the shipped size)")
    args = p.parse_args(argv)
    try:
        batch = {k: int(v) for k, v in (item.split("=") for item in args.batch.split(","))}
    except ValueError as err:
        raise SystemExit(f"--batch {args.batch!r}: expected task=count pairs like key=16,page=8 ({err})")
    unknown = set(batch) - {"key", "page", "text", "read"}
    if unknown:
        raise SystemExit(f"--batch: unknown tasks {sorted(unknown)}; use key, page, text and read")
    plan = BudgetPlan(**{name: getattr(args, name) for name in SCALAR_OPTIONS + ("joint_decay",)},
                      batch=batch, bf16=not args.fp32, size=json.loads(args.size) if args.size else {})
    torch.set_num_threads(args.threads)
    run = BudgetRun(plan, args.out)
    if args.resume:
        run.load()
    result = run.run()
    print(json.dumps(dict(wall_min=result["total_wall_min"], heldout=result["heldout"],
                          last_eval=result["history"][-1]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
