"""Tiny randomly initialised models of every supported family, built offline from config in code.

`tiny_random(family, seed=0)` returns the same adapter `load_model` returns for a real checkpoint,
around a model small enough for unit tests (hidden 64, 2 decoder layers, 4 query heads sharing 2 KV
heads so grouped-query attention is exercised, a one-layer vision tower). Tokenizers are
character-level (a BPE model with no merges) holding each family's special tokens and a chat template
written here; processors are the family's real processor classes, so the image-token geometry under
test is the processor's own.
"""
from __future__ import annotations

import string
from typing import Any, Callable

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, LlamaConfig,
                          LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration, LlavaOnevisionConfig,
                          LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor, LlavaProcessor,
                          PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor, Qwen2Config, Qwen2ForCausalLM, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
from transformers.models.llava.image_processing_llava import LlavaImageProcessor
from transformers.models.llava_onevision.image_processing_llava_onevision import LlavaOnevisionImageProcessor
from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from .base import ModelAdapter
from .loading import make_adapter, paper_options, set_language_attention

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_INTERMEDIATE = 128
TINY_VISION_HIDDEN = 32

# Qwen tiny processor budget: a 500×300 page becomes 280×168 px = 10×6 merged tokens.
TINY_QWEN_MIN_PIXELS = 4 * 28 * 28
TINY_QWEN_MAX_PIXELS = 64 * 28 * 28
# LLaVA tiny: shortest edge → 56 px, center crop 56×56, 14-px patches → 4×4 tokens.
TINY_LLAVA_SIZE = 56

# Printable ASCII the character tokenizer knows (tabs, \r and form feeds map to <unk>).
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "llava", "llava_onevision", "qwen2", "llama")

# Tiny LLaVA-OneVision: 60-px views, 14-px patches → 4×4 tokens per view (4·14 = 56: like the real
# 27·14 = 378 < 384, the last pixels of every view are seen by no patch); crops on a 60-px grid.
TINY_OV_SIZE = 60
TINY_OV_PINPOINTS = [[60, 60], [60, 120], [120, 60], [120, 120], [60, 180], [180, 60]]

_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# InternVL -hf: the template writes one <IMG_CONTEXT> per image; the processor expands it to
# <img> + 256·tiles × <IMG_CONTEXT> + </img>.
_INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_LLAMA_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def char_tokenizer(specials: list[str], chat_template: str, eos: str, pad: str, bos: str | None = None,
                   extra_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: special tokens first, then one token per printable character.

    A BPE model with an empty merge list tokenises character by character; `decoders.Fuse()` joins the
    characters back without the spaces a default decoder would insert."""
    vocab: dict[str, int] = {}
    for token in [*specials, *CHARACTERS, "<unk>"]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token=eos, pad_token=pad, bos_token=bos,
        padding_side="left", model_max_length=4096, extra_special_tokens=extra_special_tokens or {},
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _text_config(tokenizer: PreTrainedTokenizerFast, **extra: Any) -> dict[str, Any]:
    """Decoder settings shared by every tiny family (token ids read from the tokenizer)."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, **extra,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (temporal, height, width) sections summing to head_dim/2."""
    half = head_dim // 2
    spatial = half // 3
    return [half - 2 * spatial, spatial, spatial]


# ---------------------------------------------------------------------------------- Qwen2-VL / 2.5-VL

def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    return char_tokenizer(specials, _QWEN_CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                "vision_start_token": "<|vision_start|>",
                                                "vision_end_token": "<|vision_end|>"})


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _build_qwen(version: str) -> tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]:
    tokenizer = _qwen_tokenizer()
    head_dim = TINY_HIDDEN // TINY_HEADS
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head_dim)}
    text_config = _text_config(tokenizer, rope_parameters=rope)
    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_QWEN_MIN_PIXELS, max_pixels=TINY_QWEN_MAX_PIXELS)
    if version == "qwen2_vl":
        vision_config = dict(depth=1, embed_dim=TINY_VISION_HIDDEN, hidden_size=TINY_HIDDEN, num_heads=2,
                             mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config,
                               tie_word_embeddings=False, **_qwen_ids(tokenizer))
        model = Qwen2VLForConditionalGeneration(config)
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=Qwen2VLVideoProcessor(), chat_template=_QWEN_CHAT_TEMPLATE)
    else:
        vision_config = dict(depth=2, hidden_size=TINY_VISION_HIDDEN, out_hidden_size=TINY_HIDDEN,
                             intermediate_size=2 * TINY_VISION_HIDDEN, num_heads=2, patch_size=14,
                             spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                             fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config,
                                  tie_word_embeddings=False, **_qwen_ids(tokenizer))
        model = Qwen2_5_VLForConditionalGeneration(config)
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=Qwen2VLVideoProcessor(), chat_template=_QWEN_CHAT_TEMPLATE)
    return model, processor, tokenizer


# ---------------------------------------------------------------------------------- InternVL

def _build_internvl() -> tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = char_tokenizer(specials, _INTERNVL_CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                               extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                                     "context_image_token": "<IMG_CONTEXT>",
                                                     "video_token": "<video>"})
    vision_config = dict(hidden_size=TINY_VISION_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=2 * TINY_VISION_HIDDEN, image_size=[448, 448], patch_size=[14, 14])
    text_config = dict(model_type="qwen2", **_text_config(tokenizer))
    config = InternVLConfig(vision_config=vision_config, text_config=text_config,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
                            image_seq_length=256, downsample_ratio=0.5, tie_word_embeddings=False)
    model = InternVLForConditionalGeneration(config)
    # max_patches=1: the paper's one 448-px tile per page, and short sequences for tests; the released
    # checkpoints use 12 (pass max_tiles=... to exercise the tiling).
    image_processor = GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True,
                                            min_patches=1, max_patches=1,
                                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=InternVLVideoProcessor(), image_seq_length=256,
                                  chat_template=_INTERNVL_CHAT_TEMPLATE)
    return model, processor, tokenizer


# ---------------------------------------------------------------------------------- LLaVA

def _build_llava() -> tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]:
    specials = ["<unk_pad>", "<s>", "</s>", "<image>"]
    tokenizer = char_tokenizer(specials, _LLAVA_CHAT_TEMPLATE, eos="</s>", pad="<unk_pad>", bos="<s>",
                               extra_special_tokens={"image_token": "<image>"})
    vision_config = dict(model_type="clip_vision_model", hidden_size=TINY_VISION_HIDDEN,
                         intermediate_size=2 * TINY_VISION_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         image_size=TINY_LLAVA_SIZE, patch_size=14, projection_dim=TINY_VISION_HIDDEN)
    text_config = dict(model_type="llama", **_text_config(tokenizer))
    n_patches = (TINY_LLAVA_SIZE // 14) ** 2
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=n_patches,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(config)
    image_processor = LlavaImageProcessor(size={"shortest_edge": TINY_LLAVA_SIZE},
                                          crop_size={"height": TINY_LLAVA_SIZE, "width": TINY_LLAVA_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_LLAVA_CHAT_TEMPLATE)
    return model, processor, tokenizer


# ---------------------------------------------------------------------------------- LLaVA-OneVision

def _build_llava_onevision() -> tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    template = _QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")
    tokenizer = char_tokenizer(specials, template, eos="<|im_end|>", pad="<|endoftext|>",
                               extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    vision_config = dict(model_type="siglip_vision_model", hidden_size=TINY_VISION_HIDDEN,
                         intermediate_size=2 * TINY_VISION_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         image_size=TINY_OV_SIZE, patch_size=14)
    text_config = dict(model_type="qwen2", **_text_config(tokenizer))
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(vision_config=vision_config, text_config=text_config,
                                  image_token_index=ids("<image>"), video_token_index=ids("<video>"),
                                  image_grid_pinpoints=TINY_OV_PINPOINTS, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                  tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessor(size={"height": TINY_OV_SIZE, "width": TINY_OV_SIZE},
                                                   image_grid_pinpoints=TINY_OV_PINPOINTS)
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=LlavaOnevisionVideoProcessor(),
                                        num_image_tokens=(TINY_OV_SIZE // 14) ** 2,
                                        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                        chat_template=template)
    return model, processor, tokenizer


# ---------------------------------------------------------------------------------- text-only

def _build_text(arch: str) -> tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]:
    if arch == "qwen2":
        tokenizer = char_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], _QWEN_CHAT_TEMPLATE,
                                   eos="<|im_end|>", pad="<|endoftext|>")
        model = Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer)))
    else:
        tokenizer = char_tokenizer(["<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|start_header_id|>",
                                    "<|end_header_id|>", "<|eot_id|>"], _LLAMA_CHAT_TEMPLATE,
                                   eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>")
        model = LlamaForCausalLM(LlamaConfig(**_text_config(tokenizer)))
    return model, tokenizer, tokenizer


_BUILDERS: dict[str, Callable[[], tuple[torch.nn.Module, Any, PreTrainedTokenizerFast]]] = {
    "qwen2_vl": lambda: _build_qwen("qwen2_vl"),
    "qwen2_5_vl": lambda: _build_qwen("qwen2_5_vl"),
    "internvl": _build_internvl,
    "llava": _build_llava,
    "llava_onevision": _build_llava_onevision,
    "qwen2": lambda: _build_text("qwen2"),
    "llama": lambda: _build_text("llama"),
}


def tiny_random(family: str, seed: int = 0, attn: str = "sdpa", paper_setting: bool = False,
                **adapter_options: Any) -> ModelAdapter:
    """A tiny randomly initialised model of `family` wrapped in its adapter (CPU, float32, eval mode).

    family: one of FAMILIES ("qwen2" and "llama" give adapters of family "text").
    attn: the language model's attention ("sdpa", "eager" or "probe"); the vision tower keeps sdpa.
    paper_setting: the paper's image settings (`loading.paper_options`); explicit options still win.
    adapter_options: as for `load_model` (e.g. min_pixels/max_pixels for Qwen, max_tiles for InternVL).
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model, processor, tokenizer = _BUILDERS[family]()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    set_language_attention(model, attn)
    if paper_setting:
        adapter_options = {**paper_options(model.config.model_type), **adapter_options}
    return make_adapter(model, processor, tokenizer, model_id=f"tiny-random-{family}", **adapter_options)
