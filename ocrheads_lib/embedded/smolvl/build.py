"""Assemble smol-vl: a `Qwen2VLForConditionalGeneration` whose language half is SmolLM2-135M-Instruct and
whose vision tower is the embedded tiny model's OCR eye.

- Language half: SmolLM2's Llama weights copied into the Qwen2-VL text model (same shapes: hidden 576,
  30 layers, 9 query / 3 KV heads of 64, MLP 1536, tied embeddings). Qwen2 has q/k/v biases, Llama has
  none: they are set to zero. M-RoPE with sections [8, 12, 12] and theta 1e5: text tokens carry equal
  positions on all three axes, so on text this is exactly SmolLM2's 1-D RoPE (text-only logits equal
  SmolLM2's; tests/test_smolvl.py measures it).
- Tokenizer: SmolLM2's, plus the four Qwen2-VL vision special tokens (ids 49152-49155). Their embedding
  rows start as the mean of SmolLM2's embeddings (only vision start/end are ever looked up: the image
  and video pads are replaced by visual features).
- Processor: the stock `Qwen2VLProcessor` with the tiny model's pixel budget (book pages, whose sides are
  multiples of 28 px, are never resized) and SmolLM2's chat template extended with image items.
- Vision: the tiny model's tower and merger, except the merger's last layer, which becomes a new
  512 -> 576 layer (`fit_merger_output`: least squares from visual cells to SmolLM2's embedding of the
  character each cell shows).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import (AutoTokenizer, LlamaForCausalLM, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                          Qwen2VLProcessor)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from ocrheads_lib.embedded.chat import MESSAGE_CONTENT
from ocrheads_lib.embedded.tiny import WEIGHTS_DIR as TINY_WEIGHTS_DIR
from ocrheads_lib.embedded.tiny.build import MAX_PIXELS, MIN_PIXELS
from ocrheads_lib.embedded.tiny.examples import dense_page_example, page_example
from ocrheads_lib.models.smollm2 import ensure_smollm2

TINY_DIR = Path(TINY_WEIGHTS_DIR)
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
MROPE_SECTION = [8, 12, 12]        # temporal, height, width; sums to head_dim / 2 = 32
MERGER_OUT = "model.visual.merger.mlp.2"   # the new last merger layer (512 -> 576)

# SmolLM2's own template (default system prompt when none is given), with image and video items rendered
# as Qwen2-VL's placeholders by the fragment the tiny model shares (embedded.chat.MESSAGE_CONTENT). A
# text-only message renders exactly as SmolLM2's template renders it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    + MESSAGE_CONTENT
    + "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(smollm2_dir: str | Path):
    """SmolLM2's tokenizer with the four vision special tokens and the image-aware chat template."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    added = tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    if added != len(VISION_TOKENS) or len(tokenizer) != 49152 + len(VISION_TOKENS):
        raise RuntimeError(f"expected SmolLM2's 49,152-token vocabulary plus {len(VISION_TOKENS)} new tokens, "
                           f"got {len(tokenizer)} tokens ({added} added)")
    tokenizer.image_token, tokenizer.video_token = "<|image_pad|>", "<|video_pad|>"
    tokenizer.vision_start_token, tokenizer.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer) -> Qwen2VLProcessor:
    """The stock Qwen2VLProcessor at the tiny model's pixel budget (book pages pass through unresized)."""
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
                            tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                            chat_template=CHAT_TEMPLATE)


def build_config(smol_config, vision_config: dict, tokenizer) -> Qwen2VLConfig:
    """Qwen2-VL config carrying SmolLM2's text shapes and the tiny eye (whose merger now outputs 576)."""
    tid = tokenizer.convert_tokens_to_ids
    vision = {k: v for k, v in vision_config.items() if k not in ("model_type", "transformers_version")}
    vision["hidden_size"] = smol_config.hidden_size
    text = dict(vocab_size=len(tokenizer), hidden_size=smol_config.hidden_size,
                intermediate_size=smol_config.intermediate_size, num_hidden_layers=smol_config.num_hidden_layers,
                num_attention_heads=smol_config.num_attention_heads,
                num_key_value_heads=smol_config.num_key_value_heads, head_dim=smol_config.head_dim,
                rms_norm_eps=smol_config.rms_norm_eps, max_position_embeddings=smol_config.max_position_embeddings,
                hidden_act=smol_config.hidden_act, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": smol_config.rope_parameters["rope_theta"],
                                 "mrope_section": list(MROPE_SECTION)},
                bos_token_id=smol_config.bos_token_id, eos_token_id=smol_config.eos_token_id,
                pad_token_id=smol_config.pad_token_id)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=tid("<|image_pad|>"),
                         video_token_id=tid("<|video_pad|>"), vision_start_token_id=tid("<|vision_start|>"),
                         vision_end_token_id=tid("<|vision_end|>"), tie_word_embeddings=True)


def assemble(smollm2_dir: str | Path | None = None, tiny_dir: str | Path = TINY_DIR,
             seed: int = 0) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """(model, processor): SmolLM2 in the language half, the tiny eye + merger in the vision tower, the new
    merger output layer at PyTorch's default init under `seed` (fit it with `fit_merger_output`)."""
    smollm2_dir = Path(smollm2_dir) if smollm2_dir is not None else ensure_smollm2()
    tokenizer = build_tokenizer(smollm2_dir)
    processor = build_processor(tokenizer)
    smol = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, local_files_only=True)
    tiny = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32, local_files_only=True)
    config = build_config(smol.config, tiny.config.vision_config.to_dict(), tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    language = {f"model.language_model.{k}": v for k, v in smol.model.state_dict().items()}
    embed = language["model.language_model.embed_tokens.weight"]
    extra = len(tokenizer) - embed.shape[0]
    language["model.language_model.embed_tokens.weight"] = torch.cat([embed, embed.mean(0, keepdim=True).repeat(extra, 1)])
    eye = {f"model.visual.{k}": v for k, v in tiny.model.visual.state_dict().items()
           if not k.startswith("merger.mlp.2.")}
    missing, unexpected = model.load_state_dict({**language, **eye}, strict=False)
    expected_missing = {n for n in model.state_dict() if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))
                        or n.startswith(MERGER_OUT) or n == "lm_head.weight"}
    if unexpected or set(missing) - expected_missing:
        raise RuntimeError(f"assembling smol-vl: unexpected keys {unexpected}, missing {sorted(set(missing) - expected_missing)}")
    with torch.no_grad():
        for name, param in model.named_parameters():   # Qwen2 has q/k/v biases, Llama has none
            if name.startswith("model.language_model.") and name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.zero_()
    model.tie_weights()
    model.generation_config.eos_token_id = smol.generation_config.eos_token_id
    model.generation_config.pad_token_id = smol.generation_config.pad_token_id
    model.generation_config.bos_token_id = smol.generation_config.bos_token_id
    return model.eval(), processor


@torch.no_grad()
def fit_merger_output(model: Qwen2VLForConditionalGeneration, processor, n_pages: int = 600, seed: int = 0,
                      ridge: float = 1e-2) -> float:
    """Least-squares fit of the merger's last layer: each visual cell -> SmolLM2's input embedding of the
    character it shows (a space or blank cell -> the embedding of "Ġ", the space token). Half dense random
    pages, half paragraph pages. Returns the fit's nearest-token accuracy on (up to 2,000 of) its own cells."""
    tokenizer = processor.tokenizer
    embed = model.model.language_model.embed_tokens.weight[:49152]
    space = tokenizer.convert_tokens_to_ids("Ġ")
    hidden: dict[str, torch.Tensor] = {}
    hook = model.model.visual.merger.mlp[1].register_forward_hook(lambda _m, _i, out: hidden.__setitem__("x", out))
    rng = random.Random(seed)
    features, targets = [], []
    try:
        for i in range(n_pages):
            example = dense_page_example(rng) if i % 2 else page_example(rng)
            pixels = processor.image_processor(images=example.pages, return_tensors="pt")
            model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])
            for cell, char in zip(hidden["x"], example.cell_labels[0]):
                pieces = tokenizer.tokenize(char) if char.strip() else ["Ġ"]
                if len(pieces) == 1:
                    features.append(cell)
                    targets.append(tokenizer.convert_tokens_to_ids(pieces[0]) if char.strip() else space)
    finally:
        hook.remove()
    x = torch.cat([torch.stack(features), torch.ones(len(features), 1)], 1)          # (N, 513)
    y = embed[torch.tensor(targets)]                                                # (N, 576)
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1]), x.T @ y)          # (513, 576)
    layer = model.model.visual.merger.mlp[2]
    layer.weight.copy_(w[:-1].T)
    layer.bias.copy_(w[-1])
    sample = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))[:2000]
    nearest = ((x[sample] @ w) @ embed.T).argmax(-1)          # (<=2000, 49152) scores: a sample of the cells
    return float((nearest == torch.tensor(targets)[sample]).float().mean())
