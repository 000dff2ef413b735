"""Text-only decoders (Qwen2, Llama, Gemma 3, ...): the family used for text retrieval heads.

The "processor" is the tokenizer. A tokenizer with a chat template gets the user turn and the
generation prompt; one without gets the text as is, with its own special tokens (BOS). A base model
(pretrained, not instruction-tuned: Gemma 3 270M) takes :class:`CompletionAdapter`, whose prompt is the
text followed by a cue to answer (:data:`COMPLETION_TEMPLATE`), so that its continuation is the answer.
"""
from __future__ import annotations

import torch
from PIL import Image

from .base import ModelAdapter


class TextAdapter(ModelAdapter):
    """Adapter for AutoModelForCausalLM decoders; no pages."""

    family = "text"
    supports_images = False
    batched_generation = True

    def chat_prompt(self, n_pages: int, text: str) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _processor_call(self, prompt: str, pages: list[Image.Image]) -> dict[str, torch.Tensor]:
        # A chat template writes its own BOS; a raw prompt gets the tokenizer's.
        templated = getattr(self.tokenizer, "chat_template", None) is not None
        return dict(self.tokenizer([prompt], return_tensors="pt", add_special_tokens=not templated))

    def _batch_processor_call(self, prompts: list[str], pages: list[Image.Image]) -> dict[str, torch.Tensor]:
        templated = getattr(self.tokenizer, "chat_template", None) is not None
        return dict(self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                                   add_special_tokens=not templated))

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(f"{self.model_id} is text-only")


# The base model's prompt: one worked example (a short text, its question, "Answer: " and the copied value),
# then the user text (context, blank line, question) and the same answer cue, which the model continues.
# Chosen on Gemma 3 270M's text pass keys: without the example ("{text}\nAnswer:") it answered 13 of 20
# (it often writes "The pass key is a ..." and a made-up number), with it 20 of 20; chapter 03 states the
# prompt and measures the accuracy it gives.
COMPLETION_EXAMPLE = ("The sky is blue. The door code is 3815. The grass is green.\n\n"
                      "What is the door code?\nAnswer: 3815\n\n")
COMPLETION_TEMPLATE = COMPLETION_EXAMPLE + "{text}\nAnswer:"


class CompletionAdapter(TextAdapter):
    """A base text model without a chat template: the prompt is ``COMPLETION_TEMPLATE`` filled with the text
    (the text appears verbatim, so needle spans still map to tokens), with the tokenizer's BOS."""

    template = COMPLETION_TEMPLATE

    def chat_prompt(self, n_pages: int, text: str) -> str:
        return self.template.format(text=text)
