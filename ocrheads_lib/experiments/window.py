"""Retrieval heads under a sliding window: where do they live when most layers see only the last W keys?

Gemma 3 270M has 18 layers; 15 are local (each query sees the last 512 keys) and 3 are global (layers 5, 11
and 17 see everything). With the needle inside the window every layer can copy from it; with the needle
more than W tokens before the question only the global layers can. This module gives the pieces chapter 03
uses for that question, on any model whose config has ``layer_types`` (a model without them has only
global layers):

* :class:`ContextSetting` and :func:`window_samples`: text pass keys at a context length, optionally with the
  needle at least `min_needle_distance` tokens before the prompt's last token (checked with the tokenizer:
  a sample that misses it raises, it is never silently kept); ids carry the length, so score files of two
  lengths never stand in for each other;
* :func:`layer_kinds`: which layers are global and which local, from the loaded config;
* :func:`global_share`: how many of the top-k heads sit in global layers, against chance (the global layers'
  share of all heads), with the exact hypergeometric p-value and a Clopper-Pearson interval of the share;
* :func:`passkey_check`: unmodified greedy pass-key accuracy with its Wilson interval;
* :class:`ScorecardRow` / :func:`global_share_row`: the result as one line of a scorecard.

Wu's causal test itself is :func:`ocrheads_lib.experiments.masking.run_masking`, run once per length with the
heads ranked on that length's scoring samples and tested on samples of a disjoint seed range
(:func:`causal_at_length`). The full-size run ships as per-sample records:
:mod:`ocrheads_lib.experiments.window_records`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from ocrheads_lib.data import passkey_text
from ocrheads_lib.data.compose import sample_id
from ocrheads_lib.data.passkey import TEXT_ID
from ocrheads_lib.data.samples import TextSample
from ocrheads_lib.inference import answer, sample_inputs
from ocrheads_lib.metrics import passkey_accuracy, wilson_interval
from ocrheads_lib.types import Head

__all__ = ["ContextSetting", "LayerShare", "PasskeyCheck", "ScorecardRow", "SHORT", "LONG", "causal_at_length",
           "depth_profile", "global_share", "global_share_row", "layer_kinds", "model_summary", "needle_distance",
           "gemma_scorecard_row", "passkey_check", "score_at_length", "scorecard_row", "window_samples",
           "window_sample_id", "window_sample_index", "causal_task", "causal_heads"]


@dataclass(frozen=True)
class ContextSetting:
    """A context length for text pass keys, and how far back the needle must lie."""

    name: str                              # "short", "long": used in sample ids and table labels
    context_chars: int                     # characters of haystack (the data generator's context_chars)
    min_needle_distance: int = 0           # tokens from the needle's last token to the prompt's last token
    depths: tuple[float, ...] | None = None   # needle depths cycled over the samples (None: uniform random)

    def __post_init__(self) -> None:
        if not str(self.name).replace("_", "").isalnum():
            raise ValueError(f"ContextSetting.name must be a plain word (it goes into sample ids), got {self.name!r}")
        if isinstance(self.context_chars, bool) or not isinstance(self.context_chars, int) or self.context_chars < 50:
            raise ValueError(f"ContextSetting.context_chars must be an int >= 50, got {self.context_chars!r}")
        if self.min_needle_distance < 0:
            raise ValueError(f"ContextSetting.min_needle_distance must be >= 0 tokens, got {self.min_needle_distance}")
        if self.depths is not None and not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"ContextSetting.depths must lie in [0, 1], got {self.depths}")


# Gemma 3 270M tokenizes the pass-key filler at ~3.65 characters per token (measured; prompts include the
# completion prompt's worked example). Short: ~310 tokens, the needle anywhere (always inside the 512-key
# window). Long: ~1,590 tokens with the needle in the first half of the haystack, ~850 to ~1,500 tokens before
# the question's last token (at least 600 is checked: more than the window of 512).
SHORT = ContextSetting("short", 1000)
LONG = ContextSetting("long", 5800, min_needle_distance=600, depths=(0.05, 0.15, 0.25, 0.35, 0.45))


def needle_distance(lm: Any, sample: TextSample) -> int:
    """Tokens between the needle's last token and the prompt's last token (the row that writes the answer)."""
    from ocrheads_lib.scoring.align import locate_in_prompt

    inputs = sample_inputs(lm, sample)
    prompt_ids = inputs.input_ids[: inputs.prompt_len].tolist()
    needle = locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, sample.needle_span)
    return inputs.prompt_len - 1 - max(needle)


def window_sample_id(setting: str, seed: int, index: int) -> str:
    """The id of sample `index` of seed `seed` at a length ("passkey-text-100-7-long"), known without building it."""
    return f"{sample_id(TEXT_ID, seed, index)}-{setting}"


def window_sample_index(sample_id_: str, setting: str, seed: int) -> int:
    """The index of a window sample from its id (:func:`window_sample_id`); ValueError for an id of another
    length or seed."""
    prefix, suffix = f"{TEXT_ID}-{int(seed)}-", f"-{setting}"
    middle = sample_id_[len(prefix):-len(suffix)] if sample_id_.startswith(prefix) and sample_id_.endswith(suffix) else ""
    if not middle.isdigit():
        raise ValueError(f"{sample_id_!r} is not a {setting!r} window sample of seed {seed} (ids look like "
                         f"{window_sample_id(setting, seed, 0)!r})")
    return int(middle)


def window_samples(lm: Any, setting: ContextSetting, n: int, seed: int = 0,
                   indices: Sequence[int] | None = None) -> list[TextSample]:
    """n text pass keys of `setting` (sample i depends on (seed, i) only); ids end in the setting's name.
    `indices` builds only those samples of the n (an audit rebuilding one sample). Raises ValueError naming the
    sample when its needle is closer than ``setting.min_needle_distance``."""
    wanted = range(n) if indices is None else list(indices)
    outside = [i for i in wanted if not 0 <= int(i) < n]
    if outside:
        raise ValueError(f"window_samples: indices {outside[:3]} lie outside 0..{n - 1} (the set has n = {n} samples)")
    samples = []
    for i in wanted:
        depth = None if setting.depths is None else setting.depths[i % len(setting.depths)]
        sample = passkey_text(n, seed=seed, context_chars=setting.context_chars, depth=depth, indices=[i])[0]
        sample = dataclasses.replace(sample, id=window_sample_id(setting.name, seed, i),
                                     meta={**sample.meta, "setting": setting.name})
        if setting.min_needle_distance:
            distance = needle_distance(lm, sample)
            if distance < setting.min_needle_distance:
                raise ValueError(f"{sample.id}: the needle ends {distance} tokens before the question's last token, "
                                 f"fewer than the {setting.min_needle_distance} the setting {setting.name!r} asks; "
                                 "lengthen context_chars or lower the depths")
            sample.meta["needle_distance"] = distance
        samples.append(sample)
    return samples


def layer_kinds(lm: Any) -> tuple[list[int], list[int]]:
    """(global layers, local sliding-window layers) of the loaded model, from its config's ``layer_types``."""
    config = lm.model.config.get_text_config()
    types = getattr(config, "layer_types", None) or ["full_attention"] * int(config.num_hidden_layers)
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ValueError(f"{lm.model_id}: layer types {unknown} are neither 'full_attention' nor "
                         "'sliding_attention'; global vs local is not defined for them")
    return ([i for i, t in enumerate(types) if t == "full_attention"],
            [i for i, t in enumerate(types) if t == "sliding_attention"])


@dataclass(frozen=True)
class LayerShare:
    """How many of the top-k heads lie in global layers, against chance."""

    k: int
    in_global: int
    share: float                      # in_global / k
    chance: float                     # global heads / all heads (Gemma 3: 12 / 72 = 3 / 18)
    interval: tuple[float, float]     # 95 % Clopper-Pearson interval of the share
    p_more: float                     # hypergeometric P(X >= in_global): k heads drawn at random without replacement
    p_fewer: float                    # P(X <= in_global)


def global_share(ranked: Sequence[Head], global_layers: Sequence[int], n_layers: int, n_heads: int,
                 k: int) -> LayerShare:
    """The share of the top-k of `ranked` in `global_layers`, with its exact tests against k random heads."""
    if not 1 <= k <= len(ranked):
        raise ValueError(f"k must be in 1..{len(ranked)} (the ranked heads), got {k}")
    total, n_global = n_layers * n_heads, len(set(global_layers)) * n_heads
    hits = sum(1 for layer, _ in list(ranked)[:k] if layer in set(global_layers))
    lo = 0.0 if hits == 0 else float(stats.beta.ppf(0.025, hits, k - hits + 1))
    hi = 1.0 if hits == k else float(stats.beta.ppf(0.975, hits + 1, k - hits))
    return LayerShare(k=k, in_global=hits, share=hits / k, chance=n_global / total, interval=(lo, hi),
                      p_more=float(stats.hypergeom.sf(hits - 1, total, n_global, k)),
                      p_fewer=float(stats.hypergeom.cdf(hits, total, n_global, k)))


@dataclass(frozen=True)
class ScorecardRow:
    """One claim of the book with its measured answer."""

    claim: str
    n: int                            # samples behind the estimate
    estimate: float
    interval: tuple[float, float]
    verdict: str


def global_share_row(share: LayerShare, n_samples: int, setting: str, alpha: float = 0.05) -> ScorecardRow:
    """The global-vs-local result as a scorecard row; the verdict compares with chance at level `alpha`."""
    if share.p_more < alpha:
        verdict = f"more in global layers than chance (hypergeometric p = {share.p_more:.3g})"
    elif share.p_fewer < alpha:
        verdict = f"fewer in global layers than chance (hypergeometric p = {share.p_fewer:.3g})"
    else:
        verdict = (f"not distinguishable from chance {share.chance:.2f} (p = {min(share.p_more, share.p_fewer):.2g}"
                   f" each side)")
    return ScorecardRow(claim=f"share of the top-{share.k} retrieval heads in global layers ({setting} context)",
                        n=n_samples, estimate=share.share, interval=share.interval, verdict=verdict)


@dataclass(frozen=True)
class PasskeyCheck:
    """Unmodified greedy pass-key accuracy."""

    correct: int
    n: int
    accuracy: float
    interval: tuple[float, float]     # 95 % Wilson interval
    wrong: list[tuple[str, str]]      # (gold, answer) of the first failures


def passkey_check(lm: Any, samples: Sequence[TextSample], max_new_tokens: int = 12) -> PasskeyCheck:
    """Greedy answers of the unmodified model; correct when the key occurs in the answer (the book's metric)."""
    if not samples:
        raise ValueError("passkey_check: no samples given")
    answers = [answer(lm, s, max_new_tokens=max_new_tokens) for s in samples]
    right = [passkey_accuracy(a, s.answer) == 1.0 for a, s in zip(answers, samples)]
    correct = sum(right)
    return PasskeyCheck(correct=correct, n=len(samples), accuracy=correct / len(samples),
                        interval=wilson_interval(correct, len(samples)),
                        wrong=[(s.answer, a) for a, s, ok in zip(answers, samples, right) if not ok][:10])


# ----------------------------------------------------------------------------------------------------------
# Scores and the causal test per length (the library's scorer and masking runner, with per-length files)
# ----------------------------------------------------------------------------------------------------------


def score_at_length(lm: Any, setting: ContextSetting, n: int, results_root: Any, seed: int = 0,
                    max_new_tokens: int = 8) -> Any:
    """Wu retrieval scores (emit row) of every head over `n` samples of `setting`, read from or saved to
    ``<results_root>/<model>-<setting>/retrieval_scores.json`` (one folder per length)."""
    from ocrheads_lib.scoring.runs import get_scores

    samples = window_samples(lm, setting, n, seed=seed)
    return get_scores(lm, "retrieval", samples, results_root, seed=seed, variant="wu",
                      model_id=f"{lm.model_id}-{setting.name}", max_new_tokens=max_new_tokens,
                      dataset=f"passkey_text:{setting.name}:{setting.context_chars}")


def causal_at_length(lm: Any, setting: ContextSetting, scores: Any, n: int, *, ks: Sequence[int] = (2, 4, 8),
                     seeds: Sequence[int] = (0, 1, 2), seed: int = 100, results_root: Any = None,
                     max_new_tokens: int = 8) -> Any:
    """Wu's causal test at one length: mask the top-k heads of `scores` vs k random heads (outside the selected
    set) vs k layer-matched random heads, on `n` held-out samples of `setting` drawn with `seed` (keep it out of
    the scoring seeds). Returns run_masking's table, its task named ``passkey_<setting>``; with `results_root`,
    predictions are cached and the table written under ``<results_root>/<model>-<setting>/`` (one folder per
    length, so no other chapter's masking table is replaced)."""
    from ocrheads_lib.paths import results_dir
    from ocrheads_lib.experiments.masking import run_masking
    from ocrheads_lib.experiments.sweep import RunSettings

    samples = window_samples(lm, setting, n, seed=seed)
    name = f"{lm.model_id}-{setting.name}"
    out_dir = None if results_root is None else results_dir(name, results_root)
    return run_masking(lm, {causal_task(setting.name): samples}, causal_heads(scores, seeds),
                       RunSettings(model_id=name, out_dir=out_dir, max_new_tokens=max_new_tokens), ks=list(ks))


def causal_task(setting: str) -> str:
    """The task name of the causal test at a length ("passkey_long")."""
    return f"passkey_{setting}"


def causal_heads(scores: Any, seeds: Sequence[int]) -> Any:
    """The head sets of the causal test: the retrieval heads ranked on `scores`, random draws outside the
    selected set and layer-matched draws copying the top-k's layers, one of each per seed."""
    from ocrheads_lib import heads
    from ocrheads_lib.experiments.sweep import SweepHeads

    return SweepHeads({"retrieval": [h for h, _ in heads.ranked(scores)]}, seeds=tuple(seeds),
                      exclude=heads.select(scores), layer_matched_to="retrieval")


def depth_profile(scores: Any) -> Any:
    """Share of the model's total retrieval score held by each layer (sums to 1), as a numpy array (L,)."""
    import numpy as np

    per_layer = np.nan_to_num(scores.mean()).sum(axis=1)  # (L,)
    total = per_layer.sum()
    return per_layer / total if total > 0 else per_layer


def model_summary(name: str, scores: Any, sink_mass: Any) -> dict[str, Any]:
    """One row of the side-by-side table: heads, selected retrieval heads and their share, where the score sits
    by relative depth (score-weighted mean of (layer + 0.5) / layers), and the mean first-token mass."""
    import numpy as np

    from ocrheads_lib import heads

    n_layers, n_heads = scores.shape
    profile = depth_profile(scores)
    depth = float((profile * (np.arange(n_layers) + 0.5) / n_layers).sum()) if profile.sum() > 0 else float("nan")
    selected = heads.select(scores)
    return {"model": name, "layers x heads": f"{n_layers} x {n_heads}", "retrieval heads": len(selected),
            "fraction of heads": len(selected) / (n_layers * n_heads), "mean relative depth of the score": depth,
            "mean first-token mass": float(np.asarray(sink_mass).mean()), "samples": len(scores.samples)}


def gemma_scorecard_row(results_root: Any, setting: ContextSetting = LONG, k: int = 8) -> ScorecardRow:
    """The Gemma 3 result for a scorecard, from the score file chapter 03 wrote
    (``<results_root>/gemma3-270m-<setting>/retrieval_scores.json``): the share of its top-k retrieval heads in
    the global layers at `setting`, against chance. Raises FileNotFoundError naming the file and the chapter."""
    from ocrheads_lib.experiments.window_records import gemma_facts
    from ocrheads_lib.models.gemma3 import MODEL_ID
    from ocrheads_lib.scoring.runs import score_path
    from ocrheads_lib.scoring.store import load_scores

    path = score_path(f"{MODEL_ID}-{setting.name}", "retrieval", results_dir=results_root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run chapter 03 (notebooks/03_retrieval_heads.ipynb, section "
                                f"'A second language model') with results_dir={results_root!s} first")
    return scorecard_row(load_scores(path), gemma_facts().global_layers, setting.name, k)


def scorecard_row(scores: Any, global_layers: Sequence[int], setting: str, k: int = 8) -> ScorecardRow:
    """The global-vs-local scorecard row of one score set: the share of its top-k heads (by the book's ranking,
    :func:`ocrheads_lib.heads.ranked`) in `global_layers`, against chance; n is the number of scored samples."""
    from ocrheads_lib import heads

    scores.require_entries("a global-vs-local share")
    n_layers, n_heads = scores.shape
    ranked = [h for h, _ in heads.ranked(scores)]
    share = global_share(ranked, global_layers, n_layers, n_heads, min(k, len(ranked)))
    return global_share_row(share, len(scores.samples), setting)
