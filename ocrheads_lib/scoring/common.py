"""What both scorers share: generating or forcing the answer, the row conventions, the probe pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.metrics import match_score
from ocrheads_lib.models.base import append_tokens, check_logits
from ocrheads_lib.scoring.align import AnswerAlignment

ROWS = ("emit", "consume")
ANSWER_SOURCES = ("generate", "gold")
# How a generated answer is weighted against the gold one:
#   "chars"     - the share of the gold's non-space characters that the generation wrote as a word
#                 (AnswerAlignment.weight; a leading space or other casing costs nothing);
#   "paper-ids" - the paper's code: longest common run of token ids / gold ids, with the gold tokenized
#                 alone (no leading space), so " hello" against "hello" weighs 0 in a byte-level BPE.
WEIGHTINGS = ("chars", "paper-ids")


class SampleFailure(Exception):
    """A sample cannot be scored; the message is the reason recorded in the score file."""


def check_row(row: str) -> str:
    if row not in ROWS:
        raise ValueError(f"row must be one of {ROWS}: 'emit' = the query that predicts the answer token "
                         f"(default), 'consume' = the query at the answer token (the paper's code); got {row!r}")
    return row


def check_answer_source(source: str) -> str:
    if source not in ANSWER_SOURCES:
        raise ValueError(f"answer_source must be one of {ANSWER_SOURCES}, got {source!r}")
    return source


def model_facts(lm: Any) -> dict[str, str]:
    """The dtype and device kind a loaded model runs in ({"dtype": "float32", "device": "cpu"}), as recorded
    in score metadata: the same weights in bfloat16 or on a GPU give other scores."""
    return {"dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device.type)}


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}: 'chars' = share of the gold characters "
                         f"generated (default), 'paper-ids' = the paper's token-id match score; got {weighting!r}")
    return weighting


def query_row(answer_position: int, row: str) -> int:
    """The attention row scored for the answer token at `answer_position`:
    emit -> the previous position (its query predicts the token); consume -> the token's own position."""
    return answer_position - 1 if row == "emit" else answer_position


def strip_special(lm: Any, ids: Sequence[int]) -> list[int]:
    """Generated ids without trailing eos / special tokens (they are never answer tokens)."""
    ids = [int(i) for i in ids]
    special = set(getattr(lm.tokenizer, "all_special_ids", []) or []) | set(lm.eos_token_ids)
    while ids and ids[-1] in special:
        ids.pop()
    return ids


@dataclass
class ForcedAnswer:
    """The answer that the probe pass teacher-forces, and how it was obtained."""

    ids: list[int]                  # answer token ids appended after the prompt
    source: str                     # "generate" | "gold"
    text: str                       # decoded answer (special tokens kept, for the record)


def answer_ids(lm: Any, inputs: Any, gold: str, source: str, max_new_tokens: int,
               gold_ids: Sequence[int] | None = None) -> ForcedAnswer:
    """Generate the answer greedily (the model's own attention; no probe work) or take the gold answer:
    `gold_ids` when given (e.g. the needle's own tokens), else the gold tokenized alone."""
    if source == "gold":
        ids = list(gold_ids) if gold_ids is not None else lm.tokenizer(gold, add_special_tokens=False)["input_ids"]
        return ForcedAnswer(ids=[int(i) for i in ids], source="gold", text=_decode(lm, ids))
    generated = strip_special(lm, lm.generate(inputs, max_new_tokens=max_new_tokens).tolist())
    return ForcedAnswer(ids=generated, source="generate", text=_decode(lm, generated))


def _decode(lm: Any, ids: Sequence[int]) -> str:
    return lm.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def match_weight(lm: Any, forced: ForcedAnswer, alignment: AnswerAlignment | None, gold: str, weighting: str) -> float:
    """The sample weight of a forced answer: 1.0 for the gold answer; otherwise by `weighting` (WEIGHTINGS)."""
    if forced.source == "gold":
        return 1.0
    if weighting == "paper-ids":
        return float(match_score(lm.tokenizer(gold, add_special_tokens=False)["input_ids"], forced.ids))
    return alignment.weight if alignment is not None else 0.0


def forced_inputs(inputs: Any, ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """The prompt tensors with `ids` appended (teacher forcing of exactly these ids)."""
    tensors = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.tensors.items()}
    device = inputs.tensors["input_ids"].device
    extended = append_tokens(tensors, torch.tensor(list(ids), dtype=torch.long))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in extended.items()}


@torch.no_grad()
def probe_rows(lm: Any, tensors: dict[str, torch.Tensor], rows: Sequence[int], topk: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass recording every head at `rows`.
    Returns (argmax (L, H, R), topk_idx (L, H, R, k)) as CPU LongTensors."""
    plan = Plan(record="all", rows=list(rows), topk=topk)
    with apply(lm, plan) as rec:
        output = lm.model(**tensors)
    check_logits(output.logits, str(lm.model_id))   # weights gone bad must stop the run, not fail the sample
    argmax = torch.stack([rec.argmax[layer][0] for layer in range(lm.n_layers)])  # (L, H, R)
    top = torch.stack([rec.topk_idx[layer][0] for layer in range(lm.n_layers)])  # (L, H, R, k)
    if bool((argmax < 0).any()):
        raise SampleFailure("probe: some rows were not recorded (rows outside the sequence?)")
    return argmax, top


def exception_reason(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"exception: {type(error).__name__}: {message}"[:500]


@dataclass
class RecordedRows:
    """Argmax keys recorded while generating: rows (absolute positions) -> (L, H) each; -1 = never computed."""

    rows: list[int]
    argmax: torch.Tensor                 # (L, H, R) LongTensor

    def take(self, wanted: Sequence[int]) -> torch.Tensor | None:
        """(L, H, len(wanted)) for the wanted rows, or None if one of them was not computed."""
        index = {r: i for i, r in enumerate(self.rows)}
        if any(r not in index for r in wanted):
            return None
        picked = self.argmax[:, :, [index[r] for r in wanted]]  # (L, H, W)
        return None if bool((picked < 0).any()) else picked


@torch.no_grad()
def generate_recording(lm: Any, inputs: Any, max_new_tokens: int) -> tuple[ForcedAnswer, RecordedRows]:
    """Greedy generation under the probe, recording every head's argmax at every row an answer token can be
    scored on (emit rows P-1 … P+K-2 and consume rows P … P+K-1, P = prompt length, K = max_new_tokens).
    The probe leaves the attention outputs untouched (recorded rows are computed beside sdpa), so the
    generated ids are the ones plain generation gives. One pass instead of generate + teacher forcing."""
    prompt_len = inputs.prompt_len
    rows = list(range(prompt_len - 1, prompt_len + max_new_tokens))
    with apply(lm, Plan(record="all", rows=rows, topk=1)) as rec:
        generated = lm.generate(inputs, max_new_tokens=max_new_tokens).tolist()
    n_rows = len(rows)
    argmax = torch.stack([rec.argmax[layer][0] if layer in rec.argmax else
                          torch.full((lm.n_heads, n_rows), -1, dtype=torch.long)
                          for layer in range(lm.n_layers)])  # (L, H, R)
    ids = strip_special(lm, generated)
    forced = ForcedAnswer(ids=ids, source="generate", text=_decode(lm, ids))
    return forced, RecordedRows(rows=rows, argmax=argmax)
