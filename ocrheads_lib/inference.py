"""Greedy answers to samples: what the model says when asked a sample's question.

    from ocrheads_lib import answer          # re-exported from here
    answer(lm, sample)                       # -> "4817"
    answer_batch(lm, samples, batch_size=8)  # -> ["4817", ...], the same answers, several samples per forward

Image samples show their pages then the question; text samples give `sample.prompt` (context, blank
line, question) with no pages; document samples give their pages, or their text context, then the
question. Decoding is greedy; special tokens and surrounding whitespace are removed.

Batches (:func:`answer_batch`) are left padded through the model family's own batching (the Qwen2-VL
processor for pages, the tokenizer for text decoders; ``ModelAdapter.build_batch``); families without it are
answered one at a time. Padding changes the float arithmetic slightly (other matrix shapes), so a greedy step
whose top two logits are nearly tied can flip; tests/test_batched.py names the margin where that happens.
"""
from __future__ import annotations

from collections.abc import Sequence
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


def answer_batch(lm: ModelAdapter, samples: Sequence[Sample], max_new_tokens: int = 32,
                 batch_size: int = 8) -> list[str]:
    """Greedy answers to `samples`, `batch_size` at a time (left padded, see the module note); in sample order.

    Same answers as ``[answer(lm, s) for s in samples]`` up to near-tied logits. Samples are batched in order of
    :func:`length_hint` (similar lengths together: less padding) and returned in the given order. An adapter
    without batched generation (``lm.batched_generation`` False) or ``batch_size=1`` answers one at a time. A
    batch that cannot be built (e.g. one sample longer than the model's window) raises like :func:`answer` would
    for that sample.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}; 1 answers one sample at a time")
    samples = list(samples)
    if batch_size == 1 or not getattr(lm, "batched_generation", False):
        return [answer(lm, sample, max_new_tokens=max_new_tokens) for sample in samples]
    order = sorted(range(len(samples)), key=lambda i: length_hint(samples[i]))   # similar lengths share a batch
    out: list[str] = [""] * len(samples)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        tensors = lm.build_batch([sample_prompt(samples[i]) for i in chunk])
        for i, ids in zip(chunk, lm.generate_batch(tensors, max_new_tokens=max_new_tokens)):
            out[i] = lm.decode(ids)
    return out


def length_hint(sample: Sample) -> tuple[int, int]:
    """A cheap stand-in for a sample's prompt length, to batch similar lengths together (less padding):
    (total page pixels, characters of text)."""
    pages, text = sample_prompt(sample)
    return sum(page.width * page.height for page in pages), len(text)
