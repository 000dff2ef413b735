"""The adapter every model family shares: inputs, decoder layers, greedy generation.

A family module subclasses `ModelAdapter` and supplies two things: how a list of pages becomes
processor arguments, and where each image token of the processed sequence sits on its page
(`_page_token_layout`). Everything else — chat template, teacher forcing, generation, shapes of the
language model — is common and lives here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from ocrheads_lib.attention import decoder_layers

from .geometry import ImageTokenMap

# Tensors of shape (1, T) that follow the tokens; when answer tokens are appended for teacher forcing
# they get these fill values (input_ids get the answer ids).
_PER_TOKEN_FILL = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


@dataclass
class ModelInputs:
    """One chat-templated example, ready for `lm.model(**inputs.tensors)` (batch of 1)."""

    tensors: dict[str, torch.Tensor]
    prompt_len: int                        # tokens up to and including the generation prompt
    image_tokens: ImageTokenMap
    answer_positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    prompt_text: str = ""                  # the templated prompt string (image placeholders unexpanded)

    @property
    def input_ids(self) -> torch.Tensor:
        """(T,) token ids of the sequence."""
        return self.tensors["input_ids"][0]

    def __len__(self) -> int:
        return int(self.tensors["input_ids"].shape[1])


def empty_token_map(n_pages: int = 0, page_sizes: list[tuple[int, int]] | None = None) -> ImageTokenMap:
    return ImageTokenMap(positions=torch.zeros(0, dtype=torch.long), pages=torch.zeros(0, dtype=torch.long),
                         boxes=torch.zeros(0, 4, dtype=torch.float64), page_sizes=page_sizes or [])


class ContextTooLongError(ValueError):
    """The input has more tokens than the model has positions."""


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits: its weights are corrupt, or the dtype overflowed. Not a
    failure of the sample: a run stops and stores nothing for it."""


def check_logits(logits: torch.Tensor, model_id: str) -> None:
    """NonFiniteLogitsError when `logits` hold a NaN or +inf (-inf is a masked token, allowed)."""
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise NonFiniteLogitsError(
            f"{model_id} produced non-finite logits (NaN/inf): its weights are corrupt or the dtype overflowed; "
            "nothing was stored for this sample. Check the weights (`python -m ocrheads_lib.checksums --check "
            "<folder>`, or --rebuild smollm2 / smol-vl for the converted models) or load in float32")


class _FiniteLogits:
    """A generation logits processor that only checks (see :func:`check_logits`)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        check_logits(scores, self.model_id)
        return scores


class ModelAdapter:
    """A loaded model plus what the project needs to know about it.

    Attributes: model, processor, tokenizer, family, model_id, n_layers, n_heads, n_kv_heads, head_dim,
    decoder_layers (the language model's decoder layers), device, dtype.
    """

    family: str = ""
    supports_images: bool = True
    batched_generation: bool = False   # True where `build_batch` is the family's own left-padded batching

    def __init__(self, model: nn.Module, processor: Any, tokenizer: Any, model_id: str, **options: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision: str | None = None   # weights fingerprint, set by load_model (see weights_revision)
        self.options = dict(options)
        text_cfg = model.config.get_text_config()
        self.n_layers: int = int(text_cfg.num_hidden_layers)
        self.n_heads: int = int(text_cfg.num_attention_heads)
        self.n_kv_heads: int = int(getattr(text_cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim: int = int(getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.n_heads)
        self.decoder_layers: list[nn.Module] = decoder_layers(model)
        if len(self.decoder_layers) != self.n_layers:
            raise RuntimeError(f"{model_id}: found {len(self.decoder_layers)} decoder layers but the config says "
                               f"{self.n_layers}")

    # -------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def language_model(self) -> nn.Module:
        """The decoder-only language model (the module holding `decoder_layers`)."""
        return find_language_model(self.model)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_id={self.model_id!r}, family={self.family!r}, layers={self.n_layers}, "
                f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"device={self.device}, dtype={self.dtype})")

    # -------------------------------------------------------------------- inputs
    def chat_prompt(self, n_pages: int, text: str) -> str:
        """The chat-templated prompt string (image placeholders not yet expanded) ending with the
        generation prompt."""
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_pages)]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        templater = self.processor if hasattr(self.processor, "apply_chat_template") else self.tokenizer
        return templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _processor_call(self, prompt: str, pages: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Run the processor on one prompt with its pages; families override to pass their options."""
        if pages:
            out = self.processor(text=[prompt], images=pages, return_tensors="pt", **self._image_kwargs())
        else:
            out = self.processor(text=[prompt], return_tensors="pt")
        return dict(out)

    def _image_kwargs(self) -> dict[str, Any]:
        return {}

    def build_inputs(self, pages: list[Image.Image], text: str, answer: str | None = None) -> ModelInputs:
        """Chat-template (pages, text) for the model. With `answer`, its tokens are appended right after the
        generation prompt (teacher forcing) and `answer_positions` holds their sequence positions."""
        pages = list(pages or [])
        if pages and not self.supports_images:
            raise ValueError(f"{self.model_id} is a text-only model (family {self.family!r}); it cannot take "
                             f"{len(pages)} page image(s). Pass pages=[] or use a vision-language model.")
        pages = [page.convert("RGB") if page.mode != "RGB" else page for page in pages]
        prompt = self.chat_prompt(len(pages), text)
        tensors = self._processor_call(prompt, pages)
        prompt_len = int(tensors["input_ids"].shape[1])
        image_tokens = self._image_token_map(tensors, pages) if pages else empty_token_map()
        answer_positions = torch.zeros(0, dtype=torch.long)
        if answer is not None:
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            tensors = append_tokens(tensors, torch.tensor(answer_ids, dtype=torch.long))
            answer_positions = torch.arange(prompt_len, prompt_len + len(answer_ids))
        self.check_length(int(tensors["input_ids"].shape[1]))
        tensors = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
        if "pixel_values" in tensors and tensors["pixel_values"].is_floating_point():
            tensors["pixel_values"] = tensors["pixel_values"].to(self.dtype)
        return ModelInputs(tensors=tensors, prompt_len=prompt_len, image_tokens=image_tokens,
                           answer_positions=answer_positions, prompt_text=prompt)

    def _batch_processor_call(self, prompts: list[str], pages: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor on several prompts at once, left padded (pages: every prompt's pages, in order)."""
        if pages:
            out = self.processor(text=prompts, images=pages, return_tensors="pt", padding=True, padding_side="left",
                                 **self._image_kwargs())
        else:
            out = self.processor(text=prompts, return_tensors="pt", padding=True, padding_side="left")
        return dict(out)

    def build_batch(self, items: Sequence[tuple[list[Image.Image], str]]) -> dict[str, torch.Tensor]:
        """Chat-templated (pages, text) items as ONE left-padded batch for ``model.generate`` (B, T_max), through
        the family's own batching (the processor for image models, the tokenizer for text decoders). Only for
        adapters with ``batched_generation``; every item is length-checked like :meth:`build_inputs`."""
        if not self.batched_generation:
            raise NotImplementedError(f"{self.model_id} (family {self.family!r}) has no batched generation; "
                                      "answer its samples one at a time (batch_size=1)")
        if not items:
            raise ValueError("build_batch needs at least one (pages, text) item")
        prompts, flat_pages = [], []
        for pages, text in items:
            pages = [page.convert("RGB") if page.mode != "RGB" else page for page in (pages or [])]
            if pages and not self.supports_images:
                raise ValueError(f"{self.model_id} is a text-only model (family {self.family!r}); it cannot take "
                                 f"{len(pages)} page image(s). Pass pages=[] or use a vision-language model.")
            prompts.append(self.chat_prompt(len(pages), text))
            flat_pages += pages
        tensors = self._batch_processor_call(prompts, flat_pages)
        for length in tensors["attention_mask"].sum(dim=1).tolist():
            self.check_length(int(length))
        tensors = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
        if "pixel_values" in tensors and tensors["pixel_values"].is_floating_point():
            tensors["pixel_values"] = tensors["pixel_values"].to(self.dtype)
        return tensors

    @property
    def max_positions(self) -> int | None:
        """The language model's position limit (config ``max_position_embeddings``), None when unknown."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value else None

    def check_length(self, n_tokens: int) -> None:
        """Refuse a sequence longer than the model's positions before any forward pass (the model would
        otherwise run past its window and answer garbage, with only a tokenizer warning)."""
        limit = self.max_positions
        if limit is not None and n_tokens > limit:
            raise ContextTooLongError(f"the input has {n_tokens} tokens but {self.model_id} has {limit} positions "
                                      "(max_position_embeddings); shorten the context (context_chars, pages) or "
                                      "use a model with a longer window")

    def _image_token_map(self, tensors: dict[str, torch.Tensor], pages: list[Image.Image]) -> ImageTokenMap:
        """Locate the image tokens in the sequence and give each its page and original-pixel box."""
        ids = tensors["input_ids"][0]                                          # (T,)
        image_token_id = self.image_token_id
        positions = (ids == image_token_id).nonzero().flatten()               # (N,)
        boxes, tiles = [], []
        for index, page in enumerate(pages):
            page_boxes, page_tiles = self._page_token_layout(index, page, tensors)
            boxes.append(page_boxes)
            tiles.append(page_tiles)
        counts = [len(b) for b in boxes]
        if sum(counts) != int(positions.numel()):
            raise RuntimeError(f"{self.model_id}: the processor put {int(positions.numel())} image tokens "
                               f"(id {image_token_id}) in the sequence but the geometry expects {counts} "
                               f"per page; the adapter's layout rule does not match this processor")
        page_index = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(counts)])
        return ImageTokenMap(positions=positions.cpu(), pages=page_index, boxes=torch.cat(boxes).float(),
                             page_sizes=[page.size for page in pages], tiles=torch.cat(tiles))

    @property
    def image_token_id(self) -> int:
        """Id of the placeholder token the image features replace, read from the config/processor."""
        token_id = getattr(self.model.config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(self.model.config, "image_token_index", None)
        if token_id is None:
            token_id = getattr(self.processor, "image_token_id", None)
        if token_id is None:
            raise RuntimeError(f"{self.model_id}: cannot find the image token id in the config or processor")
        return int(token_id)

    def _page_token_layout(self, index: int, page: Image.Image,
                           tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes (n, 4) in original page pixels, tile ids (n,)) of page `index`, in sequence order."""
        raise NotImplementedError

    # -------------------------------------------------------------------- generation
    def greedy_config(self, max_new_tokens: int) -> Any:
        """The checkpoint's generation config with sampling switched off (greedy decoding)."""
        config = copy.deepcopy(self.model.generation_config)
        config.do_sample = False
        config.num_beams = 1
        for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
            if hasattr(config, name):
                setattr(config, name, None)
        config.max_new_tokens = int(max_new_tokens)
        config.max_length = None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
                else self.eos_token_ids[0]
        if config.eos_token_id is None:
            config.eos_token_id = self.eos_token_ids
        return config

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end the assistant's turn: generation config's eos, else the tokenizer's eos."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            raise RuntimeError(f"{self.model_id}: no eos token id in the generation config or tokenizer")
        return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]

    @torch.no_grad()
    def generate(self, inputs: ModelInputs, max_new_tokens: int = 32) -> torch.Tensor:
        """Greedy continuation of `inputs` (build them without `answer`). Returns the new token ids (L,),
        ending with the eos token if the model produced one."""
        prompt_len = int(inputs.tensors["input_ids"].shape[1])
        from transformers import LogitsProcessorList

        out = self.model.generate(**inputs.tensors, generation_config=self.greedy_config(max_new_tokens),
                                  logits_processor=LogitsProcessorList([_FiniteLogits(self.model_id)]))
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences[0, prompt_len:].cpu()

    @torch.no_grad()
    def generate_batch(self, tensors: dict[str, torch.Tensor], max_new_tokens: int = 32) -> list[torch.Tensor]:
        """Greedy continuations of a left-padded batch (:meth:`build_batch`): per row the new token ids (L_i,),
        cut after the first eos token, as :meth:`generate` returns them for that row alone."""
        width = int(tensors["input_ids"].shape[1])
        out = self.model.generate(**tensors, generation_config=self.greedy_config(max_new_tokens))
        sequences = (out.sequences if hasattr(out, "sequences") else out)[:, width:].cpu()   # (B, L)
        eos = torch.tensor(self.eos_token_ids)
        rows = []
        for row in sequences:
            ends = torch.isin(row, eos).nonzero().flatten()
            rows.append(row[: int(ends[0]) + 1] if len(ends) else row)
        return rows

    def decode(self, token_ids: torch.Tensor | list[int]) -> str:
        """Text of generated ids, special tokens removed, surrounding whitespace stripped."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def append_tokens(tensors: dict[str, torch.Tensor], token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Append `token_ids` (L,) to a batch-of-one processor output, extending every per-token tensor."""
    out = dict(tensors)
    length = int(tensors["input_ids"].shape[1])
    new = token_ids.to(tensors["input_ids"].dtype).view(1, -1)                  # (1, L)
    out["input_ids"] = torch.cat([tensors["input_ids"], new], dim=1)            # (1, T+L)
    for key, value in tensors.items():
        if key == "input_ids" or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == (1, length):
            if key not in _PER_TOKEN_FILL:
                raise RuntimeError(f"cannot extend per-token input {key!r} for teacher forcing: unknown fill value")
            fill = torch.full((1, new.shape[1]), _PER_TOKEN_FILL[key], dtype=value.dtype)
            out[key] = torch.cat([value, fill], dim=1)
    return out


def find_language_model(model: nn.Module) -> nn.Module:
    """The decoder-only language model inside a (vision-)language model."""
    for path in ("model.language_model", "language_model", "model"):
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if module is not None and isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module
    raise RuntimeError(f"cannot find the language model's decoder layers in {type(model).__name__}")
