"""Greedy answers to samples: what the model says when asked a sample's question.

    from ocrheads_lib import answer          # re-exported from here
    answer(lm, sample)                       # -> "4817"

Image samples show their pages then the question; text samples give `sample.prompt` (context, blank
line, question) with no pages; document samples give their pages, or their text context, then the
question. Decoding is greedy; special tokens and surrounding whitespace are removed.
"""
from __future__ import annotations

from typing import Union

import torch
from PIL import Image

from .data.samples import DocSample, ImageSample, TextSample
from .models.base import ModelAdapter, ModelInputs

Sample = Union[ImageSample, TextSample, DocSample]


def sample_prompt(sample: Sample) -> tuple[list[Image.Image], str]:
    """(pages, user text) the model is shown for a sample."""
    if isinstance(sample, ImageSample):
        return list(sample.pages), sample.question
    if isinstance(sample, TextSample):
        return [], sample.prompt
    if isinstance(sample, DocSample):
        text = f"{sample.context}\n\n{sample.question}" if sample.context else sample.question
        return list(sample.pages), text
    raise TypeError(f"answer(): expected an ImageSample, TextSample or DocSample, got {type(sample).__name__}")


def sample_inputs(lm: ModelAdapter, sample: Sample, answer: str | None = None) -> ModelInputs:
    """Chat-templated inputs for a sample (with `answer` appended for teacher forcing when given)."""
    pages, text = sample_prompt(sample)
    return lm.build_inputs(pages, text, answer=answer)


def generate_ids(lm: ModelAdapter, sample: Sample, max_new_tokens: int = 32) -> torch.Tensor:
    """Greedy new token ids (L,) for a sample's question."""
    return lm.generate(sample_inputs(lm, sample), max_new_tokens=max_new_tokens)


def answer(lm: ModelAdapter, sample: Sample, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to `sample`, special tokens stripped, whitespace stripped."""
    return lm.decode(generate_ids(lm, sample, max_new_tokens=max_new_tokens))


def answer_prompt(lm: ModelAdapter, pages: list[Image.Image], text: str, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to a prompt given as pages + user text (what `answer` does for a sample)."""
    return lm.decode(lm.generate(lm.build_inputs(list(pages), text), max_new_tokens=max_new_tokens))
