"""The head explorer: pick a sample, a layer and a head, and see where that head looks on the page.

    from ocrheads_lib.widgets import record_image_attention, head_explorer
    maps = [record_image_attention(lm, s) for s in samples]          # one teacher-forced pass each
    head_explorer(maps, scores={"OCR": ocr_scores, "retrieval": retrieval_scores})

What is shown for (sample, layer, head): the sample's evidence page with, over every image token of
that page, the head's attention from the rows that *emit* the answer tokens (mean over those rows),
as a heat map scaled to the head's maximum; the fine evidence boxes (one per answer unit) in cyan;
the token the head attends most in black; and the head's scores (e.g. OCR and retrieval).

Everything is precomputed: one small palette PNG per (sample, layer, head) inside an
`ipywidgets.Image`, arranged in nested `Stack`s whose `selected_index` is `jslink`ed to the
controls. The links live in the browser, so the explorer works the same in a live notebook and in
the static HTML book (where the saved widget state holds every image and no kernel runs). The cost
is state size, which :func:`head_explorer` estimates and bounds (`max_state_mb`).
"""
from __future__ import annotations

import html
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, colors
from PIL import Image, ImageDraw, ImageFont

from ocrheads_lib import scoring              # torch-free: each scorer imports torch on first use only
from ocrheads_lib.grounding import covers, record_rows
from ocrheads_lib.scoring import load_scores
from ocrheads_lib.types import head_label

PixelBox = tuple[float, float, float, float]

EVIDENCE_COLOR = (0, 200, 255)      # cyan: the answer units' boxes
ARGMAX_COLOR = (0, 0, 0)            # black: the token the head attends most
HEAT_CMAP = "YlOrRd"                # light yellow (little attention) -> dark red (the most)


class _PerHeadAttention:
    """What both kinds of maps share: `attention` is (layers, heads, keys shown), one key per shown item."""

    sample_id: str
    attention: np.ndarray

    def _check_attention(self, n_items: int, items: str) -> None:
        self.attention = np.asarray(self.attention, dtype=np.float64)
        if self.attention.ndim != 3 or self.attention.shape[2] != n_items:
            raise ValueError(f"sample {self.sample_id}: attention must be (layers, heads, {n_items}) for {n_items} "
                             f"{items}, got {self.attention.shape}")

    @property
    def n_layers(self) -> int:
        return int(self.attention.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attention.shape[1])


@dataclass
class HeadAttentionMaps(_PerHeadAttention):
    """Where every head looks on a sample's evidence page while writing the answer.

    attention[l, h, i]: attention of head (l, h) on image token i of the evidence page, averaged over
    the answer-emitting query rows (the row of the step that produces each answer token).
    """

    sample_id: str
    page: Image.Image                      # the evidence page, original pixels
    token_boxes: np.ndarray                # (N, 4) boxes of the evidence page's image tokens, page pixels
    attention: np.ndarray                  # (L, H, N) float
    evidence_boxes: list[PixelBox]         # one per answer unit
    question: str = ""
    answer: str = ""
    rows: list[int] = field(default_factory=list)   # the recorded query positions
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_boxes = np.asarray(self.token_boxes, dtype=np.float64).reshape(-1, 4)
        self._check_attention(len(self.token_boxes), "token boxes")


def record_image_attention(lm: Any, sample: Any, answer: str | None = None) -> HeadAttentionMaps:
    """One teacher-forced forward pass of `sample` (with its gold answer, or `answer`) under the probe,
    recording, for every head, the attention mass on each image token of the evidence page from the
    answer-emitting rows, averaged over those rows (`grounding.record_rows` keeps them per row).

    lm: a model adapter (`ocrheads_lib.load_model(...)` or `models.testing.tiny_random(...)`);
    sample: an `ImageSample`.
    """
    text = sample.answer if answer is None else answer
    recorded = record_rows(lm, sample, answer=text)
    return HeadAttentionMaps(sample_id=str(sample.id), page=sample.pages[sample.evidence_page],
                             token_boxes=recorded["token_boxes"], attention=recorded["attention"].mean(axis=2),
                             evidence_boxes=[tuple(map(float, b)) for b in sample.boxes],
                             question=sample.question, answer=text, rows=recorded["rows"],
                             meta={"model_id": getattr(lm, "model_id", ""), "layers": recorded["layers"]})


# ------------------------------------------------------------------------------------------- rendering

def render_attention(page: Image.Image, token_boxes: np.ndarray, weights: np.ndarray, boxes: Sequence[PixelBox],
                     width: int = 480, heat_alpha: float = 0.65) -> Image.Image:
    """The page (grey) with `weights` per image token as a heat map scaled to their maximum, `boxes`
    outlined in cyan and the most attended token in black (an RGB PIL image `width` pixels wide)."""
    weights = np.asarray(weights, dtype=np.float64)                           # (N,)
    scale = width / page.width                                                # page px -> image px
    size = (max(1, round(page.width * scale)), max(1, round(page.height * scale)))
    grey = page.convert("L").resize(size, Image.Resampling.LANCZOS)
    base = np.asarray(grey, dtype=np.float32)[..., None] / 255.0              # (h, w, 1)

    heat = np.zeros(size[::-1], dtype=np.float32)                             # (h, w)
    covered = np.zeros(size[::-1], dtype=bool)
    top = float(np.nanmax(weights)) if weights.size and np.isfinite(weights).any() else 0.0
    norm = np.nan_to_num(weights / top) if top > 0 else np.zeros_like(weights)
    for (x0, y0, x1, y1), value in zip(np.asarray(token_boxes) * scale, norm):
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(size[0], int(np.ceil(x1))), min(size[1], int(np.ceil(y1)))
        heat[r0:r1, c0:c1] = np.maximum(heat[r0:r1, c0:c1], value)
        covered[r0:r1, c0:c1] = True
    rgb_heat = colormaps[HEAT_CMAP](heat)[..., :3].astype(np.float32)        # (h, w, 3)
    # opacity grows with attention: unattended tokens leave the page as it is
    alpha = np.where(covered, heat_alpha * np.sqrt(heat), 0.0)[..., None]    # (h, w, 1)
    blended = base * (1 - alpha) + rgb_heat * alpha                           # (h, w, 3)
    image = Image.fromarray((blended * 255).round().astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=EVIDENCE_COLOR, width=2)
    if top > 0:
        x0, y0, x1, y1 = np.asarray(token_boxes)[int(np.nanargmax(weights))] * scale
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=ARGMAX_COLOR, width=2)
    return image


def _png(image: Image.Image, colors: int = 96) -> bytes:
    """A palette PNG (small widget state)."""
    buffer = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render_head(maps: HeadAttentionMaps, layer: int, head: int, width: int = 480,
                heat_alpha: float = 0.65, colors: int = 96) -> bytes:
    """PNG bytes: the evidence page (grey) with head (layer, head)'s attention per image token as a heat
    map scaled to this head's maximum on the page, evidence boxes (cyan) and its most attended token (black).
    Rendered with PIL only (fast) and quantised to a small palette (small widget state)."""
    image = render_attention(maps.page, maps.token_boxes, maps.attention[layer, head], maps.evidence_boxes,
                             width, heat_alpha)
    return _png(image, colors)


def render_character(chars: Any, index: int, heads: Sequence[tuple[int, int]], width: int = 720,
                     cols: int = 2) -> bytes:
    """PNG bytes: for answer character `index` of a `grounding.CharacterAttention`, one small page per head
    of `heads` (`cols` per row) with that head's emitting row as heat, the character's box in cyan and the
    head's most attended token in black, each labelled with the head."""
    panel_w = (width - 8 * (cols - 1)) // cols
    label_h = 22
    panels = []
    for layer, head in heads:
        image = render_attention(chars.page, chars.token_boxes, chars.attention[layer, head, index],
                                 [chars.char_boxes[index]], panel_w)
        panels.append((head_label((layer, head)), image))
    rows = -(-len(panels) // cols)
    panel_h = panels[0][1].height if panels else 1
    canvas = Image.new("RGB", (width, rows * (panel_h + label_h + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    for i, (name, image) in enumerate(panels):
        x, y = (i % cols) * (panel_w + 8), (i // cols) * (panel_h + label_h + 6)
        draw.text((x, y + 2), name, fill=(0, 0, 0), font=font)
        canvas.paste(image, (x, y + label_h))
    return _png(canvas)


def _score_matrix(value: Any) -> np.ndarray:
    """A (L, H) array from an array-like or from an object with `.mean()` (e.g. scoring.HeadScores)."""
    if hasattr(value, "detach"):                       # a torch tensor
        value = value.detach().cpu().numpy()
    elif not isinstance(value, (np.ndarray, list, tuple)) and callable(getattr(value, "mean", None)):
        value = value.mean()                           # e.g. scoring.HeadScores -> (L, H)
    return np.asarray(value, dtype=np.float64)


def _rank(matrix: np.ndarray, layer: int, head: int) -> int:
    """1-based rank of (layer, head) among all heads by descending score (ties share the better rank)."""
    return int((matrix > matrix[layer, head]).sum()) + 1


def head_caption(maps: HeadAttentionMaps, layer: int, head: int,
                 scores: Mapping[str, np.ndarray]) -> str:
    """HTML under a head's image: its scores with ranks, and how much it attends to this page."""
    parts = []
    for name, matrix in scores.items():
        value = matrix[layer, head]
        parts.append(f"<b>{html.escape(name)} score</b> {value:.3f} "
                     f"(rank {_rank(matrix, layer, head)} of {matrix.size})")
    on_page = float(np.nansum(maps.attention[layer, head]))
    evidence = "; ".join(parts) if parts else "no scores given"
    return (f"<div style='font-size:0.9em'>layer {layer}, head {head} — {evidence}<br>"
            f"attention on this page's image tokens from the answer rows: {100 * on_page:.1f} % "
            f"· sample <code>{html.escape(maps.sample_id)}</code>, answer <code>{html.escape(maps.answer)}</code></div>")


def estimate_state_bytes(maps: Sequence[HeadAttentionMaps], n_layers: int, n_heads: int, width: int = 480) -> int:
    """Rough size of the explorer's widget state: renders one image per sample and extrapolates."""
    total = 0
    for m in maps:
        one = len(render_head(m, 0, 0, width))
        total += int(one * 4 / 3 * n_layers * n_heads) + 3000 * n_layers * n_heads   # base64 + widget models
    return total


def head_explorer(maps: Sequence[HeadAttentionMaps], scores: Mapping[str, Any] | None = None,
                  layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                  head_list: Sequence[tuple[int, int]] | None = None,
                  width: int = 480, max_state_mb: float = 25.0) -> Any:
    """The explorer widget (an `ipywidgets.VBox`) for precomputed `maps`.

    scores: name -> (L, H) array or `HeadScores` (its `.mean()` is used), e.g. {"OCR": ..., "retrieval": ...}.
    layers, heads: the grid offered by the layer and head sliders (default: all layers and heads).
    head_list: instead of a grid, a list of (layer, head) offered in one dropdown — for large models,
        e.g. the top OCR and retrieval heads (see :func:`top_heads`).
    Raises ValueError when the widget state would exceed `max_state_mb` (pass fewer samples, layers or
    heads, a `head_list`, or a smaller `width`).
    """
    import ipywidgets as widgets  # optional (notebook) dependency: only the widget builders need it

    if not maps:
        raise ValueError("head_explorer: no samples given (pass the output of record_image_attention)")
    n_layers, n_heads = maps[0].n_layers, maps[0].n_heads
    for m in maps:
        if (m.n_layers, m.n_heads) != (n_layers, n_heads):
            raise ValueError(f"sample {m.sample_id} has {m.n_layers}×{m.n_heads} heads, "
                             f"sample {maps[0].sample_id} {n_layers}×{n_heads}: use one model for all samples")
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    heads = list(range(n_heads)) if heads is None else [int(x) for x in heads]
    pairs = [(int(l), int(h)) for l, h in head_list] if head_list is not None else None
    bad = [x for x in layers if not 0 <= x < n_layers] + [x for x in heads if not 0 <= x < n_heads]
    bad += [p for p in (pairs or []) if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"layers/heads {bad} out of range for a model with {n_layers} layers × {n_heads} heads")
    if pairs is not None and not pairs:
        raise ValueError("head_list is empty")
    matrices = {name: _score_matrix(value) for name, value in (scores or {}).items()}
    for name, matrix in matrices.items():
        if matrix.shape != (n_layers, n_heads):
            raise ValueError(f"scores[{name!r}] has shape {matrix.shape}, expected ({n_layers}, {n_heads})")
    n_images = len(pairs) if pairs is not None else len(layers) * len(heads)
    estimate = estimate_state_bytes(maps, n_images, 1, width)
    if estimate > max_state_mb * 2**20:
        raise ValueError(f"the explorer would hold ≈ {estimate / 2**20:.1f} MB of widget state "
                         f"(> max_state_mb={max_state_mb}): pass fewer samples, layers or heads, a head_list, "
                         "or a smaller width")

    def leaf(m: HeadAttentionMaps, layer: int, head: int) -> Any:
        return widgets.VBox([widgets.Image(value=render_head(m, layer, head, width), format="png"),
                             widgets.HTML(head_caption(m, layer, head, matrices))])

    sample_pick = widgets.Dropdown(options=[(f"{m.sample_id} — answer {m.answer}", i) for i, m in enumerate(maps)],
                                   index=0, description="sample", layout=widgets.Layout(width="420px"))
    per_sample = []
    if pairs is not None:
        def label(layer: int, head: int) -> str:
            extra = ", ".join(f"{name} {matrix[layer, head]:.2f}" for name, matrix in matrices.items())
            return head_label((layer, head)) + (f" ({extra})" if extra else "")

        head_pick = widgets.Dropdown(options=[(label(l, h), i) for i, (l, h) in enumerate(pairs)], index=0,
                                     description="head", layout=widgets.Layout(width="420px"))
        controls = [widgets.HBox([sample_pick]), widgets.HBox([head_pick])]
        for m in maps:
            head_stack = widgets.Stack([leaf(m, l, h) for l, h in pairs], selected_index=0)
            widgets.jslink((head_pick, "index"), (head_stack, "selected_index"))
            per_sample.append(head_stack)
    else:
        # open on the best head of the first score (e.g. the top OCR head), not on layer 0 head 0
        start_layer, start_head = 0, 0
        if matrices:
            first = next(iter(matrices.values()))[np.ix_(layers, heads)]
            if np.isfinite(first).any():
                start_layer, start_head = np.unravel_index(int(np.nanargmax(first)), first.shape)
        layer_pick = widgets.SelectionSlider(options=[(str(x), i) for i, x in enumerate(layers)],
                                             index=int(start_layer), description="layer", continuous_update=True)
        head_pick = widgets.SelectionSlider(options=[(str(x), i) for i, x in enumerate(heads)],
                                            index=int(start_head), description="head", continuous_update=True)
        controls = [widgets.HBox([sample_pick]), widgets.HBox([layer_pick, head_pick])]
        for m in maps:
            per_layer = []
            for layer in layers:
                head_stack = widgets.Stack([leaf(m, layer, head) for head in heads], selected_index=int(start_head))
                widgets.jslink((head_pick, "index"), (head_stack, "selected_index"))
                per_layer.append(head_stack)
            layer_stack = widgets.Stack(per_layer, selected_index=int(start_layer))
            widgets.jslink((layer_pick, "index"), (layer_stack, "selected_index"))
            per_sample.append(layer_stack)
    sample_stack = widgets.Stack(per_sample, selected_index=0)
    widgets.jslink((sample_pick, "index"), (sample_stack, "selected_index"))

    legend = widgets.HTML(
        "<div style='font-size:0.85em;color:#555'>Heat: the head's attention from the answer-emitting rows on each "
        "image token of the evidence page (mean over answer tokens), scaled to its maximum. "
        "<span style='color:#00a0cc'>Cyan</span>: evidence box of each answer unit. "
        "Black outline: the token this head attends most.</div>")
    children = [*controls, sample_stack, legend]
    top = _top_heads_html(matrices)
    if top:
        children.append(widgets.HTML(top))
    return widgets.VBox(children)


def top_heads(scores: Mapping[str, Any], k: int = 8) -> list[tuple[int, int]]:
    """The union of the top-k heads of every score (best first, no repeats) — a `head_list` for large models."""
    out: list[tuple[int, int]] = []
    for value in scores.values():
        matrix = _score_matrix(value)
        flat = np.nan_to_num(matrix, nan=-np.inf).ravel()
        for index in np.argsort(-flat, kind="stable")[:k]:
            head = (int(index // matrix.shape[1]), int(index % matrix.shape[1]))
            if head not in out:
                out.append(head)
    return out


def explorer_scores(lm: Any, model_dir: str | Any, samples_for: Any = None) -> dict[str, Any]:
    """OCR and retrieval `HeadScores` for the explorer: `model_dir/{kind}_scores.json` (chapters 02/03) or
    the experiments' cache `model_dir/cache/experiment_scores/{kind}_scores.json`; otherwise computed on
    `samples_for(kind)` (image samples for "ocr", text samples for "retrieval") and saved to that cache.
    A kind that is on disk nowhere and has no `samples_for` is left out."""
    model_dir = Path(model_dir)
    out: dict[str, Any] = {}
    for kind in ("ocr", "retrieval"):
        candidates = [model_dir / f"{kind}_scores.json", model_dir / "cache" / "experiment_scores" / f"{kind}_scores.json"]
        found = None
        for candidate in (c for c in candidates if c.exists()):
            loaded = load_scores(candidate)
            # a file from another model (e.g. written by a fallback model) has another head grid: skip it
            if tuple(loaded.shape) == (int(lm.n_layers), int(lm.n_heads)):
                found = loaded
                break
            warnings.warn(f"{candidate} holds scores for {loaded.shape[0]}×{loaded.shape[1]} heads, not this "
                          f"model's {lm.n_layers}×{lm.n_heads}: ignored", stacklevel=2)
        if found is not None:
            out[kind] = found
        elif samples_for is not None:
            samples = list(samples_for(kind))
            out[kind] = scoring.score_ocr(lm, samples) if kind == "ocr" else scoring.score_retrieval(lm, samples)
            out[kind].save(candidates[1])
    return out


def _top_heads_html(matrices: Mapping[str, np.ndarray], k: int = 5) -> str:
    """A small 'where to look first' line: the top-k heads of each score."""
    lines = []
    for name, matrix in matrices.items():
        flat = np.nan_to_num(matrix, nan=-np.inf).ravel()
        order = np.argsort(-flat, kind="stable")[:k]
        heads = ", ".join(f"{head_label(divmod(int(i), matrix.shape[1]))} ({flat[i]:.2f})" for i in order)
        lines.append(f"top {k} by {html.escape(name)} score: {heads}")
    return "<div style='font-size:0.85em'>" + "<br>".join(lines) + "</div>" if lines else ""


def evidence_share(maps: Sequence[HeadAttentionMaps]) -> np.ndarray:
    """(L, H): the share of each head's on-page attention (from the answer rows) that lands on evidence
    tokens — tokens covering an answer unit's box — averaged over `maps`."""
    shares = []
    for m in maps:
        mask = np.array([any(covers(t, b) for b in m.evidence_boxes) for t in m.token_boxes])   # (N,)
        total = m.attention.sum(axis=-1)                                                         # (L, H)
        on_evidence = m.attention[..., mask].sum(axis=-1)
        shares.append(np.divide(on_evidence, total, out=np.zeros_like(total), where=total > 0))
    return np.mean(shares, axis=0)


def explorer_for(lm: Any, samples: Sequence[Any], scores: Mapping[str, Any] | None = None,
                 max_grid_heads: int = 64, top_k: int = 8, width: int = 480, max_state_mb: float = 25.0,
                 maps: Sequence[HeadAttentionMaps] | None = None) -> Any:
    """Record `samples` on `lm` (unless their `maps` are given) and build the explorer: a layer × head grid
    when the model has at most `max_grid_heads` heads (the tiny model), otherwise a dropdown over the
    `top_k` heads of every score."""
    maps = list(maps) if maps is not None else [record_image_attention(lm, sample) for sample in samples]
    n_heads = maps[0].n_layers * maps[0].n_heads if maps else 0
    head_list = top_heads(scores, top_k) if (scores and n_heads > max_grid_heads) else None
    return head_explorer(maps, scores=scores, head_list=head_list, width=width, max_state_mb=max_state_mb)


def character_explorer(chars: Sequence[Any], heads: Sequence[tuple[int, int]], width: int = 720, cols: int = 2) -> Any:
    """The character picker (an `ipywidgets.VBox`): one dropdown over every (sample, answer character); for the
    chosen character, each of `heads`' attention row that emitted it, drawn over the page with the
    character's evidence box (see :func:`render_character`). Works in the static book (browser-side link).

    chars: `grounding.CharacterAttention` per sample (`grounding.record_character_attention`)."""
    import ipywidgets as widgets  # optional (notebook) dependency: only the widget builders need it

    heads = [(int(l), int(h)) for l, h in heads]
    if not chars or not heads:
        raise ValueError("character_explorer: needs at least one recorded sample and one head")
    options, leaves = [], []
    for ca in chars:
        word = "".join(ca.characters)
        for c, character in enumerate(ca.characters):
            options.append((f"{ca.sample_id}: character {c + 1} of {word!r} ({character!r})", len(options)))
            leaves.append(widgets.Image(value=render_character(ca, c, heads, width, cols), format="png"))
    pick = widgets.Dropdown(options=options, index=0, description="character", layout=widgets.Layout(width="520px"))
    stack = widgets.Stack(leaves, selected_index=0)
    widgets.jslink((pick, "index"), (stack, "selected_index"))
    legend = widgets.HTML(
        "<div style='font-size:0.85em;color:#555'>Each panel: one head's attention from the query row that "
        "emitted the chosen character, over the evidence page's image tokens (scaled to its maximum). "
        "<span style='color:#00a0cc'>Cyan</span>: the character's box. Black outline: the token the head "
        "attends most.</div>")
    return widgets.VBox([pick, stack, legend])


# ------------------------------------------------------------------------------------------- text models

@dataclass
class TextAttentionMaps(_PerHeadAttention):
    """Where every head of a text model looks in the context while writing the answer.

    attention[l, h, i]: attention of head (l, h) on context token i, averaged over the answer-emitting rows.
    """

    sample_id: str
    tokens: list[str]                      # the context's tokens as text (in prompt order)
    attention: np.ndarray                  # (L, H, N) float
    needle: list[int]                      # indices (into `tokens`) of the needle's tokens
    question: str = ""
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_attention(len(self.tokens), "context tokens")


def record_text_attention(lm: Any, sample: Any, answer: str | None = None) -> TextAttentionMaps:
    """One teacher-forced pass of a `TextSample` (gold answer, or `answer`) under the probe, recording every
    head's attention on each context token from the answer-emitting rows (mean over those rows)."""
    # torch and the model side imported here: the drawing and widget helpers of this module stay torch-free
    import torch

    from ocrheads_lib.attention import Plan, apply
    from ocrheads_lib.inference import sample_inputs
    from ocrheads_lib.scoring.align import locate_in_prompt

    text = sample.answer if answer is None else answer
    inputs = sample_inputs(lm, sample, answer=text)
    rows = inputs.answer_positions - 1                                        # (A,) rows emitting each answer token
    prompt_ids = inputs.tensors["input_ids"][0, : inputs.prompt_len].tolist()
    context = locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, (0, len(sample.context)))
    needle = set(locate_in_prompt(lm.tokenizer, prompt_ids, sample.prompt, tuple(sample.needle_span)))
    if not context or rows.numel() == 0:
        raise ValueError(f"sample {sample.id}: no context tokens or no answer tokens to record")
    names = [f"token{i}" for i in range(len(context))]
    plan = Plan(record="all", rows=rows, topk=1, key_sets={name: [p] for name, p in zip(names, context)})
    with torch.no_grad(), apply(lm, plan) as rec:
        lm.model(**inputs.tensors)
    layers = sorted(rec.argmax)
    attention = np.stack([torch.stack([rec.mass[name][layer][0] for name in names], dim=-1).float().mean(dim=1).numpy()
                          for layer in layers])                               # (L, H, N)
    tokens = [lm.tokenizer.decode([prompt_ids[p]]) for p in context]
    return TextAttentionMaps(sample_id=str(sample.id), tokens=tokens, attention=attention,
                             needle=[i for i, p in enumerate(context) if p in needle], question=sample.question,
                             answer=text, meta={"model_id": getattr(lm, "model_id", "")})


def render_text_head(maps: TextAttentionMaps, layer: int, head: int) -> str:
    """HTML: the context with every token shaded by head (layer, head)'s attention (scaled to its maximum over
    the context), the needle's tokens underlined in cyan and the most attended token outlined."""
    weights = maps.attention[layer, head]                                     # (N,)
    top = float(weights.max()) if weights.size else 0.0
    norm = weights / top if top > 0 else np.zeros_like(weights)
    best = int(weights.argmax()) if top > 0 else -1
    needle = set(maps.needle)
    spans = []
    for i, (token, value) in enumerate(zip(maps.tokens, norm)):
        rgba = colormaps[HEAT_CMAP](float(value))
        style = f"background:rgba({','.join(str(round(255 * c)) for c in rgba[:3])},{0.85 * np.sqrt(value):.2f})"
        if i in needle:
            style += f";border-bottom:2px solid {colors.to_hex(np.array(EVIDENCE_COLOR) / 255)}"
        if i == best:
            style += ";outline:2px solid black"
        spans.append(f"<span style='{style}'>{html.escape(token)}</span>")
    on_context = float(weights.sum())
    return ("<div style='font-family:monospace;font-size:0.85em;line-height:1.6;white-space:pre-wrap'>"
            + "".join(spans) + "</div>"
            + f"<div style='font-size:0.85em;color:#555'>{head_label((layer, head))}: {100 * on_context:.1f} % of its attention "
              f"from the answer rows is on the context; {100 * float(weights[maps.needle].sum()):.1f} % on the needle."
              "</div>")


def text_head_explorer(maps: Sequence[TextAttentionMaps], heads: Sequence[tuple[int, int]],
                       scores: Mapping[str, Any] | None = None) -> Any:
    """The explorer for a text model (an `ipywidgets.VBox`): pick a sample and one of `heads` (e.g.
    :func:`top_heads` of its retrieval scores) and see the context shaded by that head's attention. Like
    :func:`head_explorer`, everything is precomputed and linked in the browser (works in the static book)."""
    import ipywidgets as widgets  # optional (notebook) dependency: only the widget builders need it

    pairs = [(int(l), int(h)) for l, h in heads]
    if not maps or not pairs:
        raise ValueError("text_head_explorer: needs at least one recorded sample (record_text_attention) and one head")
    n_layers, n_heads = maps[0].n_layers, maps[0].n_heads
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} out of range for a model with {n_layers} layers × {n_heads} heads")
    matrices = {name: _score_matrix(value) for name, value in (scores or {}).items()}

    def label(layer: int, head: int) -> str:
        extra = ", ".join(f"{name} {matrix[layer, head]:.2f}" for name, matrix in matrices.items())
        return head_label((layer, head)) + (f" ({extra})" if extra else "")

    sample_pick = widgets.Dropdown(options=[(f"{m.sample_id} — answer {m.answer}", i) for i, m in enumerate(maps)],
                                   index=0, description="sample", layout=widgets.Layout(width="420px"))
    head_pick = widgets.Dropdown(options=[(label(l, h), i) for i, (l, h) in enumerate(pairs)], index=0,
                                 description="head", layout=widgets.Layout(width="420px"))
    per_sample = []
    for m in maps:
        stack = widgets.Stack([widgets.HTML(render_text_head(m, l, h)) for l, h in pairs], selected_index=0)
        widgets.jslink((head_pick, "index"), (stack, "selected_index"))
        per_sample.append(stack)
    sample_stack = widgets.Stack(per_sample, selected_index=0)
    widgets.jslink((sample_pick, "index"), (sample_stack, "selected_index"))
    legend = widgets.HTML(
        "<div style='font-size:0.85em;color:#555'>Shade: the head's attention from the answer-emitting rows on each "
        "context token (mean over answer tokens), scaled to its maximum. <span style='color:#00a0cc'>Cyan "
        "underline</span>: the needle. Black outline: the token this head attends most.</div>")
    return widgets.VBox([sample_pick, head_pick, sample_stack, legend])
