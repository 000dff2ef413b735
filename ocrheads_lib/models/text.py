"""Text-only decoders (Qwen2, Llama, ...): the family used for text retrieval heads.

The "processor" is the tokenizer. A tokenizer with a chat template gets the user turn and the
generation prompt; one without (a base model) gets the text as is, with its own special tokens (BOS).
"""
from __future__ import annotations

import torch
from PIL import Image

from .base import ModelAdapter


class TextAdapter(ModelAdapter):
    """Adapter for AutoModelForCausalLM decoders; no pages."""

    family = "text"
    supports_images = False

    def chat_prompt(self, n_pages: int, text: str) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _processor_call(self, prompt: str, pages: list[Image.Image]) -> dict[str, torch.Tensor]:
        # A chat template writes its own BOS; a raw prompt gets the tokenizer's.
        templated = getattr(self.tokenizer, "chat_template", None) is not None
        return dict(self.tokenizer([prompt], return_tensors="pt", add_special_tokens=not templated))

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(f"{self.model_id} is text-only")
