"""Every figure the book draws (ocrheads_lib.plots, ocrheads_lib.book_figures) is rendered here at the book's
sizes, on data shaped like the book's (smol-vl: 30 layers x 9 heads, the best heads in neighbouring layers),
and checked with `plots.layout_problems`: no two text labels overlap and no legend covers plotted data.
The checker itself is tested first on figures built to fail."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from ocrheads_lib import heads, plots  # noqa: E402
from ocrheads_lib.analysis import Interval  # noqa: E402
from ocrheads_lib.scoring.store import HeadScores, SampleScore, ScoreMeta  # noqa: E402


@pytest.fixture(autouse=True)
def _theme():
    plots.set_theme()
    yield
    plt.close("all")


def _scores(kind: str = "ocr", n_layers: int = 30, n_heads: int = 9, n: int = 12, seed: int = 0,
            hot: tuple = ((9, 0), (10, 0), (10, 1), (11, 0), (11, 1), (12, 4), (20, 3))) -> HeadScores:
    """Scores with a few strong heads packed into neighbouring cells (the case where labels collide)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        hits = (rng.random((n_layers, n_heads)) < 0.15).astype(int) * rng.integers(0, 3, (n_layers, n_heads))
        for layer, head in hot:
            hits[layer, head] = 4 if rng.random() < 0.9 else 3
        samples.append(SampleScore(id=f"s{i}", weight=1.0, n_rows=4, hits=np.minimum(hits, 4)))
    return HeadScores(ScoreMeta(model_id="smol-vl", kind=kind, n_layers=n_layers, n_heads=n_heads), samples=samples)


def _curves(x: str, values: list, flat: bool = False) -> pd.DataFrame:
    rows = []
    for task, modality in (("passkey_image", "image"), ("niah_image", "image"), ("passkey_text", "text")):
        rows.append(dict(task=task, modality=modality, head_set="none", metric="accuracy", score=0.9, lo=0.7, hi=1.0,
                         **{x: values[0] if x == "k" else 1.0}))
        for name, drop in (("ocr", 0.8), ("retrieval", 0.3), ("random", 0.05), ("random_layer_matched", 0.1)):
            for i, v in enumerate(values[1:] if x == "k" else values):
                score = 0.9 if flat else max(0.0, 0.9 - drop * (i + 1) / len(values))
                rows.append(dict(task=task, modality=modality, head_set=name, metric="accuracy", score=score,
                                 lo=max(0, score - 0.15), hi=min(1, score + 0.1), **{x: v}))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ the checker itself

def test_layout_check_finds_overlapping_labels_and_a_legend_on_data() -> None:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.5, 0.5, "L10H0", transform=ax.transAxes)
    ax.text(0.51, 0.5, "L11H0", transform=ax.transAxes)
    problems = plots.layout_problems(fig)
    assert any("'L10H0' and 'L11H0'" in p for p in problems), problems

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1, 1], label="a line along the top")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right")
    assert any("legend" in p and "covers" in p for p in plots.layout_problems(fig))

    fig, ax = plt.subplots(figsize=(4, 3))              # the same data, legend where there is none
    ax.plot([0, 1], [1, 1], label="a line along the top")
    ax.set_ylim(0, 2)
    ax.legend(loc="lower right")
    ax.text(0.1, 0.2, "apart", transform=ax.transAxes)
    assert plots.layout_problems(fig) == []


# ------------------------------------------------------------------------------------ every book figure

def test_heatmaps_mark_the_heads_and_keep_labels_apart() -> None:
    ocr = _scores()
    fig, axes = plots.two_panels(height=3.3)
    plots.head_heatmap(ocr, ax=axes[0], title='row="emit"', colorbar=False)
    plots.head_heatmap(_scores(seed=1), ax=axes[1], title='row="consume"')
    fig.tight_layout()
    assert plots.layout_problems(fig) == []
    outlined = [p for p in axes[0].patches if p.get_edgecolor()[:3] == (0.0, 0.0, 0.0)]
    top5 = sorted(h for h, _ in heads.ranked(ocr)[:5])
    assert sorted((int(p.get_y()), int(p.get_x())) for p in outlined) == top5
    assert set(top5) <= {(9, 0), (10, 0), (10, 1), (11, 0), (11, 1), (12, 4), (20, 3)}

    for n_layers, n_heads in ((28, 12), (32, 32)):         # the released files, beside their bar plot
        fig, axes = plots.two_panels(height=3.4, width_ratios=(1.6, 1))
        scores = _scores(n_layers=n_layers, n_heads=n_heads)
        plots.score_frequency_bars(scores, ax=axes[0], top=5, max_heads=80)
        plots.head_heatmap(scores, ax=axes[1], rule="paper-code", annotate=0)
        fig.tight_layout()
        assert plots.layout_problems(fig) == [], (n_layers, n_heads)

    mass = np.zeros((30, 9))
    mass[3:8, :] = 0.8
    ax = plots.value_heatmap(mass, title="first-token mass", label="attention mass", mark=[(9, 0), (10, 1)],
                             mark_label="top 2 OCR heads")
    assert plots.layout_problems(ax.figure) == []
    assert len([p for p in ax.patches if p.get_linewidth() == 2.0]) == 2
    small = plots.value_heatmap(np.arange(12.0).reshape(3, 4), fmt=".0f")          # big cells: values written
    assert sorted(t.get_text() for t in small.texts if t.get_text()) == ["10", "11", "7", "8", "9"]


def test_score_bars_scatter_and_bins_at_the_book_sizes() -> None:
    ocr, retrieval = _scores(), _scores("retrieval", seed=2, hot=((3, 1), (4, 1), (5, 2)))
    assert plots.layout_problems(plots.score_frequency_bars(ocr).figure) == []
    dense = _scores(n_layers=4, n_heads=8, hot=[(l, h) for l in range(4) for h in range(5)])   # tiny: many heads at 1
    assert plots.layout_problems(plots.findings_grid([dense, ocr], kind="bars")) == []
    fig, axes = plots.two_panels(height=3.4)
    plots.row_comparison(ocr, _scores(seed=3), ax=axes[0], title="mean score per head")
    plots.bin_bars([ocr, retrieval], ax=axes[1], names=["emit", "consume"])
    fig.tight_layout()
    assert plots.layout_problems(fig) == []
    named = {t.get_text() for t in axes[0].texts}
    assert len(named) >= 3 and named <= {"L9H0", "L10H0", "L10H1", "L11H0", "L11H1", "L12H4", "L20H3"}

    sets = [ocr, retrieval, _scores(seed=4), _scores("retrieval", seed=5)]
    shares = {plots.label(s) + f" {i}": Interval(8.1 - 2 * i, 5.0 - i, 11.0 - i, 50) for i, s in enumerate(sets)}
    fig = plots.findings_grid(sets, kind="bins", shares=shares, names=list(shares))
    assert plots.layout_problems(fig) == []
    intervals = fig.axes[1]                                        # the comparison the text makes is drawn
    assert len(intervals.containers) == 4 and intervals.get_xlabel().startswith("% heads with mean score > 0.1")
    for kind in ("bars", "heatmap"):
        assert plots.layout_problems(plots.findings_grid(sets, kind=kind)) == [], kind


@pytest.mark.parametrize("flat", [False, True])
def test_sweep_panels_keep_the_legend_off_the_data(flat: bool) -> None:
    fig = plots.sweep_panels(_curves("k", [0, 5, 20], flat), "k", "k masked heads", baseline="start")
    assert plots.layout_problems(fig) == []
    fig = plots.sweep_panels(_curves("beta", [0.0, 0.5], flat), "beta", "β (share of sink mass kept)",
                             baseline="line", flat_note="the top OCR heads put 0.01 on the first token")
    assert plots.layout_problems(fig) == []
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert bool(notes) == flat and all(" ".join(n.split()).startswith("flat: every condition scores 0.90.") for n in notes)
    assert len(fig.legends) == 1


def test_condition_scatter_and_data_figures() -> None:
    from ocrheads_lib.book_figures import grounding_figure
    from ocrheads_lib.grounding import CharacterAttention, CharacterGrounding

    rng = np.random.default_rng(0)
    changes = pd.DataFrame({"task": ["a"] * 50 + ["b"] * 50, "direct": rng.random(100), "cot": rng.random(100)})
    assert plots.layout_problems(plots.condition_scatter(changes)) == []

    page = Image.new("RGB", (448, 140), "white")
    boxes = [(20 + 28 * i, 40, 44 + 28 * i, 70) for i in range(5)]
    chars = CharacterAttention(sample_id="p0", page=page, token_boxes=np.zeros((0, 4)),
                               attention=np.zeros((1, 1, 5, 0)), characters=list("12345"), char_boxes=boxes)
    result = CharacterGrounding(sample_id="p0", heads=[(9, 0)], predicted=[(b[0], 28, b[0] + 28, 56) for b in boxes],
                                hits=[True, True, False, True, False], ious=[0.5] * 5)
    fig = grounding_figure(chars, result)
    assert plots.layout_problems(fig) == []
    legend = fig.axes[0].get_legend()
    from ocrheads_lib.book_figures import pages_figure
    from ocrheads_lib.data.samples import ImageSample

    pages = [Image.new("RGB", (448, 168), "white") for _ in range(6)]
    sample = ImageSample(id="p", pages=pages, question="What is the pass key?", answer="12", evidence_page=5,
                         boxes=[(2, 2, 10, 20), (30, 2, 40, 20)], units=["1", "2"], coarse_box=(2, 2, 40, 20), seed=0)
    assert plots.layout_problems(pages_figure(sample, max_pages=4, cols=2, page_width_in=3.5)) == []   # a suptitle
    assert [t.get_text() for t in legend.get_texts()][0] == "character's box"
