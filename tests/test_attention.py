"""Tests of ocrheads_lib.attention against stock transformers on tiny random models built in code.

References used here:
* stock eager attention (`output_attentions=True`) for logits and recorded rows;
* a forward pre-hook on o_proj that zeroes one head's slice (masking);
* `reference_sink_attention`, an eager attention written independently below that redistributes sink mass
  row by row in float64 (sink redistribution), used with a greedy loop without KV cache (generate).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ocrheads_lib.attention import (
    PROBE_ATTENTION,
    Plan,
    apply,
    decoder_layers,
    language_model_config,
    redistribute_sink,
    use_probe_attention,
)

torch.set_flush_denormal(True)

VOCAB = 96
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 64, 4, 2, 16, 2


# ------------------------------------------------------------------------------------------------ models


def _text_kwargs(**extra):
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, **extra)


def build_qwen2(rope_theta: float = 10000.0) -> nn.Module:
    torch.manual_seed(0)
    cfg = Qwen2Config(**_text_kwargs(rope_parameters={"rope_type": "default", "rope_theta": rope_theta}))
    return Qwen2ForCausalLM(cfg).eval()


def build_llama(rope_theta: float = 10000.0) -> nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(**_text_kwargs(rope_parameters={"rope_type": "default", "rope_theta": rope_theta}))
    return LlamaForCausalLM(cfg).eval()


QWEN2VL_IDS = dict(image_token_id=90, video_token_id=91, vision_start_token_id=92, vision_end_token_id=93)


def build_qwen2_vl() -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2VLConfig(
        text_config=_text_kwargs(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [2, 3, 3]}),  # sums to head_dim / 2
        vision_config=dict(depth=1, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=False, **QWEN2VL_IDS)
    return Qwen2VLForConditionalGeneration(cfg).eval()


def qwen2_vl_image_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    """12 text tokens, then <vision_start> 4 image tokens (a 4x4 patch grid merged 2x2) <vision_end>, 10 more."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(1, 80, (12,), generator=g), torch.tensor([92, 90, 90, 90, 90, 93]),
                     torch.randint(1, 80, (10,), generator=g)])[None]  # (1, 28)
    mm = (ids == 90).long()  # (1, 28): 1 marks image tokens
    pixel_values = torch.randn(16, 3 * 2 * 14 * 14, generator=g)  # (patches, C*T*P*P)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                pixel_values=pixel_values, image_grid_thw=torch.tensor([[1, 4, 4]]))


def text_inputs(seed: int = 1, length: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 80, (1, length), generator=g)  # (1, T)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def left_padded_inputs(seed: int = 2, length: int = 20, pad: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 80, (2, length), generator=g)  # (2, T)
    mask = torch.ones_like(ids)
    ids[1, :pad] = 0
    mask[1, :pad] = 0
    return dict(input_ids=ids, attention_mask=mask)


def _tiny_random_families() -> list[str]:
    try:
        from ocrheads_lib.models.testing import tiny_random  # noqa: F401
    except ImportError:
        return []
    return ["qwen2_5_vl", "internvl", "llava"]


def _adapter_case(family: str):
    """Model + image inputs from the MODELS engineer's tiny_random adapters."""
    from PIL import Image

    from ocrheads_lib.models.testing import tiny_random

    options = {"max_tiles": 1} if family == "internvl" else {}
    lm = tiny_random(family, seed=0, **options)
    g = torch.Generator().manual_seed(3)
    page = Image.fromarray((torch.rand(96, 128, 3, generator=g) * 255).to(torch.uint8).numpy())
    inputs = lm.build_inputs([page], "What is it?", answer="42")
    return lm.model, dict(inputs.tensors)


_CACHE: dict[str, tuple[nn.Module, dict]] = {}


def case(family: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(model with sdpa language attention, inputs) per family; built once per session."""
    if family not in _CACHE:
        if family == "qwen2_vl":
            _CACHE[family] = (build_qwen2_vl(), qwen2_vl_image_inputs())
        elif family == "qwen2":
            _CACHE[family] = (build_qwen2(), text_inputs())
        elif family == "llama":
            _CACHE[family] = (build_llama(), text_inputs())
        else:
            _CACHE[family] = _adapter_case(family)
    model, inputs = _CACHE[family]
    use_probe_attention(model, "sdpa")
    return model, inputs


FAMILIES = ["qwen2_vl", "qwen2", "llama", *_tiny_random_families()]
TEXT_FAMILIES = ["qwen2_vl", "qwen2", "llama"]


# ------------------------------------------------------------------------------------------------ references


@contextmanager
def language_attention(model: nn.Module, implementation: str):
    previous = use_probe_attention(model, implementation)
    try:
        yield
    finally:
        use_probe_attention(model, previous)


def logits_of(model: nn.Module, inputs: dict, implementation: str = "sdpa") -> torch.Tensor:
    with language_attention(model, implementation), torch.no_grad():
        return model(**inputs).logits  # (B, T, V)


def eager_attentions(model: nn.Module, inputs: dict) -> tuple[torch.Tensor, ...]:
    with language_attention(model, "eager"), torch.no_grad():
        out = model(**inputs, output_attentions=True)
    attentions = out.attentions
    if isinstance(attentions, dict):  # some VLMs nest (language, vision)
        attentions = attentions["language_model"]
    return attentions  # per layer (B, H, T, T)


@contextmanager
def zero_heads_hook(model: nn.Module, heads: list[tuple[int, int]]):
    """Reference masking: a forward pre-hook on o_proj that zeroes the heads' slices of its input."""
    layers = decoder_layers(model)
    head_dim = layers[0].self_attn.head_dim
    handles = []
    for layer, head in heads:
        def hook(_module, args, head=head):
            x = args[0].clone()  # (B, T, H*hs)
            x[..., head * head_dim:(head + 1) * head_dim] = 0.0
            return (x, *args[1:])
        handles.append(layers[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# Reference sink attention: eager weights in float64, redistributed row by row in plain Python loops.
REF_SINK: dict[int, dict[int, float]] = {}
REF_NAME = "ocrheads_test_reference_sink"


def reference_sink_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)  # (B, H, kv, hs)
    v = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * scaling  # (B, H, q, kv)
    if attention_mask is None:
        visible = torch.ones(scores.shape[-2:], dtype=torch.bool).tril(scores.shape[-1] - scores.shape[-2])
        visible = visible.expand_as(scores)
    else:
        visible = (attention_mask == 0).expand_as(scores)  # eager mask: 0 visible, min_dtype masked
    weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1).nan_to_num(0.0)
    for head, beta in REF_SINK.get(getattr(module, "layer_idx", -1), {}).items():
        for b in range(weights.shape[0]):
            for i in range(weights.shape[2]):
                row, vis = weights[b, head, i], visible[b, head, i]
                if not vis.any():
                    continue
                sink = int(vis.nonzero()[0])
                rest = float(row.sum() - row[sink])
                if rest <= 0.0:
                    continue
                a_sink = float(row[sink])
                new = row * (1.0 + (1.0 - beta) * a_sink / rest)
                new[sink] = beta * a_sink
                weights[b, head, i] = new
    out = (weights @ v).to(query.dtype)  # (B, H, q, hs)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(REF_NAME, reference_sink_attention)
AttentionMaskInterface.register(REF_NAME, eager_mask)


def hand_sink(row: torch.Tensor, visible: torch.Tensor, beta: float) -> torch.Tensor:
    """The specification on one row of weights: beta*a_sink on the first visible key, the rest scaled up."""
    row = row.double().clone()
    sink = int(visible.nonzero()[0])
    rest = float(row.sum() - row[sink])
    if rest > 0:
        a_sink = float(row[sink])
        row = row * (1 + (1 - beta) * a_sink / rest)
        row[sink] = beta * a_sink
    return row


# ------------------------------------------------------------------------------------------------ tests


def test_decoder_layers_and_language_only_attention():
    model, _ = case("qwen2_vl")
    layers = decoder_layers(model)
    assert len(layers) == LAYERS and layers[0] is model.model.language_model.layers[0]
    assert decoder_layers(build_qwen2())[1].self_attn.layer_idx == 1
    with apply(model, Plan()):
        assert language_model_config(model)._attn_implementation == PROBE_ATTENTION
        assert model.config.vision_config._attn_implementation == "sdpa"
    assert language_model_config(model)._attn_implementation == "sdpa"

    class Adapter:  # an object with `.model` is accepted too
        pass

    adapter = Adapter()
    adapter.model = model
    assert decoder_layers(adapter) == layers
    with apply(adapter, Plan(mask=[(0, 0)])):
        assert language_model_config(model)._attn_implementation == PROBE_ATTENTION


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_plan_is_stock_model(family):
    model, inputs = case(family)
    eager = logits_of(model, inputs, "eager")
    stock = logits_of(model, inputs, "sdpa")
    with apply(model, Plan()), torch.no_grad():
        probe = model(**inputs).logits
    assert torch.equal(probe, stock)  # layers without work run the stock sdpa function
    torch.testing.assert_close(probe, eager, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_empty_plan_left_padded_batch(family):
    model, _ = case(family)
    inputs = left_padded_inputs()
    eager = logits_of(model, inputs, "eager")
    with apply(model, Plan()), torch.no_grad():
        probe = model(**inputs).logits
    real = inputs["attention_mask"].bool()  # padded rows are undefined in both
    torch.testing.assert_close(probe[real], eager[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_equals_o_proj_prehook(family):
    model, inputs = case(family)
    heads = [(0, 1), (1, 3), (1, 0)]
    with zero_heads_hook(model, heads):
        reference = logits_of(model, inputs, "sdpa")
    with apply(model, Plan(mask=heads)), torch.no_grad():
        probe = model(**inputs).logits
    torch.testing.assert_close(probe, reference, atol=1e-5, rtol=0)
    assert (probe - logits_of(model, inputs)).abs().max() > 1e-3  # the masking did something


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_rows_equal_eager_attentions(family):
    model, inputs = case(family)
    T = inputs["input_ids"].shape[1]
    rows = [T - 1, T - 3, 2, 0]
    key_sets = {"early": torch.arange(0, 5), "odd": torch.arange(1, T, 2)}
    attentions = eager_attentions(model, inputs)
    plan = Plan(record="all", rows=rows, topk=4, key_sets=key_sets)
    with apply(model, plan) as rec, torch.no_grad():
        model(**inputs)
    assert torch.equal(rec.rows, torch.tensor(rows))
    for layer, weights in enumerate(attentions):
        expected = weights[:, :, rows].float()  # (B, H, R, T)
        assert torch.equal(rec.argmax[layer], expected.argmax(-1))
        top_w, top_i = expected.topk(4, dim=-1)
        torch.testing.assert_close(rec.topk_weight[layer], top_w, atol=1e-6, rtol=0)
        # indices agree wherever the weights are not (near-)tied; row 0 has one key only
        valid = top_w > 0
        assert torch.equal(rec.topk_idx[layer][valid], top_i[valid])
        assert (rec.topk_idx[layer][~valid] == -1).all()
        for name, keys in key_sets.items():
            torch.testing.assert_close(rec.mass[name][layer], expected[..., keys].sum(-1), atol=1e-6, rtol=0)
    assert len(rec.steps) == 1 and torch.equal(rec.steps[0].rows.sort().values, torch.tensor(sorted(rows)))


def test_recorded_rows_left_padded_and_partial_heads():
    model, _ = case("qwen2")
    inputs = left_padded_inputs()
    attentions = eager_attentions(model, inputs)
    rows = [19, 12, 7]
    plan = Plan(record=[(1, 2), (0, 0)], rows=rows, topk=3, key_sets={"pads": torch.arange(0, 6)})
    with apply(model, plan) as rec, torch.no_grad():
        model(**inputs)
    assert set(rec.argmax) == {0, 1}
    for layer, head in [(1, 2), (0, 0)]:
        expected = attentions[layer][:, head, rows]  # (B, R, T)
        assert torch.equal(rec.argmax[layer][:, head], expected.argmax(-1))
        torch.testing.assert_close(rec.topk_weight[layer][:, head], expected.topk(3, -1).values, atol=1e-6, rtol=0)
        torch.testing.assert_close(rec.mass["pads"][layer][:, head], expected[..., :6].sum(-1), atol=1e-6, rtol=0)
        assert rec.mass["pads"][layer][1, head].abs().max() == 0  # padded keys get no mass
    assert (rec.argmax[1][:, [0, 1, 3]] == -1).all() and rec.topk_weight[1][:, 0].isnan().all()


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_sink_rows_follow_the_specification(family):
    model, inputs = case(family)
    T = inputs["input_ids"].shape[1]
    beta, layer, head = 0.3, 1, 2
    attentions = eager_attentions(model, inputs)
    # The weights the head uses under the plan, recorded for every row (topk = T gives the whole row).
    plan = Plan(record=[(layer, head)], rows=list(range(T)), topk=T, sink={(layer, head): beta},
                key_sets={"sink": [0], "all": list(range(T))})
    with apply(model, plan) as rec, torch.no_grad():
        model(**inputs)
    # Layer 1 sees layer 0 unchanged, so the eager weights of layer 1 are the pre-redistribution weights.
    original = attentions[layer][0, head].double()  # (T, T)
    used = torch.zeros(T, T, dtype=torch.float64)
    used.scatter_add_(1, rec.topk_idx[layer][0, head].clamp(min=0), rec.topk_weight[layer][0, head].double())
    torch.testing.assert_close(rec.mass["all"][layer][0, head], torch.ones(T), atol=1e-6, rtol=0)  # rows sum to 1
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(T):
        expected = hand_sink(original[i], visible[i], beta)
        torch.testing.assert_close(used[i], expected, atol=1e-6, rtol=0)
        if i > 0:  # the sink keeps exactly beta * a_sink
            assert abs(float(rec.mass["sink"][layer][0, head, i]) - beta * float(original[i, 0])) < 1e-6
    assert used.triu(1).abs().max() == 0  # nothing moved to future keys
    assert (used - original).abs().max() > 1e-2  # the redistribution did move mass


def test_sink_untouched_heads_bit_identical_and_matches_reference():
    model, inputs = case("qwen2_vl")
    sink = {(1, 0): 0.4, (1, 3): 0.0, (0, 2): 0.7}
    captured: dict[str, torch.Tensor] = {}
    layer1 = decoder_layers(model)[1].self_attn.o_proj
    handle = layer1.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0].clone()))
    try:
        with torch.no_grad():
            model(**inputs)
        stock_in = captured["x"]  # (1, T, H*hs)
        with apply(model, Plan(sink={(1, 0): 0.4, (1, 3): 0.0})), torch.no_grad():
            model(**inputs)
        probe_in = captured["x"]
    finally:
        handle.remove()
    hs = HEAD_DIM
    for head in (1, 2):  # untouched heads of the sink layer: bit-identical to sdpa
        assert torch.equal(probe_in[..., head * hs:(head + 1) * hs], stock_in[..., head * hs:(head + 1) * hs])
    assert not torch.allclose(probe_in[..., :hs], stock_in[..., :hs])

    REF_SINK.clear()
    for (layer, head), beta in sink.items():
        REF_SINK.setdefault(layer, {})[head] = beta
    reference = logits_of(model, inputs, REF_NAME)
    REF_SINK.clear()
    with apply(model, Plan(sink=sink)), torch.no_grad():
        probe = model(**inputs).logits
    torch.testing.assert_close(probe, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sink_key", ["first", "max", 3])
def test_sink_never_leaks_future_tokens(sink_key):
    model, _ = case("llama")
    inputs = left_padded_inputs()
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["input_ids"][:, 15] = (changed["input_ids"][:, 15] + 7) % 80 + 1
    plan = Plan(sink={(0, 0): 0.2, (0, 3): 0.5, (1, 1): 0.0}, sink_key=sink_key)
    with apply(model, plan), torch.no_grad():
        before = model(**inputs).logits
        after = model(**changed).logits
    real = inputs["attention_mask"].bool()
    assert torch.equal(before[:, :15][real[:, :15]], after[:, :15][real[:, :15]])
    assert (before[:, 15:] - after[:, 15:]).abs().max() > 1e-3


def test_beta_one_is_baseline():
    model, inputs = case("qwen2")
    with apply(model, Plan(sink={(0, 1): 1.0, (1, 2): 1.0})), torch.no_grad():
        probe = model(**inputs).logits
    torch.testing.assert_close(probe, logits_of(model, inputs, "eager"), atol=1e-6, rtol=0)


def test_redistribute_sink_unit_golden():
    probs = torch.tensor([[[[0.5, 0.3, 0.2, 0.0], [0.0, 0.6, 0.4, 0.0], [1.0, 0.0, 0.0, 0.0]]]])  # (1, 1, 3, 4)
    visible = torch.tensor([[[[True, True, True, False], [False, True, True, False], [True, False, False, False]]]])
    new = redistribute_sink(probs, visible, torch.tensor([0.2]))
    # row 0: sink 0 keeps 0.1; 0.4 goes to keys 1, 2 as 0.3:0.2  ->  0.3 + 0.24, 0.2 + 0.16
    # row 1: first visible key is 1 (left padding): keeps 0.12; key 2 gets 0.4 + 0.48
    # row 2: only the sink is visible -> unchanged (mass stays on the sink)
    golden = torch.tensor([[[[0.1, 0.54, 0.36, 0.0], [0.0, 0.12, 0.88, 0.0], [1.0, 0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(new, golden, atol=1e-7, rtol=0)
    # "max": the most attended visible key (key 1 here) is the sink; it keeps 0.25, keys 0 and 2 share 0.25 as 2:3
    row = torch.tensor([0.2, 0.5, 0.3, 0.0])[None, None, None]  # (1, 1, 1, 4)
    by_max = redistribute_sink(row, visible[:, :, :1], torch.tensor([0.5]), sink_key="max")
    torch.testing.assert_close(by_max[0, 0, 0], torch.tensor([0.3, 0.25, 0.45, 0.0]), atol=1e-7, rtol=0)
    at_two = redistribute_sink(probs, visible, torch.tensor([0.0]), sink_key=2)
    torch.testing.assert_close(at_two[0, 0, 0], torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=1e-7, rtol=0)
    torch.testing.assert_close(at_two[0, 0, 2], probs[0, 0, 2])  # sink key not visible: unchanged


def _greedy_reference(model: nn.Module, inputs: dict, steps: int, mask_heads, sink):
    """Greedy decoding without KV cache under the reference implementations (full forward per step).

    Returns the new tokens (B, steps) and the last-position logits of every step (B, steps, V)."""
    REF_SINK.clear()
    for (layer, head), beta in sink.items():
        REF_SINK.setdefault(layer, {})[head] = beta
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    new_tokens, step_logits = [], []
    try:
        with language_attention(model, REF_NAME), zero_heads_hook(model, mask_heads), torch.no_grad():
            for _ in range(steps):
                kwargs = dict(extra)
                if "mm_token_type_ids" in extra:
                    mm = extra["mm_token_type_ids"]
                    kwargs["mm_token_type_ids"] = torch.cat([mm, mm.new_zeros(1, ids.shape[1] - mm.shape[1])], 1)
                else:  # as generate() derives positions from a left-padded mask
                    kwargs["position_ids"] = (attn.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=attn, use_cache=False, **kwargs).logits[:, -1]
                token = logits.argmax(-1, keepdim=True)  # (B, 1)
                new_tokens.append(token)
                step_logits.append(logits)
                ids = torch.cat([ids, token], 1)
                attn = torch.cat([attn, torch.ones_like(token)], 1)
    finally:
        REF_SINK.clear()
    return torch.cat(new_tokens, 1), torch.stack(step_logits, 1)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_generate_matches_greedy_reference(family):
    model, inputs = case(family)
    if family != "qwen2_vl":
        inputs = left_padded_inputs()
    mask_heads, sink = [(0, 3)], {(1, 1): 0.25, (0, 0): 0.5}
    steps = 6
    expected, expected_logits = _greedy_reference(model, inputs, steps, mask_heads, sink)
    _, stock_logits = _greedy_reference(model, inputs, 1, [], {})
    assert (expected_logits[:, 0] - stock_logits[:, 0]).abs().max() > 1e-3  # the plan changes the model
    T = inputs["input_ids"].shape[1]
    rows = [T - 1, T + 2, T + 4]  # one prompt row, two generated rows
    plan = Plan(mask=mask_heads, sink=sink, record=[(1, 2)], rows=rows, topk=2)
    with apply(model, plan) as rec, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                             pad_token_id=0, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, T:], expected)
    torch.testing.assert_close(torch.stack(out.logits, 1), expected_logits, atol=1e-5, rtol=0)
    # one step per forward call: prefill + steps - 1 decode calls
    assert [s.query_start for s in rec.steps] == [0, *range(T, T + steps - 1)]
    assert [s.query_len for s in rec.steps] == [T] + [1] * (steps - 1)
    assert [s.rows.tolist() for s in rec.steps if s.rows.numel()] == [[T - 1], [T + 2], [T + 4]]
    # recorded rows equal the rows of one forward over the whole generated sequence under the same plan
    sequence = out.sequences
    full = dict(inputs, input_ids=sequence, attention_mask=torch.cat(
        [inputs["attention_mask"], torch.ones(sequence.shape[0], sequence.shape[1] - T, dtype=torch.long)], 1))
    if "mm_token_type_ids" in inputs:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"],
                                               torch.zeros(1, sequence.shape[1] - T, dtype=torch.long)], 1)
    else:
        full["position_ids"] = (full["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with apply(model, plan) as again, torch.no_grad():
        model(**full)
    assert torch.equal(rec.argmax[1], again.argmax[1])
    assert (rec.argmax[1][:, 2] >= 0).all()
    torch.testing.assert_close(rec.topk_weight[1][:, 2], again.topk_weight[1][:, 2], atol=1e-5, rtol=0)


def test_generate_with_static_cache_matches_dynamic_cache():
    """With a static cache the keys are padded to the cache size; positions come from the cache length."""
    model, _ = case("llama")
    inputs = left_padded_inputs()
    T = inputs["input_ids"].shape[1]
    plan = Plan(mask=[(0, 3)], sink={(1, 1): 0.25, (0, 0): 0.5}, record=[(1, 2)], rows=[T - 1, T + 2], topk=2)
    results = []
    for cache in (None, "static"):
        with apply(model, plan) as rec, torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4, pad_token_id=0,
                                 eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                                 cache_implementation=cache)
        results.append((out, rec))
    (dynamic, rec_d), (static, rec_s) = results
    assert torch.equal(dynamic.sequences, static.sequences)
    torch.testing.assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), atol=1e-5, rtol=0)
    assert torch.equal(rec_s.argmax[1], rec_d.argmax[1]) and (rec_s.argmax[1][:, 2] >= 0).all()
    torch.testing.assert_close(rec_s.topk_weight[1][:, 2], rec_d.topk_weight[1][:, 2], atol=1e-6, rtol=0)


@pytest.mark.parametrize("build", [build_llama, build_qwen2])
def test_planted_head_is_found(build):
    """Head 2 of layer 0 is wired so that token A (query) attends token B (key); the recorder must find it."""
    model = build(rope_theta=1e6)  # the planted direction uses the slowest rotary pair (negligible rotation)
    attn = decoder_layers(model)[0].self_attn
    token_a, token_b, query_pos, key_pos, head = 7, 11, 17, 5, 2
    direction_a, direction_b = 0, 1  # hidden dimensions reserved for the two tokens
    slow = HEAD_DIM // 2 - 1  # rotary pair (slow, slow + hs/2) turns by ~1e-5 rad per position at theta 1e6
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, [direction_a, direction_b]] = 0.0
        emb[token_a, direction_a] = 8.0
        emb[token_b, direction_b] = 8.0
        q_rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        kv_head = head // (HEADS // KV_HEADS)
        k_rows = slice(kv_head * HEAD_DIM, (kv_head + 1) * HEAD_DIM)
        attn.q_proj.weight[q_rows] = 0.0
        attn.k_proj.weight[k_rows] = 0.0
        if attn.q_proj.bias is not None:
            attn.q_proj.bias[q_rows] = 0.0
            attn.k_proj.bias[k_rows] = 0.0
        attn.q_proj.weight[head * HEAD_DIM + slow, direction_a] = 4.0
        attn.k_proj.weight[kv_head * HEAD_DIM + slow, direction_b] = 4.0
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(20, 80, (1, 24), generator=g)
    ids[0, query_pos], ids[0, key_pos] = token_a, token_b
    with apply(model, Plan(record=[(0, head)], rows=[query_pos, 20], topk=1,
                           key_sets={"planted": [key_pos]})) as rec, torch.no_grad():
        model(input_ids=ids)
    assert int(rec.argmax[0][0, head, 0]) == key_pos
    assert float(rec.mass["planted"][0][0, head, 0]) > 0.9
    assert float(rec.mass["planted"][0][0, head, 1]) < 0.2  # other rows do not attend it


def test_errors_name_the_problem():
    model, _ = case("qwen2")
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        Plan(sink={(0, 0): 1.5})
    with pytest.raises(ValueError, match=r"head 4 .*valid heads are 0\.\.3"):
        with apply(model, Plan(mask=[(0, 4)])):
            pass
    with pytest.raises(ValueError, match=r"layer 2 out of range; valid layers are 0\.\.1"):
        with apply(model, Plan(record=[(2, 0)], rows=[0])):
            pass
    with pytest.raises(ValueError, match="rows"):
        Plan(record=[(0, 0)])
    assert language_model_config(model)._attn_implementation == "sdpa"  # a failed apply changes nothing


def test_softcap_is_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, attn_logit_softcapping=50.0)
    model = Gemma2ForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError, match="gemma2.*soft-capping"):
        with apply(model, Plan()):
            pass
