"""One attention function for every model family: record, mask and redistribute per head.

transformers 5.x lets a project register its own attention function (``AttentionInterface``) and the mask
builder that goes with it (``AttentionMaskInterface``; without one the function silently receives no causal
mask: the mask rewrite of transformers#37866, 4.53, documented as a pitfall by transformers#45811). This module registers ``PROBE_ATTENTION`` with both and gives it to the *language model only*; vision
towers keep sdpa. Which decoder layer is calling is found by ``id(module)`` of its ``self_attn`` (vision
attention modules have no ``layer_idx``, and a vision module that ever reached this function would simply run
sdpa).

What the function does per call is decided by the active :class:`Plan`, held in a ``ContextVar`` by
:func:`apply`::

    plan = Plan(record=[(3, 1)], rows=[17, 18], key_sets={"evidence": torch.tensor([5, 6])})
    with apply(model, plan) as rec:
        model(**inputs)
    rec.argmax[3][0, 1]            # (R,) key each recorded row attends most, for batch item 0, head 1

Per (layer, head):

* record -- for the plan's query rows only, softmax(q_rows . K^T . scale + mask), a (B, heads, R, keys) block;
  keeps argmax key, top-k keys + weights and the attention mass on named key sets. The n x n map is never
  materialised.
* mask -- the head's output (its slice of the input of ``o_proj``) is zeroed.
* sink -- with beta in [0, 1]: the sink key keeps beta * a_sink, the other visible keys receive
  (1 - beta) * a_sink in proportion to their weights. Applied to every query row (prefill and decode).

Layers without work call transformers' sdpa function unchanged (flash-attn's on CUDA when installed and the
mask allows it), so an empty plan is numerically the stock sdpa model.

Conventions
-----------
* Positions are absolute sequence positions: columns of ``input_ids`` (left padding included) and, while
  decoding with a cache, ``past_length + i`` for the i-th new token. Key positions recorded, key sets and an
  int ``sink_key`` are absolute too. For full-attention layers the key index into the cache is the position
  (dynamic and static caches). A sliding-window layer (Gemma 3's local layers, window W) sees in one pass
  over the whole sequence every key, with keys more than W - 1 positions back masked out, so again index =
  position; while decoding, transformers' dynamic sliding cache hands over only the last keys, and the probe
  maps index i to position ``query_start + q_len - kv_len + i`` (:func:`_key_start`). A static sliding cache
  (a rolling buffer, whose slots are not in position order) is refused for layers that carry work.
* The sink key ``"first"`` is the sequence's first token (its first non-padding position), in every layer:
  a sliding-window row whose window no longer holds it has no sink and is left unchanged.
* The mask function registered for ``PROBE_ATTENTION`` is transformers' ``sdpa_mask``: the function receives
  either ``None`` (plain causal, no padding: sdpa's ``is_causal`` semantics) or a boolean
  (B, 1, q, k) mask where True = visible. Padded and future keys are therefore never visible.
* Weights are computed in float32 whatever the model dtype.
"""

from __future__ import annotations

import contextvars
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import is_flash_attn_2_available

from ocrheads_lib.types import Head

__all__ = [
    "PROBE_ATTENTION",
    "Plan",
    "Recorder",
    "StepRecord",
    "apply",
    "decoder_layers",
    "language_model_config",
    "probe_attention_forward",
    "register",
    "use_probe_attention",
]

PROBE_ATTENTION = "ocrheads_probe"
"""Name under which the probe is registered with transformers' attention and mask interfaces."""

SinkKey = Literal["first", "max"] | int

# Query rows processed at once when a sink head needs its full attention rows: bounds the temporary
# (B, sink_heads, chunk, keys) float32 block to a few hundred MB even at 32k keys.
_SINK_ROW_CHUNK = 512


# ----------------------------------------------------------------------------------------------------------
# Finding the language model
# ----------------------------------------------------------------------------------------------------------

# Where the decoder layers of the language model live, tried in this order (VLMs first: their `model.layers`
# does not exist, and a text-only `model.model.layers` must not be confused with a vision tower).
# Workaround for transformers#37033 (4.52): VLMs gained a base *Model, so their decoder moved from
# `language_model.model.layers` to `model.language_model.layers`; both layouts are still met.
_DECODER_LAYER_PATHS = (
    "model.language_model.layers",  # Qwen2-VL, Qwen2.5-VL, InternVL-hf, LLaVA(-OneVision) since 4.52 (#37033)
    "language_model.model.layers",  # the layout before #37033 (and remote-code InternVL chat models)
    "language_model.layers",  # a bare *Model VLM (e.g. Qwen2VLModel)
    "model.layers",  # text-only *ForCausalLM (Qwen2, Llama, ...)
    "layers",  # a bare text *Model
)


def _unwrap(model_or_adapter: Any) -> nn.Module:
    """The HF model inside an adapter (anything with a `.model` that is not itself an nn.Module)."""
    if isinstance(model_or_adapter, nn.Module):
        return model_or_adapter
    inner = getattr(model_or_adapter, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(
        f"expected a transformers model or an adapter with a `.model` attribute, got {type(model_or_adapter).__name__}"
    )


def _get_path(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model_or_adapter: Any) -> list[nn.Module]:
    """The language model's decoder layers (each with a ``self_attn``), in order.

    Accepts a raw HF model or an adapter with ``.model``. Known layouts are tried first
    (``_DECODER_LAYER_PATHS``); otherwise the largest ``nn.ModuleList`` of modules with a ``self_attn``
    outside any vision tower is used.
    """
    model = _unwrap(model_or_adapter)
    for path in _DECODER_LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(layers[0], "self_attn"):
            return list(layers)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) > 0
        and hasattr(mod[0], "self_attn")
        and not any(part in name for part in ("vision", "visual"))
    ]
    if not candidates:
        raise ValueError(
            f"cannot find the language model's decoder layers in {type(model).__name__}: tried "
            f"{', '.join(_DECODER_LAYER_PATHS)} and every ModuleList of modules with `self_attn`; "
            "add the path to ocrheads_lib.attention._DECODER_LAYER_PATHS"
        )
    return list(max(candidates, key=lambda item: len(item[1]))[1])


def language_model_config(model_or_adapter: Any) -> Any:
    """The config the language model's attention modules read (the text config of a VLM)."""
    return decoder_layers(model_or_adapter)[0].self_attn.config


def _model_name(config: Any) -> str:
    return f"{getattr(config, 'model_type', '?')} ({getattr(config, 'name_or_path', '') or 'unnamed'})"


def _check_supported(model: nn.Module, layers: list[nn.Module]) -> None:
    """Refuse attention extras the probe cannot honour (instead of silently ignoring them)."""
    config = layers[0].self_attn.config
    name = _model_name(config)
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise NotImplementedError(
            f"{name}: attention logit soft-capping (attn_logit_softcapping={config.attn_logit_softcapping}) "
            "is not supported by ocrheads_lib.attention; use a model without it"
        )
    for index, layer in enumerate(layers):
        if getattr(layer.self_attn, "sinks", None) is not None:
            raise NotImplementedError(
                f"{name}: layer {index} has learned attention sinks (`self_attn.sinks`, passed as `s_aux`), "
                "which ocrheads_lib.attention does not support"
            )


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------


def _as_positions(values: Any, what: str) -> torch.Tensor:
    try:
        raw = torch.as_tensor(values).flatten().cpu()  # (n,)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} must be a list of int sequence positions, got {values!r}") from error
    if raw.is_floating_point() or raw.dtype == torch.bool or raw.is_complex():
        if raw.numel() and (raw.dtype == torch.bool or not bool((raw == raw.round()).all())):
            raise ValueError(f"{what} must hold int sequence positions, got {raw.tolist()}")
    positions = raw.to(torch.long)  # (n,)
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{what} must be non-negative absolute sequence positions, got {positions.tolist()}")
    return positions


def _as_heads(heads: Any, what: str) -> list[tuple[int, int]]:
    """A list of (layer, head) pairs of ints, or a ValueError that shows the fix: ``mask=(0, 1)`` is one pair
    where a list of pairs is expected, and ``(0, 1.7)`` is not a head."""
    array_like = hasattr(heads, "tolist") and not isinstance(heads, (list, tuple))   # numpy / torch arrays
    if isinstance(heads, (str, bytes)) or not (array_like or isinstance(heads, (Sequence, set, frozenset))):
        raise ValueError(f"{what} must be a list of (layer, head) pairs, got {heads!r}")
    items = heads.tolist() if array_like else list(heads)
    if len(items) == 2 and all(_is_int(x) for x in items):
        raise ValueError(f"{what} must be a list of (layer, head) pairs, got the single pair {tuple(items)!r}; "
                         f"for one head write [{tuple(items)!r}]")
    out = []
    for item in items:
        pair = item.tolist() if hasattr(item, "tolist") and not isinstance(item, (list, tuple)) else item
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence,)) or len(pair) != 2 \
                or not all(_is_int(x) for x in pair):
            raise ValueError(f"{what}: {item!r} is not a (layer, head) pair of ints (0-based indices)")
        out.append((int(pair[0]), int(pair[1])))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class Plan:
    """What the probe does, per (layer, head). Layers and heads are 0-based; heads are query heads.

    record:   heads whose attention rows are recorded, or "all".
    rows:     absolute query positions to record (same for the whole batch). Required when recording.
    topk:     number of top keys (with weights) kept per recorded row.
    key_sets: name -> absolute key positions; the recorder keeps the attention mass on each set.
    mask:     heads whose output is zeroed.
    sink:     (layer, head) -> beta in [0, 1] for sink redistribution.
    sink_key: "first" (first visible key of the row), an absolute key position, or "max" (the row's most
              attended visible key, per head).
    """

    record: Sequence[Head] | Literal["all"] = ()
    rows: Sequence[int] | torch.Tensor | None = None
    topk: int = 5
    key_sets: Mapping[str, Sequence[int] | torch.Tensor] = field(default_factory=dict)
    mask: Sequence[Head] = ()
    sink: Mapping[Head, float] = field(default_factory=dict)
    sink_key: SinkKey = "first"

    def __post_init__(self) -> None:
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"topk must be a positive int, got {self.topk!r}")
        if self.record != "all" and isinstance(self.record, str):
            raise ValueError(f"record must be a list of (layer, head) or 'all', got {self.record!r}")
        if self.record != "all":
            self.record = _as_heads(self.record, "Plan.record")
        self.mask = _as_heads(self.mask, "Plan.mask")
        if not isinstance(self.sink, Mapping):
            raise ValueError(f"Plan.sink must be a dict {{(layer, head): beta}}, got {self.sink!r}")
        _as_heads(list(self.sink), "Plan.sink")
        for head, beta in self.sink.items():
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) and not torch.is_tensor(beta):
                raise ValueError(f"sink beta for head {head} must be a number in [0, 1], got {beta!r}")
        self.rows = None if self.rows is None else _as_positions(self.rows, "Plan.rows")
        if self.has_record() and (self.rows is None or self.rows.numel() == 0):
            raise ValueError("Plan.record is set but Plan.rows is empty: give the absolute query positions to record")
        self.key_sets = {name: _as_positions(pos, f"Plan.key_sets[{name!r}]") for name, pos in self.key_sets.items()}
        for head, beta in self.sink.items():
            if not 0.0 <= float(beta) <= 1.0:
                raise ValueError(f"sink beta for head {head} is {beta}; beta must lie in [0, 1]")
        if not (self.sink_key in ("first", "max") or (isinstance(self.sink_key, int) and self.sink_key >= 0)):
            raise ValueError(f"sink_key must be 'first', 'max' or a non-negative key position, got {self.sink_key!r}")

    def has_record(self) -> bool:
        return self.record == "all" or len(self.record) > 0

    def is_empty(self) -> bool:
        return not self.has_record() and not self.mask and not self.sink

    def resolve(self, n_layers: int, n_heads: int) -> dict[int, _LayerWork]:
        """Per-layer work; raises ValueError for a layer or head out of range."""

        def check(head: Any, what: str) -> tuple[int, int]:
            layer, h = (int(x) for x in head)
            if not 0 <= layer < n_layers:
                raise ValueError(f"{what}: layer {layer} out of range; valid layers are 0..{n_layers - 1}")
            if not 0 <= h < n_heads:
                raise ValueError(f"{what}: head {h} (layer {layer}) out of range; valid heads are 0..{n_heads - 1}")
            return layer, h

        work: dict[int, _LayerWork] = {}

        def of(layer: int) -> _LayerWork:
            return work.setdefault(layer, _LayerWork())

        if self.record == "all":
            for layer in range(n_layers):
                of(layer).record = list(range(n_heads))
        else:
            for head in self.record:
                layer, h = check(head, "Plan.record")
                if h not in of(layer).record:
                    of(layer).record.append(h)
        for head in self.mask:
            layer, h = check(head, "Plan.mask")
            if h not in of(layer).mask:
                of(layer).mask.append(h)
        for head, beta in self.sink.items():
            layer, h = check(head, "Plan.sink")
            of(layer).sink[h] = float(beta)
        for item in work.values():
            item.record.sort()
            item.mask.sort()
        return work


@dataclass
class _LayerWork:
    record: list[int] = field(default_factory=list)  # query heads to record
    mask: list[int] = field(default_factory=list)  # query heads to zero
    sink: dict[int, float] = field(default_factory=dict)  # query head -> beta


# ----------------------------------------------------------------------------------------------------------
# Recorder
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """What one forward call of the language model recorded (one entry per call, e.g. per generate step).

    rows: the plan rows that were query positions of this call (r,), possibly empty.
    argmax[layer]: (B, heads, r); topk_idx/topk_weight[layer]: (B, heads, r, k); mass[name][layer]: (B, heads, r).
    Unrecorded heads hold -1 (indices) or NaN (weights, masses).
    """

    call: int
    query_start: int  # absolute position of this call's first query row
    query_len: int
    rows: torch.Tensor
    argmax: dict[int, torch.Tensor] = field(default_factory=dict)
    topk_idx: dict[int, torch.Tensor] = field(default_factory=dict)
    topk_weight: dict[int, torch.Tensor] = field(default_factory=dict)
    mass: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)


class _LayerRecords(dict):
    """layer -> recorded tensor; a layer that recorded nothing raises a KeyError that says why (the plan's rows
    lie beyond every sequence the model saw, or the layer has no recorded head) instead of a bare key."""

    def __init__(self, recorder: "Recorder") -> None:
        super().__init__()
        self._recorder = recorder

    def __missing__(self, layer: int) -> torch.Tensor:
        rec = self._recorder
        longest = max((step.query_start + step.query_len for step in rec.steps), default=0)
        rows = rec.rows.tolist()
        raise KeyError(f"layer {layer} recorded nothing: its heads are not in Plan.record, or none of the plan's rows "
                       f"{rows[:6]}{'...' if len(rows) > 6 else ''} was reached (the longest sequence seen had "
                       f"{longest} positions, so rows must be < {longest}); check Plan.rows against the input length")


class Recorder:
    """Recorded attention rows, merged over all forward calls made inside :func:`apply`.

    rows:                  the plan's absolute query positions, (R,).
    argmax[layer]:         LongTensor (B, heads, R): most attended key per row; -1 for unrecorded heads and for
                           rows no forward call has reached yet.
    topk_idx[layer]:       LongTensor (B, heads, R, k), -1 where undefined (also where a row has < k visible keys).
    topk_weight[layer]:    FloatTensor (B, heads, R, k), NaN where undefined (0 for the missing keys of short rows).
    mass[name][layer]:     FloatTensor (B, heads, R): attention mass on key set `name` (NaN where undefined).
    steps:                 list of StepRecord, one per forward call of the language model (generate: prefill, then
                           one per new token). When a row is computed by several calls the merged arrays keep the
                           last one.
    Layers appear in the dicts once they have recorded something. Weights are the ones the head actually used
    (after sink redistribution if the head is also a sink head; masking zeroes outputs, not weights).
    """

    def __init__(self, plan: Plan, n_heads: int) -> None:
        self.plan = plan
        self.n_heads = n_heads
        self.rows: torch.Tensor = plan.rows if plan.rows is not None else torch.zeros(0, dtype=torch.long)
        self.topk = plan.topk
        self.argmax: dict[int, torch.Tensor] = _LayerRecords(self)
        self.topk_idx: dict[int, torch.Tensor] = _LayerRecords(self)
        self.topk_weight: dict[int, torch.Tensor] = _LayerRecords(self)
        self.mass: dict[str, dict[int, torch.Tensor]] = {name: {} for name in plan.key_sets}
        self.steps: list[StepRecord] = []

    @property
    def n_calls(self) -> int:
        return len(self.steps)

    def _begin_call(self, query_start: int | None, query_len: int = 0) -> None:
        self.steps.append(StepRecord(call=len(self.steps), query_start=-1 if query_start is None else query_start,
                                     query_len=query_len, rows=torch.zeros(0, dtype=torch.long)))

    def _store(self, layer: int, heads: list[int], row_slots: torch.Tensor, query_start: int, query_len: int,
               argmax: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
               mass: dict[str, torch.Tensor]) -> None:
        """Write the results of one layer of one call: arrays are (B, len(heads), r[, k])."""
        batch, n_rows, k = argmax.shape[0], self.rows.numel(), self.topk
        heads_t = torch.as_tensor(heads, dtype=torch.long)
        if layer not in self.argmax:
            self.argmax[layer] = torch.full((batch, self.n_heads, n_rows), -1, dtype=torch.long)
            self.topk_idx[layer] = torch.full((batch, self.n_heads, n_rows, k), -1, dtype=torch.long)
            self.topk_weight[layer] = torch.full((batch, self.n_heads, n_rows, k), float("nan"))
            for name in self.mass:
                self.mass[name][layer] = torch.full((batch, self.n_heads, n_rows), float("nan"))
        index = (slice(None), heads_t[:, None], row_slots[None, :])  # (nh, r) fancy index over (heads, rows)
        self.argmax[layer][index] = argmax.cpu()
        self.topk_idx[layer][index] = topk_idx.cpu()
        self.topk_weight[layer][index] = topk_weight.cpu()
        for name, values in mass.items():
            self.mass[name][layer][index] = values.cpu()

        if not self.steps:  # recording outside a hooked call (should not happen): open one
            self._begin_call(query_start)
        step = self.steps[-1]
        step.query_start, step.query_len = query_start, query_len
        step.rows = self.rows[row_slots.cpu()]
        r = row_slots.numel()
        step.argmax[layer] = torch.full((batch, self.n_heads, r), -1, dtype=torch.long)
        step.topk_idx[layer] = torch.full((batch, self.n_heads, r, k), -1, dtype=torch.long)
        step.topk_weight[layer] = torch.full((batch, self.n_heads, r, k), float("nan"))
        step.argmax[layer][:, heads_t] = argmax.cpu()
        step.topk_idx[layer][:, heads_t] = topk_idx.cpu()
        step.topk_weight[layer][:, heads_t] = topk_weight.cpu()
        for name, values in mass.items():
            step.mass.setdefault(name, {})[layer] = torch.full((batch, self.n_heads, r), float("nan"))
            step.mass[name][layer][:, heads_t] = values.cpu()


# ----------------------------------------------------------------------------------------------------------
# Active state
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _ProbeState:
    layer_of: dict[int, int]  # id(decoder_layer.self_attn) -> layer index
    work: dict[int, _LayerWork]
    plan: Plan
    recorder: Recorder
    model_name: str
    query_start: int | None = None  # absolute position of the current call's first query (from the cache)
    cache: Any = None  # the current call's cache (past_key_values), to map a sliding layer's keys to positions
    first_key: torch.Tensor | None = None  # (B,) position of each sequence's first token, set at the prefill


_ACTIVE: contextvars.ContextVar[_ProbeState | None] = contextvars.ContextVar("ocrheads_probe_state", default=None)


# ----------------------------------------------------------------------------------------------------------
# The attention function
# ----------------------------------------------------------------------------------------------------------


def _fast_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float, scaling: float | None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Stock attention: flash-attn on CUDA when installed and no mask is needed, else transformers' sdpa.

    flash-attn wants a 2-D padding mask, while the mask registered for the probe is sdpa's 4-D one, so flash is
    used only when the mask is None (plain causal, no padding), where both agree. Not exercised on CPU.
    (No upstream issue: one registered name has one mask builder, transformers 5.23.)
    """
    if attention_mask is None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _flash_ok():
        # imported on first use: this module is for CUDA runs with flash-attn installed only
        from transformers.integrations.flash_attention import flash_attention_forward

        return flash_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


_FLASH_OK: bool | None = None


def _flash_ok() -> bool:
    global _FLASH_OK
    if _FLASH_OK is None:
        _FLASH_OK = bool(is_flash_attn_2_available())
    return _FLASH_OK


def _visible_keys(attention_mask: torch.Tensor | None, local_rows: torch.Tensor, q_len: int, kv_len: int,
                  is_causal: bool, device: torch.device) -> torch.Tensor:
    """Boolean visibility (B|1, 1, r, kv) of keys for the given local query rows.

    A None mask follows sdpa's semantics in transformers: causal with upper-left alignment when q_len > 1
    (q_len == kv_len in practice, or a static cache whose extra slots are empty), no mask for one query row.
    (No upstream issue: sdpa_mask returns None for such masks, transformers 5.23, so the rule is rebuilt here.)
    """
    if attention_mask is not None:
        rows_mask = attention_mask[:, :, local_rows.to(attention_mask.device)]  # (B|1, 1|H, r, kv)
        if rows_mask.dtype == torch.bool:
            return rows_mask
        # A float additive mask (custom 4-D masks): visible where the bias is not (close to) -inf.
        return rows_mask > torch.finfo(rows_mask.dtype).min / 2
    key_index = torch.arange(kv_len, device=device)  # (kv,)
    if is_causal and q_len > 1:
        return (key_index[None, :] <= local_rows.to(device)[:, None])[None, None]  # (1, 1, r, kv)
    return torch.ones(1, 1, local_rows.numel(), kv_len, dtype=torch.bool, device=device)


def _float_mask_bias(attention_mask: torch.Tensor | None, local_rows: torch.Tensor) -> torch.Tensor | None:
    """The additive bias of a float mask for the rows (so custom biases are honoured), else None."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return None
    return attention_mask[:, :, local_rows.to(attention_mask.device)].float()


def _head_scores(query: torch.Tensor, key: torch.Tensor, heads: torch.Tensor, local_rows: torch.Tensor,
                 scaling: float) -> torch.Tensor:
    """float32 scores q.K^T*scale for the given query heads and local rows: (B, h, r, kv). GQA via head // groups."""
    groups = query.shape[1] // key.shape[1]
    q = query[:, :, local_rows.to(query.device)][:, heads].float()  # (B, h, r, hs); rows first: small copy
    if groups == 1 or heads.numel() == 1:
        k = key[:, heads // groups].float()  # (B, h, kv, hs)
        return torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, h, r, kv)
    # Many heads sharing few KV heads: score per KV group without materialising repeat_kv.
    out = torch.empty(q.shape[0], heads.numel(), local_rows.numel(), key.shape[2], dtype=torch.float32,
                      device=query.device)  # (B, h, r, kv)
    kv_of_head = heads // groups  # (h,)
    for kv_head in torch.unique(kv_of_head).tolist():
        sel = (kv_of_head == kv_head).nonzero().flatten()  # (g,)
        k = key[:, kv_head].float()  # (B, kv, hs)
        q_group = q[:, sel]  # (B, g, r, hs)
        scores = torch.matmul(q_group.reshape(q.shape[0], -1, q.shape[-1]), k.transpose(-1, -2))  # (B, g*r, kv)
        out[:, sel] = scores.view(q.shape[0], sel.numel(), local_rows.numel(), -1) * scaling
    return out


def _softmax_rows(scores: torch.Tensor, visible: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax over visible keys (B, h, r, kv); rows without any visible key are all zero (as sdpa returns 0).

    A plain softmax gives NaN for such rows (pytorch#103749); SDPA returns zeros since pytorch#133882
    (torch 2.5, its `_safe_softmax`), and nan_to_num matches that."""
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, h, r, kv)
    return torch.nan_to_num(probs, nan=0.0)


def _sink_index(sink_key: SinkKey, probs: torch.Tensor, visible: torch.Tensor, key_start: int = 0,
                first_key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sink key index per (B, h, r) and whether the sink is visible in that row (B, h, r).

    key_start: absolute position of key index 0 (> 0 only for a sliding cache while decoding).
    first_key: (B,) absolute position of each sequence's first token, for sink_key "first"; None: the first
    visible key of each row (what the first token is under a plain causal mask)."""
    batch, n_heads, n_rows, kv_len = probs.shape
    vis = visible.expand(batch, n_heads, n_rows, kv_len)
    if sink_key == "max":
        index = probs.argmax(dim=-1)  # (B, h, r): most attended visible key (invisible keys have weight 0)
        return index, vis.gather(-1, index[..., None])[..., 0]
    if sink_key == "first" and first_key is None:
        index = vis.to(torch.uint8).argmax(dim=-1)  # (B, h, r): first True (0 when none is visible)
        return index, vis.gather(-1, index[..., None])[..., 0]
    if sink_key == "first":
        position = first_key.to(probs.device).long().view(batch, 1, 1).expand(batch, n_heads, n_rows)  # (B, h, r)
    else:
        position = torch.full((batch, n_heads, n_rows), int(sink_key), dtype=torch.long, device=probs.device)
    index = position - key_start  # (B, h, r): key index of the sink, outside 0..kv-1 when not in the cache
    in_cache = (index >= 0) & (index < kv_len)
    index = index.clamp(0, kv_len - 1)
    return index, vis.gather(-1, index[..., None])[..., 0] & in_cache


def redistribute_sink(probs: torch.Tensor, visible: torch.Tensor, betas: torch.Tensor,
                      sink_key: SinkKey = "first", key_start: int = 0,
                      first_key: torch.Tensor | None = None) -> torch.Tensor:
    """Sink redistribution on attention rows probs (B, h, r, kv) with visibility (B|1, 1|h, r, kv), betas (h,).

    a'_sink = beta * a_sink;  a'_j = a_j + (1 - beta) * a_sink * a_j / R  for the other keys,
    with R = sum of the other keys' weights. Future and padded keys have a_j = 0 and stay 0.
    Rows whose other keys carry no mass (R == 0, e.g. the first token, which sees only the sink) are left
    unchanged: the mass stays on the sink rather than leaking to invisible keys. Rows in which the sink key is
    not visible (an int sink_key beyond the row, padding, or a key outside a sliding window) are left unchanged
    too. key_start / first_key: see :func:`_sink_index` (the probe passes both; by hand they can be left out).
    """
    sink_index, sink_visible = _sink_index(sink_key, probs, visible, key_start, first_key)  # (B, h, r), (B, h, r)
    a_sink = probs.gather(-1, sink_index[..., None])  # (B, h, r, 1)
    others = probs.scatter(-1, sink_index[..., None], 0.0)  # (B, h, r, kv): weights of the non-sink keys
    rest = others.sum(dim=-1, keepdim=True)  # (B, h, r, 1)
    active = (rest > 0) & sink_visible[..., None]  # (B, h, r, 1)
    beta = betas.to(probs)[None, :, None, None]  # (1, h, 1, 1)
    share = others / torch.where(active, rest, torch.ones_like(rest))  # (B, h, r, kv): a_j / R, in [0, 1]
    moved = (1.0 - beta) * a_sink  # (B, h, r, 1)
    new = torch.where(active, others + share * moved, probs)  # (B, h, r, kv)
    new_sink = torch.where(active, beta * a_sink, a_sink)  # (B, h, r, 1)
    return new.scatter(-1, sink_index[..., None], new_sink)


def probe_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The registered attention function.

    query (B, H, q, hs); key/value (B, KVH, kv, hs) before repeat_kv; attention_mask None or bool (B|1, 1, q, kv).
    Returns (output (B, q, H, hs), None), like transformers' sdpa function.
    """
    state = _ACTIVE.get()
    layer = None if state is None else state.layer_of.get(id(module))
    work = None if layer is None else state.work.get(layer)
    if layer is not None:
        if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            extra = "softcap" if kwargs.get("softcap") is not None else "learned sinks (s_aux)"
            raise NotImplementedError(f"{state.model_name}: attention {extra} is not supported by the ocrheads probe")
    if work is None:
        return _fast_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)

    model_name = state.model_name
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError(f"{model_name}: attention position_bias is not supported by the ocrheads probe")
    if dropout and module.training:
        raise NotImplementedError(f"{model_name}: the probe computes eval-mode attention; call model.eval() first")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))

    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)  # (B, q, H, hs)
    batch, n_heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    query_start = state.query_start if state.query_start is not None else kv_len - q_len
    key_start = _key_start(state, layer, query_start, q_len, kv_len)
    if work.sink and state.plan.sink_key == "first":
        first_key = _first_key(state, attention_mask, query_start, key_start, batch, query.device)
    else:
        first_key = None

    if work.sink:
        sink_heads = torch.tensor(sorted(work.sink), dtype=torch.long, device=query.device)  # (s,)
        betas = torch.tensor([work.sink[h] for h in sorted(work.sink)], dtype=torch.float32, device=query.device)
        groups = n_heads // key.shape[1]
        v = value[:, sink_heads // groups].float()  # (B, s, kv, hs)
        for start in range(0, q_len, _SINK_ROW_CHUNK):
            local_rows = torch.arange(start, min(start + _SINK_ROW_CHUNK, q_len), device=query.device)  # (c,)
            visible = _visible_keys(attention_mask, local_rows, q_len, kv_len, is_causal, query.device)
            scores = _head_scores(query, key, sink_heads, local_rows, scale)  # (B, s, c, kv)
            probs = _softmax_rows(scores, visible, _float_mask_bias(attention_mask, local_rows))
            probs = redistribute_sink(probs, visible, betas, state.plan.sink_key, key_start,
                                      first_key)  # (B, s, c, kv)
            head_out = torch.matmul(probs, v)  # (B, s, c, hs)
            out[:, start:start + local_rows.numel(), sink_heads] = head_out.transpose(1, 2).to(out.dtype)

    if work.record:
        _record(state, layer, work, query, key, attention_mask, scale, is_causal, query_start, key_start,
                first_key)

    if work.mask:
        out[:, :, work.mask] = 0.0  # zero the heads' slices of the o_proj input
    return out, None


def _key_start(state: _ProbeState, layer: int, query_start: int, q_len: int, kv_len: int) -> int:
    """Absolute position of key index 0 of this call: 0 when the layer's keys start at the sequence's start
    (no cache, a full cache, a static cache padded past the sequence); for transformers' dynamic sliding-window
    cache, which hands over only the last kv_len keys, ``query_start + q_len - kv_len``. A cache holding fewer
    keys than the sequence in any other layout (a static sliding cache is a rolling buffer) is refused."""
    dropped = query_start + q_len - kv_len
    if dropped <= 0:
        return 0
    cache = state.cache
    layers = getattr(cache, "layers", None)
    layer_cache = layers[layer] if layers is not None and layer < len(layers) else None
    if isinstance(layer_cache, DynamicSlidingWindowLayer):
        return dropped
    raise NotImplementedError(
        f"{state.model_name}: layer {layer} holds {kv_len} keys for {query_start + q_len} positions in a "
        f"{type(layer_cache).__name__ if layer_cache is not None else type(cache).__name__} cache, whose key order "
        "the probe cannot map to positions; generate with the default dynamic cache (cache_implementation=None)")


def _first_key(state: _ProbeState, attention_mask: torch.Tensor | None, query_start: int, key_start: int,
               batch: int, device: torch.device) -> torch.Tensor:
    """(B,) absolute position of each sequence's first token (its first non-padding key): read from the mask
    of the call that holds the sequence's start (the prefill), remembered for the calls that follow."""
    if key_start == 0 and query_start == 0:
        if attention_mask is None:
            first = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            visible = attention_mask if attention_mask.dtype == torch.bool else \
                attention_mask > torch.finfo(attention_mask.dtype).min / 2
            seen = visible.any(dim=-2).any(dim=1).expand(batch, -1)  # (B, kv): keys some row of the call sees
            first = seen.to(torch.uint8).argmax(dim=-1).to(device)  # (B,)
        state.first_key = first
    if state.first_key is None:
        if key_start == 0 and attention_mask is None:  # no padding and the start is in the cache
            return torch.zeros(batch, dtype=torch.long, device=device)
        raise RuntimeError(f"{state.model_name}: sink_key 'first' needs the call that processes the sequence's first "
                           "token inside apply() (the prefill), to know where each sequence starts; start "
                           "generate() inside the apply() block, or give an int sink_key")
    return state.first_key.to(device)


def _record(state: _ProbeState, layer: int, work: _LayerWork, query: torch.Tensor, key: torch.Tensor,
            attention_mask: torch.Tensor | None, scale: float, is_causal: bool, query_start: int, key_start: int,
            first_key: torch.Tensor | None) -> None:
    """Compute and store the plan rows that are queries of this call, for the layer's recorded heads.
    query_start: absolute position of the first query; key_start: of key index 0 (see :func:`_key_start`)."""
    recorder, plan = state.recorder, state.plan
    q_len, kv_len = query.shape[2], key.shape[2]
    rows = recorder.rows.to(query.device)  # (R,)
    in_call = (rows >= query_start) & (rows < query_start + q_len)  # (R,)
    if not bool(in_call.any()):
        return
    row_slots = in_call.nonzero().flatten()  # (r,) indices into plan rows
    local_rows = rows[row_slots] - query_start  # (r,) indices into this call's queries

    heads = torch.tensor(work.record, dtype=torch.long, device=query.device)  # (h,)
    visible = _visible_keys(attention_mask, local_rows, q_len, kv_len, is_causal, query.device)  # (B|1,1,r,kv)
    scores = _head_scores(query, key, heads, local_rows, scale)  # (B, h, r, kv)
    probs = _softmax_rows(scores, visible, _float_mask_bias(attention_mask, local_rows))  # (B, h, r, kv)
    sink_heads = [h for h in work.record if h in work.sink]
    if sink_heads:  # record what the head actually uses
        pick = torch.tensor([work.record.index(h) for h in sink_heads], device=query.device)
        betas = torch.tensor([work.sink[h] for h in sink_heads], dtype=torch.float32, device=query.device)
        vis = visible if visible.shape[1] == 1 else visible[:, pick]
        probs[:, pick] = redistribute_sink(probs[:, pick], vis, betas, plan.sink_key, key_start, first_key)

    argmax = probs.argmax(dim=-1) + key_start  # (B, h, r): absolute key positions
    k = min(plan.topk, kv_len)
    top_w, top_i = probs.topk(k, dim=-1)  # (B, h, r, k)
    top_i = torch.where(top_w > 0, top_i + key_start, torch.full_like(top_i, -1))
    if k < plan.topk:  # fewer keys than k: pad
        pad = plan.topk - k
        top_w = torch.cat([top_w, top_w.new_zeros(*top_w.shape[:-1], pad)], dim=-1)
        top_i = torch.cat([top_i, top_i.new_full((*top_i.shape[:-1], pad), -1)], dim=-1)
    mass = {}
    for name, positions in plan.key_sets.items():
        indices = positions - key_start  # (m,): key indices in this call's keys
        keys = indices[(indices >= 0) & (indices < kv_len)].to(query.device)  # (m',)
        mass[name] = probs[..., keys].sum(dim=-1)  # (B, h, r)
    recorder._store(layer, work.record, row_slots.cpu(), query_start, q_len, argmax, top_i, top_w, mass)


# ----------------------------------------------------------------------------------------------------------
# Registration and apply()
# ----------------------------------------------------------------------------------------------------------

_REGISTERED = False


def register() -> str:
    """Register the probe attention and its mask builder with transformers (idempotent). Returns the name."""
    global _REGISTERED
    if not _REGISTERED:
        AttentionInterface.register(PROBE_ATTENTION, probe_attention_forward)
        # sdpa's mask builder: None for a plain causal mask, else a boolean (B, 1, q, kv) mask (True = visible).
        AttentionMaskInterface.register(PROBE_ATTENTION, sdpa_mask)
        _REGISTERED = True
    return PROBE_ATTENTION


def use_probe_attention(model_or_adapter: Any, implementation: str | None = None) -> str:
    """Give the language model the probe attention (or `implementation`); vision modules are untouched.

    Returns the language model's previous implementation, so callers can restore it.
    """
    register()
    model = _unwrap(model_or_adapter)
    config = language_model_config(model)
    previous = config._attn_implementation
    target = implementation or PROBE_ATTENTION
    if previous == target:
        return previous
    # Composite (VLM) configs take one implementation per sub-config (transformers#32238): setting only the text
    # config's leaves the vision tower on sdpa.
    if "text_config" in getattr(model.config, "sub_configs", {}) and config is getattr(model.config, "text_config",
                                                                                         None):
        model.set_attn_implementation({"text_config": target})
    else:
        model.set_attn_implementation(target)
    if config._attn_implementation != target:
        raise RuntimeError(
            f"could not set the language model's attention implementation of {type(model).__name__} to {target!r} "
            f"(it is {config._attn_implementation!r}); set it at load time with "
            f"attn_implementation={{'text_config': {target!r}}}"
        )
    return previous


@contextmanager
def apply(model_or_adapter: Any, plan: Plan | None = None) -> Iterator[Recorder]:
    """Run the model under `plan` inside the block; yields the Recorder.

    Works for ``model(**inputs)`` and ``model.generate(...)``. The language model uses the probe attention
    inside the block (and gets back its previous implementation afterwards, unless that was already the probe).
    Blocks do not nest: an ``apply`` inside another raises RuntimeError (combine the work in one Plan).
    """
    plan = plan if plan is not None else Plan()
    if _ACTIVE.get() is not None:
        raise RuntimeError("apply() is already active: plans do not nest (the inner plan would replace the outer "
                           "one). Put everything in one Plan, e.g. Plan(mask=..., record=..., rows=...)")
    model = _unwrap(model_or_adapter)
    layers = decoder_layers(model)
    _check_supported(model, layers)
    config = layers[0].self_attn.config
    n_heads = int(config.num_attention_heads)
    work = plan.resolve(len(layers), n_heads)
    recorder = Recorder(plan, n_heads)
    state = _ProbeState(layer_of={id(layer.self_attn): i for i, layer in enumerate(layers)}, work=work, plan=plan,
                        recorder=recorder, model_name=_model_name(config))

    def on_call_start(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        # Runs before layer 0's attention of every forward call: the cache has not been updated yet, so its length
        # is the absolute position of this call's first query.
        cache = kwargs.get("past_key_values")
        state.cache = cache
        state.query_start = int(cache.get_seq_length()) if cache is not None else None
        hidden = kwargs.get("hidden_states", _args[0] if _args else None)
        recorder._begin_call(state.query_start, int(hidden.shape[1]) if hidden is not None else 0)

    previous = use_probe_attention(model)
    hook = layers[0].self_attn.register_forward_pre_hook(on_call_start, with_kwargs=True)
    token = _ACTIVE.set(state)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
        hook.remove()
        if previous != PROBE_ATTENTION:
            use_probe_attention(model, previous)

register()
