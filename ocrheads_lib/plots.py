"""The book's figures, drawn with seaborn under one theme (:func:`set_theme`).

Score figures: head counts per score bin, score-vs-frequency bars, layer × head heatmaps with the top
heads annotated, the emit-vs-consume scatter, and the intervention sweeps (masking, sink). Each
function draws on a given Axes (or makes one) and returns it, or returns a figure; numbers come from
:mod:`ocrheads_lib.analysis` / :mod:`ocrheads_lib.heads` and the experiments' tables, never computed here.

Legibility: figures are at most :data:`MAX_WIDTH_IN` wide at :data:`DPI`, so they are shown at their
natural size in the book's text column and every font (>= 9 pt) stays >= 9 pt as rendered.
"""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Rectangle

from ocrheads_lib.analysis import BIN_LABELS, sparsity_bins
from ocrheads_lib.heads import head_values
from ocrheads_lib.scoring.store import HeadScores
from ocrheads_lib.types import head_label

HEATMAP_BOUNDS = (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)   # the paper's discrete colour bounds
HEATMAP_COLORS = ("#f7f7f7", "#c6dbef", "#6baed6", "#fd8d3c", "#bd0026")
ACTIVE_THRESHOLD = 0.1                              # the paper's line: share of entries > 0.1
DPI = 100                                           # figure and savefig resolution (px per inch)
MAX_WIDTH_IN = 7.2                                  # 720 px: fits the book's text column unscaled
MIN_FONT_PT = 9
FONT_SIZES = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
              "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11}
SET_COLORS = {"ocr": "#c0392b", "retrieval": "#2e86c1", "random": "#7f8c8d", "random_layer_matched": "#b7950b",
              "none": "#000000"}


def _layer_head_axes(ax: Any, n_layers: int, n_heads: int) -> None:
    """Axes of a layer x head map: layer 0 at the bottom, at most ~8 ticks per axis, labelled."""
    ax.invert_yaxis()
    step_h, step_l = max(1, -(-n_heads // 8)), max(1, -(-n_layers // 8))   # at most 8 ticks per axis
    ax.set_xticks(np.arange(0, n_heads, step_h) + 0.5, [str(i) for i in range(0, n_heads, step_h)], rotation=0)
    ax.set_yticks(np.arange(0, n_layers, step_l) + 0.5, [str(i) for i in range(0, n_layers, step_l)], rotation=0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")


def set_theme() -> None:
    """The book's one figure theme: seaborn whitegrid, fonts >= 9 pt, 100-dpi PNGs."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep", rc=FONT_SIZES)
    mpl.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight",
                         "figure.figsize": (MAX_WIDTH_IN, 3.6), "axes.titleweight": "normal"})


def _axes(ax=None, figsize=(4, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _title(scores: HeadScores, title: str | None) -> str:
    if title is not None:
        return title
    prefix = "OCR" if scores.meta.kind == "ocr" else "retrieval"
    row = f", {scores.meta.row}" if scores.meta.row else ""
    return f"{prefix}: {scores.meta.model_id}{row}"


def label(scores: HeadScores) -> str:
    """A short name of a score set for legends: "OCR tiny" / "retrieval Qwen2-VL-2B-Instruct"."""
    return f"{'OCR' if scores.meta.kind == 'ocr' else 'retrieval'} {scores.meta.model_id}"


def bin_bars(score_sets: Sequence[HeadScores], ax=None, filtered: bool = False, names: Sequence[str] | None = None):
    """Share of heads (%) per score bin (==0, (0,.1], (.1,.3], (.3,.5], (.5,1]), one bar colour per score set;
    the head counts are written along the bars (rotated, so neighbouring counts never collide). Replaces the
    paper's donuts: bars of several sets side by side are comparable at a glance."""
    ax = _axes(ax, figsize=(MAX_WIDTH_IN, 3.4))
    names = list(names) if names is not None else [label(s) for s in score_sets]
    rows = []
    for name, scores in zip(names, score_sets):
        bins = sparsity_bins(scores, filtered=filtered)
        rows += [{"bin": b, "share": share, "count": count, "set": name}
                 for b, count, share in zip(BIN_LABELS, bins, bins.shares())]
    frame = pd.DataFrame(rows)
    sns.barplot(frame, x="bin", y="share", hue="set", ax=ax)
    small = 9 if len(names) <= 2 else 8
    for container, (_, sub) in zip(ax.containers, frame.groupby("set", sort=False)):
        ax.bar_label(container, labels=[str(c) for c in sub["count"]], fontsize=small, padding=2, rotation=90)
    ax.set_xlabel("mean head score" + (" (zero-filter applied)" if filtered else ""))
    ax.set_ylabel("share of heads (%)")
    ax.set_ylim(0, 125)
    ax.set_yticks([0, 20, 40, 60, 80, 100])
    _legend_above(ax, ncol=min(len(names), 2))
    return ax


def _legend_above(ax: Any, ncol: int = 2, title: str | None = None) -> None:
    """The axes' legend above the plotting area, outside it: it can never cover data."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=max(1, ncol),
                  frameon=False, borderaxespad=0.2)


def share_intervals(shares: Any, ax=None, threshold: float = 0.1):
    """The share of heads (%) whose mean score is above `threshold`, one row per score set, with its 95 %
    bootstrap interval drawn: the comparison the text makes (e.g. OCR vs retrieval share) is visible as
    two intervals that do or do not overlap. shares: name -> `analysis.Interval` (estimate, low, high)."""
    ax = _axes(ax, figsize=(MAX_WIDTH_IN / 2, 3.0))
    names = list(shares)
    y = np.arange(len(names))[::-1]
    palette = sns.color_palette(n_colors=max(1, len(names)))
    for yi, name, colour in zip(y, names, palette):
        iv = shares[name]
        ax.errorbar([iv.estimate], [yi], xerr=[[iv.estimate - iv.low], [iv.high - iv.estimate]], fmt="o",
                    color=colour, capsize=4, lw=1.5)
    ax.set_yticks(y, names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    high = max([shares[n].high for n in names] + [1.0])
    low = min([shares[n].low for n in names if shares[n].low > 0] + [high])
    if high / max(low, 1e-9) > 5:
        # shares of very different size (a few % beside 50 %): a log axis keeps the small ones apart
        ax.set_xscale("log")
        ax.set_xlim(max(0.1, low / 1.6), min(100.0, high * 1.6))
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_locator(FixedLocator([v for v in (0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= v <= hi]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, high * 1.15)
    ax.set_xlabel(f"% heads with mean score > {threshold:g} (95 % bootstrap interval"
                  + (", log scale)" if ax.get_xscale() == "log" else ")"))
    return ax


def score_frequency_bars(scores: HeadScores, ax=None, top: int = 7, title: str | None = None,
                         active_threshold: float = 0.0, max_heads: int | None = 120):
    """Bars = raw mean score per head, line = activation frequency (share of entries > threshold; the book's
    one definition is > 0, as in ``analysis.static_activation``; the paper's figure used 0.1), heads
    sorted by frequency (then mean) descending; the first `top` heads of that order are marked and named
    (the paper's inset, see :func:`inset_heads`)."""
    ax = _axes(ax, figsize=(MAX_WIDTH_IN, 3.2))
    mean = scores.mean().reshape(-1)
    freq = scores.activation_frequency(active_threshold).reshape(-1)
    n_heads = scores.meta.n_heads
    order = np.lexsort((np.arange(len(mean)), -mean, -freq))   # frequency desc, then mean desc, layer-major
    if max_heads is not None:
        order = order[:max_heads]
    x = np.arange(len(order))
    sns.barplot(x=x, y=mean[order], color=sns.color_palette()[0], width=1.0, label="mean score", ax=ax,
                native_scale=True)
    sns.lineplot(x=x, y=freq[order], color=sns.color_palette()[1], label=f"share of entries > {active_threshold:g}",
                 ax=ax)
    best = [head[0] * n_heads + head[1] for head in inset_heads(scores, top, active_threshold)]
    position = {int(h): i for i, h in enumerate(order)}
    marked = [flat for flat in best if int(flat) in position]
    ax.plot([position[int(f)] for f in marked], [mean[f] + 0.04 for f in marked], "v", color="black", ms=4)
    names = [head_label(divmod(int(flat), n_heads)) for flat in best]
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(0, 1.38)                    # a band above 1 (the largest score) for the one-row legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xticks([])
    # the marked heads are named under the axis, where they cannot cover bars or the legend
    ax.set_xlabel(f"heads by activation frequency (first {len(order)})\n▼ top {top}: " + ", ".join(names))
    ax.set_ylabel("score / frequency")
    ax.legend(loc="upper right", ncol=2, frameon=True, borderaxespad=0.3, handlelength=1.2, columnspacing=0.8)
    ax.set_title(_title(scores, title))
    return ax


def inset_heads(scores: HeadScores, top: int = 7, active_threshold: float = ACTIVE_THRESHOLD) -> list[tuple[int, int]]:
    """The heads the paper's bar plot labels: the first `top` in order of activation frequency (share of
    entries > 0.1), ties by raw mean, then layer-major."""
    mean = scores.mean().reshape(-1)
    freq = scores.activation_frequency(active_threshold).reshape(-1)
    order = np.lexsort((np.arange(len(mean)), -mean, -freq))[:top]
    return [(int(i // scores.meta.n_heads), int(i % scores.meta.n_heads)) for i in order]


def _short(value: float) -> str:
    """A score in at most three characters for a heatmap cell: 1 -> "1", 0.9412 -> ".94"."""
    return "1" if value >= 0.995 else f"{value:.2f}".lstrip("0")


def _mark_cells(ax: Any, heads: Sequence[Sequence[int]], colour: str = "black", lw: float = 1.6) -> None:
    """Outline the cells of `heads` ((layer, head) pairs) on a layer × head map: the heads under discussion
    stay visible however small the cells are."""
    for layer, head in heads:
        ax.add_patch(Rectangle((int(head), int(layer)), 1, 1, fill=False, edgecolor=colour, lw=lw, zorder=5,
                               clip_on=False))


def _cells_fit_labels(ax: Any, n_layers: int, n_heads: int, fontsize: float, chars: int = 3) -> bool:
    """Whether a label of `chars` characters at `fontsize` fits inside one cell of the map on `ax`."""
    fig = ax.figure
    width_px = ax.get_position().width * fig.get_figwidth() * fig.dpi / max(1, n_heads)
    height_px = ax.get_position().height * fig.get_figheight() * fig.dpi / max(1, n_layers)
    return width_px >= 0.62 * fontsize * chars * fig.dpi / 72 + 2 and height_px >= 1.25 * fontsize * fig.dpi / 72


def head_heatmap(scores: HeadScores | np.ndarray, ax=None, title: str | None = None, rule: str = "readme",
                 colorbar: bool = True, annotate: int = 5, mark: Sequence[Sequence[int]] | None = None):
    """Layer × head map of the head values (raw mean for the frequency rule "readme", zero-filtered mean for
    "paper-code") in the paper's discrete colours (bounds 0, .01, .1, .3, .5, 1). The heads under discussion
    (`mark`, default: the `annotate` best) are outlined in black; they carry their value only where a cell
    is large enough for it (small maps: a value per cell would collide with its neighbours)."""
    if isinstance(scores, HeadScores):
        values = head_values(scores, rule)
        name = _title(scores, title)
    else:
        values, name = np.asarray(scores, dtype=float), title or ""
    n_layers, n_heads = values.shape
    ax = _axes(ax, figsize=(min(MAX_WIDTH_IN / 2, 1.2 + 0.25 * n_heads), 3.4))
    flat_values = values.reshape(-1)
    best = [int(f) for f in np.argsort(-flat_values, kind="stable")[:annotate] if flat_values[f] > 0]
    marked = [tuple(h) for h in mark] if mark is not None else [divmod(f, n_heads) for f in best]
    fits = _cells_fit_labels(ax, n_layers, n_heads, 9)
    annot = np.full(values.shape, "", dtype=object)
    if fits:
        for layer, head in marked:
            if values[layer, head] > 0:
                annot[layer, head] = _short(values[layer, head])
    cmap = ListedColormap(list(HEATMAP_COLORS))
    sns.heatmap(values, ax=ax, cmap=cmap, norm=BoundaryNorm(HEATMAP_BOUNDS, cmap.N), annot=annot, fmt="",
                annot_kws={"fontsize": 9, "color": "black"}, cbar=colorbar, linewidths=0.3 if n_heads <= 16 else 0,
                linecolor="white", cbar_kws={"ticks": list(HEATMAP_BOUNDS), "label": "score"}, square=False)
    _mark_cells(ax, marked)
    _layer_head_axes(ax, n_layers, n_heads)
    if marked:
        ax.set_xlabel(f"head (outlined: {'top ' + str(len(marked)) if mark is None else 'heads discussed'})")
    ax.set_title(name)
    return ax


def _place_labels(ax: Any, points: Sequence[tuple[float, float]], names: Sequence[str], fontsize: float = 9) -> list[str]:
    """Name points on `ax` without collisions: each label tries eight positions around its point and takes
    the first whose box overlaps no label placed before it and stays inside the axes; a label with no free
    position is left out. Returns the names that could not be placed."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, left_out = [], []
    offsets = [(4, 4), (4, -12), (-4, 4), (-4, -12), (8, -4), (-8, -4), (0, 10), (0, -16)]
    for (x, y), name in zip(points, names):
        for dx, dy in offsets:
            text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer)
            inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
            if inside and not any(_overlap(box, other, 0.0) for other in placed):
                placed.append(box)
                break
            text.remove()
        else:
            left_out.append(name)
    return left_out


def row_comparison(emit: HeadScores, consume: HeadScores, ax=None, top: int = 5, title: str | None = None,
                   xlabel: str = 'mean score, row="emit"', ylabel: str = 'mean score, row="consume"'):
    """Scatter of every head's mean score under two score sets (e.g. the two row conventions); the top
    heads of each are labelled with their head_label ("L9H0") where a label fits without covering another
    (:func:`_place_labels`)."""
    ax = _axes(ax, figsize=(MAX_WIDTH_IN / 2, 3.4))
    a, b = emit.mean().reshape(-1), consume.mean().reshape(-1)
    n_heads = emit.meta.n_heads
    sns.scatterplot(x=a, y=b, s=28, alpha=0.7, ax=ax)
    lim = max(1e-3, float(max(a.max(), b.max()))) * 1.08
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{emit.meta.kind.upper()}: {emit.meta.model_id}")
    chosen = sorted(set(np.argsort(-a, kind="stable")[:top]) | set(np.argsort(-b, kind="stable")[:top]),
                    key=lambda f: -max(a[f], b[f]))
    chosen = [f for f in chosen if max(a[f], b[f]) > 0]
    _place_labels(ax, [(a[f], b[f]) for f in chosen], [head_label(divmod(int(f), n_heads)) for f in chosen])
    return ax


def two_panels(height: float = 3.4, width_ratios: Sequence[float] = (1, 1)):
    """A figure with two panels side by side at the book's column width."""
    return plt.subplots(1, 2, figsize=(MAX_WIDTH_IN, height), gridspec_kw={"width_ratios": list(width_ratios)})


def findings_grid(score_sets: Sequence[HeadScores], kind: str = "bins", filtered: bool = False,
                  ncols: int = 2, size: float = 3.2, shares: Any = None, active_threshold: float = 0.0,
                  names: Sequence[str] | None = None):
    """One figure for several score sets: kind = "bins" (one bar chart, sets side by side; with `shares`,
    name -> interval of the % of heads above 0.1, a second panel draws those intervals, see
    :func:`share_intervals`), "bars" (one score-vs-frequency panel per set, `ncols` per row; activation =
    an entry > `active_threshold`, the definition of ``analysis.static_activation``) or "heatmap"."""
    if kind == "bins":
        if shares:
            fig, (ax, right) = plt.subplots(2, 1, figsize=(MAX_WIDTH_IN, size + 0.9 + 0.35 * len(shares)),
                                            gridspec_kw={"height_ratios": [size, 0.9 + 0.35 * len(shares)]})
            bin_bars(score_sets, ax=ax, filtered=filtered, names=names)
            share_intervals(shares, ax=right)
        else:
            fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, size + 0.4))
            bin_bars(score_sets, ax=ax, filtered=filtered, names=names)
        fig.tight_layout()
        return fig
    if kind not in ("bars", "heatmap"):
        raise ValueError(f"kind must be 'bins', 'bars' or 'heatmap', got {kind!r}")
    ncols = max(1, min(ncols, 2, len(score_sets)))
    nrows = max(1, -(-len(score_sets) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(MAX_WIDTH_IN, size * nrows), squeeze=False)
    for ax, scores in zip(axes.flat, score_sets):
        if kind == "bars":
            score_frequency_bars(scores, ax=ax, top=4 if ncols > 1 else 7, active_threshold=active_threshold)
        else:
            head_heatmap(scores, ax=ax, rule="paper-code" if filtered else "readme")
    for ax in list(axes.flat)[len(score_sets):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


FLAT_WITHIN = 0.01      # a sweep panel whose every point is this close to the unmodified score is "flat"


def sweep_panels(curves: Any, x: str, xlabel: str, baseline: str = "start", col_wrap: int = 2,
                 flat_note: str | None = None) -> Any:
    """Score vs `x` (masking's k, the sink's beta) per head set, one panel per task (two per row), random
    draws as their mean with a band from the worst to the best draw. One legend above the panels (never
    over the data). A panel where no condition moves the score by more than :data:`FLAT_WITHIN` says so
    inside it, with `flat_note` (why, e.g. how little sink mass there is to move) when given.

    curves: the tidy table of `experiments.masking.score_curves` / `experiments.sink.sink_curves`
    (columns task, modality, head_set, metric, score, lo, hi and `x`). baseline: "start" = the unmasked
    score is every curve's first point (k = 0); "line" = a dashed horizontal line."""
    if baseline not in ("start", "line"):
        raise ValueError(f"baseline must be 'start' or 'line', got {baseline!r}")
    tasks = sorted(curves["task"].unique(), key=lambda t: (curves[curves.task == t].modality.iloc[0] != "image", t))
    ncols = min(col_wrap, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(MAX_WIDTH_IN, 3.1 * nrows + 0.4), squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    for ax, task in zip(axes.flat, tasks):
        sub = curves[curves.task == task]
        base = sub[sub.head_set == "none"]
        lines = []
        for name in [h for h in sub.head_set.unique() if h != "none"]:
            line = sub[sub.head_set == name].sort_values(x)
            if baseline == "start" and not base.empty:
                line = pd.concat([base.assign(head_set=name), line], ignore_index=True)
            lines.append(line)
        frame = pd.concat(lines, ignore_index=True) if lines else sub.iloc[0:0]
        palette = {name: SET_COLORS.get(name, "#333333") for name in frame.head_set.unique()}
        sns.lineplot(frame, x=x, y="score", hue="head_set", palette=palette, marker="o", ax=ax, errorbar=None)
        for name, line in frame.groupby("head_set"):
            ax.fill_between(line[x], line.lo, line.hi, alpha=0.15, color=palette[name], lw=0)
        if baseline == "line" and not base.empty:
            ax.axhline(base.score.iloc[0], color="black", ls="--", lw=1, label="unmodified")
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        reference = float(base.score.iloc[0]) if not base.empty else float(frame.score.iloc[0]) if len(frame) else 0.0
        if len(frame) and float((frame.score - reference).abs().max()) <= FLAT_WITHIN:
            import textwrap

            width = 30 if ncols > 1 else 60
            note = "\n".join(textwrap.wrap(f"flat: every condition scores {reference:.2f}." + (
                f" {flat_note}" if flat_note else ""), width))
            ax.text(0.5, 0.5 if reference < 0.3 or reference > 0.7 else 0.15, note, transform=ax.transAxes,
                    ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="round", fc="white", ec="#bbbbbb"))
        ax.set_title(f"{task} ({sub.modality.iloc[0]})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(sub.metric.iloc[0])
        ax.set_ylim(-0.03, 1.03)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.1 * nrows + 0.4)))
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 5),
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
    return fig


def value_heatmap(values: Any, ax=None, title: str = "", label: str = "", annotate: int = 5, fmt: str = ".2f",
                  cmap: str = "rocket_r", mark: Sequence[Sequence[int]] | None = None, mark_label: str = ""):
    """Layer × head map of any per-head number (a count, an attention mass, a share) on a continuous scale;
    the `annotate` largest cells carry their value where it fits in a cell, and the heads under discussion
    (`mark`, e.g. the top OCR heads) are outlined, named by `mark_label` under the map."""
    values = np.asarray(values, dtype=float)
    n_layers, n_heads = values.shape
    # wide enough for a 4-character label per cell; one row per layer stays legible for 30-layer models
    ax = _axes(ax, figsize=(min(MAX_WIDTH_IN, 1.6 + (0.5 if n_heads <= 12 else 0.35) * n_heads),
                            max(3.2, 1.0 + 0.17 * n_layers)))
    flat = np.nan_to_num(values, nan=-np.inf).reshape(-1)
    annot = np.full(values.shape, "", dtype=object)
    fontsize = 9 if n_layers <= 16 else 7
    if _cells_fit_labels(ax, n_layers, n_heads, fontsize, chars=len(format(float(np.nanmax(values)) if np.isfinite(flat).any() else 0.0, fmt))):
        for index in np.argsort(-flat, kind="stable")[:annotate]:
            if np.isfinite(flat[index]):
                annot[index // n_heads, index % n_heads] = format(flat[index], fmt)
    sns.heatmap(values, ax=ax, cmap=cmap, annot=annot, fmt="", annot_kws={"fontsize": fontsize},
                cbar_kws={"label": label}, linewidths=0.3 if n_heads <= 16 else 0, linecolor="white")
    if mark:
        _mark_cells(ax, mark, colour="#00a0cc", lw=2.0)
    _layer_head_axes(ax, n_layers, n_heads)
    if mark:
        ax.set_xlabel(f"head (outlined in blue: {mark_label or 'heads discussed'})")
    ax.set_title(title)
    return ax


def depth_profiles(profiles: Any, ax=None, marks: Any = None, mark_label: str = "", title: str = ""):
    """Where each model's retrieval score sits by depth: per model (name -> (L,) share of its total score per
    layer, e.g. :func:`ocrheads_lib.experiments.window.depth_profile`) the share of each layer against its
    relative depth (layer + 0.5) / L, so models of different depths share one axis. `marks` (relative depths,
    e.g. a model's global layers) are drawn as dotted vertical lines named `mark_label` in the legend."""
    ax = _axes(ax, figsize=(MAX_WIDTH_IN, 3.4))
    palette = sns.color_palette(n_colors=max(1, len(profiles)))
    for (name, profile), colour, marker in zip(profiles.items(), palette, ("o", "s", "^", "D", "v")):
        values = np.asarray(profile, dtype=float)  # (L,)
        depth = (np.arange(values.size) + 0.5) / values.size
        ax.plot(depth, values, marker=marker, ms=4, lw=1.4, color=colour, label=name)
    for index, at in enumerate(marks or []):
        ax.axvline(at, color="#555555", ls=":", lw=1.2, label=mark_label if index == 0 and mark_label else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("share of the retrieval score")
    if title:
        ax.set_title(title, pad=28)
    _legend_above(ax, ncol=min(4, len(profiles) + (1 if marks else 0)))
    return ax


def condition_scatter(changes: Any, x: str = "direct", y: str = "cot", col: str = "task"):
    """Per-head scores under two conditions (one panel per `col` value, two per row), diagonal dashed."""
    groups = list(changes.groupby(col, sort=True))
    ncols = max(1, min(2, len(groups)))
    nrows = max(1, -(-len(groups) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(MAX_WIDTH_IN, 3.3 * nrows), squeeze=False)
    for ax, (name, sub) in zip(axes.flat, groups):
        sns.scatterplot(sub, x=x, y=y, s=28, alpha=0.7, ax=ax)
        top = float(np.nanmax(sub[[x, y]].to_numpy())) if len(sub) else 0.0
        lim = max(0.05, top) * 1.05
        ax.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.set_xlabel(f"head score, {x}")
        ax.set_ylabel(f"head score, {y}")
        ax.set_title(str(name))
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ layout check

def _visible_texts(fig: Any) -> list[Any]:
    """Every visible, non-empty text of a figure: titles, axis and tick labels, annotations, bar and
    heatmap labels, legend entries, the suptitle."""
    texts = []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison and not ax.texts and not ax.get_title():
            continue
        texts += list(ax.texts) + [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):          # only the ticks drawn: those inside the view interval
            low, high = sorted(axis.get_view_interval())
            span = 1e-9 + 1e-6 * abs(high - low)
            texts += [tick.label1 for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                      if low - span <= tick.get_loc() <= high + span]
    for legend in _legends(fig):
        texts += list(legend.get_texts())
    texts += list(fig.texts)
    if getattr(fig, "_suptitle", None) is not None:
        texts.append(fig._suptitle)
    unique = list({id(t): t for t in texts}.values())    # the suptitle is also one of fig.texts
    return [t for t in unique if t.get_visible() and t.get_text().strip()]


def _legends(fig: Any) -> list[Any]:
    out = list(fig.legends)
    for ax in fig.axes:
        if ax.get_legend() is not None and ax.get_legend().get_visible():
            out.append(ax.get_legend())
    return out


def _overlap(a: Any, b: Any, tolerance: float) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


def _data_points(ax: Any) -> np.ndarray:
    """Display coordinates of what an axes plots: line vertices, scatter offsets, bar tops and corners,
    band outlines (fill_between)."""
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.patches import Rectangle as Rect

    points = []
    for line in ax.get_lines():
        if line.get_visible() and len(line.get_xydata()):
            points.append(line.get_transform().transform(line.get_xydata()))
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            points.append(coll.get_offset_transform().transform(coll.get_offsets()))
        elif isinstance(coll, PolyCollection):
            for path in coll.get_paths():
                if len(path.vertices):
                    points.append(coll.get_transform().transform(path.vertices))
    for patch in ax.patches:
        if isinstance(patch, Rect) and patch.get_visible() and patch.get_height() and patch.get_width():
            box = patch.get_window_extent()
            xs = np.linspace(box.x0, box.x1, 5)
            points.append(np.column_stack([xs, np.full_like(xs, box.y1)]))
            points.append(np.column_stack([xs, np.full_like(xs, box.y0)]))
    points = [p[np.all(np.isfinite(p), axis=1)] for p in points]
    return np.concatenate(points) if points else np.zeros((0, 2))


def layout_problems(fig: Any, tolerance: float = 1.0) -> list[str]:
    """What makes a figure hard to read, measured on the rendered figure (matplotlib's renderer gives each
    artist's bounding box in pixels): two text labels whose boxes overlap by more than `tolerance` px in
    both directions, and a legend drawn over plotted data (a line vertex, scatter point, bar edge or band
    corner inside the legend's box). Empty when the figure is clean."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = _visible_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    problems = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if _overlap(boxes[i], boxes[j], tolerance):
                problems.append(f"labels overlap: {texts[i].get_text()!r} and {texts[j].get_text()!r}")
    for legend in _legends(fig):
        frame = legend.get_window_extent(renderer)
        axes = [legend.axes] if legend.axes is not None and legend in [a.get_legend() for a in fig.axes] else fig.axes
        for ax in axes:
            points = _data_points(ax)
            inside = ((points[:, 0] > frame.x0) & (points[:, 0] < frame.x1) & (points[:, 1] > frame.y0)
                      & (points[:, 1] < frame.y1)) if len(points) else np.zeros(0, bool)
            if inside.any():
                problems.append(f"legend ({', '.join(t.get_text() for t in legend.get_texts())}) covers "
                                f"{int(inside.sum())} plotted point(s) of {ax.get_title() or 'an axes'!r}")
    return problems
