"""Document-QA loaders (DocVQA, MP-DocVQA, NQ, HotpotQA) with the paper's prompt formats.

    load_docvqa("validation", 100)                       # lmms-lab/DocVQA from the local HF cache
    load_docvqa("validation", 100, path="dl/docvqa")     # or a save_to_disk folder / parquet file(s)
    load_mpdocvqa("val", 100, max_pages=8)
    load_nq("data/raw/biencoder-nq-dev.json", 100, seed=0, n_distractors=5)
    load_hotpotqa("data/raw/hotpot_dev_distractor_v1.json", 100, seed=0)

Prompts (PAPER.md §5.3): DocVQA / MP-DocVQA: the page image(s), then "Question: {q}\\nAnswer: ".
NQ / HotpotQA (text QA): `context` = "Evidence {i}: {passage}" lines (1-based) of the gold passages
and distractors, shuffled; `question` = "Just answer the question and do not generate additional
word\\nQuestion: {q}\\n\\nAnswer: ". Distractors come from each item's own seeded RNG (never shared
with anything else, e.g. random head draws).

`datasets` is imported lazily. When a dataset is not available offline a DatasetUnavailableError
(a FileNotFoundError) says what to download and where to put it.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from .samples import DocSample

DOC_QUESTION = "Question: {question}\nAnswer: "
TEXT_QA_INSTRUCTION = "Just answer the question and do not generate additional word"
TEXT_QUESTION = TEXT_QA_INSTRUCTION + "\nQuestion: {question}\n\nAnswer: "
DATA_ROOT_ENV = "OCRHEADS_DATA"

NQ_URL = "https://dl.fbaipublicfiles.com/dpr/data/retriever/biencoder-nq-dev.json.gz"
HOTPOT_URL = "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json"


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is not available here (no hub access and no local copy)."""


def data_root() -> Path:
    """Where local copies of downloaded datasets are looked for: $OCRHEADS_DATA or ./data/raw."""
    return Path(os.environ.get(DATA_ROOT_ENV, "data/raw"))


def item_rng(tag: str, seed: int, index: int) -> random.Random:
    return random.Random(f"ocrheads:{tag}:{int(seed)}:{int(index)}")


def _check_n(n: int | None) -> None:
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 (or None for all), got {n}")


# ------------------------------------------------------------------------------------ hub / local tables
def _open_table(hub_id: str, config: str | None, split: str, path: str | os.PathLike | None, what: str):
    """A `datasets.Dataset` from a local save_to_disk folder, parquet file(s)/folder, or the local HF cache."""
    try:
        import datasets  # optional dependency: imported where needed, so the rest works without it
    except ImportError as error:
        raise DatasetUnavailableError(f"{what} needs the `datasets` package: pip install datasets") from error
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DatasetUnavailableError(f"{what}: local path {p} does not exist")
        if p.is_dir() and (p / "dataset_dict.json").exists():
            dd = datasets.load_from_disk(str(p))
            if split not in dd:
                raise ValueError(f"{what}: split {split!r} not in {p} (has {list(dd)})")
            return dd[split]
        if p.is_dir() and (p / "state.json").exists():
            return datasets.load_from_disk(str(p))
        files = sorted(str(f) for f in p.rglob("*.parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise DatasetUnavailableError(f"{what}: no parquet files or save_to_disk dataset under {p}")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    try:
        if config:
            return datasets.load_dataset(hub_id, config, split=split)
        return datasets.load_dataset(hub_id, split=split)
    except Exception as error:  # offline hub raises ConnectionError / FileNotFoundError / ValueError ...
        cause = str(error).splitlines()[0] if str(error) else ""
        config_arg = f", {config!r}" if config else ""
        raise DatasetUnavailableError(
            f"{what} ({hub_id}{', ' + config if config else ''}, split {split!r}) is not available offline. "
            f"On a machine with hub access run: datasets.load_dataset({hub_id!r}{config_arg}, "
            f"split={split!r}).save_to_disk('{data_root() / hub_id.split('/')[-1]}') and pass that folder as path=..., "
            f"or put it in the Hugging Face cache. Cause: {type(error).__name__}: {cause}"
        ) from error


def _as_list(answers: Any) -> list[str]:
    if answers is None:
        return []
    if isinstance(answers, str):
        text = answers.strip()
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return [answers]
            return [str(a) for a in value]
        return [answers]
    return [str(a) for a in answers]


def _as_image(value: Any):
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"]).convert("RGB")
    raise TypeError(f"cannot read an image from {type(value).__name__}")


def load_docvqa(split: str = "validation", n: int | None = None, *, path: str | os.PathLike | None = None,
                seed: int = 0) -> list[DocSample]:
    """DocVQA (lmms-lab/DocVQA, config DocVQA): the first n items of `split` (paper: validation 0-1199).
    Fields used: image, question, answers (+ questionId when present). `seed` is unused (kept for a
    uniform signature): items are taken in order."""
    _check_n(n)
    table = _open_table("lmms-lab/DocVQA", "DocVQA", split, path, "DocVQA")
    out = []
    for i, row in enumerate(table):
        if n is not None and len(out) >= n:
            break
        golds = _as_list(row.get("answers"))
        out.append(DocSample(id=f"docvqa-{row.get('questionId', i)}",
                             question=DOC_QUESTION.format(question=row["question"]),
                             golds=golds, pages=[_as_image(row["image"])],
                             meta=dict(dataset="docvqa", split=split, index=i, raw_question=row["question"])))
    return out


def load_mpdocvqa(split: str = "val", n: int | None = None, max_pages: int = 8, *,
                  path: str | os.PathLike | None = None, seed: int = 0) -> list[DocSample]:
    """MP-DocVQA (lmms-lab/MP-DocVQA): items in order, documents with more than `max_pages` pages skipped
    (as in the paper; the count is in each sample's meta["skipped_before"]). Pages come from columns
    image_1 ... image_20 (None = absent); answers may be a string repr of a list."""
    _check_n(n)
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    table = _open_table("lmms-lab/MP-DocVQA", None, split, path, "MP-DocVQA")
    image_cols = sorted((c for c in table.column_names if c.startswith("image_")), key=lambda c: int(c.split("_")[1]))
    out, skipped = [], 0
    for i, row in enumerate(table):
        if n is not None and len(out) >= n:
            break
        raw_pages = [row[c] for c in image_cols if row[c] is not None]
        if len(raw_pages) > max_pages:
            skipped += 1
            continue
        pages = [_as_image(v) for v in raw_pages]
        answer_page = row.get("answer_page_idx")
        out.append(DocSample(id=f"mpdocvqa-{row.get('questionId', i)}",
                             question=DOC_QUESTION.format(question=row["question"]),
                             golds=_as_list(row.get("answers")), pages=pages,
                             meta=dict(dataset="mpdocvqa", split=split, index=i, n_pages=len(pages),
                                       answer_page_idx=answer_page, raw_question=row["question"],
                                       skipped_before=skipped, max_pages=max_pages)))
    return out


# ------------------------------------------------------------------------------------ text QA (JSON files)
def _read_json(path_or_id: str | os.PathLike, what: str, url: str, default_name: str) -> Any:
    p = Path(path_or_id)
    if not p.exists():
        candidate = data_root() / default_name
        hint = (f"{what}: {p} not found. Download {url} (gunzip if .gz) and put it at {candidate} "
                f"(or set ${DATA_ROOT_ENV}), or pass its path")
        raise DatasetUnavailableError(hint)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{what}: {p} is not valid JSON ({error})") from error


def _evidence_context(passages: Iterable[str]) -> str:
    return "\n".join(f"Evidence {i}: {text}" for i, text in enumerate(passages, start=1))


def load_nq(path_or_id: str | os.PathLike | None = None, n: int | None = None, seed: int = 0,
            n_distractors: int = 5) -> list[DocSample]:
    """Natural Questions in the DPR retriever format (biencoder-nq-dev.json): a list of {question, answers,
    positive_ctxs: [{title, text, title_score?}], negative_ctxs: [...], hard_negative_ctxs: [...]}.

    Evidence = positive passages with title_score == 1 (all positives if none has it; the first positive
    if the field is absent) + `n_distractors` negatives drawn without replacement by the item's own RNG,
    shuffled by the same RNG. Items without positives are skipped (counted in meta)."""
    _check_n(n)
    if n_distractors < 0:
        raise ValueError(f"n_distractors must be >= 0, got {n_distractors}")
    path = path_or_id if path_or_id is not None else data_root() / "biencoder-nq-dev.json"
    items = _read_json(path, "NQ (DPR dev)", NQ_URL, "biencoder-nq-dev.json")
    if not isinstance(items, list):
        raise ValueError(f"NQ: expected a JSON list of DPR records in {path}")
    out, skipped = [], 0
    for i, item in enumerate(items):
        if n is not None and len(out) >= n:
            break
        positives = item.get("positive_ctxs") or []
        if not positives:
            skipped += 1
            continue
        if any("title_score" in c for c in positives):
            gold = [c for c in positives if c.get("title_score") == 1] or positives
        else:
            gold = positives[:1]
        negatives = item.get("negative_ctxs") or item.get("hard_negative_ctxs") or []
        rng = item_rng("nq", seed, i)
        distractors = rng.sample(negatives, min(n_distractors, len(negatives)))
        passages = [(c["text"], True) for c in gold] + [(c["text"], False) for c in distractors]
        rng.shuffle(passages)
        out.append(DocSample(id=f"nq-{i}", question=TEXT_QUESTION.format(question=item["question"]),
                             golds=[str(a) for a in item["answers"]], context=_evidence_context(p for p, _ in passages),
                             meta=dict(dataset="nq", index=i, seed=seed, raw_question=item["question"],
                                       gold_positions=[k for k, (_, g) in enumerate(passages) if g],
                                       n_distractors=len(distractors), skipped_before=skipped)))
    return out


def load_hotpotqa(path: str | os.PathLike | None = None, n: int | None = None, seed: int = 0,
                  max_distractors: int = 5) -> list[DocSample]:
    """HotpotQA dev distractor file (hotpot_dev_distractor_v1.json): a list of {_id, question, answer,
    supporting_facts: [[title, sent_id], ...], context: [[title, [sentences]], ...]}.

    Evidence = the item's paragraphs whose title is among its supporting facts + 1..max_distractors
    paragraphs taken from other random items (item's own RNG), shuffled."""
    _check_n(n)
    if max_distractors < 1:
        raise ValueError(f"max_distractors must be >= 1, got {max_distractors}")
    p = path if path is not None else data_root() / "hotpot_dev_distractor_v1.json"
    items = _read_json(p, "HotpotQA (dev distractor)", HOTPOT_URL, "hotpot_dev_distractor_v1.json")
    if not isinstance(items, list) or not items:
        raise ValueError(f"HotpotQA: expected a non-empty JSON list in {p}")
    out = []
    for i, item in enumerate(items):
        if n is not None and len(out) >= n:
            break
        titles = {t for t, _ in item["supporting_facts"]}
        gold = ["".join(sents).strip() for title, sents in item["context"] if title in titles]
        rng = item_rng("hotpot", seed, i)
        others = [j for j in range(len(items)) if j != i]
        distractors = []
        for _ in range(rng.randint(1, max_distractors) if others else 0):
            other = items[rng.choice(others)]
            if other["context"]:
                _, sents = rng.choice(other["context"])
                distractors.append("".join(sents).strip())
        passages = [(g, True) for g in gold] + [(d, False) for d in distractors]
        rng.shuffle(passages)
        out.append(DocSample(id=f"hotpotqa-{item.get('_id', i)}",
                             question=TEXT_QUESTION.format(question=item["question"]),
                             golds=[str(item["answer"])], context=_evidence_context(t for t, _ in passages),
                             meta=dict(dataset="hotpotqa", index=i, seed=seed, raw_question=item["question"],
                                       gold_positions=[k for k, (_, g) in enumerate(passages) if g],
                                       n_distractors=len(distractors))))
    return out
