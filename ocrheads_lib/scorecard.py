"""The "Findings at a glance" page: one row per claim of the paper, computed from the data this book ships.

    python -m ocrheads_lib.scorecard book/findings_at_a_glance     # scripts/build_book.sh runs this

writes ``scorecard.md`` (included by book/findings.md) into the folder. Columns: the paper's claim | the released
score files (Qwen2-VL-2B / InternVL2-8B, ``ocrheads_lib/data/official``) | smol-vl | smollm2 (text claims) |
tiny | n | interval | verdict. The last three are the book's full-size evidence for the claim (shipped records,
:mod:`ocrheads_lib.records`, audited on every build before this page is written); a cell without shipped data
says so ("not run at full size"), it never borrows a number from a small live chapter run. Verdict words come
from :mod:`ocrheads_lib.nulls` (holds / fails / undecided at n = ...).

What is read: every ``records/<model>_masking.jsonl.gz`` (masking claims, :mod:`ocrheads_lib.experiments
.masking_findings`) and the two released files (sparsity across their two models; what else the release can and
cannot test is said in its cells). A masking claim's headline is its smallest k (the fewest heads masked: at large
k any set can take a task to the floor); its cell lists every k.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ocrheads_lib import nulls
from ocrheads_lib.experiments.masking_findings import IMAGE_TASK, MaskingFindings, findings, interval_text
from ocrheads_lib.experiments.sweep import LAYER_MATCHED, RANDOM
from ocrheads_lib.heads import RULE_NAMES

MODELS = ("smol-vl", "smollm2", "tiny")
FULL_SIZE_N = 200                     # evaluation samples behind a full-size headline claim (issue 33)
NOT_RUN = "not run at full size"
RELEASED_OCR, RELEASED_RETRIEVAL = "InternVL2-8B_fg_2.json", "Qwen2-VL-2B-Instruct_te_2.json"
DEFAULT_RECORDS = Path(__file__).resolve().parent.parent / "records"
COLUMNS = ("the paper's claim", "released files (Qwen2-VL-2B / InternVL2-8B)", "smol-vl", "smollm2 (text claims)",
           "tiny", "n", "interval", "verdict")


@dataclass(frozen=True)
class Row:
    """One claim: a cell per source, and the headline verdict from the book's full-size evidence."""

    claim: str
    released: str
    cells: Mapping[str, str]           # model -> cell text
    headline: nulls.Verdict | None     # the verdict the last three columns show (None: no full-size evidence)
    source: str = ""                   # which model's data the headline comes from

    def as_list(self) -> list[str]:
        v = self.headline
        verdict = NOT_RUN if v is None else f"{v.words()} ({self.source})"
        return [self.claim, self.released, *(self.cells.get(m, NOT_RUN) for m in MODELS),
                "–" if v is None else str(v.n), "–" if v is None else f"[{v.low:.2f}, {v.high:.2f}]", verdict]


def cell(v: nulls.Verdict, ours: bool = True) -> str:
    """"0.31 [0.24, 0.38], n = 200: holds" (for our runs, with a note when n is below the full size)."""
    small = f" (below the full size of {FULL_SIZE_N})" if ours and v.n < FULL_SIZE_N else ""
    return f"{interval_text(v)}, n = {v.n}{small}: {v.words()}"


def masking_records(folder: str | Path = DEFAULT_RECORDS) -> dict[str, MaskingFindings]:
    """model -> the findings of its shipped masking records (``<model>_masking.jsonl.gz``) in `folder`."""
    out = {}
    for path in sorted(Path(folder).glob("*_masking.jsonl.gz")):
        found = findings(path)
        out[found.identity.model_id] = found
    return out


# --------------------------------------------------------------------------- rows
def _masking_rows(shipped: Mapping[str, MaskingFindings]) -> list[Row]:
    dissociation_cells: dict[str, str] = {}
    control_cells: dict[str, str] = {}
    headline: dict[str, tuple[nulls.Verdict, str] | None] = {"dissociation": None, "control": None}
    for model in MODELS:
        found = shipped.get(model)
        if found is None:
            continue
        if found.dissociation:
            dissociation_cells[model] = "; ".join(f"k = {k}: {cell(v)}" for k, v in sorted(found.dissociation.items()))
            v = found.dissociation[min(found.dissociation)]
            if headline["dissociation"] is None and v.n >= FULL_SIZE_N:
                headline["dissociation"] = (v, model)
        rows = found.controls[(found.controls.task == IMAGE_TASK) & (found.controls.head_set == "ocr")]
        if len(rows):
            k = int(rows.k.min())
            by_control = {r.control: r.verdict for r in rows[rows.k == k].itertuples(index=False)}
            parts = [f"vs {name}: {cell(by_control[c])}" for c, name in ((RANDOM, "random"),
                                                                      (LAYER_MATCHED, "layer-matched"))
                     if c in by_control]
            control_cells[model] = f"k = {k}, " + "; ".join(parts)
            strict = by_control.get(LAYER_MATCHED) or by_control.get(RANDOM)
            if headline["control"] is None and strict is not None and strict.n >= FULL_SIZE_N:
                headline["control"] = (strict, model)
    text_only = "– (an image claim)"
    out = []
    for key, claim, cells in (
            ("dissociation", "Masking OCR heads hurts reading an image more than masking as many retrieval heads, "
                             "and the reverse on text (double dissociation)", dissociation_cells),
            ("control", "Masking the top OCR heads hurts reading an image more than masking as many random heads "
                        "(chance; strictest control: layer-matched)", control_cells)):
        found_headline = headline[key]
        out.append(Row(claim, "not in the release (score files only)", {"smollm2": text_only, **cells},
                       found_headline[0] if found_headline else None,
                       found_headline[1] if found_headline else ""))
    return out


def _released_rows(n_boot: int = nulls.MIN_BOOT, seed: int = 0) -> dict[str, str]:
    """claim key -> the released files' cell."""
    from ocrheads_lib.data.official import official_path
    from ocrheads_lib.scoring import load_scores

    ocr, retrieval = load_scores(official_path(RELEASED_OCR)), load_scores(official_path(RELEASED_RETRIEVAL))
    sparsity = nulls.sparsity_test(ocr, retrieval, n_boot=n_boot, seed=seed, across_models=True)
    entries = np.concatenate(list(ocr.head_entries().values()))                          # every entry of every head
    binary = bool(np.all(np.isin(entries[np.isfinite(entries)], (0.0, 1.0))))
    return {
        "sparsity": (f"InternVL2-8B OCR {100 * sparsity.details['share_ocr']:.1f} % vs Qwen2-VL-2B retrieval "
                     f"{100 * sparsity.details['share_retrieval']:.1f} % of heads selected ({RULE_NAMES['readme']}, "
                     f"mean >= 0.1; two models): difference {cell(sparsity, ours=False)}"),
        "distinctness": "not computable: the release has OCR scores of InternVL2-8B and retrieval scores of "
                        "Qwen2-VL-2B only (no shared heads to compare)",
        "static": ("not testable: InternVL2-8B's entries are all 0 or 1, so a head's activation frequency is its "
                   "mean by construction" if binary else
                   "not computable: OCR and retrieval scores come from two models"),
    }


def rows(shipped: Mapping[str, MaskingFindings], released: Mapping[str, str] | None = None) -> list[Row]:
    """Every claim of the paper, in the introduction's order."""
    released = released or {}
    head = [("sparsity", "OCR heads are less sparse than retrieval heads (a larger share of heads selected)"),
            ("distinctness", "OCR heads and retrieval heads are distinct (overlap near chance)"),
            ("static", "OCR heads are statically activated (activation frequency predicts the score)")]
    out = [Row(claim, released.get(key, "–"), {}, None) for key, claim in head]
    out += _masking_rows(shipped)
    out += [Row(claim, "not in the release (score files only)", {}, None) for claim in (
        "Redistributing the OCR heads' sink attention to the context improves answers",
        "Chain-of-thought prompting changes which heads read (beyond the two-seed noise floor)",
        "The heads that read single characters are the OCR heads (case study)")]
    return out


def markdown(table: Sequence[Row]) -> str:
    """The scorecard as a Markdown table."""
    def clean(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(clean(c) for c in row.as_list()) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write(folder: str | Path, records: str | Path = DEFAULT_RECORDS, n_boot: int = nulls.MIN_BOOT,
          seed: int = 0) -> Path:
    """Write ``scorecard.md`` into `folder` (created) from the shipped records and the released files."""
    from ocrheads_lib.paths import atomic_write_text

    shipped = masking_records(records)
    table = rows(shipped, _released_rows(n_boot, seed))
    sources = ", ".join(f"`{Path(f.path).name}` ({f.identity.model_id}, weights {f.identity.weights}, n = {f.n} "
                        "per task)" for f in shipped.values()) or "none"
    text = (markdown(table) + "\n" + f"Shipped records read: {sources}. Bootstrap: {n_boot} seeded draws, 95 % "
            "intervals; released files: "
            f"`{RELEASED_OCR}`, `{RELEASED_RETRIEVAL}`.\n")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(folder / "scorecard.md", text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocrheads_lib.scorecard", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where scorecard.md goes (e.g. book/findings_at_a_glance)")
    parser.add_argument("--records", default=str(DEFAULT_RECORDS), help="folder of the shipped records")
    args = parser.parse_args(argv)
    print(f"wrote {write(args.folder, args.records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
