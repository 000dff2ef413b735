"""Chain-of-thought vs direct answering, and what it does to OCR / retrieval head scores.

The paper mentions chain-of-thought but published no code for it (PAPER.md §5.3, §9.25). This design is
ours:

* two prompting conditions on the same samples: ``direct`` (the sample's own question) and ``cot`` (the
  question replaced by an instruction to first transcribe the line holding the answer and then give it,
  :data:`COT_QUESTION`);
* accuracy per condition (gold is a substring of the output), plus ``final_em`` — the answer extracted after
  the last "pass key is" (or the last word) equals the gold — and ``followed`` — the output wrote more
  than the answer (a crude "did it transcribe anything" signal);
* head scores per condition with the SAME scorer: OCR score for image tasks, text retrieval score for text
  tasks (the scored answer tokens are the first occurrence of the gold answer in the generation, i.e.
  inside the transcript when the model wrote one); reported as the mean score of the top-k OCR and the
  top-k retrieval heads, the rank correlation of all head scores between conditions, and per-head changes.

A model trained without CoT data (such as the embedded tiny model) may ignore the instruction; the table
says what came out (``followed``), it does not assume the instruction was followed.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ocrheads_lib.experiments.evaluate import (
    condition_key,
    evaluate,
    metrics_for,
    modality,
    summarize,
    write_csv_atomic,
)
from ocrheads_lib.experiments.sweep import RunSettings, prediction_cache
from ocrheads_lib.scoring import score_ocr, score_retrieval
from ocrheads_lib.types import Head

COT_QUESTION = "First copy the line that contains the pass key, then write: The pass key is <key>."
CONDITIONS = ("direct", "cot")


def cot_sample(sample: Any, question: str = COT_QUESTION) -> Any:
    """A copy of `sample` whose question is the chain-of-thought instruction (same pages / context / answer)."""
    return dataclasses.replace(sample, question=question)


def extract_final_answer(prediction: str) -> str:
    """The answer a chain-of-thought output ends with: the text after the last "pass key is" (up to the next
    sentence end), else the last whitespace-separated word; trailing punctuation removed."""
    text = prediction or ""
    matches = list(re.finditer(r"pass\s*key\s*is\s*", text, flags=re.IGNORECASE))
    if matches:
        tail = text[matches[-1].end():]
        tail = re.split(r"[\n]|\.(?:\s|$)", tail, maxsplit=1)[0]
    else:
        words = text.split()
        tail = words[-1] if words else ""
    return tail.strip().strip(".,;:!?\"'")


def followed_instruction(prediction: str, gold: str, min_extra_chars: int = 8) -> bool:
    """True when the output is at least `min_extra_chars` longer than the gold answer (it wrote something
    besides the answer)."""
    return len((prediction or "").strip()) >= len(str(gold).strip()) + min_extra_chars


def _score_heads(lm: Any, samples: Sequence[Any], max_new_tokens: int) -> Any:
    """OCR scores for image samples, text retrieval scores for text samples (HeadScores)."""
    if modality(samples) == "image":
        return score_ocr(lm, samples, max_new_tokens=max_new_tokens)
    return score_retrieval(lm, samples, max_new_tokens=max_new_tokens)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def run_cot(lm: Any, tasks: Mapping[str, Sequence[Any]], head_sets: Mapping[str, Sequence[Head]],
            settings: RunSettings, *, k: int = 2, cot_question: str = COT_QUESTION, max_new_tokens_cot: int = 64,
            score_heads: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Direct vs CoT on every task. Returns (table, head_table) and, with ``settings.out_dir``, writes
    ``out_dir/cot.csv`` and ``out_dir/cot_heads.csv``. Direct answers get ``settings.max_new_tokens``,
    chain-of-thought answers `max_new_tokens_cot` (room for the transcript).

    table: one row per (model, task, condition): n, n_failed, accuracy (+CI), em, final_em (+CI), followed,
    scorer ("ocr" | "retrieval"), n_scored, n_score_failed, ``top<k>_<set>_score`` for every head set (mean score
    of its top-k heads under this condition), spearman_vs_direct (all heads).
    head_table: one row per (task, condition, layer, head): score (mean over scored samples), and the
    head-set membership (``in_<set>_top<k>``).
    """
    model_id = settings.name_of(lm)
    out_dir = settings.out_dir
    rows, head_rows = [], []
    for task, samples in tasks.items():
        samples = list(samples)
        metrics = metrics_for(samples)
        direct_mean = None
        for condition in CONDITIONS:
            cond_samples = samples if condition == "direct" else [cot_sample(s, cot_question) for s in samples]
            budget = settings.max_new_tokens if condition == "direct" else max_new_tokens_cot
            cache = prediction_cache(out_dir, getattr(lm, "revision", None), "cot", task,
                                     condition_key(condition=condition), budget)
            preds = evaluate(lm, cond_samples, None, metrics=metrics, cache=cache, max_new_tokens=budget)
            row: dict[str, Any] = dict(model=model_id, task=task, modality=modality(samples), condition=condition,
                                       question=cond_samples[0].question if cond_samples else "")
            row.update(summarize(preds, metrics, n_boot=settings.n_boot, boot_seed=settings.boot_seed))
            answered = [p for p in preds if p.ok]
            final = [float(extract_final_answer(p.prediction or "").lower() in {g.strip().lower() for g in p.golds})
                     for p in answered]
            row["final_em"] = float(np.mean(final)) if final else float("nan")
            row["followed"] = float(np.mean([followed_instruction(p.prediction or "", p.golds[0]) for p in answered])) \
                if answered else float("nan")
            row["example_output"] = answered[0].prediction if answered else ""
            if score_heads:
                scores = _score_heads(lm, cond_samples, budget)
                mean = scores.mean()  # (L, H)
                row["scorer"] = scores.meta.kind
                row["n_scored"] = len(scores.samples)
                row["n_score_failed"] = len(scores.failures)
                for name, heads in head_sets.items():
                    top = [tuple(h) for h in heads[:k]]
                    row[f"top{k}_{name}_score"] = float(np.mean([mean[l, h] for l, h in top])) if top and \
                        scores.samples else float("nan")
                if condition == "direct":
                    direct_mean = mean if scores.samples else None
                    row["spearman_vs_direct"] = 1.0 if scores.samples else float("nan")
                else:
                    row["spearman_vs_direct"] = _spearman(direct_mean, mean) if direct_mean is not None and \
                        scores.samples else float("nan")
                members = {name: {tuple(h) for h in heads[:k]} for name, heads in head_sets.items()}
                for layer in range(mean.shape[0]):
                    for head in range(mean.shape[1]):
                        entry = dict(model=model_id, task=task, condition=condition, scorer=scores.meta.kind,
                                     layer=layer, head=head, score=float(mean[layer, head]))
                        for name, member in members.items():
                            entry[f"in_{name}_top{k}"] = (layer, head) in member
                        head_rows.append(entry)
            rows.append(row)
            if settings.progress:
                print(f"[cot] {task} {condition}: accuracy={row.get('accuracy', float('nan')):.3f} "
                      f"followed={row['followed']:.2f} example={row['example_output'][:60]!r}")
    table, head_table = pd.DataFrame(rows), pd.DataFrame(head_rows)
    if out_dir is not None:
        write_csv_atomic(table, Path(out_dir) / "cot.csv")
        if not head_table.empty:
            write_csv_atomic(head_table, Path(out_dir) / "cot_heads.csv")
    return table, head_table


def head_score_changes(head_table: Any) -> Any:
    """Per (task, layer, head): direct score, cot score and the change (cot - direct), largest |change| first."""
    if head_table.empty:
        return head_table
    wide = head_table.pivot_table(index=["task", "layer", "head"], columns="condition", values="score").reset_index()
    wide["change"] = wide.get("cot", np.nan) - wide.get("direct", np.nan)
    return wide.reindex(wide["change"].abs().sort_values(ascending=False).index).reset_index(drop=True)
