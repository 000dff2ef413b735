"""Figures of the data chapter: a sample's pages with its boxes, the image-token grid over a page, and a
text sample with its needle highlighted.

    from ocrheads_lib.book_figures import pages_figure, token_grid_figure, text_sample_html
    pages_figure(sample)                                   # every page, evidence page framed, boxes drawn
    token_grid_figure(inputs.image_tokens, sample)         # which visual tokens are evidence for which unit
    IPython.display.HTML(text_sample_html(text_sample))    # context excerpt, needle marked, answer in bold
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ocrheads_lib.types import head_label

FINE = "#dc1e1e"        # fine boxes (one per answer unit), as on the contact sheet
COARSE = "#1e5ae6"      # coarse box around the whole answer
EVIDENCE = "#00a0cc"
UNIT_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


def _rect(ax: Any, box: Sequence[float], colour: str, lw: float = 1.5, fill: bool = False, alpha: float = 1.0) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=fill, edgecolor=colour, facecolor=colour if fill else "none",
                           linewidth=lw, alpha=alpha))


def pages_figure(sample: Any, max_pages: int = 6, cols: int = 3, page_width_in: float = 3.4) -> Any:
    """Every page of an `ImageSample` (up to `max_pages`, always including the evidence page) in reading
    order, `cols` per row; the evidence page is framed and carries the fine boxes (red) and the coarse box (blue)."""
    n = len(sample.pages)
    shown = list(range(n))
    if n > max_pages:   # keep the first pages and the evidence page, in order
        shown = sorted(set(range(max_pages - 1)) | {sample.evidence_page})
    ratio = max(p.height / p.width for p in sample.pages)
    cols = max(1, min(cols, len(shown)))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(page_width_in * cols, (page_width_in * ratio + 0.35) * rows + 0.4),
                             squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, index in zip(axes.flat, shown):
        page = sample.pages[index]
        ax.imshow(np.asarray(page.convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        is_evidence = index == sample.evidence_page
        ax.set_title(f"page {index}" + (" (evidence)" if is_evidence else ""), fontsize=9,
                     color=EVIDENCE if is_evidence else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor(EVIDENCE if is_evidence else "#999999")
            spine.set_linewidth(3 if is_evidence else 0.8)
        if is_evidence:
            _rect(ax, sample.coarse_box, COARSE, lw=2)
            for box in sample.boxes:
                _rect(ax, box, FINE, lw=1.2)
    skipped = n - len(shown)
    fig.suptitle(f"{sample.id}: {n} page(s){f', {skipped} not shown' if skipped else ''} — "
                 f"Q: {sample.question!r}  A: {sample.answer!r}", fontsize=9)
    fig.tight_layout()
    return fig


def token_grid_figure(image_tokens: Any, sample: Any, min_overlap: float = 0.001, width_in: float = 7.0) -> Any:
    """The evidence page with the box of every visual token of that page (grey grid) and, per answer unit,
    its evidence tokens (filled, one colour per unit) — the tokens an OCR head must look at.

    image_tokens: an `ImageTokenMap` (e.g. `lm.build_inputs(sample.pages, sample.question).image_tokens`)."""
    page_index = int(sample.evidence_page)
    page = sample.pages[page_index]
    on_page = (image_tokens.pages == page_index).cpu().numpy()           # (N,)
    boxes = image_tokens.boxes.cpu().numpy()[on_page]                     # (n, 4)
    positions = image_tokens.positions.cpu().numpy()[on_page]             # (n,)
    fig, ax = plt.subplots(figsize=(width_in, width_in * page.height / page.width + 0.5))
    ax.imshow(np.asarray(page.convert("RGB")))
    for box in boxes:
        _rect(ax, box, "#888888", lw=0.4)
    counts = []
    for u, (unit, box) in enumerate(zip(sample.units, sample.boxes)):
        colour = UNIT_COLOURS[u % len(UNIT_COLOURS)]
        hit = set(image_tokens.evidence_tokens(page_index, box, min_overlap).tolist())
        counts.append(len(hit))
        for tb, pos in zip(boxes, positions):
            if int(pos) in hit:
                _rect(ax, tb, colour, fill=True, alpha=0.28, lw=0)
        _rect(ax, box, colour, lw=1.5)
    ax.set_xlim(0, page.width)
    ax.set_ylim(page.height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    per_unit = ", ".join(f"{unit!r}: {c}" for unit, c in zip(sample.units, counts))
    ax.set_title(f"{len(boxes)} visual tokens on page {page_index}; evidence tokens per answer unit: {per_unit}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def text_sample_html(sample: Any, window: int = 240) -> str:
    """HTML of a `TextSample`: `window` characters of context on each side of the needle, the needle
    highlighted, the answer in bold, then the question."""
    n0, n1 = sample.needle_span
    a0, a1 = sample.answer_span
    start, end = max(0, n0 - window), min(len(sample.context), n1 + window)

    def seg(i: int, j: int) -> str:
        return html.escape(sample.context[i:j])

    if n0 <= a0 and a1 <= n1:
        needle = f"{seg(n0, a0)}<b>{seg(a0, a1)}</b>{seg(a1, n1)}"
    else:   # answer outside the needle would be a data bug; show both plainly
        needle = seg(n0, n1)
    return (f"<div style='font-family:monospace;font-size:0.85em;white-space:pre-wrap;border:1px solid #ddd;"
            f"padding:6px'>{'…' if start else ''}{seg(start, n0)}<mark>{needle}</mark>{seg(n1, end)}"
            f"{'…' if end < len(sample.context) else ''}</div>"
            f"<div style='font-size:0.85em'>context {len(sample.context)} characters, needle at "
            f"{n0}–{n1}; question: <code>{html.escape(sample.question)}</code>, answer: "
            f"<code>{html.escape(sample.answer)}</code></div>")


def grounding_figure(chars: Any, result: Any, width_in: float = 7.2) -> Any:
    """The evidence page of one sample with, per answer character, its true box (cyan, filled lightly) and
    the token box the OCR heads point at (green outline when it hits, red dashed when it misses), numbered
    in reading order above the page, with a legend under it — `chars` a `grounding.CharacterAttention`,
    `result` its `grounding.CharacterGrounding`."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    page = chars.page
    fig, ax = plt.subplots(figsize=(width_in, width_in * page.height / page.width + 1.0))
    ax.imshow(np.asarray(page.convert("RGB")))
    for c, (box, pred, hit) in enumerate(zip(chars.char_boxes, result.predicted, result.hits)):
        _rect(ax, box, EVIDENCE, lw=0, fill=True, alpha=0.3)
        x0, y0, x1, y1 = pred
        inset = 1.5      # the guess drawn just inside its token, so it never hides the character's box edge
        ax.add_patch(Rectangle((x0 + inset, y0 + inset), x1 - x0 - 2 * inset, y1 - y0 - 2 * inset, fill=False,
                               lw=1.8, ls="-" if hit else "--", edgecolor="#1e9e3c" if hit else "#dc1e1e"))
    ax.set_xlim(0, page.width)
    ax.set_ylim(page.height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    heads = ", ".join(head_label(h) for h in result.heads)
    ax.set_title(f"{chars.sample_id}: {sum(result.hits)} of {len(result.hits)} characters hit (heads {heads})")
    ax.legend(handles=[Patch(facecolor=EVIDENCE, alpha=0.3, label="character's box"),
                       Line2D([], [], color="#1e9e3c", lw=1.8, label="token the heads point at: hit"),
                       Line2D([], [], color="#dc1e1e", lw=1.8, ls="--", label="token the heads point at: miss")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, frameon=False, fontsize=9)
    fig.tight_layout()
    return fig
