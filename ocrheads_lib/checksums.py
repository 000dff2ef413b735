"""Recorded sha256 of weights files, checked before the weights are trusted.

Two kinds of folder carry a manifest ``SHA256SUMS`` (the format of ``sha256sum``: ``<hex>  <name>`` per line,
so ``cd <folder> && sha256sum -c SHA256SUMS`` checks it too):

* a weights folder the package ships (``embedded/tiny/weights``, ``embedded/smolvl/weights``): the manifest is
  committed beside the files and every weights file (``*.safetensors``) is hashed on each load (tens of MB,
  well under a second). Whoever replaces the weights records them again:
  ``python -m ocrheads_lib.checksums --write ocrheads_lib/embedded/smolvl/weights``;
* a model converted into the user cache (SmolLM2 from its GGUF, the merged smol-vl): the manifest is written
  right after the conversion, from the bytes just written, with a stamp (size and mtime of each file,
  ``.sha256_stamps.json``). Later loads compare the stamps only; a file whose stamp changed is hashed again,
  and its stamp refreshed when the hash still matches. A folder without a manifest is not trusted: it is
  converted again.

A mismatch deletes nothing: :class:`ChecksumError` names the file, both hashes and the command that rebuilds
it (``python -m ocrheads_lib.checksums --rebuild smollm2`` for the cache; a reinstall, or ``--write`` after
an intended change, for the package). ``python -m ocrheads_lib.checksums --check <folder>`` verifies a folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ocrheads_lib.paths import atomic_write_json, atomic_write_text

MANIFEST = "SHA256SUMS"
STAMPS = ".sha256_stamps.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


class ChecksumError(ValueError):
    """A weights file is missing, unrecorded, or its bytes differ from the recorded sha256."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weights files of `folder` (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``), sorted by name."""
    folder = Path(folder)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def read_manifest(folder: str | os.PathLike) -> dict[str, str]:
    """name -> sha256 from ``folder/SHA256SUMS`` ({} when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    recorded = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ChecksumError(f"{path} line {number} is not '<sha256>  <file name>': {line[:80]!r}; write the "
                                f"manifest again with `python -m ocrheads_lib.checksums --write {Path(folder)}`")
        recorded[name.strip()] = digest.strip()
    return recorded


def write_manifest(folder: str | os.PathLike, stamps: bool = False) -> Path:
    """Hash every weights file of `folder` into ``folder/SHA256SUMS`` (atomically); with `stamps`, also record
    each file's size and mtime (the fast check of a converted cache folder). Returns the manifest path."""
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise ChecksumError(f"{folder} holds no weights file ({', '.join(WEIGHT_PATTERNS)}) to record")
    digests = {path.name: file_sha256(path) for path in files}
    manifest = atomic_write_text(folder / MANIFEST, "".join(f"{d}  {n}\n" for n, d in digests.items()))
    if stamps:
        _write_stamps(folder, digests)
    return manifest


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _write_stamps(folder: Path, digests: dict[str, str]) -> None:
    atomic_write_json(folder / STAMPS, {name: [*_stamp(folder / name), digest] for name, digest in digests.items()})


def verify(folder: str | os.PathLike, rebuild: str, use_stamps: bool = False) -> None:
    """Check every weights file of `folder` against its manifest; ChecksumError naming the file and
    `rebuild` (the command or step that restores it) on a missing manifest, an unrecorded or missing file,
    or a different hash. With `use_stamps`, a file whose size and mtime match the stamp recorded when it
    was last verified is not hashed again (see the module docstring)."""
    folder = Path(folder)
    recorded = read_manifest(folder)
    if not recorded:
        raise ChecksumError(f"{folder} has no {MANIFEST}: its weights cannot be checked. {rebuild}")
    present = {path.name for path in weight_files(folder)}
    unrecorded = sorted(present - set(recorded))
    if unrecorded:
        raise ChecksumError(f"{folder / unrecorded[0]} is not recorded in {folder / MANIFEST}. {rebuild}")
    stamps = _read_stamps(folder) if use_stamps else {}
    changed = False
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path} is missing (recorded in {folder / MANIFEST}). {rebuild}")
        if stamps.get(name) == [*_stamp(path), digest]:
            continue
        actual = file_sha256(path)
        if actual != digest:
            raise ChecksumError(f"{path} is corrupt or was changed: sha256 {actual[:16]}..., recorded "
                                f"{digest[:16]}... in {folder / MANIFEST}. Nothing was deleted. {rebuild}")
        changed = True
    if use_stamps and changed:
        _write_stamps(folder, recorded)


def _read_stamps(folder: Path) -> dict[str, list]:
    path = folder / STAMPS
    try:
        stamps = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def package_rebuild_hint(folder: str | os.PathLike) -> str:
    """How to restore a shipped weights folder, or record weights replaced on purpose."""
    return (f"Restore the shipped files (reinstall the package, or `git checkout -- {folder}` in a checkout); if you "
            f"replaced the weights on purpose, record them: `python -m ocrheads_lib.checksums --write {folder}`")


def cache_rebuild_hint(model: str) -> str:
    """How to rebuild a converted model of the user cache."""
    return f"Rebuild it: `python -m ocrheads_lib.checksums --rebuild {model}`"


def rebuild(model: str) -> Path:
    """Convert (smollm2) or merge (smol-vl) the model into the user cache again, replacing the folder."""
    # imported here: the models import this module
    if model == "smollm2":
        from ocrheads_lib.models.smollm2 import rebuild_smollm2

        return rebuild_smollm2()
    if model == "smol-vl":
        from ocrheads_lib.embedded.smolvl.load import rebuild_smolvl

        return rebuild_smolvl()
    if model == "gemma3-270m":
        from ocrheads_lib.models.gemma3 import rebuild_gemma3

        return rebuild_gemma3()
    raise ValueError(f"--rebuild {model!r}: the converted models are 'smollm2', 'smol-vl' and 'gemma3-270m'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocrheads_lib.checksums", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FOLDER", help="record the sha256 of FOLDER's weights files (SHA256SUMS)")
    group.add_argument("--check", metavar="FOLDER", help="verify FOLDER's weights files against its SHA256SUMS")
    group.add_argument("--rebuild", metavar="MODEL", choices=("smollm2", "smol-vl", "gemma3-270m"),
                       help="convert a model into the user cache again (smollm2, smol-vl, gemma3-270m)")
    args = parser.parse_args(argv)
    try:
        if args.write:
            path = write_manifest(args.write)
            print(f"{path}: {len(read_manifest(args.write))} files recorded")
        elif args.check:
            verify(args.check, package_rebuild_hint(args.check))
            print(f"{args.check}: every weights file matches {MANIFEST}")
        else:
            print(f"rebuilt {rebuild(args.rebuild)}")
    except (ChecksumError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
