"""Model adapters: one object per loaded model that knows its family's inputs, geometry and layers.

    from ocrheads_lib.models import load_model
    lm = load_model("tiny")                                   # or "Qwen/Qwen2-VL-7B-Instruct", a folder
    inputs = lm.build_inputs(pages, "What is the pass key?", answer="4817")
    inputs.image_tokens.evidence_tokens(page=0, bbox=(10, 20, 60, 40))

Families: qwen2_vl, qwen2_5_vl, internvl (transformers-native -hf checkpoints), llava, text (Qwen2/Llama).
`ocrheads_lib.models.testing.tiny_random(family)` builds a tiny random model of each, offline.
"""
from __future__ import annotations

from .base import ModelAdapter, ModelInputs
from .geometry import ImageTokenMap
from .loading import (SUPPORTED_MODEL_TYPES, TINY_WEIGHTS_DIR, UnknownFamilyError, WeightsNotFoundError,
                      load_model, paper_options, set_language_attention)

__all__ = ["ImageTokenMap", "ModelAdapter", "ModelInputs", "SUPPORTED_MODEL_TYPES", "TINY_WEIGHTS_DIR",
           "UnknownFamilyError", "WeightsNotFoundError", "load_model", "paper_options", "set_language_attention"]
