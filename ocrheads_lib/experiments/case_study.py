"""The per-character case study (PAPER.md §5.2): which heads read a single character, and are they the same
heads for every character?

For each character c of 0-9, a-z: the OCR score of every head over the samples whose pass key is c (the
same scorer as the main OCR score, :func:`ocrheads_lib.scoring.score_ocr`), its top-5 heads, and then how
consistent those top-5 sets are across characters:

* mean pairwise Jaccard of the 36 top-5 sets, next to the value expected for random 5-sets of the same
  model (hypergeometric overlap), so "consistent" has a yardstick;
* how often each head appears in a top-5 list (PAPER.md §8.2 lists l19_h20 26 times for Qwen2-VL-7B).

Answers emitted with a leading space (" a", the reason the paper's notebook lost most letter examples,
§9.15) are handled by the scorer's character alignment: a token " a" covers the unit "a", and a lone " "
token covers none. The result counts how many generated answers started with whitespace.

Reading accuracy is measured on *every* sample from the model's own greedy answer (generated once more,
whatever `answer_source` the scorer uses): `accuracy` (the answer contains c, the book's metric) and `exact`
(the answer, stripped, is c). With ``score_options={"answer_source": "gold"}`` the heads are scored while
the gold character is teacher-forced, so a model that reads single characters badly (it writes "00" for
"0") still shows which heads look at the character; its accuracy then says how often it would have
written it.

Ties: the ranking is by mean score, ties in layer-major order (:func:`ocrheads_lib.heads.ranked`); with few
samples per character many heads tie, so the top-5 at a tie boundary is partly arbitrary. The result keeps
the score of the 5th head and the number of heads tied with it.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ocrheads_lib.analysis import jaccard
from ocrheads_lib.inference import answer
from ocrheads_lib.paths import atomic_write_json
from ocrheads_lib.scoring import score_ocr
from ocrheads_lib.types import head_key, head_label

CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz"
TOP = 5


def mean_pairwise_jaccard(sets: Sequence[Sequence[Any]]) -> float:
    """Mean Jaccard over all unordered pairs of sets (NaN with fewer than two sets; two empty sets count as
    equal, 1.0)."""
    pairs = list(itertools.combinations(sets, 2))
    if not pairs:
        return float("nan")
    return float(np.mean([jaccard(a, b, empty=1.0) for a, b in pairs]))


def chance_jaccard(n_total: int, k: int = TOP) -> float:
    """Expected Jaccard of two independent uniformly random k-subsets of n_total items:
    overlap i ~ Hypergeometric(n_total, k, k), J = i / (2k - i)."""
    if k <= 0 or n_total <= 0:
        return float("nan")
    k = min(k, n_total)
    total = math.comb(n_total, k)
    expected = 0.0
    for i in range(0, k + 1):
        ways = math.comb(k, i) * math.comb(n_total - k, k - i)
        expected += ways / total * (i / (2 * k - i))
    return expected


def top_heads(mean: np.ndarray, top: int = TOP) -> list[tuple[int, int, float]]:
    """The `top` heads of an (L, H) mean-score matrix: [(layer, head, score)], score descending, ties layer-major.
    Heads with score 0 never count as top heads (so the list is shorter, maybe empty, when few heads score)."""
    n_layers, n_heads = mean.shape
    flat = mean.reshape(-1)
    order = [i for i in np.argsort(-flat, kind="stable")[:top] if flat[i] > 0]
    return [(int(i // n_heads), int(i % n_heads), float(flat[i])) for i in order]


def consistency(top_sets: Mapping[str, Sequence[tuple[int, int]]], n_total_heads: int,
                top: int = TOP) -> dict[str, Any]:
    """Consistency of per-character top sets: mean pairwise Jaccard, its chance level, head occurrence counts."""
    sets = [list(map(tuple, heads)) for heads in top_sets.values()]
    counts = Counter(head for heads in sets for head in heads)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {
        "n_characters": len(sets),
        "mean_pairwise_jaccard": mean_pairwise_jaccard(sets),
        "chance_jaccard": chance_jaccard(n_total_heads, top),
        "head_counts": {head_key(head): int(c) for head, c in ordered},
        "most_common": [[int(l), int(h), int(c)] for (l, h), c in ordered[:10]],
    }


def group_by_character(samples: Sequence[Any], characters: str = CHARACTERS) -> dict[str, list[Any]]:
    """Samples grouped by their (single-character) answer, in `characters` order; other answers are refused."""
    groups: dict[str, list[Any]] = {c: [] for c in characters}
    for sample in samples:
        key = str(sample.answer).strip()
        if key not in groups:
            raise ValueError(f"case-study sample {sample.id} has answer {sample.answer!r}, not one of {characters!r}")
        groups[key].append(sample)
    return {c: s for c, s in groups.items() if s}


def run_case_study(lm: Any, samples: Sequence[Any], *, characters: str = CHARACTERS, top: int = TOP,
                   model_id: str | None = None, out_dir: str | Path | None = None,
                   score_options: Mapping[str, Any] | None = None, progress: bool = False,
                   max_new_tokens: int = 8) -> dict[str, Any]:
    """Score every head per character and summarise; returns (and writes ``out_dir/case_study.json``) a dict:

    {"model", "characters": {c: {"n", "n_scored", "n_failed", "failure_counts", "leading_space" (greedy
     answers starting with whitespace), "accuracy" / "exact" (share of all n samples whose greedy answer
     contains / is c), "answers" (the greedy answers), "top": [[l, h, score], ...], "tied_at_top": heads tied
     with the last top score, "mean": (L, H) nested list}}, "consistency": {...}, "n_layers", "n_heads", "options"}.
    Characters without any scored sample, or whose heads all score 0, keep their counts and an empty top list
    (they do not enter the consistency numbers).
    """
    options = dict(score_options or {})
    n_layers, n_heads = int(lm.n_layers), int(lm.n_heads)
    per_char: dict[str, Any] = {}
    tops: dict[str, list[tuple[int, int]]] = {}
    for char, group in group_by_character(samples, characters).items():
        scores = score_ocr(lm, group, **options)
        answers = [answer(lm, sample, max_new_tokens) for sample in group]
        entry: dict[str, Any] = {
            "n": len(group), "n_scored": len(scores.samples), "n_failed": len(scores.failures),
            "failure_counts": scores.failure_counts(),
            "leading_space": sum(1 for a in answers if a[:1].isspace()),
            "accuracy": float(np.mean([char in a for a in answers])),
            "exact": float(np.mean([a.strip() == char for a in answers])),
            "answers": answers,
        }
        if scores.samples:
            mean = scores.mean()  # (L, H)
            best = top_heads(mean, top)
            entry["top"] = [[l, h, round(v, 6)] for l, h, v in best]
            entry["tied_at_top"] = int(np.sum(np.isclose(mean, best[-1][2]))) if best else 0
            entry["mean"] = np.round(mean, 6).tolist()
            if best:
                tops[char] = [(l, h) for l, h, _ in best]
        else:
            entry.update(top=[], tied_at_top=0, mean=None)
        per_char[char] = entry
        if progress:
            print(f"[case study] {char!r}: {entry['n_scored']}/{entry['n']} scored, top {entry['top'][:3]}")
    result = {"model": model_id or str(getattr(lm, "model_id", "model")), "n_layers": n_layers, "n_heads": n_heads,
              "top": top, "options": options, "characters": per_char,
              "consistency": consistency(tops, n_layers * n_heads, top)}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "case_study.json", _json_safe(result))
    return result


def _json_safe(value: Any) -> Any:
    """NaN -> None so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def plot_case_grid(result: Mapping[str, Any], path: str | Path | None = None, cols: int = 6) -> Any:
    """The 6 x 6 grid: one layer x head heatmap per character showing only its top-5 cells (shared colour scale),
    each annotated with its head_label ("L9H0"); characters without scored samples are left blank. Returns the figure."""
    chars = list(result["characters"])
    n_layers, n_heads = int(result["n_layers"]), int(result["n_heads"])
    values = [v for c in chars for _, _, v in result["characters"][c]["top"]]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    rows = math.ceil(len(chars) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.0 * rows), squeeze=False)
    image = None
    for ax, char in zip(axes.flat, chars):
        grid = np.full((n_layers, n_heads), np.nan)
        for l, h, v in result["characters"][char]["top"]:
            grid[l, h] = v
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        info = result["characters"][char]
        ax.set_title(f"'{char}' (n={info['n_scored']})", fontsize=8)
        for l, h, _ in info["top"]:
            ax.text(h, l, head_label((l, h)), ha="center", va="center", fontsize=5, color="white")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(chars):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="OCR score (top-5 heads)")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
