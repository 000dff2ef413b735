"""The paper's three findings for several models side by side: which score sets, and which pairs to compare.

Chapter 04 asks, for every image model it is given, whether its OCR heads are its text-retrieval heads. A
model brings two score sets: its OCR scores (the book's grid pass-key pages) and its retrieval scores (text
pass keys, Wu's test). A VLM whose language half is a pretrained text model that the book also loads
(`smol-vl`, whose language half is `smollm2`) brings a third: that text model's own retrieval scores, the
heads it had *before* it learned to read pages. So each model gives one or three comparisons:

* OCR heads vs the same model's retrieval heads (after the VLM training, for smol-vl);
* OCR heads vs the language half's retrieval heads before the VLM training (smol-vl vs SmolLM2);
* the model's retrieval heads after the VLM training vs the language half's before it: did the training
  keep the text model's retrieval heads, or move them?

`model_score_sets` computes (or reads from `results/<model>/`) those sets through `scoring.runs.get_scores`,
with the same options chapter 03 uses for the text model, so the files chapter 03 wrote are reused unchanged.
`compare(comparison, n_boot, seed)` gives one row of the distinctness table: head-set sizes, Jaccard with a
bootstrap interval over the samples of the first set, Spearman rank correlation of all head scores and top-k overlaps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocrheads_lib import analysis, heads
from ocrheads_lib.scoring.runs import get_scores, load_scoring_model, scoring_samples
from ocrheads_lib.scoring.store import HeadScores
from ocrheads_lib.types import BEFORE_TRAINING, RELATIONS, RETRIEVAL_KEPT, SAME_MODEL

# image model -> the pretrained text model that is its language half (loaded by the book as its own model)
LANGUAGE_HALVES: dict[str, str] = {"smol-vl": "smollm2"}


@dataclass(frozen=True)
class ScoreSet:
    """One model's scores of one kind, with the name the book's tables and figures give it."""

    label: str             # e.g. "OCR smol-vl", "retrieval smollm2 (before)"
    model_id: str
    kind: str              # "ocr" | "retrieval"
    scores: HeadScores


@dataclass(frozen=True)
class Comparison:
    """Two head sets of one network: `heads` (whose samples the Jaccard interval resamples) against
    `reference`; `relation` is one of SAME_MODEL, BEFORE_TRAINING, RETRIEVAL_KEPT."""

    model_id: str
    heads: ScoreSet
    reference: ScoreSet
    relation: str

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation {self.relation!r} is not one of {list(RELATIONS)}")


@dataclass(frozen=True)
class ScoringSettings:
    """What every score set of the chapter shares (so that cached files are reused, never overwritten)."""

    n_samples: int                 # OCR pages and text pass keys per model
    seed: int
    results_root: Path
    device: str = "cpu"
    answer_source: str = "auto"
    text_max_new_tokens: int = 12  # answer tokens generated on text pass keys (chapter 03's value)

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.text_max_new_tokens < 1:
            raise ValueError(f"text_max_new_tokens must be >= 1, got {self.text_max_new_tokens}")


def _retrieval(lm: Any, model_id: str, settings: ScoringSettings, max_new_tokens: int | None) -> HeadScores:
    options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    return get_scores(lm, "retrieval", scoring_samples("retrieval", settings.n_samples, seed=settings.seed),
                      settings.results_root, seed=settings.seed, answer_source=settings.answer_source,
                      variant="wu", model_id=model_id, **options)


def model_score_sets(model_id: str, settings: ScoringSettings, text_max_new_tokens: int | None = None,
                     lm: Any = None) -> tuple[list[ScoreSet], list[Comparison]]:
    """The score sets and comparisons that `model_id` brings (see the module docstring).

    text_max_new_tokens: answer tokens on text pass keys for this model's own retrieval scores (None: the
    scorer's default, which chapter 04 has always used for its main model); the language half's scores always
    use `settings.text_max_new_tokens`, chapter 03's value. lm: the loaded model, if the caller has it."""
    lm = lm if lm is not None else load_scoring_model(model_id, seed=settings.seed, device=settings.device)
    ocr = get_scores(lm, "ocr", scoring_samples("ocr", settings.n_samples, seed=settings.seed), settings.results_root,
                     seed=settings.seed, answer_source=settings.answer_source, mode="fine", model_id=model_id)
    own = _retrieval(lm, model_id, settings, text_max_new_tokens)
    ocr_set = ScoreSet(f"OCR {model_id}", model_id, "ocr", ocr)
    own_set = ScoreSet(f"retrieval {model_id}", model_id, "retrieval", own)
    sets, comparisons = [ocr_set, own_set], [Comparison(model_id, ocr_set, own_set, SAME_MODEL)]
    half = LANGUAGE_HALVES.get(model_id)
    if half is not None:
        half_lm = load_scoring_model(half, seed=settings.seed, device=settings.device)
        before = ScoreSet(f"retrieval {half} (before)", half, "retrieval",
                          _retrieval(half_lm, half, settings, settings.text_max_new_tokens))
        sets.append(before)
        comparisons += [Comparison(model_id, ocr_set, before, BEFORE_TRAINING),
                        Comparison(model_id, own_set, before, RETRIEVAL_KEPT)]
    return sets, comparisons


def compare(comparison: Comparison, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """One row of the distinctness table: sizes (n_a: `heads`, n_b: `reference`), shared heads, Jaccard with its
    bootstrap interval (the samples of `heads` resampled), Spearman and Kendall rank correlations of all head
    scores, top-k overlaps."""
    first, second = comparison.heads.scores, comparison.reference.scores
    if first.shape != second.shape:
        raise ValueError(f"{comparison.heads.label} has {first.shape} heads and {comparison.reference.label} has "
                         f"{second.shape}: only scores of the same network can be compared head by head")
    found = analysis.distinctness(first, second)
    selected_reference = heads.select(second)
    interval = analysis.bootstrap_ci(first, lambda s: analysis.jaccard(heads.select(s), selected_reference),
                                     n_boot=n_boot, seed=seed)
    return {"model": comparison.model_id, "heads": comparison.heads.label, "reference": comparison.reference.label,
            "relation": comparison.relation, **found.as_dict(), "jaccard_low": interval.low,
            "jaccard_high": interval.high}
