"""The shipped smol-vl weights: what is stored, how it goes back into a model, and the merged folder.

Shipped (ocrheads_lib/embedded/smolvl/weights/, float32):
- `smolvl_parts.safetensors`: the whole vision tower (`visual.*`: the tiny eye, the merger, its new 512 -> 576
  output layer) and the four new token embeddings (`embed_new`, rows 49,152-49,155) in float32, and the LoRA
  factors of the language half (`lora.<module>.A` (r x in), `lora.<module>.B` (out x r)) in float16 (format 2;
  format 1 kept them in float32): they are 87 % of the parameters, and float16 halves the file (45 -> 26 MB)
  while moving a merged weight by at most ~1e-3 of its delta;
- `smolvl_parts.json`: LoRA rank and alpha, the base GGUF's sha256, the training step;
- `training_record.json`: the segments (each segment's config) and the held-out evaluations.

Merged model: W = W_SmolLM2 + (alpha / r) * B @ A for every adapted projection (`merge_deltas`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ocrheads_lib.models.smollm2 import GGUF_SHA256
from ocrheads_lib.paths import atomic_path, atomic_write_json

PARTS = "smolvl_parts.safetensors"
PARTS_META = "smolvl_parts.json"
RECORD = "training_record.json"
BASE_VOCAB = 49152            # SmolLM2's vocabulary; the vision tokens follow it
FORMAT = 2                    # 2: LoRA factors in float16; 1 (read too): everything float32
READABLE_FORMATS = (1, 2)
LORA_DTYPE = torch.float16


def _lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module path (in the plain Qwen2-VL model) -> peft LoRA layer."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}


def save_parts(model: torch.nn.Module, config: Any, folder: Path, record: dict) -> None:
    """Write the parts of a (peft-injected) smol-vl model that differ from SmolLM2 + the metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"visual.{k}": v.detach().float().contiguous() for k, v in model.model.visual.state_dict().items()}
    tensors["embed_new"] = model.model.language_model.embed_tokens.weight[BASE_VOCAB:].detach().float().clone()
    for name, module in sorted(_lora_modules(model).items()):
        tensors[f"lora.{name}.A"] = module.lora_A["default"].weight.detach().to(LORA_DTYPE).contiguous()
        tensors[f"lora.{name}.B"] = module.lora_B["default"].weight.detach().to(LORA_DTYPE).contiguous()
    with atomic_path(folder / PARTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": str(FORMAT)})
    atomic_write_json(folder / PARTS_META, {"format": FORMAT, "lora_rank": config.lora_rank,
                                            "lora_alpha": config.lora_alpha, "base_gguf_sha256": GGUF_SHA256,
                                            "step": record.get("step")})
    atomic_write_json(folder / RECORD, record)
    for name in (PARTS, PARTS_META, RECORD):      # package files: readable by everyone
        (folder / name).chmod(0o644)


def parts_hash(folder: Path) -> str:
    """sha256 of the parts file and its metadata (the cache key of the merged folder)."""
    digest = hashlib.sha256()
    for name in (PARTS, PARTS_META):
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a smol-vl weights folder (it needs "
                                    f"{PARTS} and {PARTS_META}; export one with `python -m ocrheads_lib.embedded.smolvl.train "
                                    f"--out <run> --export <folder>`)")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_parts(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    parts_hash(folder)     # clear error when a file is missing
    meta = json.loads((Path(folder) / PARTS_META).read_text())
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{folder}/{PARTS_META} has format {meta.get('format')!r}; this code reads formats "
                         f"{list(READABLE_FORMATS)}")
    if meta.get("base_gguf_sha256") != GGUF_SHA256:
        raise ValueError(f"{folder} was trained on the SmolLM2 GGUF {meta.get('base_gguf_sha256')}, not the installed "
                         f"{GGUF_SHA256}: its deltas do not apply to this base")
    tensors = {name: value.float() for name, value in load_file(str(Path(folder) / PARTS)).items()}  # float16 LoRA -> float32
    return tensors, meta


def lora_factors(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A, B) from a parts file's tensors."""
    names = sorted({k[len("lora."):-len(".A")] for k in tensors if k.startswith("lora.") and k.endswith(".A")})
    return {n: (tensors[f"lora.{n}.A"], tensors[f"lora.{n}.B"]) for n in names}


def _load_shared(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    visual = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
    model.model.visual.load_state_dict(visual, strict=True)
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[BASE_VOCAB:].copy_(tensors["embed_new"])


def load_parts_into(model: torch.nn.Module, folder: Path) -> dict:
    """Load shipped parts into a peft-injected smol-vl model (to continue training); returns the record."""
    tensors, meta = read_parts(folder)
    _load_shared(model, tensors)
    modules = _lora_modules(model)
    factors = lora_factors(tensors)
    if set(modules) != set(factors):
        raise ValueError(f"{folder} has LoRA factors for {len(factors)} modules but the model has {len(modules)} "
                         f"LoRA layers: train with the same lora_targets")
    with torch.no_grad():
        for name, (a, b) in factors.items():
            if modules[name].lora_A["default"].weight.shape != a.shape:
                raise ValueError(f"{name}: shipped rank {a.shape[0]} != the model's "
                                 f"{modules[name].lora_A['default'].weight.shape[0]}: pass --lora_rank {a.shape[0]}")
            modules[name].lora_A["default"].weight.copy_(a)
            modules[name].lora_B["default"].weight.copy_(b)
    record_path = Path(folder) / RECORD
    return json.loads(record_path.read_text()) if record_path.is_file() else {"step": meta.get("step", 0)}


def merge_deltas(model: torch.nn.Module, folder: Path) -> dict:
    """Turn an assembled (un-injected) smol-vl model into the shipped one: parts loaded, LoRA merged as
    W += (alpha / r) * B @ A. Returns the parts metadata."""
    tensors, meta = read_parts(folder)
    _load_shared(model, tensors)
    scale = float(meta["lora_alpha"]) / float(meta["lora_rank"])
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, (a, b) in lora_factors(tensors).items():
            if name not in modules:
                raise ValueError(f"{folder}: LoRA factors for {name}, which the model does not have")
            modules[name].weight.add_(scale * (b @ a))
    return meta
