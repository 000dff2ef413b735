"""Scores as data, head selection and the three findings.

The official-file tests read the two released score files shipped with the package
(`ocrheads_lib/data/official/`, see its README) and must reproduce the paper's published numbers exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ocrheads_lib import analysis, heads
from ocrheads_lib.data.official import official_path
from ocrheads_lib.scoring import Failure, HeadScores, SampleScore, ScoreMeta, load_scores

REPO = Path(__file__).resolve().parents[1]
INTERNVL = official_path("InternVL2-8B_fg_2.json")      # shipped with the package: never skipped
QWEN_TE = official_path("Qwen2-VL-2B-Instruct_te_2.json")


@pytest.fixture(scope="module")
def internvl() -> HeadScores:
    return load_scores(INTERNVL)


@pytest.fixture(scope="module")
def qwen_te() -> HeadScores:
    return load_scores(QWEN_TE)


# --------------------------------------------------------------------------- official files
def test_internvl_official_numbers(internvl: HeadScores) -> None:
    assert internvl.meta.kind == "ocr" and internvl.meta.source == "official"
    assert internvl.shape == (32, 32)
    lengths = internvl.n_entries()
    assert lengths[0, 0] == 550
    assert np.sum(lengths == 51) == 1023
    assert not internvl.aligned
    assert list(analysis.sparsity_bins(internvl)) == [895, 85, 32, 6, 6]
    assert list(analysis.sparsity_bins(internvl, filtered=True)) == [895, 85, 32, 6, 6]
    assert len(heads.select(internvl, "paper-code")) == 44
    assert len(heads.select(internvl, "readme")) == 44
    selected = heads.select(internvl, "paper-code")
    assert selected[0] == (9, 0)
    assert round(float(internvl.mean()[9, 0]), 4) == 0.6863
    assert heads.top_k(internvl, 2, "paper-code") == [(9, 0), (7, 4)]   # tie l7_h4 = l7_h6: layer-major
    top10 = [(9, 0), (7, 4), (7, 6), (11, 24), (15, 26), (12, 14), (6, 2), (9, 9), (12, 10), (18, 14)]
    assert heads.top_k(internvl, 10, "paper-code") == top10
    assert {l for l, _ in selected} <= set(range(6, 32))
    act = analysis.static_activation(internvl)
    assert act.pearson == pytest.approx(1.0) and act.spearman == pytest.approx(1.0)
    values = np.concatenate(list(internvl.head_entries().values()))
    assert set(np.unique(values).tolist()) == {0.0, 1.0}
    assert int(np.sum(values == 0)) == 51938 and int(np.sum(values == 1)) == 785
    assert int(np.sum(internvl.mean() > 0)) == 129
    assert round(float(internvl.mean().mean()), 4) == 0.0150
    assert heads.top_k(internvl, 20, "paper-code")[10:] == [(15, 30), (20, 6), (15, 27), (18, 15), (30, 14),
                                                            (9, 11), (14, 19), (15, 12), (15, 25), (19, 30)]


def test_qwen_text_official_numbers(qwen_te: HeadScores) -> None:
    assert qwen_te.meta.kind == "retrieval" and qwen_te.shape == (28, 12)
    assert np.all(qwen_te.n_entries() == 600)
    raw = qwen_te.mean()
    assert int(np.sum(raw >= 0.1)) == 58
    assert len(heads.select(qwen_te, "readme")) == 58
    paper = heads.select(qwen_te, "paper-code")
    assert len(paper) == 40
    assert paper[:3] == [(26, 9), (22, 6), (16, 1)]
    dropped = {(int(l), int(h)) for l, h in zip(*np.nonzero(raw >= 0.1))} - set(paper)
    always_on = {(0, 3), (8, 1), (12, 11), (27, 11), (15, 1), (0, 8), (18, 1), (9, 10), (17, 3), (21, 11),
                 (0, 0), (26, 8), (17, 10), (14, 2), (23, 1), (12, 0), (18, 9), (11, 10)}
    assert dropped == always_on and len(always_on) == 18
    assert list(analysis.sparsity_bins(qwen_te)) == [120, 158, 26, 14, 18]
    assert int(np.sum((raw > 0) & (raw <= 0.01))) == 82            # §8.3: (0, 0.01]: 82, (0.01, 0.1]: 76
    assert int(np.sum(raw > 0)) == 216
    assert round(float(raw.max()), 4) == 0.9953
    assert list(analysis.sparsity_bins(qwen_te, filtered=True)) == [138, 158, 26, 13, 1]
    act = analysis.static_activation(qwen_te)
    assert round(act.pearson, 3) == 0.929
    assert round(act.spearman, 4) == 0.9995
    assert round(act.kendall, 3) == 0.988
    assert round(act.conditional_mean, 3) == 0.342
    assert round(analysis.static_activation(qwen_te, active_only=True).pearson, 3) == 0.925


def test_bar_plot_insets_match_the_paper(internvl: HeadScores, qwen_te: HeadScores) -> None:
    from ocrheads_lib.plots import inset_heads

    # the paper's figure insets (analysis notebook, cell 7) (layer-head)
    assert set(inset_heads(internvl)) == {(9, 0), (7, 6), (7, 4), (11, 24), (15, 26), (12, 14), (6, 2)}
    assert set(inset_heads(qwen_te)) == {(27, 11), (12, 11), (0, 8), (0, 3), (15, 1), (0, 0), (8, 1)}


def test_bootstrap_is_seeded(qwen_te: HeadScores) -> None:
    stat = lambda s: len(heads.select(s, "paper-code"))  # noqa: E731
    a = analysis.bootstrap_ci(qwen_te, stat, n_boot=20, seed=3)
    b = analysis.bootstrap_ci(qwen_te, stat, n_boot=20, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.estimate == 40 and a.low <= 40 <= a.high


# --------------------------------------------------------------------------- hand-built goldens
def _toy(entries: np.ndarray, kind: str = "ocr") -> HeadScores:
    """entries (N, L, H) in [0, 1] as our aligned format (weight 1, one row per sample, hits 0/1)."""
    n, n_layers, n_heads = entries.shape
    meta = ScoreMeta(model_id="toy", kind=kind, n_layers=n_layers, n_heads=n_heads, dataset="toy", seed=0, n=n)
    samples = [SampleScore(id=f"s{i}", weight=1.0, n_rows=4, hits=np.rint(entries[i] * 4).astype(int))
               for i in range(n)]
    return HeadScores(meta=meta, samples=samples, failures=[Failure("s_bad", "no evidence tokens: box 0")])


def test_rules_on_a_golden() -> None:
    # 10 samples, 1 layer x 4 heads.
    e = np.zeros((10, 1, 4))
    e[:, 0, 0] = 1.0                 # always on: mean 1, 0 zeros -> paper-code drops it, readme keeps it
    e[:5, 0, 1] = 0.5                # mean .25, active 50 %
    e[0, 0, 2] = 1.0                 # mean .1, active 10 % -> kept by both (>= .1, >= 10 %)
    e[:9, 0, 3] = 0.25               # mean .225, zeros 10 % (not > 10 %) -> paper-code drops it
    s = _toy(e)
    assert heads.select(s, "readme") == [(0, 0), (0, 1), (0, 3), (0, 2)]
    assert heads.select(s, "paper-code") == [(0, 1), (0, 2)]
    assert heads.select(s, "readme", threshold=0.2) == [(0, 0), (0, 1), (0, 3)]
    assert list(analysis.sparsity_bins(s)) == [0, 1, 2, 0, 1]
    assert list(analysis.sparsity_bins(s, filtered=True)) == [2, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown selection rule"):
        heads.select(s, "other")


def test_ties_are_layer_major() -> None:
    e = np.zeros((4, 2, 3))
    e[:2, 1, 0] = 1.0
    e[:2, 0, 2] = 1.0
    e[:2, 0, 1] = 1.0
    e[:3, 1, 2] = 1.0
    s = _toy(e)
    assert heads.select(s) == [(1, 2), (0, 1), (0, 2), (1, 0)]
    assert heads.top_k(s, 2) == [(1, 2), (0, 1)]


def test_save_load_roundtrip_and_determinism(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s = _toy(rng.integers(0, 5, size=(6, 3, 2)) / 4)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    s.save(a)
    s.save(b)
    assert a.read_bytes() == b.read_bytes()
    back = load_scores(a)
    assert back.meta == s.meta
    np.testing.assert_array_equal(back.matrix(), s.matrix())
    assert back.failures == s.failures
    assert back.failure_counts() == {"no evidence tokens": 1}
    assert not list(tmp_path.glob(".*.tmp"))       # atomic write leaves no temp file


def test_official_format_ragged_roundtrip(tmp_path: Path) -> None:
    payload = {"l0_h0": [0, 0, 0, 0], "l0_h1": [1, 0], "l1_h0": [0.5, 0.5], "l1_h1": [0, 1]}
    path = tmp_path / "Toy-2B_te_2.json"
    path.write_text(json.dumps(payload))
    s = load_scores(path)
    assert s.meta.kind == "retrieval" and s.meta.model_id == "Toy-2B" and s.shape == (2, 2)
    np.testing.assert_allclose(s.mean(), [[0, 0.5], [0.5, 0.5]])
    assert not s.aligned
    with pytest.raises(ValueError, match="not aligned"):
        s.matrix()
    s.save(tmp_path / "ours.json")
    back = load_scores(tmp_path / "ours.json")
    np.testing.assert_allclose(back.mean(), s.mean())
    assert back.meta.source == "official"


def test_distinctness_and_head_sets(tmp_path: Path) -> None:
    e_a = np.zeros((5, 2, 2))
    e_b = np.zeros((5, 2, 2))
    e_a[:3, 0, 0] = 1.0
    e_a[:2, 1, 1] = 1.0
    e_b[:3, 0, 0] = 1.0
    e_b[:4, 0, 1] = 1.0
    a, b = _toy(e_a), _toy(e_b, kind="retrieval")
    d = analysis.distinctness(a, b, ks=(1, 2))
    assert d.jaccard == pytest.approx(1 / 3) and d.n_shared == 1
    assert d.topk == {1: 0.0, 2: 0.5}
    payload = heads.head_set(a)
    assert payload == {"model": "toy", "revision": None, "kind": "ocr", "rule": "readme", "threshold": 0.1,
                       "heads": [[0, 0], [1, 1]]}
    heads.save_head_set(tmp_path / "l.json", payload)
    heads.save_head_set(tmp_path / "b.json", payload, layout="by_layer")
    assert json.loads((tmp_path / "b.json").read_text()) == {"layer_0": [0], "layer_1": [1]}
    assert heads.load_head_set(tmp_path / "l.json") == [(0, 0), (1, 1)]
    assert heads.load_head_set(tmp_path / "b.json") == [(0, 0), (1, 1)]


def test_missing_file_error_names_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m ocrheads_lib score"):
        load_scores(tmp_path / "nope.json")


def test_plots_draw(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ocrheads_lib import plots

    rng = np.random.default_rng(1)
    a = _toy(rng.integers(0, 5, size=(8, 3, 4)) / 4)
    b = _toy(rng.integers(0, 5, size=(8, 3, 4)) / 4, kind="retrieval")
    for kind in ("bins", "bars", "heatmap"):
        fig = plots.findings_grid([a, b], kind=kind, ncols=2)
        fig.savefig(tmp_path / f"{kind}.png")
    ax = plots.row_comparison(a, b)
    ax.figure.savefig(tmp_path / "rows.png")
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert plots.HEATMAP_BOUNDS == (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)
