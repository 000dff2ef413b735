"""Score figures (PAPER.md §5.1): bin donuts, score-vs-frequency bars, layer×head heatmaps, and the
emit-vs-consume comparison. Each function draws on a given Axes (or makes one) and returns it;
numbers come from :mod:`ocrheads_lib.analysis` / :mod:`ocrheads_lib.heads`, never computed here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ocrheads_lib.analysis import BIN_LABELS, sparsity_bins
from ocrheads_lib.heads import head_values
from ocrheads_lib.scoring.store import HeadScores

HEATMAP_BOUNDS = (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)   # the paper's discrete colour bounds
BIN_COLORS = ("#d9d9d9", "#9ecae1", "#4292c6", "#ef6548", "#b30000")
ACTIVE_THRESHOLD = 0.1                              # the paper's line: share of entries > 0.1


def _axes(ax=None, figsize=(4, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _title(scores: HeadScores, title: str | None) -> str:
    if title is not None:
        return title
    prefix = "OCR" if scores.meta.kind == "ocr" else "RH"
    row = f", {scores.meta.row}" if scores.meta.row else ""
    return f"{prefix} — {scores.meta.model_id}{row}"


def bin_donut(scores: HeadScores, ax=None, title: str | None = None, filtered: bool = False):
    """Donut of the share of heads per score bin (==0, (0,.1], (.1,.3], (.3,.5], (.5,1])."""
    ax = _axes(ax)
    bins = sparsity_bins(scores, filtered=filtered)
    counts = np.array(bins, dtype=float)
    nonzero = counts > 0
    wedges, _ = ax.pie(counts[nonzero], colors=[c for c, keep in zip(BIN_COLORS, nonzero) if keep],
                       startangle=90, counterclock=False, wedgeprops=dict(width=0.38, edgecolor="white"))
    shares = bins.shares()
    labels = [f"{label}: {count} ({share:.1f}%)" for label, count, share in zip(BIN_LABELS, bins, shares)]
    ax.legend(wedges, [lab for lab, keep in zip(labels, nonzero) if keep], loc="upper center",
              bbox_to_anchor=(0.5, 0.02), fontsize=8, frameon=False, ncol=2)
    ax.text(0, 0, f"{bins.total}\nheads", ha="center", va="center", fontsize=9)
    ax.set_title(_title(scores, title) + (" (filtered)" if filtered else ""), fontsize=10)
    ax.set_aspect("equal")
    return ax


def score_frequency_bars(scores: HeadScores, ax=None, top: int = 7, title: str | None = None,
                         active_threshold: float = ACTIVE_THRESHOLD, max_heads: int | None = 200):
    """Bars = raw mean score per head, line = activation frequency (share of entries > threshold),
    heads sorted by frequency (then mean) descending; the first `top` heads of that order are listed
    ("layer-head"), as in the paper's inset (see :func:`inset_heads`)."""
    ax = _axes(ax, figsize=(7, 3))
    mean = scores.mean().reshape(-1)
    freq = scores.activation_frequency(active_threshold).reshape(-1)
    n_heads = scores.meta.n_heads
    order = np.lexsort((np.arange(len(mean)), -mean, -freq))   # frequency desc, then mean desc, layer-major
    if max_heads is not None:
        order = order[:max_heads]
    x = np.arange(len(order))
    ax.bar(x, mean[order], width=1.0, color="#4292c6", label="mean score")
    ax.plot(x, freq[order], color="#e6550d", lw=1.2, label=f"freq (entry > {active_threshold:g})")
    best = inset_heads(scores, top, active_threshold)
    best = [head[0] * n_heads + head[1] for head in best]
    position = {int(h): i for i, h in enumerate(order)}
    for flat in best:                                          # mark the top heads on the bars ...
        if int(flat) in position:
            ax.plot(position[int(flat)], mean[flat], "v", color="black", ms=3)
    inset = "\n".join(f"{flat // n_heads}-{flat % n_heads}: {mean[flat]:.3f} (freq {freq[flat]:.2f})"
                       for flat in best)                        # ... and list them, as the paper's inset
    ax.text(0.35, 0.95, f"top {top} (layer-head):\n{inset}", transform=ax.transAxes, va="top", ha="left",
            fontsize=7, family="monospace", bbox=dict(boxstyle="round", fc="white", ec="#bbbbbb", alpha=0.9))
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(f"heads (top {len(order)} by activation frequency)")
    ax.set_ylabel("score / frequency")
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_title(_title(scores, title), fontsize=10)
    return ax


def inset_heads(scores: HeadScores, top: int = 7, active_threshold: float = ACTIVE_THRESHOLD) -> list[tuple[int, int]]:
    """The heads the paper's bar plot labels: the first `top` in order of activation frequency (share of
    entries > 0.1), ties by raw mean, then layer-major."""
    mean = scores.mean().reshape(-1)
    freq = scores.activation_frequency(active_threshold).reshape(-1)
    order = np.lexsort((np.arange(len(mean)), -mean, -freq))[:top]
    return [(int(i // scores.meta.n_heads), int(i % scores.meta.n_heads)) for i in order]


def head_heatmap(scores: HeadScores | np.ndarray, ax=None, title: str | None = None, rule: str = "readme",
                 colorbar: bool = True):
    """Layer × head map of the head values (raw mean for rule="readme", filtered for "paper-code"),
    discrete colours with the paper's bounds 0, .01, .1, .3, .5, 1."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    ax = _axes(ax, figsize=(5, 4))
    if isinstance(scores, HeadScores):
        values = head_values(scores, rule)
        label = _title(scores, title)
    else:
        values, label = np.asarray(scores, dtype=float), title or ""
    cmap = ListedColormap(["#f7f7f7", "#c6dbef", "#6baed6", "#fd8d3c", "#bd0026"])
    norm = BoundaryNorm(HEATMAP_BOUNDS, cmap.N)
    image = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    n_layers, n_heads = values.shape
    ax.set_xticks(range(0, n_heads, max(1, n_heads // 8)))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 8)))
    ax.set_title(label, fontsize=10)
    if colorbar:
        plt.colorbar(image, ax=ax, ticks=HEATMAP_BOUNDS, fraction=0.046, pad=0.04)
    return ax


def row_comparison(emit: HeadScores, consume: HeadScores, ax=None, top: int = 5, title: str | None = None):
    """Scatter of every head's mean score under the two row conventions; the top heads of each are labelled."""
    ax = _axes(ax, figsize=(4, 4))
    a, b = emit.mean().reshape(-1), consume.mean().reshape(-1)
    n_heads = emit.meta.n_heads
    ax.scatter(a, b, s=10, alpha=0.6)
    lim = max(1e-3, float(max(a.max(), b.max()))) * 1.05
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--")
    for flat in set(np.argsort(-a, kind="stable")[:top]) | set(np.argsort(-b, kind="stable")[:top]):
        ax.annotate(f"{flat // n_heads}-{flat % n_heads}", (a[flat], b[flat]), fontsize=7)
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel('mean score, row="emit"')
    ax.set_ylabel('mean score, row="consume" (paper code)')
    ax.set_title(title or f"{emit.meta.kind.upper()} — {emit.meta.model_id}", fontsize=10)
    return ax


def findings_grid(score_sets: Sequence[HeadScores], kind: str = "donut", filtered: bool = False,
                  ncols: int = 3, size: float = 4.0):
    """One figure with one panel per score set: kind = "donut" | "bars" | "heatmap"."""
    import matplotlib.pyplot as plt

    n = len(score_sets)
    nrows = max(1, (n + ncols - 1) // ncols)
    width = size * (1.6 if kind == "bars" else 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, size * nrows * (0.7 if kind == "bars" else 1)),
                             squeeze=False)
    for ax, scores in zip(axes.flat, score_sets):
        if kind == "donut":
            bin_donut(scores, ax=ax, filtered=filtered)
        elif kind == "bars":
            score_frequency_bars(scores, ax=ax)
        elif kind == "heatmap":
            head_heatmap(scores, ax=ax, rule="paper-code" if filtered else "readme")
        else:
            raise ValueError(f"kind must be 'donut', 'bars' or 'heatmap', got {kind!r}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig
