"""Where the embedded model's eye fails on unaligned text: character-cell accuracy by sub-cell offset.

    python -m ocrheads_lib.embedded.tiny.diagnose ocrheads_lib/embedded/tiny/weights --n 240     # the shipped weights
    python -m ocrheads_lib.embedded.tiny.diagnose runs/tiny/checkpoint.pt --n 240       # a training run

Needs the auxiliary cell classifier (a linear layer on the merged visual tokens) that trained with the
weights: a training checkpoint holds it, and so does an exported folder (`cell_classifier.safetensors`,
shipped with the weights since step 29733). For each unaligned key page it compares
the classifier's prediction with the cell label (the character whose slot centre lies in that token) on
the tokens that hold a character, and groups the result by the block's offset modulo the 28-px cell, in
4-px bins. An offset near half a cell (about 14 px) puts glyph centres on token boundaries: each glyph straddles
two tokens. A second table groups the same pages by the kind of key (digits, numbers, one character,
mixed-case alphanumeric, words) and lists the most frequent (true -> predicted) cell misreadings.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from ocrheads_lib.data.grid import CELL
from ocrheads_lib.embedded.checkpoint import load_checkpoint
from ocrheads_lib.embedded.tiny.build import TinyConfig
from ocrheads_lib.embedded.tiny.examples import key_example
from ocrheads_lib.embedded.tiny.train import AUX_CLASSES, CELL_CLASSIFIER, TinyTrainer, collate, exact_match

BIN_PX = 4


class _CellAccuracy:
    """Mixin of the row dataclasses below: character-cell accuracy from their counts."""

    chars_correct: int
    chars: int

    @property
    def char_accuracy(self) -> float:
        return self.chars_correct / self.chars if self.chars else float("nan")


@dataclass
class OffsetBin(_CellAccuracy):
    """Character-cell accuracy and teacher-forced exact match of the pages whose offset falls in one bin."""

    axis: str                 # "x" | "y" | "all" (the whole-set row of format_bins)
    start_px: int             # offset mod CELL in [start_px, start_px + width_px)
    chars_correct: int
    chars: int
    pages_correct: int
    pages: int
    width_px: int = BIN_PX    # CELL for the whole-set row


def load_trainer(checkpoint: str):
    """A TinyTrainer with the model, aux classifier and size of a training checkpoint (optimizer state is
    ignored) or of an exported folder that holds the classifier."""
    if os.path.isdir(checkpoint):
        summary = json.load(open(os.path.join(checkpoint, "training_summary.json")))
        trainer = TinyTrainer(TinyConfig(**summary["size"]), seed=0)
        if not trainer.load_weights(checkpoint):
            raise ValueError(f"{checkpoint} has no {CELL_CLASSIFIER}: export it again with "
                             "python -m ocrheads_lib.embedded.tiny.train --export, or pass a training checkpoint")
        trainer.model.eval()
        return trainer
    state = load_checkpoint(checkpoint)
    if "aux_head" not in state or "meta" not in state:
        raise ValueError(f"{checkpoint} is not a training checkpoint of ocrheads_lib.embedded.tiny.train "
                         "(it needs 'aux_head' and 'meta'); pass OUT/checkpoint.pt of a training run")
    size_json = state["meta"].get("args", {}).get("size") or ""    # "" = the default (shipped) size
    size = TinyConfig(**json.loads(size_json)) if size_json else TinyConfig()
    trainer = TinyTrainer(size, seed=0)
    trainer.model.load_state_dict(state["model"])
    trainer.aux_head.load_state_dict(state["aux_head"])
    trainer.model.eval()
    return trainer


@dataclass
class PageReading:
    """What the eye (the auxiliary cell classifier) and the decoder made of one unaligned key page."""

    meta: dict                            # the example's meta: layout, style, x_off, y_off, ...
    chars_correct: int                    # character cells the classifier got right
    chars: int                            # cells that hold a character
    exact: bool                           # teacher-forced exact match of the answer
    confusions: list[tuple[str, str]]     # (true, predicted) per misread cell; "" = predicted blank


@dataclass
class StyleRow(_CellAccuracy):
    """Character-cell accuracy and teacher-forced exact match of the pages holding one kind of key."""

    style: str                # random_key's style ("digits", "paper", "char", "alnum") or "words"
    chars_correct: int
    chars: int
    pages_correct: int
    pages: int


@torch.no_grad()
def read_pages(trainer, n: int = 240, seed: int = 777, layout: str = "offset", batch: int = 16) -> list[PageReading]:
    """The cell classifier's and the decoder's reading of `n` fresh key pages of `layout`."""
    rng = random.Random(seed)
    examples = [key_example(rng, layout) for _ in range(n)]
    readings: list[PageReading] = []
    for i in range(0, n, batch):
        chunk = examples[i:i + batch]
        enc = collate(chunk, trainer.processor)
        _, logits, _ = trainer.forward(enc)
        page_ok = exact_match(logits, enc["labels"])
        predicted = trainer.cell_logits().argmax(-1)
        labels = enc["aux_labels"]
        start = 0
        for j, example in enumerate(chunk):
            n_tokens = len(example.cell_labels[0])
            pred, gold = predicted[start:start + n_tokens], labels[start:start + n_tokens]
            start += n_tokens
            holds_char = gold != 0
            wrong = holds_char & (pred != gold)
            readings.append(PageReading(
                example.meta, int((pred[holds_char] == gold[holds_char]).sum()), int(holds_char.sum()),
                bool(page_ok[j]), [(AUX_CLASSES[g], AUX_CLASSES[p]) for g, p in zip(gold[wrong].tolist(), pred[wrong].tolist())]))
    return readings


def _tally(readings: list[PageReading], groups_of) -> dict:
    """[chars correct, chars, pages exact, pages] per group; `groups_of(reading)` names the reading's groups."""
    counts: dict = defaultdict(lambda: [0, 0, 0, 0])
    for r in readings:
        for group in groups_of(r):
            c = counts[group]
            c[0] += r.chars_correct
            c[1] += r.chars
            c[2] += int(r.exact)
            c[3] += 1
    return dict(sorted(counts.items()))


def bins_by_offset(readings: list[PageReading]) -> list[OffsetBin]:
    """Bins over the x and y offsets (mod CELL): every page falls in one bin per axis."""
    counts = _tally(readings, lambda r: [(axis, (r.meta[f"{axis}_off"] % CELL) // BIN_PX * BIN_PX) for axis in ("x", "y")])
    return [OffsetBin(axis, start_px, *c) for (axis, start_px), c in counts.items()]


def cell_accuracy_by_offset(trainer, n: int = 240, seed: int = 777, layout: str = "offset",
                            batch: int = 16) -> list[OffsetBin]:
    """Bins over x and y offsets (mod CELL) of `n` fresh key pages of `layout`."""
    return bins_by_offset(read_pages(trainer, n, seed, layout, batch))


def rows_by_style(readings: list[PageReading]) -> list[StyleRow]:
    """One row per kind of key (digits, the paper's numbers, one character, mixed-case alnum, words)."""
    return [StyleRow(style, *c) for style, c in _tally(readings, lambda r: [r.meta["style"]]).items()]


def top_confusions(readings: list[PageReading], k: int = 12) -> list[tuple[str, str, int]]:
    """The `k` most frequent (true, predicted) cell misreadings, most frequent first."""
    counter = Counter(pair for r in readings for pair in r.confusions)
    return [(true, predicted, count) for (true, predicted), count in counter.most_common(k)]


def format_styles(rows: list[StyleRow], confusions: list[tuple[str, str, int]]) -> str:
    lines = ["key style  char-cell accuracy  chars  pages exact (teacher-forced)"]
    for r in rows:
        lines.append(f"{r.style:9s}  {r.char_accuracy:6.3f}              {r.chars:5d}  {r.pages_correct}/{r.pages}")
    pairs = ", ".join(f"{true}->{predicted or 'blank'} x{count}" for true, predicted, count in confusions)
    lines.append(f"most frequent cell misreadings: {pairs or 'none'}")
    return "\n".join(lines)


def format_bins(bins: list[OffsetBin]) -> str:
    # every page sits in exactly one bin per axis, so one axis's bins sum to the whole set
    x_bins = [b for b in bins if b.axis == "x"]
    total = OffsetBin("all", 0, sum(b.chars_correct for b in x_bins), sum(b.chars for b in x_bins),
                      sum(b.pages_correct for b in x_bins), sum(b.pages for b in x_bins), width_px=CELL)
    lines = ["axis  offset mod 28 (px)  char-cell accuracy  chars  pages exact (teacher-forced)"]
    for b in [*bins, total]:
        lines.append(f"{b.axis:4s}  {b.start_px:2d}-{b.start_px + b.width_px - 1:<2d}              "
                     f"{b.char_accuracy:6.3f}          {b.chars:5d}  {b.pages_correct}/{b.pages}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    torch.set_flush_denormal(True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="an exported folder with its cell classifier (e.g. ocrheads_lib/embedded/tiny/weights) "
                                      "or a training checkpoint (OUT/checkpoint.pt of ocrheads_lib.embedded.tiny.train)")
    p.add_argument("--n", type=int, default=240)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--layout", default="offset", choices=["offset", "2lines_offset"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    readings = read_pages(load_trainer(args.checkpoint), args.n, args.seed, args.layout)
    print(format_bins(bins_by_offset(readings)))
    print()
    print(format_styles(rows_by_style(readings), top_confusions(readings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
