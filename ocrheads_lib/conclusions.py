"""The sentences of each chapter's "What this run shows", generated from that run's numbers.

Every function takes the numbers a chapter computed (plain values or the library's result types) and
returns a list of sentences that are true for *any* model and parameters: they compare, count and
qualify (with the interval when there is one) instead of assuming an outcome. Chapters glue the
sentences (`chapter.Chapter.conclude`), so the book's prose never carries a hand-typed result.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ocrheads_lib.types import BEFORE_TRAINING, RETRIEVAL_KEPT, SAME_MODEL, Head, head_label


def heads_text(heads: Sequence[Sequence[int]], limit: int = 6) -> str:
    """"L2H1, L2H5 and L3H0" (at most `limit` names, then "and N more"); "none" for no heads."""
    names = [head_label(h) for h in heads]
    if not names:
        return "none"
    if len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(float(x))


def _interval(estimate: float, low: float, high: float, digits: int = 2, unit: str = "") -> str:
    return f"{estimate:.{digits}f}{unit} (95 % interval {low:.{digits}f}–{high:.{digits}f}{unit})"


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole}" + (f" ({100 * part / whole:.1f} %)" if whole else "")


DISTINCT_BELOW = 0.3        # Jaccard below this: two head sets are distinct
SUBSTANTIAL_FROM = 0.5      # Jaccard from this: they overlap substantially (between the two: partly)


def _overlap(jaccard: float) -> str:
    """The band of a Jaccard index: "distinct", "partly" or "substantially" (every chapter's verdicts use it)."""
    return "distinct" if jaccard < DISTINCT_BELOW else "substantially" if jaccard >= SUBSTANTIAL_FROM else "partly"


def _compare(a: float, b: float, tolerance: float = 1e-9) -> str:
    return "higher than" if a > b + tolerance else ("lower than" if a < b - tolerance else "equal to")


# ------------------------------------------------------------------------------------------ 01 data

def data_chapter(model_id: str, units_per_sample: Sequence[int], evidence_tokens_per_unit: Sequence[int],
                 n_visual_tokens: int, free_pages: int, free_evidence_page: int, niah_units: Sequence[int],
                 n_docs: int) -> list[str]:
    """Chapter 01: what the generated data and the model's token grid look like in this run."""
    ev = [int(x) for x in evidence_tokens_per_unit]
    out = [f"The {len(units_per_sample)} pass-key pages carry {sum(units_per_sample)} answer units "
           f"({min(units_per_sample)}–{max(units_per_sample)} per key), each with its own box."
           if units_per_sample else "No pass-key pages were generated."]
    if ev:
        lone = sum(1 for x in ev if x == 1)
        out.append(f"On `{model_id}`'s token grid the first page has {n_visual_tokens} visual tokens; each answer "
                   f"unit overlaps {min(ev) if min(ev) == max(ev) else f'{min(ev)}–{max(ev)}'} of them"
                   + (" — exactly one token per character, so a head that reads must look at that one token."
                      if lone == len(ev) else
                      f" ({lone} of {len(ev)} units sit in a single token; the others share tokens with neighbours, "
                      "so one token can be evidence for two characters)."))
    if any(x == 0 for x in ev):
        out.append(f"{sum(1 for x in ev if x == 0)} answer unit(s) overlap no visual token: such a unit cannot be "
                   "scored (the scorer records it as a failure).")
    out.append(f"The paper-style free layout spread one context over {free_pages} page(s); its needle sits on "
               f"page {free_evidence_page}, in reading order.")
    if niah_units:
        out.append(f"The {len(niah_units)} needle-in-a-haystack answers have {min(niah_units)}–{max(niah_units)} "
                   f"word units each; {n_docs} synthetic documents stand in for DocVQA.")
    return out


# ------------------------------------------------------------------------------------------ 02 OCR heads

def ocr_heads_chapter(model_id: str, n_heads: int, emit_selected: Sequence[Head], consume_selected: Sequence[Head],
                      emit_top: Sequence[tuple[Head, float]], n_samples: int, n_failures: int,
                      jaccard: float, spearman: float, n_shared: int, planted: Mapping[str, float],
                      grounding: Any | None = None, official: Mapping[str, Any] | None = None) -> list[str]:
    """Chapter 02. planted: row convention -> the planted head's mean entry. grounding: a
    `grounding.GroundingSummary` or None. official: {"n_selected", "n_heads", "top": [(head, score)]} of
    the released InternVL2-8B file, or None."""
    out = []
    scored = n_samples - n_failures
    out.append(f"{scored} of {n_samples} samples were scored on `{model_id}`"
               + (f"; {n_failures} failed and are counted in the table with their reasons." if n_failures else "."))
    if emit_selected:
        best, value = emit_top[0]
        out.append(f"With the emitting row, {_share(len(emit_selected), n_heads)} heads pass the frequency rule; "
                   f"the best is {head_label(best)} with a mean OCR score of {value:.2f}.")
    else:
        out.append(f"With the emitting row no head of the {n_heads} passes the frequency rule: this model shows no "
                   "OCR heads on these samples.")
    if _finite(jaccard):
        overlap = "the same heads" if jaccard >= 0.999 else {
            "substantially": "largely the same heads", "partly": "partly the same heads",
            "distinct": "mostly different heads"}[_overlap(jaccard)]
        out.append(f"The paper's consuming row selects {len(consume_selected)} heads; {n_shared} of them are among "
                   f"the emitting row's {len(emit_selected)}, so the two rows select {overlap} (Jaccard "
                   f"{jaccard:.2f})" + (f", and the head rankings correlate with Spearman {spearman:.2f}."
                                        if _finite(spearman) else "."))
    else:
        out.append("Neither row convention selects any head, so the two sets cannot be compared.")
    if planted:
        emit, consume = planted.get("emit", float("nan")), planted.get("consume", float("nan"))
        if _finite(emit):
            check = "as it must" if emit >= 0.999 else "below the 1.0 it must reach: the scorer or the plant is wrong"
            out.append(f"The planted head scores {emit:.2f} with the emitting row ({check}) and {consume:.2f} with "
                       "the consuming row, which only credits it where neighbouring characters share tokens.")
    if grounding is not None and grounding.n_characters:
        out.append(f"Read as a detector, the top {grounding.n_heads} OCR heads' attention points into the right "
                   f"character's box for {_interval(100 * grounding.hit_rate, 100 * grounding.hit_low, 100 * grounding.hit_high, 1, ' %')} "
                   f"of {grounding.n_characters} answer characters, with a mean IoU of "
                   f"{_interval(grounding.iou, grounding.iou_low, grounding.iou_high)}.")
    if official:
        top = official.get("top") or []
        out.append(f"The released InternVL2-8B file selects {_share(official['n_selected'], official['n_heads'])} "
                   "heads by the zero-filter rule" + (f"; its best head is {head_label(top[0][0])} at {top[0][1]:.2f}."
                                                  if top else "."))
    return out


# ------------------------------------------------------------------------------------------ 03 retrieval heads

def retrieval_chapter(model_id: str, n_heads: int, wu_selected: Sequence[Head], paper_selected: Sequence[Head],
                      jaccard_wu_paper: float, official: Mapping[str, Any] | None = None) -> list[str]:
    """Chapter 03. official: {"raw", "paper_code", "dropped", "max_dropped"} of the released Qwen2-VL-2B file."""
    out = [f"On `{model_id}`, the corrected test (emitting row, copy from the needle) selects "
           f"{_share(len(wu_selected), n_heads)} heads; the paper's variant selects {len(paper_selected)}."]
    if _finite(jaccard_wu_paper):
        out.append(f"The two selections overlap with Jaccard {jaccard_wu_paper:.2f}"
                   + (": the paper's variant adds heads the corrected test does not count as copying."
                      if len(paper_selected) > len(wu_selected) else "."))
    if official:
        out.append(f"In the released Qwen2-VL-2B text file {official['raw']} heads have a raw mean of at least 0.1 and "
                   f"the zero-filter rule keeps {official['paper_code']}: its filter removes {official['dropped']} "
                   f"always-on heads, the strongest with a mean of {official['max_dropped']:.2f}.")
    return out


def _drops(comparison: Any, task: str) -> dict[str, Any]:
    """One task of a masking comparison (:func:`ocrheads_lib.experiments.sweep.compare_to_baseline`, x = "k")
    as head set -> rows indexed by k, with ``drop`` = baseline - score and ``max_drop`` = baseline - the worst
    seed's score (how much masking cost: > 0 means it hurt)."""
    sub = comparison[comparison.task == task].sort_values(["head_set", "k"])
    out = {}
    for name, rows in sub.groupby("head_set", sort=True):
        rows = rows.set_index("k")
        out[name] = rows.assign(drop=rows["baseline"] - rows["score"], max_drop=rows["baseline"] - rows["worst"])
    return out


def retrieval_causal_sentences(comparison: Any, min_baseline: float = 0.2) -> list[str]:
    """Chapter 03's causal test (Wu et al.), from ``compare_to_baseline(table, "k")`` of a masking run whose only
    ranked set is "retrieval": per task, how far masking the top-k retrieval heads takes the score, against the
    mean and the worst of the random and layer-matched random draws."""
    if comparison is None or len(comparison) == 0 or "retrieval" not in set(comparison["head_set"]):
        return ["No masking condition was evaluated, so the causal test has no result."]
    out = []
    for task, sub in comparison.groupby("task", sort=True):
        sets = _drops(comparison, task)
        base = float(sub["baseline"].iloc[0])
        head = f"`{task}` ({sub['metric'].iloc[0]} {base:.2f} unmasked)"
        if base < min_baseline:
            out.append(f"{head}: too low for masking to show a drop.")
            continue
        retrieval = sets.get("retrieval")
        if retrieval is None:
            continue
        parts = []
        for k, row in retrieval.iterrows():
            text = f"k = {int(k)}: top retrieval heads {row['score']:.2f}"
            for control, label in (("random_layer_matched", "layer-matched random"), ("random", "random")):
                if control in sets and k in sets[control].index:
                    drawn = sets[control].loc[k]
                    text += f", {label} {drawn['score']:.2f} (worst draw {base - drawn['max_drop']:.2f})"
            parts.append(text)
        matched = sets.get("random_layer_matched")
        beats = [int(k) for k, row in retrieval.iterrows()
                 if matched is not None and k in matched.index and row["drop"] > matched.loc[k, "max_drop"]]
        verdict = (f"masking the retrieval heads hurts more than every layer-matched draw at {_ks(beats)}"
                   if beats else "masking the retrieval heads never hurts more than every layer-matched draw")
        out.append(f"{head}: " + "; ".join(parts) + f". So {verdict}.")
    return out


def sink_mass_sentences(mass: Any, selected: Sequence[Head], threshold: float = 0.5) -> list[str]:
    """From `experiments.sink.first_token_mass` (layer x head) and the selected retrieval heads: how many heads
    use the first token as a sink, and how much of it the retrieval heads carry."""
    values = np.asarray(mass, dtype=float)  # (L, H)
    if values.size == 0:
        return []
    n_sink = int((values > threshold).sum())
    top = tuple(int(i) for i in np.unravel_index(int(values.argmax()), values.shape))
    out = [f"{_share(n_sink, values.size)} heads put more than {threshold:g} of their attention on the first token "
           f"while the answer is written (the most: {head_label(top)}, {values[top]:.2f})"
           + (": the model has attention sinks." if n_sink else ": no head uses the first token as a sink.")]
    if selected:
        on_sink = [float(values[int(l), int(h)]) for l, h in selected]
        out.append(f"The {len(selected)} selected retrieval heads put a median of {float(np.median(on_sink)):.2f} "
                   f"of their attention there, against {float(np.median(values)):.2f} for all heads.")
    return out


# ------------------------------------------------------------------------------------------ 04 findings

def sparsity_sentences(model_id: str, share_ocr: Any, share_retrieval: Any) -> list[str]:
    """Chapter 04's first claim on one model. share_*: `analysis.Interval` of the % of heads above 0.1."""
    separated = share_ocr.low > share_retrieval.high or share_retrieval.low > share_ocr.high
    relation = _compare(share_ocr.estimate, share_retrieval.estimate)
    out = [f"Sparsity on `{model_id}`: {share_ocr.estimate:.1f} % of heads score above 0.1 as OCR heads and "
           f"{share_retrieval.estimate:.1f} % as retrieval heads (intervals {share_ocr.low:.1f}–{share_ocr.high:.1f} "
           f"and {share_retrieval.low:.1f}–{share_retrieval.high:.1f}); the OCR share is {relation} the retrieval "
           "share" + (", and the intervals do not overlap." if separated else
                      ", but the intervals overlap, so this run does not separate them.")]
    if share_ocr.estimate > share_retrieval.estimate and separated:
        out.append("So the paper's first claim (OCR heads are less sparse) holds on this model.")
    else:
        out.append("So this run does not support the paper's first claim (OCR heads less sparse) on this model.")
    return out


def static_sentences(static_ocr: float, static_retrieval: float, model_id: str | None = None) -> list[str]:
    """Chapter 04's third claim on one model: Spearman of activation frequency vs mean score per score set
    (model_id: named in the sentence, for a model beside the chosen one)."""
    where = f" on `{model_id}`" if model_id else ""
    return [f"Static activation{where} ({name}): activation frequency and mean score correlate with Spearman "
            f"{value:.2f}" + (" — a head's score is mostly how often it fires." if value >= 0.8 else ".")
            for name, value in (("OCR", static_ocr), ("retrieval", static_retrieval)) if _finite(value)]


def findings_chapter(model_id: str, share_ocr: Any, share_retrieval: Any, jaccard: float, jaccard_ci: Any,
                     static_ocr: float, static_retrieval: float,
                     released: Mapping[str, Mapping[str, float]] | None = None) -> list[str]:
    """Chapter 04. share_*: `analysis.Interval` of the % of heads above 0.1; jaccard_ci: its Interval;
    static_*: Spearman of frequency vs mean; released: name -> {"share", "spearman", "binary"}."""
    out = sparsity_sentences(model_id, share_ocr, share_retrieval)
    if _finite(jaccard):
        verdict = {"distinct": "the two sets are distinct",
                   "substantially": "the two sets overlap substantially, against the paper's 'distinct' claim",
                   "partly": "the two sets overlap partly"}[_overlap(jaccard)]
        out.append(f"Distinctness: the OCR and retrieval head sets have Jaccard {jaccard:.2f} (interval "
                   f"{jaccard_ci.low:.2f}–{jaccard_ci.high:.2f} when the OCR samples are resampled): {verdict}.")
    else:
        out.append("Distinctness cannot be judged: at least one of the two head sets is empty.")
    out += static_sentences(static_ocr, static_retrieval)
    for name, numbers in (released or {}).items():
        note = (" — by construction, since every entry of that file is 0 or 1" if numbers.get("binary") else "")
        out.append(f"Released file {name}: {numbers['share']:.1f} % of heads above 0.1; frequency and mean correlate "
                   f"with Spearman {numbers['spearman']:.2f}{note}.")
    return out


def _verdict_words(estimate: float, low: float, high: float, null: float, n: int | None, direction: str) -> str:
    """holds / fails / undecided at n = ... by the book's one rule (:func:`ocrheads_lib.nulls.decide`)."""
    from ocrheads_lib import nulls   # nulls reads score sets: imported only where a verdict is written

    word, need = nulls.decide(estimate, low, high, null, n or 0, direction)
    return nulls.Verdict("", estimate, low, high, null, n or 0, word, need).words() if n else word


def findings_verdicts(share_ocr: Any, share_retrieval: Any, jaccard: float, jaccard_ci: Any, static_ocr: float,
                      static_retrieval: float, n: int | None = None) -> list[dict[str, str]]:
    """Chapter 04's verdict table: one row per claim of the paper, with this run's numbers and the verdict in the
    book's words (holds / fails / undecided at n = ..., n: the samples behind the intervals). Sparsity: the two
    shares' intervals must not overlap; distinctness: the Jaccard interval must lie below
    :data:`DISTINCT_BELOW` (holds) or above it (fails); static activation: both Spearman values >= 0.8 holds,
    both below fails."""
    separated = share_ocr.low > share_retrieval.high or share_ocr.high < share_retrieval.low
    undecided = f"undecided at n = {n}" if n else "undecided"
    rows = [{"claim": "OCR heads are less sparse",
             "this run": f"{share_ocr.estimate:.1f} % vs {share_retrieval.estimate:.1f} % of heads above 0.1",
             "verdict": ("holds" if share_ocr.low > share_retrieval.high else "fails") if separated else
             f"{undecided} (intervals overlap)"}]
    if _finite(jaccard):
        rows.append({"claim": "OCR and retrieval heads are distinct",
                     "this run": f"Jaccard {jaccard:.2f} ({jaccard_ci.low:.2f}–{jaccard_ci.high:.2f})",
                     "verdict": _verdict_words(jaccard, jaccard_ci.low, jaccard_ci.high, DISTINCT_BELOW, n, "less")})
    else:
        rows.append({"claim": "OCR and retrieval heads are distinct", "this run": "a head set is empty",
                     "verdict": "cannot be judged"})
    values = [v for v in (static_ocr, static_retrieval) if _finite(v)]
    rows.append({"claim": "heads are statically activated",
                 "this run": ", ".join(f"{name} Spearman {v:.2f}" for name, v in
                                       (("OCR", static_ocr), ("retrieval", static_retrieval)) if _finite(v)) or "–",
                 "verdict": ("holds" if values and min(values) >= 0.8 else
                             f"{undecided} (one of the two below 0.8)" if values and max(values) >= 0.8 else
                             "fails" if values else "cannot be judged")})
    return rows


def masking_verdicts(comparison: Any, min_baseline: float = 0.2, sets: Sequence[str] = ("ocr", "retrieval")
                     ) -> list[dict[str, str]]:
    """The verdict table of a masking run (chapters 03 and 06), from ``compare_to_baseline(table, "k")``: per
    task and masked head set, the unmasked score, the largest drop (at which k) and the k values at which
    masking the set cost more than every random and every layer-matched random draw."""
    rows = []
    if comparison is None or len(comparison) == 0:
        return rows
    for task, sub in comparison.groupby("task", sort=True):
        base = float(sub["baseline"].iloc[0])
        drops = _drops(comparison, task)
        for name in sets:
            if name not in drops:
                continue
            own = drops[name]["drop"]
            row = {"task": f"`{task}`", "masked": f"{'OCR' if name == 'ocr' else name} heads",
                   "unmasked": f"{base:.2f}"}
            if base < min_baseline:
                rows.append({**row, "largest drop": "–", "beats random at": "–", "beats layer-matched at": "–",
                             "matters": "baseline too low"})
                continue
            worst_k = own.idxmax()
            row["largest drop"] = f"{own[worst_k]:.2f} at k = {int(worst_k)}"
            beats_all = True
            for control, column in (("random", "beats random at"), ("random_layer_matched", "beats layer-matched at")):
                if control not in drops:
                    row[column] = "–"
                    continue
                max_drop = drops[control]["max_drop"]
                beats = [k for k in max_drop.index if k in own.index and own[k] > max_drop[k]]
                row[column] = f"{len(beats)} of {len(max_drop)} k"
                beats_all = beats_all and len(beats) > 0
            row["matters"] = "yes: beats the controls" if beats_all else "not shown"
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ 05 case study

def case_study_reading(characters: Mapping[str, Mapping[str, Any]], model_id: str) -> str:
    """How well the model itself reads the single characters: from `run_case_study(...)["characters"]`."""
    answers = [(char, a) for char, info in characters.items() for a in info.get("answers", [])]
    if not answers:
        return f"No greedy answers of `{model_id}` were recorded."
    exact = sum(a.strip() == char for char, a in answers)
    contains = sum(char in a for char, a in answers)
    perfect = sum(1 for char, info in characters.items()
                  if info.get("answers") and all(a.strip() == char for a in info["answers"]))
    return (f"Left to answer on its own, `{model_id}` writes exactly the character on {exact} of {len(answers)} pages "
            f"({100 * exact / len(answers):.0f} %; its answer contains it on {contains}), and every page right for "
            f"{perfect} of {len(characters)} characters.")


def case_study_chapter(model_id: str, consistency: Mapping[str, Any], top: int, n_characters: int,
                       characters: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Chapter 05, from `experiments.case_study.run_case_study(...)`: its "consistency" and (optional) its
    "characters", for a sentence on how well the model reads them itself."""
    reading = [case_study_reading(characters, model_id)] if characters else []
    scored = int(consistency.get("n_characters") or 0)
    if scored < 2:
        return reading + [f"Only {scored} of {n_characters} characters had scored samples on `{model_id}`: too few to "
                          f"compare their top-{top} heads."]
    mean_j, chance = float(consistency["mean_pairwise_jaccard"]), float(consistency["chance_jaccard"])
    ratio = mean_j / chance if chance > 0 else float("inf")
    common = consistency.get("most_common") or []
    out = [f"{scored} of {n_characters} characters had scored samples; their top-{top} head sets overlap with a mean "
           f"pairwise Jaccard of {mean_j:.2f}, against {chance:.2f} for random sets of the same size "
           f"({ratio:.1f} times chance)."]
    if common:
        l, h, c = common[0]
        out.append(f"The most frequent head, {head_label((l, h))}, is in the top {top} of {c} of the {scored} "
                   "characters" + (": the same few heads locate every character." if c >= 0.75 * scored and ratio > 2
                                   else "."))
    return reading + out


# ------------------------------------------------------------------------------------------ 06 masking

def _ks(values: Sequence[int]) -> str:
    return "k = " + ", ".join(str(int(k)) for k in values) if len(values) else "no k"


def masking_chapter(comparison: Any, min_baseline: float = 0.2) -> list[str]:
    """Chapter 06, from ``compare_to_baseline(table, "k")``: per task and head set, at which k masking it cost
    more than every random (and every layer-matched random) draw."""
    if comparison is None or len(comparison) == 0:
        return ["No masking condition was evaluated, so there is nothing to compare."]
    out = []
    for task, sub in comparison.groupby("task", sort=True):
        sets = _drops(comparison, task)
        first = sub.sort_values("k").iloc[0]
        head = f"`{task}` ({first['modality']}, {first['metric']}, {first['baseline']:.2f} unmasked)"
        if first["baseline"] < min_baseline:
            out.append(f"{head}: too low for masking to show a drop.")
            continue
        parts = []
        for name in ("ocr", "retrieval"):
            if name not in sets:
                continue
            drops = sets[name]["drop"]
            worst_k = drops.idxmax()
            text = (f"masking the top {'OCR' if name == 'ocr' else name} heads costs up to {drops[worst_k]:.2f} "
                    f"(at k = {int(worst_k)})")
            for control, label in (("random", "random"), ("random_layer_matched", "layer-matched")):
                if control not in sets:
                    continue
                max_drop = sets[control]["max_drop"]
                beats = [k for k in max_drop.index if k in drops.index and drops[k] > max_drop[k]]
                text += f"; more than every {label} draw at {_ks(beats)} ({len(beats)} of {len(max_drop)} k values)"
            parts.append(text)
        out.append(f"{head}: " + ". For the same task, ".join(parts) + "." if parts else f"{head}: no head set was masked.")
    return out


def dissociation_sentences(table: Any, min_baseline: float = 0.2) -> list[str]:
    """Chapter 06, from the masking table itself (one row per condition, with the headline metric's 95 %
    interval in ``<metric>_lo`` / ``<metric>_hi``): for every image task, text task and k at which both the
    top-k OCR heads and the top-k retrieval heads were masked, whether the two sets doubly dissociate: masking
    the OCR heads leaves reading the page worse off than masking the retrieval heads, and masking the retrieval
    heads leaves the text task worse off than masking the OCR heads. Tasks whose baseline is below
    `min_baseline` are left out (nothing to lose)."""
    if table is None or len(table) == 0:
        return []
    ranked = table[table.head_set.isin(["ocr", "retrieval"])]
    baselines = table[table.head_set == "none"].set_index("task")

    def usable(modality: str) -> list[str]:
        tasks = sorted(set(ranked.task[ranked.modality == modality]))
        return [t for t in tasks if t in baselines.index
                and float(baselines.loc[t, baselines.loc[t, "metric"]]) >= min_baseline]

    def cell(task: str, head_set: str, k: Any) -> tuple[float, float, float] | None:
        rows = ranked[(ranked.task == task) & (ranked.head_set == head_set) & (ranked.k == k)]
        if len(rows) != 1:
            return None
        row = rows.iloc[0]
        metric = row["metric"]
        return float(row[metric]), float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])

    def shown(value: tuple[float, float, float]) -> str:
        return f"{value[0]:.2f} [{value[1]:.2f}, {value[2]:.2f}]"

    out = []
    for image in usable("image"):
        for text in usable("text"):
            for k in sorted(set(ranked.k[ranked.task == image]) & set(ranked.k[ranked.task == text])):
                cells = {(s, t): cell(t, s, k) for s in ("ocr", "retrieval") for t in (image, text)}
                if any(v is None for v in cells.values()):
                    continue
                ocr_image, ocr_text = cells["ocr", image], cells["ocr", text]
                ret_image, ret_text = cells["retrieval", image], cells["retrieval", text]
                both = ocr_image[0] < ret_image[0] and ret_text[0] < ocr_text[0]
                verdict = ("a double dissociation (the OCR heads matter more for reading the page, the retrieval "
                           "heads for copying from text)" if both else "no double dissociation at this k")
                out.append(f"At k = {int(k)}, masking the top OCR heads leaves `{image}` at {shown(ocr_image)} and "
                           f"`{text}` at {shown(ocr_text)}; masking as many top retrieval heads leaves them at "
                           f"{shown(ret_image)} and {shown(ret_text)} (95 % intervals): {verdict}.")
    return out


def dissociation_summary(table: Any, min_baseline: float = 0.2) -> list[str]:
    """One short sentence over :func:`dissociation_sentences`: at how many of the (image task, text task, k)
    comparisons the OCR and retrieval heads doubly dissociate (empty when nothing could be compared)."""
    sentences = dissociation_sentences(table, min_baseline)
    if not sentences:
        return []
    found = [s.split(",")[0].removeprefix("At ") for s in sentences if s.endswith("copying from text).")]
    return [f"The OCR and retrieval heads doubly dissociate in {len(found)} of {len(sentences)} comparisons of an "
            "image task with a text task" + (f" ({', '.join(found)})." if found else ".")]


# ------------------------------------------------------------------------------------------ 07 sink

def first_token_sentence(model_id: str, kind: str, heads: Sequence[Head], mass: Any) -> str:
    """How much of their attention the top heads of one kind put on the first token (`mass`: an (L, H) array)."""
    if not heads:
        return f"`{model_id}` has no {kind} heads to report."
    values = " and ".join(f"{float(mass[tuple(h)]):.2f}" for h in heads)
    return (f"The top {len(heads)} {kind} heads of `{model_id}` ({heads_text(heads)}) put {values} of their attention "
            "on the first token.")


def sink_chapter(comparison: Any, max_first_mass: float | None, max_mass_head: Head | None,
                 head_set: str = "ocr") -> list[str]:
    """Chapter 07, from ``compare_to_baseline(table, "beta")`` and the first-token mass table; `head_set` is the
    set whose β sweep is judged against the controls ("ocr" for an image model, "retrieval" for a text model)."""
    out = []
    if comparison is not None and len(comparison):
        for task, sub in comparison.groupby("task", sort=True):
            base = float(sub["baseline"].iloc[0])
            best = {name: rows.set_index("beta")["score"] for name, rows in
                    sub.sort_values(["head_set", "beta"]).groupby("head_set", sort=True)}   # set -> score per beta
            if head_set not in best:
                continue
            scores = best.pop(head_set)
            gain = scores.max() - base
            best_other = float(max(s.max() - base for s in best.values())) if best else float("nan")
            if gain > 0:
                text = (f"redistributing the {head_set} heads' sink mass helps most at β = {scores.idxmax():g} "
                        f"(+{gain:.2f} over {base:.2f})")
                if _finite(best_other):
                    text += ", more than any control set" if gain > best_other else ", but a control set gains as much"
            else:
                text = f"no β improves on the unmodified {base:.2f} in the {head_set} heads (worst: {scores.min():.2f})"
            out.append(f"`{task}`: {text}.")
    else:
        out.append("No β sweep was evaluated.")
    if max_first_mass is not None and _finite(max_first_mass):
        where = f" ({head_label(max_mass_head)})" if max_mass_head is not None else ""
        if max_first_mass < 0.05:
            out.append(f"No head uses the first token as a sink: the largest first-token mass is {max_first_mass:.2g}"
                       f"{where}, so every β moves almost nothing and a flat sweep is expected, not evidence against "
                       "the paper.")
        else:
            out.append(f"The largest first-token mass of any head is {max_first_mass:.2f}{where}: there is sink "
                       "attention to move.")
    return out


# ------------------------------------------------------------------------------------------ 08 chain-of-thought

def cot_chapter(table: Any, metric: str = "accuracy") -> list[str]:
    """Chapter 08, from `experiments.cot.run_cot(...)[0]` (one row per task and condition)."""
    out = []
    for task, sub in table.groupby("task", sort=True):
        by = {row["condition"]: row for row in sub.to_dict("records")}
        if "direct" not in by or "cot" not in by:
            continue
        d, c = by["direct"], by["cot"]
        followed = c.get("followed")
        text = f"`{task}`: {metric} {d[metric]:.2f} direct vs {c[metric]:.2f} with the chain-of-thought prompt"
        if _finite(followed):
            text += (f"; the model wrote more than the bare answer on {100 * followed:.0f} % of the samples"
                     + (" (it mostly ignored the instruction, so head-score changes reflect the prompt wording)."
                        if followed < 0.5 else "."))
        else:
            text += "."
        spearman = c.get("spearman_vs_direct")
        if _finite(spearman):
            text += f" All head scores correlate between conditions with Spearman {spearman:.2f}."
        out.append(text)
    return out or ["No task had both conditions evaluated."]


# ------------------------------------------------------------------------------------------ 09 explorer

def explorer_chapter(model_id: str, best_head: Head | None, best_share: float, median_share: float,
                     n_samples: int) -> list[str]:
    """Chapter 09: how much of the top OCR head's on-page attention lands in the evidence boxes."""
    if best_head is None:
        return [f"No OCR scores were available for `{model_id}`, so the explorer opens on layer 0, head 0."]
    return [f"Over the {n_samples} pages shown, the top OCR head {head_label(best_head)} puts "
            f"{100 * best_share:.0f} % of its on-page attention (from the answer rows) on the evidence tokens; the "
            f"median head puts {100 * median_share:.0f} % there."
            + (" That contrast is what an OCR head looks like." if best_share > 2 * median_share else "")]


# ------------------------------------------------------------------------------------------ 04 models compared

def model_comparison_sentences(rows: Sequence[Mapping[str, Any]], chosen: str) -> list[str]:
    """Chapter 04, from `findings.compare` rows: one sentence per OCR-vs-retrieval comparison (but the chosen
    model's own, which `findings_chapter` states); for a model compared both with its own retrieval heads and
    with its language half's heads before the VLM training (smol-vl vs SmolLM2), what the training did; and
    whether the training kept the language half's retrieval heads."""
    out = []
    for row in rows:
        if row["relation"] == RETRIEVAL_KEPT or (row["model"] == chosen and row["relation"] == SAME_MODEL):
            continue
        if not _finite(row["jaccard"]):
            out.append(f"`{row['model']}`: its OCR heads cannot be compared with the {row['reference']} heads, "
                       "because at least one of the two sets is empty.")
            continue
        verdict = {"distinct": "distinct", "substantially": "overlapping substantially",
                   "partly": "partly overlapping"}[_overlap(row["jaccard"])]
        out.append(f"`{row['model']}`: its {row['n_a']} OCR heads and the {row['n_b']} heads of {row['reference']} "
                   f"share {row['n_shared']} (Jaccard {row['jaccard']:.2f}, interval {row['jaccard_low']:.2f}–"
                   f"{row['jaccard_high']:.2f}; Spearman {row['spearman']:.2f} over all head scores): {verdict}.")
    by_model: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["relation"]] = row
    for model, relations in by_model.items():
        after, before = relations.get(SAME_MODEL), relations.get(BEFORE_TRAINING)
        if after is not None and before is not None and _finite(after["jaccard"]) and _finite(before["jaccard"]):
            relation = _compare(after["jaccard"], before["jaccard"])
            out.append(f"On `{model}`, the OCR heads' Jaccard with the model's own retrieval heads after the VLM "
                       f"training, {after['jaccard']:.2f}, is {relation} their Jaccard with the language half's "
                       f"retrieval heads before it, {before['jaccard']:.2f}: "
                       + ("the training pulled the retrieval heads toward the heads that read pages."
                          if after["jaccard_low"] > before["jaccard_high"] else
                          "the training moved the retrieval heads away from the heads that read pages."
                          if after["jaccard_high"] < before["jaccard_low"] else
                          "the two intervals overlap, so this run cannot tell whether the training moved them."))
        kept = relations.get(RETRIEVAL_KEPT)
        if kept is not None and _finite(kept["jaccard"]):
            out.append(f"`{model}`'s {kept['n_a']} retrieval heads after the VLM training and the {kept['n_b']} "
                       f"heads of {kept['reference']} share {kept['n_shared']} (Jaccard {kept['jaccard']:.2f}, interval "
                       f"{kept['jaccard_low']:.2f}–{kept['jaccard_high']:.2f}; Spearman {kept['spearman']:.2f}): "
                       + {"substantially": "the training kept most of the language half's retrieval heads.",
                          "distinct": "the training replaced most of the language half's retrieval heads.",
                          "partly": "the training kept part of the language half's retrieval heads."}[
                              _overlap(kept["jaccard"])])
    return out
