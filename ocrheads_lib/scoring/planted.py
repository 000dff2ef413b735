"""Planted heads: make one head of a (tiny, random) model attend where we say, to test the scorers.

Method. The probe attention (``ocrheads_lib.attention.PROBE_ATTENTION``) receives each layer's query
and key *after* the rotary embedding. :func:`plant` temporarily re-registers that name with a wrapper
which, for the planted layer only, edits the query/key tensors and then calls the real probe function:

* code vectors: query head ``h`` gets query ``M * c(row)`` at the rows we choose and 0 elsewhere; its
  KV head gets key ``M * c(target)`` in the same ``n_code`` reserved coordinates at the target keys
  and 0 in those coordinates elsewhere. So ``q . k = M^2`` on a matching key and 0 otherwise, and the
  argmax is (one of) the chosen keys. The other query heads that share the KV head get 0 in the
  reserved coordinates, so the edited key coordinates cannot change what they attend to (their
  remaining coordinates are untouched).
* ``targets`` maps an absolute query position to the key positions it must attend; each distinct
  target set gets its own code (one-hot in the reserved coordinates, so at most ``head_dim`` sets).
* ``diagonal=True`` instead plants a "self" head: query and key of position t are
  ``M * (cos a t, sin a t)`` with ``a = pi / T``, so every row's argmax is its own position (the
  paper-code retrieval variant scores such a head ~1, Wu's test 0).

Only the scored forward pass needs the edit (the scorers take the answer from ``answer_source="gold"``
in tests), and the wrapper is removed on exit, restoring the registered probe.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import AttentionInterface

from ocrheads_lib.attention import PROBE_ATTENTION, probe_attention_forward, register
from ocrheads_lib.scoring.align import align_answer

SCALE = 30.0  # M: q.k = M^2 * scaling ~ 225 for head_dim 16 -> softmax is one-hot on the targets


def _edit(query: torch.Tensor, key: torch.Tensor, head: int, targets: Mapping[int, Sequence[int]],
          diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Edited copies of query (B, H, q, d) and key (B, KVH, kv, d) for one planted head."""
    query, key = query.clone(), key.clone()
    n_heads, q_len, head_dim = query.shape[1], query.shape[2], query.shape[3]
    kv_len = key.shape[2]
    groups = n_heads // key.shape[1]
    kv_head = head // groups
    siblings = [h for h in range(kv_head * groups, (kv_head + 1) * groups) if h != head]
    query_start = kv_len - q_len  # absolute position of the first query of this call
    if diagonal:
        coords = [0, 1]
        angle = math.pi / max(kv_len, 2)
        positions = torch.arange(kv_len, dtype=torch.float32)  # (kv,)
        code = torch.stack([torch.cos(angle * positions), torch.sin(angle * positions)], dim=-1) * SCALE  # (kv, 2)
        query[:, head] = 0.0
        query[:, head, :, :2] = code[query_start:].to(query.dtype)
        key[:, kv_head, :, :2] = code.to(key.dtype)
    else:
        sets = sorted({tuple(sorted(int(k) for k in keys)) for keys in targets.values()})
        if len(sets) > head_dim:
            raise ValueError(f"{len(sets)} distinct target sets but head_dim is {head_dim}")
        coords = list(range(head_dim - len(sets), head_dim))
        query[:, head] = 0.0
        key[:, kv_head, :, coords] = 0.0
        for index, keys in enumerate(sets):
            keep = [k for k in keys if k < kv_len]
            key[:, kv_head, keep, coords[index]] = SCALE
        for row, keys in targets.items():
            local = int(row) - query_start
            if 0 <= local < q_len:
                index = sets.index(tuple(sorted(int(k) for k in keys)))
                query[:, head, local, coords[index]] = SCALE
    for sibling in siblings:
        query[:, sibling, :, coords] = 0.0
    return query, key


@contextmanager
def plant(layer: int, head: int, targets: Mapping[int, Sequence[int]] | None = None,
          diagonal: bool = False) -> Iterator[None]:
    """Within the block, query head `head` of decoder layer `layer` attends `targets[row]` from query
    position `row` (or its own position with ``diagonal=True``). Works for models run with the probe
    attention (inside ``ocrheads_lib.attention.apply``)."""
    if targets is None and not diagonal:
        raise ValueError("give targets {query_row: [key positions]} or diagonal=True")
    register()

    def planted_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any):
        if getattr(module, "layer_idx", None) == layer:
            query, key = _edit(query, key, head, targets or {}, diagonal)
        return probe_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)

    AttentionInterface.register(PROBE_ATTENTION, planted_forward)
    try:
        yield
    finally:
        AttentionInterface.register(PROBE_ATTENTION, probe_attention_forward)


def ocr_targets(lm: Any, sample: Any, row: str = "emit", min_overlap: float = 0.001) -> dict[int, list[int]]:
    """Wiring of a planted OCR head for `sample` with its gold answer teacher-forced: the query row of each
    answer token (``row="emit"``: the position before it; ``"consume"``: its own) -> the evidence tokens
    of the boxes of the units that token covers."""
    inputs = lm.build_inputs(sample.pages, sample.question)
    gold = lm.tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
    alignment = align_answer(lm.tokenizer, gold, sample.answer, sample.units)
    if alignment is None:
        raise ValueError(f"sample {sample.id}: the gold answer does not decode back to itself")
    targets: dict[int, list[int]] = {}
    for k in alignment.scored_tokens:
        keys: set[int] = set()
        for unit in alignment.token_units[k]:
            box = sample.boxes[unit]
            keys |= set(inputs.image_tokens.evidence_tokens(sample.evidence_page, box, min_overlap).tolist())
        position = inputs.prompt_len + k
        targets[position - 1 if row == "emit" else position] = sorted(keys)
    return targets
