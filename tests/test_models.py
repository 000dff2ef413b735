"""Model adapters on tiny random models of every family: inputs, teacher forcing, greedy generation,
loading from a folder, answers to samples, and the errors load_model promises."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ocrheads_lib.data.samples import DocSample, ImageSample, TextSample
from ocrheads_lib.inference import answer, sample_prompt
from ocrheads_lib.models import (UnknownFamilyError, WeightsNotFoundError, load_model, loading)
from ocrheads_lib.models.base import append_tokens
from ocrheads_lib.models.testing import FAMILIES, TINY_HEADS, TINY_HIDDEN, TINY_KV_HEADS, TINY_LAYERS, tiny_random

VISION = ("qwen2_vl", "qwen2_5_vl", "internvl", "llava", "llava_onevision")
_CACHE: dict[str, object] = {}


def tiny(family: str):
    if family not in _CACHE:
        _CACHE[family] = tiny_random(family)
    return _CACHE[family]


def pages_for(family: str) -> list[Image.Image]:
    if family not in VISION:
        return []
    return [Image.new("RGB", (120, 90), "white"), Image.new("RGB", (90, 120), (200, 200, 200))]


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_shapes(family):
    lm = tiny(family)
    assert lm.family == ("text" if family in ("qwen2", "llama") else family)
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.head_dim) == (TINY_LAYERS, TINY_HEADS, TINY_KV_HEADS,
                                                                      TINY_HIDDEN // TINY_HEADS)
    assert len(lm.decoder_layers) == TINY_LAYERS
    assert all(hasattr(layer, "self_attn") for layer in lm.decoder_layers)
    assert lm.device.type == "cpu" and lm.dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_generate_is_greedy(family):
    lm = tiny(family)
    inputs = lm.build_inputs(pages_for(family), "Key?")
    assert inputs.prompt_len == len(inputs) and inputs.answer_positions.numel() == 0
    with torch.no_grad():
        logits = lm.model(**inputs.tensors).logits                                    # (1, T, V)
    assert logits.shape[:2] == (1, len(inputs))
    new = lm.generate(inputs, max_new_tokens=4)
    assert new.dtype == torch.long and 1 <= new.numel() <= 4
    # Reference: argmax of a full forward, one token at a time (no cache).
    tensors, expected = inputs.tensors, []
    with torch.no_grad():
        for _ in range(new.numel()):
            next_id = int(lm.model(**tensors).logits[0, -1].argmax())
            expected.append(next_id)
            tensors = append_tokens(tensors, torch.tensor([next_id]))
    assert new.tolist() == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_answer_positions(family):
    lm = tiny(family)
    plain = lm.build_inputs(pages_for(family), "What is the pass key?")
    forced = lm.build_inputs(pages_for(family), "What is the pass key?", answer="4817 ok")
    assert forced.prompt_len == plain.prompt_len
    assert torch.equal(forced.input_ids[: plain.prompt_len], plain.input_ids)
    assert forced.answer_positions.tolist() == list(range(plain.prompt_len, len(forced)))
    assert lm.tokenizer.decode(forced.input_ids[forced.answer_positions]) == "4817 ok"
    assert torch.equal(forced.image_tokens.positions, plain.image_tokens.positions)
    with torch.no_grad():
        assert lm.model(**forced.tensors).logits.shape[1] == len(forced)


def test_chat_template_and_token_ids_come_from_tokenizer():
    lm = tiny("qwen2_vl")
    inputs = lm.build_inputs(pages_for("qwen2_vl"), "Key?")
    ids = inputs.input_ids
    start = lm.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert lm.image_token_id == lm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == start).sum()) == 2
    assert inputs.prompt_text.endswith("<|im_start|>assistant\n")
    assert int(ids[-1]) == lm.tokenizer.convert_tokens_to_ids("\n")


def test_text_family_rejects_pages():
    with pytest.raises(ValueError, match="text-only"):
        tiny("qwen2").build_inputs([Image.new("RGB", (28, 28))], "x")


def test_answer_for_every_sample_kind():
    vlm, text_lm = tiny("qwen2_vl"), tiny("llama")
    page = Image.new("RGB", (120, 90), "white")
    image_sample = ImageSample(id="i", pages=[page], question="Key?", answer="12", evidence_page=0,
                               boxes=[(1, 1, 5, 5), (5, 1, 9, 5)], units=["1", "2"], coarse_box=(1, 1, 9, 5), seed=0)
    text_sample = TextSample(id="t", context="The key is 42.", question="Key?", answer="42", needle_span=(0, 14),
                             answer_span=(11, 13), seed=0)
    doc_sample = DocSample(id="d", question="Key?", golds=["42"], context="The key is 42.")
    for lm, sample in ((vlm, image_sample), (text_lm, text_sample), (text_lm, doc_sample)):
        got = answer(lm, sample, max_new_tokens=3)
        expected = lm.decode(lm.generate(lm.build_inputs(*sample_prompt(sample)), max_new_tokens=3))
        assert isinstance(got, str) and got == expected and got == got.strip()
    assert sample_prompt(text_sample) == ([], "The key is 42.\n\nKey?")
    assert sample_prompt(doc_sample) == ([], "The key is 42.\n\nKey?")
    assert lm.decode([lm.tokenizer.eos_token_id, *lm.tokenizer(" ab ")["input_ids"]]) == "ab"


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_from_a_saved_folder(tmp_path, family):
    lm = tiny(family)
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), attn="sdpa")
    assert loaded.family == lm.family and type(loaded.model) is type(lm.model)
    a = lm.build_inputs(pages_for(family), "Key?")
    b = loaded.build_inputs(pages_for(family), "Key?")
    assert torch.equal(a.input_ids, b.input_ids)
    with torch.no_grad():
        assert torch.allclose(lm.model(**a.tensors).logits, loaded.model(**b.tensors).logits, atol=1e-5)
    # Default attn="probe": the language model gets the probe, the vision tower keeps sdpa.
    probed = load_model(str(tmp_path))
    assert probed.model.config.get_text_config()._attn_implementation == "ocrheads_probe"
    if family in VISION:
        assert probed.model.config.vision_config._attn_implementation == "sdpa"
        assert torch.equal(probed.build_inputs(pages_for(family), "Key?").image_tokens.boxes, a.image_tokens.boxes)


def test_tiny_loads_through_the_checkpoint_path(monkeypatch, tmp_path):
    lm = tiny("qwen2_vl")
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    from ocrheads_lib.checksums import write_manifest

    write_manifest(tmp_path)           # replaced weights are recorded before they are trusted (issue 32)
    monkeypatch.setattr(loading, "TINY_WEIGHTS_DIR", tmp_path)
    loaded = load_model("tiny", attn="sdpa")
    assert loaded.model_id == "tiny" and loaded.family == "qwen2_vl"
    assert loaded.model.training is False


def test_paper_setting_options(tmp_path):
    lm = tiny("qwen2_vl")
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    paper = load_model(str(tmp_path), attn="sdpa", paper_setting=True)
    assert (paper.min_pixels, paper.max_pixels) == (256 * 28 * 28, 256 * 28 * 28)
    assert load_model(str(tmp_path), attn="sdpa", paper_setting=True, max_pixels=10 ** 6).max_pixels == 10 ** 6
    assert tiny_random("internvl", paper_setting=True).max_tiles == 1
    assert tiny_random("internvl", max_tiles=6).max_tiles == 6


def test_unknown_family_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownFamilyError, match="bert.*qwen2_vl, qwen2_5_vl, internvl, llava"):
        load_model(str(tmp_path))


def test_remote_code_internvl_points_to_hf_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(NotImplementedError, match="InternVL2-8B-hf"):
        load_model(str(tmp_path))


def test_weights_missing_offline_names_id_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))           # an empty cache
    with pytest.raises(WeightsNotFoundError, match="nobody/no-such-model.*huggingface-cli download nobody/no-such-model"):
        load_model("nobody/no-such-model")


def test_tiny_missing_names_the_training_command(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "TINY_WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(WeightsNotFoundError, match="python -m ocrheads_lib.embedded.tiny.train"):
        load_model("tiny")


def test_unknown_tiny_family():
    with pytest.raises(ValueError, match="qwen2_vl"):
        tiny_random("gpt2")
