"""The embedded default model: a tiny Qwen2-VL trained by this project (see book/model_card.md).

`WEIGHTS_DIR` is the shipped checkpoint folder; `ocrheads_lib.load_model("tiny")` loads it with the
same code path as Qwen/Qwen2-VL-7B-Instruct.
"""
from __future__ import annotations

import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
MODEL_CARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card.json")


def weights_available() -> bool:
    """True when the shipped checkpoint folder holds a loadable model."""
    return os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors")) and \
        os.path.exists(os.path.join(WEIGHTS_DIR, "config.json"))
