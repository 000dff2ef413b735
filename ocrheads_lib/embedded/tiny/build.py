"""The embedded model's tokenizer, processor and config, built in code (no downloads).

Everything here is the stock Qwen2-VL machinery at a tiny size:
- a character-level tokenizer (a `tokenizers` BPE model with no merges, so every character is one
  token) carrying all Qwen2-VL special tokens, wrapped as `PreTrainedTokenizerFast`;
- the real `Qwen2VLProcessor` (image processor + tokenizer + video processor + chat template), with
  min/max pixels chosen so that pages whose sides are multiples of 28 px are never resized;
- a `Qwen2VLConfig` for `Qwen2VLForConditionalGeneration`.

So the shipped folder loads with `AutoProcessor.from_pretrained(dir)` and
`Qwen2VLForConditionalGeneration.from_pretrained(dir)`, exactly like Qwen/Qwen2-VL-7B-Instruct.
"""
from __future__ import annotations

import string
from dataclasses import asdict, dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from ocrheads_lib.embedded.chat import MESSAGE_CONTENT

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_pad|>"]
# Printable ASCII (letters, digits, punctuation, space) plus newline: one token each.
CHARACTERS = list(string.ascii_letters + string.digits + string.punctuation + " \n")
UNK = "<unk>"

# Like Qwen2-VL's template, without the default system prompt (it would cost ~40 character tokens
# per sample); a system message, when given, is rendered the same way as Qwen's. Message contents go
# through the fragment smol-vl shares (embedded.chat.MESSAGE_CONTENT).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + MESSAGE_CONTENT
    + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CELL = 28                 # patch 14 x merge 2: one visual token per 28x28 pixel cell
MIN_PIXELS = CELL * CELL  # a single cell
MAX_PIXELS = CELL * CELL * 4096   # up to 4096 visual tokens per page: no book page is ever resized


@dataclass
class TinyConfig:
    """Size of the embedded model (text decoder + vision tower)."""

    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 32
    intermediate: int = 512    # 1024 measured ~25 % slower per step on the shared 2-core CPU
    mrope_section: tuple[int, int, int] = (4, 6, 6)   # sums to head_dim / 2 (temporal, height, width)
    rope_theta: float = 1e4
    max_positions: int = 2048
    vision_depth: int = 4
    vision_embed: int = 128
    vision_heads: int = 4
    vision_mlp_ratio: int = 4

    def __post_init__(self) -> None:
        self.mrope_section = tuple(self.mrope_section)
        if sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(f"mrope_section {self.mrope_section} sums to {sum(self.mrope_section)}, "
                             f"but must sum to head_dim/2 = {self.head_dim // 2}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mrope_section"] = list(self.mrope_section)
        return d


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with the Qwen2-VL special tokens (ids 0..13)."""
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + CHARACTERS + [UNK]:
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))   # no merges: one char = one token
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.decoder = decoders.Fuse()   # without it decode() joins the characters with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, padding_side="left", model_max_length=2048,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2VLProcessor:
    """The real Qwen2VLProcessor; pages with sides multiple of 28 px pass through unresized."""
    tokenizer = tokenizer or build_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor()
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def build_config(tokenizer: PreTrainedTokenizerFast, size: TinyConfig | None = None) -> Qwen2VLConfig:
    size = size or TinyConfig()
    tid = tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        head_dim=size.head_dim, max_position_embeddings=size.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": size.rope_theta,
                         "mrope_section": list(size.mrope_section)},
        bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    vision_config = dict(depth=size.vision_depth, embed_dim=size.vision_embed, hidden_size=size.hidden,
                         num_heads=size.vision_heads, mlp_ratio=size.vision_mlp_ratio, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    return config


def build_generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(do_sample=False, max_new_tokens=32,
                            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))


def user_messages(n_images: int, text: str) -> list[dict]:
    """One user turn: the page images, then the text (the format every adapter uses)."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]
