"""The paper authors' two released score files, shipped with the package (see README.md here).

    from ocrheads_lib.data.official import official_path, official_files
    load_scores(official_path("InternVL2-8B_fg_2.json"))      # OCR scores, InternVL2-8B
    {p.stem: load_scores(p) for p in official_files()}        # both files

Paths are resolved relative to this package, never the working directory, so chapters and tests
find the files on any clone and in an installed wheel.
"""
from __future__ import annotations

from pathlib import Path

OFFICIAL_DIR = Path(__file__).resolve().parent
# file name -> what it holds (the README gives the source and checksums)
OFFICIAL_FILES = {
    "InternVL2-8B_fg_2.json": "OCR scores of InternVL2-8B (image pass key and needle pages, fine-grained boxes)",
    "Qwen2-VL-2B-Instruct_te_2.json": "text retrieval scores of Qwen2-VL-2B-Instruct (text pass key)",
}


def official_path(name: str) -> Path:
    """The path of one released file; a clear error when the name is unknown or the file is missing."""
    if name not in OFFICIAL_FILES:
        raise ValueError(f"unknown released score file {name!r}; the package ships {sorted(OFFICIAL_FILES)}")
    path = OFFICIAL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the package: restore it from git "
                                f"(`git checkout -- {path.name}` in {OFFICIAL_DIR}) or reinstall the package")
    return path


def official_files() -> list[Path]:
    """Both released files, in a fixed order (raises when one is missing)."""
    return [official_path(name) for name in sorted(OFFICIAL_FILES)]
