"""What every chapter of the book does first (one hidden call), and how it shows its results.

    from ocrheads_lib import chapter
    ch = chapter.setup(model_id, results_dir=results_dir, device=device, seed=seed)
    ch.figure("ocr-heads", fig)           # saved under results/<model>/figures/, glued for {glue:figure}
    ch.table("ocr-top", frame)            # rounded, no index, long tables folded; glued for {glue:figure}
    ch.conclude(sentences)                # glued as "conclusion" for the "What this run shows" section

Paths: a relative `results_dir` is resolved against the repository (the folder holding this package and
its pyproject.toml), never the working directory, so `papermill notebooks/02_ocr_heads.ipynb out.ipynb`
from the repository root and `papermill 02_ocr_heads.ipynb out.ipynb` from notebooks/ write to the same
`results/`. (Installed outside a checkout, relative paths fall back to the working directory.)
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ocrheads_lib import parameters, plots, quarantine
from ocrheads_lib.paths import results_dir as model_results_dir

PACKAGE_ROOT = Path(__file__).resolve().parent
DEVICES = ("auto", "cpu", "cuda")
FOLD_ROWS = 12          # tables with more rows are folded behind a "show all rows" toggle
LAYOUT_SUFFIX = ".layout.json"   # figures/<name>.layout.json: that figure's layout problems (empty: clean)


def repository_root() -> Path | None:
    """The checkout this package lives in (the folder with pyproject.toml), or None when installed."""
    root = PACKAGE_ROOT.parent
    return root if (root / "pyproject.toml").is_file() else None


def resolve_results_root(results_dir: str | os.PathLike) -> Path:
    """`results_dir` as an absolute path: relative paths are taken from the repository root."""
    path = Path(results_dir).expanduser()
    if path.is_absolute():
        return path
    base = repository_root() or Path.cwd()
    return (base / path).resolve()


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu", "cuda" and "cuda:N" pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in DEVICES or str(device).startswith("cuda:"):
        return device
    raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}; "
                     "use 'auto' to take the GPU when there is one")


def ci_text(estimate: float, low: float, high: float, digits: int = 2) -> str:
    """"0.42 [0.31, 0.55]": an estimate with its interval, for a table cell or a sentence."""
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ci_cell(estimate: float, low: float, high: float, digits: int = 2) -> str:
    """A table cell (HTML) with the estimate and, below it in small type, its interval: keeps the
    pivoted k × head-set tables narrow enough for the text column."""
    return f"{estimate:.{digits}f}<br><small>[{low:.{digits}f}, {high:.{digits}f}]</small>"


def curve_table(curves: Any, x: str) -> Any:
    """A sweep's curves (`experiments.sweep.sweep_curves`: task, head_set, `x`, score, lo, hi) as the book
    shows them: one row per (task, `x`), one column per head set, each cell the score with its interval
    below it (:func:`ci_cell`); a fractional `x` (β) is written short ("0.4", "1")."""
    cells = curves.assign(cell=[ci_cell(s, lo, hi) for s, lo, hi in zip(curves.score, curves.lo, curves.hi)])
    wide = cells.pivot_table(index=["task", x], columns="head_set", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
    if wide[x].dtype.kind == "f":
        wide[x] = wide[x].map(lambda value: f"{value:g}")
    return wide


def format_table(frame: Any, digits: int = 3, fold_rows: int = FOLD_ROWS, summary: str | None = None) -> str:
    """HTML of a DataFrame as the book shows tables: numbers rounded to `digits`, no index, and, past
    `fold_rows` rows, folded whole behind a toggle with a one-line `summary` above it (default: how many
    rows the table has), so a long table is never a wall."""
    import html

    frame = frame.reset_index(drop=True)

    def styled(part: Any) -> str:
        numeric = [c for c in part.columns if part[c].dtype.kind in "iuf"]
        styler = part.style.hide(axis="index").format({c: f"{{:.{digits}f}}" for c in numeric
                                                        if part[c].dtype.kind == "f"}, na_rep="–")
        if numeric:
            styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
        return styler.to_html()

    if len(frame) <= fold_rows:
        return styled(frame)
    line = summary or f"{len(frame)} rows, folded: open the table to see them all."
    return (f"<p class=\"table-summary\">{html.escape(line)}</p><details><summary>show all {len(frame)} rows"
            f"</summary>{styled(frame)}</details>")


MAX_SENTENCES = 3       # "What this run shows": at most this many sentences in view
MAX_WORDS = 45          # a longer generated sentence is folded away with the rest


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def verdict_markdown(verdicts: Any) -> str:
    """A short verdict table as Markdown: a DataFrame, or a list of mappings (one row each)."""
    import pandas as pd

    frame = verdicts if isinstance(verdicts, pd.DataFrame) else pd.DataFrame(list(verdicts))
    if frame.empty:
        return ""
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(f"{v:.2f}" if isinstance(v, float) else v) for v in row) + " |")
    return "\n".join(lines)


def conclusion_markdown(sentences: Sequence[str], verdicts: Any = None, max_sentences: int = MAX_SENTENCES,
                        max_words: int = MAX_WORDS) -> str:
    """The "What this run shows" section as Markdown: the verdict table (when given), then at most
    `max_sentences` sentences of at most `max_words` words as bullets; every other sentence is folded
    behind a one-line summary ("N more findings of this run"), so the section stays short."""
    sentences = [str(s).strip() for s in sentences if str(s).strip()]
    if not sentences:
        raise ValueError("a chapter's conclusion needs at least one sentence computed from its run")
    shown, folded = [], []
    for sentence in sentences:
        fits = len(shown) < max_sentences and len(sentence.split()) <= max_words
        (shown if fits else folded).append(sentence)
    parts = []
    table = verdict_markdown(verdicts) if verdicts is not None else ""
    if table:
        parts.append(table)
    if shown:
        parts.append("\n".join(f"- {s}" for s in shown))
    if folded:
        parts.append(f"<details><summary>{len(folded)} more finding{'s' if len(folded) > 1 else ''} of this run, "
                     "in detail</summary>\n\n" + "\n".join(f"- {s}" for s in folded) + "\n\n</details>")
    return "\n\n".join(parts)


@dataclass
class Chapter:
    """One chapter's run: its parameters and where its files go."""

    model_id: str
    seed: int
    device: str               # resolved: "cpu" / "cuda" / "cuda:N"
    results_root: Path        # absolute
    out: Path                 # results_root / <model slug>
    figures: Path             # out / "figures"

    def figure(self, name: str, fig: Any) -> None:
        """Save `fig` as figures/<name>.png and glue it under `name` (shown by ``{glue:figure} name``).
        Returns nothing, so a cell ending with this call prints nothing."""
        path = self.figures / f"{name}.png"
        self.check_layout(name, fig)
        fig.savefig(path)
        _glue(name, fig)
        plt.close(fig)

    def check_layout(self, name: str, fig: Any) -> list[str]:
        """Record `fig`'s layout problems (:func:`plots.layout_problems`: overlapping labels, a legend on
        data) in figures/<name>.layout.json (one file per figure: chapters run side by side), the files the
        book's tests read; an empty list is recorded too, so a fixed figure clears its record."""
        from ocrheads_lib.paths import atomic_write_json

        problems = plots.layout_problems(fig)
        atomic_write_json(self.figures / f"{name}{LAYOUT_SUFFIX}", {"figure": name, "problems": problems})
        return problems

    def image(self, name: str, path: str | os.PathLike) -> None:
        """Glue a PNG file (e.g. a contact sheet) under `name` (shown by ``{glue:figure} name``)."""
        from IPython.display import Image   # IPython: optional, only the notebooks display

        _glue(name, Image(filename=str(path)))

    def table(self, name: str, frame: Any, digits: int = 3, fold_rows: int = FOLD_ROWS,
              summary: str | None = None) -> None:
        """Glue a formatted table (see :func:`format_table`) under `name`."""
        from IPython.display import HTML   # IPython: optional, only the notebooks display

        _glue(name, HTML(format_table(frame, digits, fold_rows, summary)))

    def text(self, name: str, value: str) -> None:
        """Glue a short text (``{glue:text}`name```). Returns nothing: a cell ending with it prints nothing."""
        _glue(name, value)

    def conclude(self, sentences: Sequence[str], verdicts: Any = None) -> None:
        """Glue the chapter's "What this run shows" as "conclusion" (``{glue:md} conclusion``): see
        :func:`conclusion_markdown`. Returns nothing, so a cell ending with this call prints nothing
        (the book never shows the raw string)."""
        from IPython.display import Markdown   # IPython: optional, only the notebooks display

        _glue("conclusion", Markdown(conclusion_markdown(sentences, verdicts)))


def _glue(name: str, value: Any) -> None:
    from myst_nb import glue   # only inside a book build (myst-nb): not needed to import this module

    glue(name, value, display=False)


def check_notebook_parameters(namespace: Mapping[str, Any]) -> None:
    """Validate a running notebook's parameters (:mod:`ocrheads_lib.parameters`): the names papermill injected
    must be declared in the parameters cell, and every declared value must have its default's type and lie
    in its range. `namespace`: the notebook's globals, whose IPython input history (``In``) holds the
    parameters cell (the first cell of plain assignments) and papermill's injected cell. Outside IPython
    there is no cell to check against, and nothing is checked."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return
    cells = [str(cell) for cell in history[1:] if str(cell).strip()]
    injected = [c for c in cells if c.lstrip().startswith(parameters.INJECTED_HEADER)]
    declared = next((c for c in cells if c not in injected and _plain_assignments(c)), None)
    if declared is None:
        return
    parameters.check_injected(declared, injected[-1] if injected else None, namespace)


def _plain_assignments(source: str) -> bool:
    try:
        parameters.declared_parameters(source)
    except parameters.ParameterError:
        return False
    return True


_WATCHED: dict[Path, tuple[quarantine.Journal, bool]] = {}   # results folder -> (its journal, run by the build)


def watch_writes(root: Path) -> None:
    """Inside a kernel: record what this chapter writes under `root` (:mod:`ocrheads_lib.quarantine`), and put
    it aside when a cell fails, so a failed chapter (run by the book or by hand with papermill) leaves no
    result that a later chapter can read. First, the writes of chapters whose kernel died without ending are
    put aside. A book build passes the journal to fill (``OCRHEADS_JOURNAL``) and decides itself once the
    kernel has ended; a chapter run by hand drops its journal when its kernel exits without a failure.
    (Run interactively, a failing cell puts aside what the chapter wrote so far too: run it from the top.)"""
    import atexit

    try:
        from IPython import get_ipython   # optional: only notebooks have it
    except ImportError:
        return
    shell = get_ipython()
    root = root.resolve()
    if shell is None or root in _WATCHED:
        return
    for orphan in quarantine.orphans(root):
        print(f"[ocrheads] {quarantine.put_aside(orphan).message()} (its kernel stopped before the chapter ended)",
              file=sys.stderr)
        quarantine.discard(orphan)
    given = os.environ.get(quarantine.JOURNAL_ENV)
    built = bool(given) and Path(given).parent.parent.resolve() == root
    if built:
        journal = quarantine.watch(Path(given))
    else:
        journal = quarantine.watch(*quarantine.new_journal(root, os.environ.get(quarantine.CHAPTER_ENV) or "chapter",
                                                          quarantine.KERNEL_LOCK))
    if not _WATCHED:
        shell.events.register("post_run_cell", _after_cell)
        atexit.register(_at_exit)
    _WATCHED[root] = (journal, built)


def _after_cell(result: Any) -> None:
    """IPython's post_run_cell: a cell that failed fails the chapter; put aside what it wrote."""
    if result.success:
        return
    for root, (journal, built) in list(_WATCHED.items()):
        quarantine.stop(journal)
        print(f"[ocrheads] {quarantine.put_aside(journal.folder).message()}", file=sys.stderr)
        if built:                 # the build reads the outcome, reports it and drops the journal
            del _WATCHED[root]
            continue
        quarantine.discard(journal.folder)
        fresh = quarantine.new_journal(root, os.environ.get(quarantine.CHAPTER_ENV) or "chapter", quarantine.KERNEL_LOCK)
        _WATCHED[root] = (quarantine.watch(*fresh), False)


def _at_exit() -> None:
    for journal, built in _WATCHED.values():
        quarantine.stop(journal)
        if not built:             # run by hand and no cell failed: the chapter ended
            quarantine.discard(journal.folder)


def setup(model_id: str, results_dir: str | os.PathLike = "results", device: str = "auto", seed: int = 0) -> Chapter:
    """The start of every chapter: its parameters checked (:func:`check_notebook_parameters`, on the calling
    notebook's globals: nothing is written when one is bad), offline hub, flush denormals (tiny models on
    CPU), the book's figure theme, pandas display options, the record of what the chapter writes under the
    resolved `results_dir` (:func:`watch_writes`), and the chapter's folders there."""
    check_notebook_parameters(sys._getframe(1).f_globals)
    device = resolve_device(device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_flush_denormal(True)
    plots.set_theme()
    try:
        from IPython import get_ipython   # optional: only notebooks have it

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats   # ships with IPython

            set_matplotlib_formats("png")
    except ImportError:   # not in IPython: figures are only saved
        pass
    pd.set_option("display.precision", 3)
    pd.set_option("display.max_colwidth", 60)
    root = resolve_results_root(results_dir)
    watch_writes(root)
    out = model_results_dir(model_id, root)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return Chapter(model_id=str(model_id), seed=int(seed), device=device, results_root=root,
                   out=out, figures=figures)
