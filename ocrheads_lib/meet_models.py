"""The introduction's "Meet the models" and "Scale" sections, written when the book is built.

    python -m ocrheads_lib.meet_models book/intro_models     # scripts/build_book.sh runs this

writes ``models.md`` (included by book/intro.md) and ``examples.png`` into the folder: one book page per
task with smol-vl's greedy answer beside the gold, a three-line description of each model, their reading
accuracy with 95 % Wilson intervals read from the card data files (so the numbers follow the shipped weights),
and the scale of this book's data next to the paper's. Everything here is computed; only the paper's setup
(:data:`PAPER_SCALE`) and the descriptions are written by hand.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ocrheads_lib.metrics import wilson_interval

PACKAGE = Path(__file__).resolve().parent
SMOLVL_CARD = PACKAGE / "embedded" / "smolvl" / "weights" / "model_card.json"
TINY_CARD = PACKAGE / "embedded" / "tiny" / "model_card.json"
EXAMPLE_TASKS = ("passkey_image", "niah_image", "case_study")

DESCRIPTIONS = {
    "smol-vl": ("The book's image model: a small OCR vision tower trained here feeds the pretrained "
                "SmolLM2-135M-Instruct (30 layers × 9 heads), which learned to read the tower's output through "
                "LoRA adapters. Its language half could retrieve from text long before it saw a page."),
    "smollm2": ("SmolLM2-135M-Instruct itself, a pretrained text-only model: smol-vl's language half *before* the "
                "image training. Chapter 03 finds its retrieval heads; chapters 07 and 09 use it for text."),
    "tiny": ("A 4-layer Qwen2-VL trained from scratch on this project's pages only. Its language half learned to "
             "copy only from images, so its OCR and retrieval heads are expected to be one circuit: chapter 04's "
             "contrast."),
}
# What each evaluation set of the cards is (names as the cards' JSON spell them; an unknown name is shown as is).
SET_NAMES = {
    "page_book": "pass key on a book page", "niah_book": "needle word on a book page",
    "key_aligned": "key alone, on the 28-px grid", "key_unaligned": "key alone, off the grid",
    "text_passkey": "pass key as plain text", "text_passkey_smollm2": "pass key as plain text",
    "c_book_passkey_grid": "pass key on a book page", "c_book_case_study_chars": "one character on a book page",
    "b_book_passkey_text_320": "pass key as plain text (320 characters)", "c_page_book": "text of a book page",
}
TINY_SETS = ("c_book_passkey_grid", "c_book_case_study_chars", "b_book_passkey_text_320")   # the chapters' tasks
# The paper's setup (Baek et al., as released with their code), for the scale table.
PAPER_SCALE = {
    "page": "50 characters × 15 lines per page image, small default font; ≈ 256 visual tokens per page (Qwen2-VL)",
    "image context": "1,024, 2,048, 4,096 or 8,192 characters, rendered over about 2 to 12 pages",
    "text context": "the same 1,024–8,192 characters as plain text",
    "head scores": "600 pass-key and 600 needle-in-a-haystack samples",
    "case study": "100 samples per character × 36 characters = 3,600",
    "interventions": "600 document questions (DocVQA) per condition",
}


def _rows_of(sets: Mapping[str, Any]) -> list[tuple[str, int, int | None, float, tuple[float, float]]]:
    out = []
    for name, result in sets.items():
        if not isinstance(result, Mapping) or "accuracy" not in result or not result.get("n"):
            continue
        n = int(result["n"])
        correct = int(result["correct"]) if "correct" in result else round(float(result["accuracy"]) * n)
        interval = tuple(result["wilson95"]) if "wilson95" in result else wilson_interval(correct, n)
        out.append((name, n, correct, float(result["accuracy"]), (float(interval[0]), float(interval[1]))))
    return out


def reading_accuracy(smolvl_card: str | Path = SMOLVL_CARD, tiny_card: str | Path = TINY_CARD) -> list[dict[str, Any]]:
    """Held-out reading accuracy of smol-vl, SmolLM2 and tiny from the card data files: one row per
    evaluation set (model, task, n, accuracy, 95 % Wilson interval). SmolLM2's row is the sets of smol-vl's
    card measured on SmolLM2 itself (names ending in ``_smollm2``); tiny's rows are its book sets."""
    rows = []
    if Path(smolvl_card).is_file():
        card = json.loads(Path(smolvl_card).read_text(encoding="utf-8"))
        for name, n, correct, acc, (low, high) in _rows_of(card.get("results") or {}):
            model = "smollm2" if name.endswith("_smollm2") else "smol-vl"
            rows.append(dict(model=model, set=name, task=SET_NAMES.get(name, name), n=n, accuracy=acc, low=low,
                             high=high))
    if Path(tiny_card).is_file():
        card = json.loads(Path(tiny_card).read_text(encoding="utf-8"))
        sets = (card.get("heldout") or {}).get("sets") or {}
        for name, n, correct, acc, (low, high) in _rows_of({k: v for k, v in sets.items() if k in TINY_SETS}):
            rows.append(dict(model="tiny", set=name, task=SET_NAMES.get(name, name), n=n, accuracy=acc, low=low,
                             high=high))
    order = {"smol-vl": 0, "smollm2": 1, "tiny": 2}
    return sorted(rows, key=lambda r: order.get(r["model"], 3))


def accuracy_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| model | task | held-out samples | accuracy | 95 % Wilson interval |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['task']} | {r['n']} | {100 * r['accuracy']:.1f} % | "
                     f"{100 * r['low']:.1f}–{100 * r['high']:.1f} % |")
    return "\n".join(lines)


def example_samples(seed: int = 0) -> dict[str, Any]:
    """One sample of each image task of the book: the pass key and the needle word on book pages (the
    chapters' tasks) and one lone character (chapter 05's case study)."""
    from ocrheads_lib import data
    from ocrheads_lib.experiments.tasks import build_tasks

    tasks, _ = build_tasks(["passkey_image", "niah_image"], n=1, seed=seed)
    out = {name: samples[0] for name, samples in tasks.items() if samples}
    out["case_study"] = data.case_study_images(characters="k", n_per_char=1, seed=seed)[0]
    return out


def examples_figure(samples: Mapping[str, Any], answers: Mapping[str, str], model_id: str = "smol-vl") -> Any:
    """One row per task: the evidence page, with the question above it and the gold answer beside the
    model's answer under it."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ocrheads_lib import plots

    plots.set_theme()
    fig, axes = plt.subplots(len(samples), 1, figsize=(plots.MAX_WIDTH_IN, 2.45 * len(samples)), squeeze=False)
    for ax, (task, sample) in zip(axes[:, 0], samples.items()):
        page = sample.pages[sample.evidence_page]
        ax.imshow(np.asarray(page.convert("RGB")))
        ax.set_xticks([])
        ax.set_yticks([])
        gold, said = str(sample.answer), answers.get(task, "")
        right = said.strip().lower() == gold.strip().lower()
        where = f" (page {sample.evidence_page + 1} of {len(sample.pages)})" if len(sample.pages) > 1 else ""
        ax.set_title(f"{task}{where}: “{sample.question}”", fontsize=9, loc="left")
        ax.set_xlabel(f"gold: {gold}    {model_id} answers: {said!r} ({'right' if right else 'wrong'})", fontsize=9,
                      color="#1e7a34" if right else "#b03020")
    fig.tight_layout()
    return fig


def answers_of(model_id: str, samples: Mapping[str, Any]) -> dict[str, str]:
    """The model's greedy answers (seconds on a CPU)."""
    from ocrheads_lib import answer, load_model

    lm = load_model(model_id, device="cpu")
    return {task: answer(lm, sample, max_new_tokens=16) for task, sample in samples.items()}


def chapter_parameters(stem: str, root: Path | None = None) -> dict[str, Any]:
    """A chapter's parameters as `make book` runs it: its notebook's parameters cell, then book/params.yml."""
    from ocrheads_lib.bookbuild import load_parameters

    root = root or PACKAGE.parent
    nb = json.loads((root / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict[str, Any] = {}
    exec("".join(cell["source"]), {}, values)
    return {**values, **load_parameters(root / "book" / "params.yml", stem)}


def scale_rows(root: Path | None = None) -> list[dict[str, str]]:
    """This book's page size, context lengths and sample counts (measured on the generated data and read
    from the chapters' parameters) beside the paper's."""
    from ocrheads_lib.scoring.runs import scoring_samples

    pages = scoring_samples("ocr", 4, seed=0)
    texts = scoring_samples("retrieval", 8, seed=0)
    page = pages[0].pages[0]
    from ocrheads_lib.data.grid import BOOK_LAYOUT, CELL

    n_pages = sorted({len(s.pages) for s in pages})
    lengths = [len(t.context) for t in texts]
    p02, p03 = chapter_parameters("02_ocr_heads", root), chapter_parameters("03_retrieval_heads", root)
    p05, p06 = chapter_parameters("05_case_study", root), chapter_parameters("06_masking", root)
    tokens = (page.width // CELL) * (page.height // CELL)
    book = {
        "page": f"{BOOK_LAYOUT['max_lines']} lines × {BOOK_LAYOUT['line_chars']} characters in 28-px cells: a "
                f"{page.width} × {page.height} px page, {tokens} visual tokens",
        "image context": f"{n_pages[0] if len(n_pages) == 1 else f'{n_pages[0]}–{n_pages[-1]}'} "
                         f"page{'s' if n_pages[-1] > 1 else ''} per sample, at most {BOOK_LAYOUT['max_lines'] * BOOK_LAYOUT['line_chars']} characters "
                         "a page",
        "text context": f"{min(lengths)}–{max(lengths)} characters",
        "head scores": f"{p02['n_samples']} image and {p03['n_samples']} text pass-key samples",
        "case study": f"{p05['n_samples']} per character × {len(p05['characters'])} characters = "
                      f"{p05['n_samples'] * len(p05['characters'])}",
        "interventions": f"{p06['n_samples']} samples per task and condition (masking)",
    }
    return [{"": what, "this book": book[what], "the paper": PAPER_SCALE[what]} for what in PAPER_SCALE]


def scale_markdown(rows: Sequence[Mapping[str, str]]) -> str:
    lines = ["| | this book (`make book`) | the paper |", "|---|---|---|"]
    lines += [f"| {r['']} | {r['this book']} | {r['the paper']} |" for r in rows]
    return "\n".join(lines)


def write(out: str | Path, examples: bool = True, model_id: str = "smol-vl") -> Path:
    """Write models.md (and examples.png) into `out`; returns the Markdown file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["### Meet the models", ""]
    parts += [f"- **`{name}`**: {text}" for name, text in DESCRIPTIONS.items()]
    parts += ["", "How well each reads, on held-out pages and texts the training never saw (from the models' "
              "card data; the interval is a {ref}`Wilson interval <gloss-intervals>`):", "",
              accuracy_markdown(reading_accuracy()), ""]
    if examples:
        import matplotlib.pyplot as plt

        samples = example_samples()
        fig = examples_figure(samples, answers_of(model_id, samples), model_id)
        fig.savefig(out / "examples.png")
        plt.close(fig)
        parts += [f"```{{figure}} /{out.relative_to(PACKAGE.parent).as_posix()}/examples.png" if out.is_absolute()
                  and out.is_relative_to(PACKAGE.parent) else f"```{{figure}} examples.png", ":name: fig-intro-examples",
                  "", f"One page of each image task of the book, and what `{model_id}` answers when asked (greedy "
                  "decoding, computed when the book was built).", "```", ""]
    parts += ["### Scale: this book against the paper", "",
              "The book's data are small on purpose, so that every chapter runs on a laptop CPU; the paper read "
              "long multi-page documents with 2B–8B models on a GPU:", "", scale_markdown(scale_rows()), ""]
    path = out / "models.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for models.md and examples.png (e.g. book/intro_models)")
    parser.add_argument("--no_examples", action="store_true", help="skip running the model (no example figure)")
    args = parser.parse_args(argv)
    print(f"[book] {write(Path(args.out).resolve(), examples=not args.no_examples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
