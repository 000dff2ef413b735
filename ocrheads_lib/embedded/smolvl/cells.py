"""The image-side stage of smol-vl's training: every image token made to be its cell's character.

    OMP_NUM_THREADS=2 python -m ocrheads_lib.embedded.smolvl.cells --out runs/cells --steps 800
    python -m ocrheads_lib.embedded.smolvl.cells --out runs/cells --resume --steps 1200     # continue

The language half reads an image through the merger's output tokens. Before this stage existed, those tokens
were fit by least squares on aligned cells and then moved only by the answer loss; they decoded to the right
SmolLM2 character for 74 % of aligned cells and 7-53 % of shifted ones (the per-cell gate, `evaluate.cell_gate`).
This stage trains the eye (at a low rate) and the whole merger **without the language model**: each image token
is scored against SmolLM2's (tied, frozen) embedding matrix with a cross-entropy over the whole vocabulary
(target: the character drawn in its cell, "Ġ" for a blank cell), plus a pull towards that character's
embedding (`mse_weight`, relative squared error on inked cells) so the tokens also land where SmolLM2's own
character embeddings are, not merely on the right side of them. Pages are mostly off the grid (every offset
0-27 px on both axes): dense random characters, keys and words, and prose pages.

The stage is resumable (`checkpoint.safetensors` + `optimizer.pt`, loaded with `weights_only=True`), seeded (the
pages of step s come from `random.Random(f"cells:{seed}:{s}")`), and its record (`cells_record.json`) holds the
config, the per-step losses and every gate evaluation. `smolvl.train --visual_from <out>` starts the joint stage
from it.
"""
from __future__ import annotations

import torch

torch.set_flush_denormal(True)

import argparse
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ocrheads_lib.embedded.smolvl.evaluate import (BASE_VOCAB, cell_gate, cell_token_ids, gate_pages,
                                                   visual_tokens)
from ocrheads_lib.embedded.tiny.examples import Example, dense_page_example, key_example, read_page_example
from ocrheads_lib.paths import atomic_path, atomic_write_json

VISUAL = "visual.safetensors"          # the vision tower's state (eye + merger), what the joint stage starts from
OPTIMIZER = "optimizer.pt"
CELLS_RECORD = "cells_record.json"
GATE_SEED = 7_000_011                  # the gate's pages while training (the card uses its own seed)


@dataclass
class CellConfig:
    """Every knob of the image-side stage (its record is asdict(config))."""

    seed: int = 0
    pages: int = 16                   # pages per step
    head_lr: float = 1e-3             # the merger's new output layer (512 -> 576)
    merger_lr: float = 1e-3           # the merger's LayerNorm and first layer
    eye_lr: float = 2e-4              # the eye: its own cell classifier reads dense pages at 90 % aligned, 68 % at a
                                      # 14-px vertical shift, so it must learn too (at 2e-5 the gate fell)
    head_only_steps: int = 50        # first steps: only the output layer moves (the rest would chase a random
                                      # head; with everything at 1e-3 from step 0 the gate crawled: 29 % at x14
                                      # after 200 steps)
    warmup_steps: int = 20
    total_steps: int = 1200           # cosine horizon; floor min_lr_ratio
    min_lr_ratio: float = 0.05
    mse_weight: float = 0.1           # relative squared error to the character's embedding, inked cells (at 1.0 it
                                      # fought the cross-entropy: relative error 0.7, inked accuracy 0.65 at step 300)
    blank_weight: float = 0.3         # weight of blank cells in the cross-entropy (they are most cells)
    hard_k: int = 8                   # + each token's top-k rivals over the whole vocabulary (`hard_negatives`)
    negatives: int = 1536             # the cross-entropy runs over every token of <= 2 characters (2,427, where
                                      # a character's rivals are) + this many other tokens drawn per step
                                      # (0 = the whole 49,152-token vocabulary, ~12x the cost); the gate decodes
                                      # over the whole vocabulary
    init: str = "classifier"          # the merger's output layer at step 0: "classifier" (`classifier_init`: the
                                      # tiny model's own cell classifier carried into SmolLM2's embedding space) or
                                      # "lsq" (build.fit_merger_output: least squares to the embeddings; its
                                      # gate after 100 head-only steps: x0 88 %, x14 19 %)
    lsq_pages: int = 200              # pages of the "lsq" init
    bf16: bool = False                # autocast the vocabulary product (avx512_bf16 CPUs only: 2x there, 8x slower without)
    eval_every: int = 100
    eval_pages: int = 40              # pages per shift in the training gate
    checkpoint_every: int = 50
    target: float = 0.995             # stop once every shift of the gate is at or above this

    def record(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate factor of both training stages: linear warm-up, then cosine from 1 to `min_lr_ratio` at
    `total_steps` (flat after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cell_page(rng: random.Random) -> Example:
    """One training page of the stage: dense random characters (40 %), a key or words alone on a page at any
    pixel position (30 %; half of them words), or a prose / random-string page (30 %, `read_page_example`)."""
    kind = rng.random()
    if kind < 0.4:
        return dense_page_example(rng)
    if kind < 0.7:
        return key_example(rng, rng.choice(["offset", "offset", "2lines_offset", "aligned"]), words_share=0.5)
    return read_page_example(rng, random_share=0.4)


def short_tokens(tokenizer, max_chars: int = 2) -> torch.Tensor:
    """Ids of SmolLM2's tokens that decode to at most `max_chars` characters (sorted)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(BASE_VOCAB)))
    return torch.tensor([i for i, piece in enumerate(pieces)
                         if len(tokenizer.convert_tokens_to_string([piece])) <= max_chars])


def candidate_vocab(short: torch.Tensor, negatives: int, generator: torch.Generator,
                    hard: torch.Tensor | None = None) -> torch.Tensor | None:
    """The columns of a step's cross-entropy: every short token, the `hard` ones (the tokens that currently
    outscore a cell's character, see `hard_negatives`) and `negatives` others drawn with `generator` (None: the
    whole vocabulary)."""
    if negatives <= 0:
        return None
    others = torch.ones(BASE_VOCAB, dtype=torch.bool)
    others[short] = False
    pool = others.nonzero().squeeze(1)
    drawn = pool[torch.randperm(len(pool), generator=generator)[:negatives]]
    parts = [short, drawn] + ([hard] if hard is not None else [])
    return torch.unique(torch.cat(parts))


@torch.no_grad()
def hard_negatives(tokens: torch.Tensor, embed: torch.Tensor, k: int) -> torch.Tensor | None:
    """The union of every token's top-k rivals over the whole vocabulary (one bfloat16 product, no gradient):
    the long tokens a sampled vocabulary would rarely show the loss ("olicies", "Ġsphinct" outscored letters
    at init)."""
    if k <= 0:
        return None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = tokens.detach().float() @ embed.T
    return torch.unique(scores.topk(k, dim=-1).indices.flatten())


def cell_loss(tokens: torch.Tensor, targets: torch.Tensor, inked: torch.Tensor, embed: torch.Tensor,
              mse_weight: float, blank_weight: float, bf16: bool = False,
              vocab: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of every image token over SmolLM2's vocabulary (logits = token . embedding matrix; blank
    cells weighted `blank_weight`; over the columns `vocab` only when given, which must hold every target) +
    `mse_weight` x the relative squared error of inked cells to their character's embedding.
    Returns (loss, {ce, mse, accuracy on inked cells among the columns})."""
    tokens = tokens.float()       # a bfloat16 autocast of the caller's forward hands over bfloat16 tokens
    keep = targets >= 0
    columns = embed if vocab is None else embed[vocab]
    goal_ids = targets[keep]
    if vocab is not None:
        position = torch.full((BASE_VOCAB,), -1, dtype=torch.long)
        position[vocab] = torch.arange(len(vocab))
        goal_ids = position[goal_ids]
        if (goal_ids < 0).any():
            raise ValueError("cell_loss: a target token is not among the candidate columns; build them with "
                             "candidate_vocab(short_tokens(...)) so every single-character token is kept")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = tokens[keep] @ columns.T
    per_cell = F.cross_entropy(logits.float(), goal_ids, reduction="none")
    weights = torch.where(inked[keep], 1.0, blank_weight)
    ce = (per_cell * weights).sum() / weights.sum()
    ink = inked & keep
    goal = embed[targets[ink]]
    mse = ((tokens[ink] - goal) ** 2).sum(-1).mean() / (goal ** 2).sum(-1).mean() if ink.any() else tokens.sum() * 0
    accuracy = float((logits.argmax(-1)[inked[keep]] == goal_ids[inked[keep]]).float().mean()) if ink.any() else 0.0
    return ce + mse_weight * mse, {"ce": float(ce.detach()), "mse": float(mse.detach()), "accuracy": accuracy}


@torch.no_grad()
def classifier_init(model: torch.nn.Module, tokenizer, ridge: float = 1e-3) -> None:
    """Set the merger's output layer so that its tokens, read through SmolLM2's embedding matrix, give the tiny
    model's own cell-classifier logits on the character tokens.

    The tiny model classifies each merged cell linearly (`cell_classifier.safetensors`: 97 classes, blank + 96
    characters, on its 256-wide merger output, itself a linear layer of the merger's hidden h). That eye reads
    >= 99 % of cells at every shift, so a linear map of h that reads them exists. With A the SmolLM2 embeddings
    of the classes' tokens (97 x 576; blank and space -> "Ġ"), logits = C (W2 h + b2) + c, and M the
    minimum-norm ridge solution of A M = [C | c], the new layer is v = M [W2 h + b2; 1]: then A v = the tiny
    logits (up to the ridge), i.e. the dot products with the character embeddings rank the characters as the
    tiny eye does. Tokens outside the 97 are left to the cross-entropy."""
    from ocrheads_lib.embedded.tiny import WEIGHTS_DIR
    from ocrheads_lib.embedded.tiny.train import AUX_CLASSES, CELL_CLASSIFIER

    tiny = load_file(str(Path(WEIGHTS_DIR) / "model.safetensors"))
    head = load_file(str(Path(WEIGHTS_DIR) / CELL_CLASSIFIER))
    w2, b2 = tiny["visual.merger.mlp.2.weight"].float(), tiny["visual.merger.mlp.2.bias"].float()
    classes = [c if c.strip() else "" for c in AUX_CLASSES]
    ids = torch.tensor(cell_token_ids(tokenizer, classes))
    if (ids < 0).any():
        raise RuntimeError(f"classes that are not one SmolLM2 token: {[c for c, i in zip(classes, ids) if i < 0]}")
    embed = model.model.language_model.embed_tokens.weight[:BASE_VOCAB].float()
    a = embed[ids]                                                            # (97, 576)
    target = torch.cat([head["weight"].float(), head["bias"].float()[:, None]], 1)   # (97, 257)
    m = a.T @ torch.linalg.solve(a @ a.T + ridge * torch.eye(len(a)), target)      # (576, 257)
    layer = model.model.visual.merger.mlp[2]
    layer.weight.copy_(m[:, :-1] @ w2)
    layer.bias.copy_(m[:, :-1] @ b2 + m[:, -1])


def page_targets(tokenizer, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """(target token per visual token, inked mask) over the examples' pages, in page order."""
    labels = [c for ex in examples for page in ex.cell_labels for c in page]
    return torch.tensor(cell_token_ids(tokenizer, labels)), torch.tensor([bool(c.strip()) for c in labels])


class CellTrainer:
    """The assembled smol-vl (language half untouched), an optimizer over the eye and merger, and the step."""

    def __init__(self, config: CellConfig, out: Path, log: Callable[[str], None] = print) -> None:
        from ocrheads_lib.embedded.smolvl.build import assemble

        self.config, self.out, self.log = config, Path(out), log
        torch.manual_seed(config.seed)
        self.model, self.processor = assemble(seed=config.seed)
        self.model.requires_grad_(False)
        visual = self.model.model.visual
        head = list(visual.merger.mlp[2].parameters())
        merger = [p for n, p in visual.merger.named_parameters() if not n.startswith("mlp.2.")]
        eye = [p for n, p in visual.named_parameters() if not n.startswith("merger.")]
        groups = [{"params": head, "lr": config.head_lr, "name": "head"},
                  {"params": merger, "lr": config.merger_lr, "name": "merger"}]
        if config.eye_lr > 0:
            groups.append({"params": eye, "lr": config.eye_lr, "name": "eye"})
        for group in groups:
            for p in group["params"]:
                p.requires_grad_(True)
        self.base_lrs = {g["name"]: g["lr"] for g in groups}
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.embed = self.model.model.language_model.embed_tokens.weight[:BASE_VOCAB].detach()
        self.short = short_tokens(self.processor.tokenizer)
        self.step, self.losses, self.history, self.fit_accuracy = 0, [], [], None

    def init_merger(self) -> None:
        if self.config.init == "classifier":
            classifier_init(self.model, self.processor.tokenizer)
            self.log("[cells] merger output layer initialised from the tiny model's cell classifier")
            return
        if self.config.init != "lsq":
            raise ValueError(f"init = {self.config.init!r}: choose 'classifier' or 'lsq'")
        from ocrheads_lib.embedded.smolvl.build import fit_merger_output

        self.fit_accuracy = fit_merger_output(self.model, self.processor, n_pages=self.config.lsq_pages,
                                              seed=self.config.seed)
        self.log(f"[cells] merger output layer fit by least squares: nearest-token accuracy {self.fit_accuracy:.4f}")

    def train_step(self) -> dict:
        started = time.time()
        rng = random.Random(f"cells:{self.config.seed}:{self.step}")
        examples = [cell_page(rng) for _ in range(self.config.pages)]
        factor = self.config.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            frozen = group["name"] != "head" and self.step < self.config.head_only_steps
            group["lr"] = 0.0 if frozen else self.base_lrs[group["name"]] * factor
        self.model.model.visual.train()
        targets, inked = page_targets(self.processor.tokenizer, examples)
        tokens = visual_tokens(self.model, self.processor, examples)
        if len(tokens) != len(targets):
            raise RuntimeError(f"step {self.step}: {len(tokens)} visual tokens but {len(targets)} cell labels")
        vocab = candidate_vocab(self.short, self.config.negatives,
                                torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step),
                                hard_negatives(tokens, self.embed, self.config.hard_k))
        loss, parts = cell_loss(tokens, targets, inked, self.embed, self.config.mse_weight,
                                self.config.blank_weight, self.config.bf16, vocab)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"cells step {self.step}: loss {loss.item()}; not stored")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        row = {"step": self.step, "loss": round(float(loss.detach()), 5), **{k: round(v, 5) for k, v in parts.items()},
               "seconds": round(time.time() - started, 3)}
        self.losses.append(row)
        return row

    def evaluate(self) -> dict:
        self.model.model.visual.eval()
        gate = cell_gate(self.model, self.processor, gate_pages(self.config.eval_pages, GATE_SEED), progress=False)
        row = {"step": self.step, **{k: {"accuracy": v["accuracy"], "cosine": v["cosine"]} for k, v in gate.items()}}
        self.history.append(row)
        return row

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        state = {k: v.detach().contiguous() for k, v in self.model.model.visual.state_dict().items()}
        with atomic_path(self.out / VISUAL) as tmp:
            save_file(state, str(tmp), metadata={"step": str(self.step)})
        with atomic_path(self.out / OPTIMIZER) as tmp:
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict()}, tmp)
        self.write_record()

    def write_record(self) -> None:
        atomic_write_json(self.out / CELLS_RECORD, {"config": self.config.record(), "step": self.step,
                                                    "fit_accuracy": self.fit_accuracy, "history": self.history,
                                                    "losses": self.losses})

    def load(self) -> None:
        record = json.loads((self.out / CELLS_RECORD).read_text())
        if record["config"] != self.config.record():
            changed = sorted(k for k in record["config"] if record["config"][k] != self.config.record().get(k))
            raise ValueError(f"--resume: the config differs from {self.out / CELLS_RECORD} in {changed}; resume "
                             f"with the same options")
        self.model.model.visual.load_state_dict(load_file(str(self.out / VISUAL)), strict=True)
        saved = torch.load(self.out / OPTIMIZER, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step, self.history, self.losses = record["step"], record["history"], record["losses"]
        self.fit_accuracy = record["fit_accuracy"]
        if saved["step"] != self.step:
            raise ValueError(f"{self.out}: optimizer state at step {saved['step']} but record at {self.step}; "
                             f"the run was interrupted while saving: start it again")


def gate_line(row: dict) -> str:
    return " ".join(f"{k} {v['accuracy']:.3f}" for k, v in row.items() if isinstance(v, dict))


def load_visual(model: torch.nn.Module, folder: Path) -> int:
    """Load a cells run's vision tower into a smol-vl model (plain or peft-injected); returns its step."""
    path = Path(folder) / VISUAL
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m ocrheads_lib.embedded.smolvl.cells --out {folder}` first")
    model.model.visual.load_state_dict(load_file(str(path)), strict=True)
    return int(json.loads((Path(folder) / CELLS_RECORD).read_text())["step"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, required=True, help="train until this step (or until the gate target)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--minutes", type=float, help="stop (after a checkpoint) once this wall time has passed")
    for name, spec in CellConfig.__dataclass_fields__.items():
        if isinstance(spec.default, bool):
            ap.add_argument(f"--{name}", type=lambda text: text.lower() in ("1", "true", "yes", "on"))
        else:
            ap.add_argument(f"--{name}", type=type(spec.default))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "cells.log", "a", buffering=1)

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")

    knobs = {k: v for k, v in vars(args).items() if k in CellConfig.__dataclass_fields__ and v is not None}
    if args.resume:
        config = CellConfig(**{**json.loads((out / CELLS_RECORD).read_text())["config"], **knobs})
    else:
        config = CellConfig(**knobs)
    trainer = CellTrainer(config, out, log)
    if args.resume:
        trainer.load()
        log(f"[cells] resumed at step {trainer.step}")
    else:
        if (out / VISUAL).is_file():
            raise FileExistsError(f"{out} already holds a cells run; pass --resume or another --out")
        trainer.init_merger()
        log(f"[cells] gate before training: {gate_line(trainer.evaluate())}")
    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda s, _f: stop.__setitem__("signal", s))
    signal.signal(signal.SIGINT, lambda s, _f: stop.__setitem__("signal", s))
    started = time.time()
    while trainer.step < args.steps and stop["signal"] is None:
        if args.minutes is not None and time.time() - started > args.minutes * 60:
            break
        row = trainer.train_step()
        if trainer.step % 10 == 0:
            recent = trainer.losses[-10:]
            log(f"[cells] step {trainer.step} loss {sum(r['loss'] for r in recent) / 10:.4f} "
                f"inked accuracy {sum(r['accuracy'] for r in recent) / 10:.4f} "
                f"{sum(r['seconds'] for r in recent) / 10:.2f} s/step")
        if trainer.step % config.checkpoint_every == 0:
            trainer.save()
        if trainer.step % config.eval_every == 0:
            evaluated = trainer.evaluate()
            log(f"[cells] step {trainer.step} gate: {gate_line(evaluated)}")
            trainer.save()
            if min(v["accuracy"] for v in evaluated.values() if isinstance(v, dict)) >= config.target:
                log(f"[cells] every shift at or above {config.target}: stage done")
                break
    trainer.save()
    log(f"[cells] stopped at step {trainer.step}{', signal ' + str(stop['signal']) if stop['signal'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
