"""smol-vl: the Qwen2-VL whose language half is SmolLM2 — assembly, processor, training pieces, shipped deltas,
and `load_model("smol-vl")`."""
from __future__ import annotations

import json
import random

import pytest
import torch

from ocrheads_lib.models.smollm2 import ensure_smollm2
from ocrheads_lib.embedded.smolvl import build, train, weights_io
from ocrheads_lib.embedded.smolvl.load import WEIGHTS_DIR

TEXT = "The grass is green. The sky is blue. The pass key is 4817. Remember it. What is the pass key?"


@pytest.fixture(scope="module")
def assembled():
    return build.assemble()


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = ensure_smollm2(verbose=False)
    return LlamaForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_text_logits_equal_smollm2(assembled, smollm2):
    model, processor = assembled
    smol, _ = smollm2
    ids = processor.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        theirs = smol(input_ids=ids).logits
    assert ours.shape[-1] == 49152 + 4
    # measured 0.0: same weights, zero q/k/v biases, M-RoPE with equal text positions on every axis
    assert (ours[..., :49152] - theirs).abs().max().item() == 0.0


def test_config_shapes(assembled):
    model, processor = assembled
    text = model.config.text_config
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (30, 9, 3, 64)
    assert text.rope_parameters["mrope_section"] == [8, 12, 12] and text.rope_parameters["rope_theta"] == 1e5
    assert model.model.visual.merger.mlp[2].weight.shape == (576, 512)
    tid = processor.tokenizer.convert_tokens_to_ids
    assert [tid(t) for t in build.VISION_TOKENS] == [49152, 49153, 49154, 49155]
    assert model.config.image_token_id == 49154
    q_bias = model.model.language_model.layers[3].self_attn.q_proj.bias
    assert torch.count_nonzero(q_bias) == 0


def test_text_chat_prompt_equals_smollm2(assembled, smollm2):
    _, processor = assembled
    _, tokenizer = smollm2
    ours = train.chat_prompt(processor, 0, TEXT)
    theirs = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True,
                                           tokenize=False)
    assert ours == theirs
    assert processor.tokenizer(ours).input_ids == tokenizer(ours).input_ids


def test_processor_round_trips_with_autoprocessor(assembled, tmp_path):
    from transformers import AutoProcessor

    from ocrheads_lib.embedded.tiny.examples import key_example

    _, processor = assembled
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    example = key_example(random.Random(3), "aligned")
    prompt = train.chat_prompt(processor, 1, example.prompt)
    assert train.chat_prompt(loaded, 1, example.prompt) == prompt
    a = processor(text=[prompt], images=example.pages, return_tensors="pt")
    b = loaded(text=[prompt], images=example.pages, return_tensors="pt")
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    # one <|image_pad|> per 28-px cell: the page is never resized
    w, h = example.pages[0].size
    assert int((a["input_ids"] == 49154).sum()) == (w // 28) * (h // 28)


def test_merger_fit_maps_cells_to_character_embeddings(assembled):
    model, processor = assembled
    accuracy = build.fit_merger_output(model, processor, n_pages=40, seed=1)
    assert accuracy > 0.95   # measured 0.998 on 100 pages


def test_draw_step_is_a_function_of_seed_and_step():
    config = train.TrainConfig(batch_size=2)
    task, a = train.draw_step(config, 7)
    task2, b = train.draw_step(config, 7)
    assert task == task2 and [e.answer for e in a] == [e.answer for e in b]
    other = train.TrainConfig(batch_size=2, seed=1)
    assert [e.answer for e in train.draw_step(other, 7)[1]] != [e.answer for e in a]


def test_curriculum_and_lr_schedule():
    config = train.TrainConfig(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert config.mixture(0) == config.curriculum[0][1]
    assert config.mixture(10_000) == config.curriculum[-1][1]
    assert config.lr_factor(0) == pytest.approx(0.1)
    assert config.lr_factor(10) == pytest.approx(1.0)
    assert config.lr_factor(60) == pytest.approx(0.55)
    assert config.lr_factor(500) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown curriculum task"):
        train.TrainConfig(curriculum=((0, (("nope", 1.0),)),))
    with pytest.raises(ValueError, match="start at step 0"):
        train.TrainConfig(curriculum=((5, (("key_aligned", 1.0),)),))
    assert train.TrainConfig.from_record(config.record()) == config


def test_collate_labels_only_the_answer(assembled):
    _, processor = assembled
    config = train.TrainConfig(batch_size=3, curriculum=((0, (("page_book", 1.0),)),))
    _, examples = train.draw_step(config, 0)
    batch = train.collate(processor, examples)
    for i, ex in enumerate(examples):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert processor.tokenizer.decode(labelled) == ex.answer + "<|im_end|>"
        n = int(batch["attention_mask"][i].sum())
        assert batch["labels"][i, n:].eq(-100).all()
        assert int((batch["input_ids"][i] == 49154).sum()) == 96      # the book page: 16 x 6 cells
    assert batch["pixel_values"].shape[0] == 3 * 96 * 4


def test_read_page_task_labels_every_line(assembled):
    _, processor = assembled
    config = train.TrainConfig(batch_size=4, curriculum=((0, (("read_page", 1.0),)),))
    examples = [ex for step in range(3) for ex in train.draw_step(config, step)[1]]
    assert any("\n" in ex.answer for ex in examples)       # multi-line transcriptions among the 12
    batch = train.collate(processor, examples)
    for i, ex in enumerate(examples):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert processor.tokenizer.decode(labelled) == ex.answer + "<|im_end|>"
        assert ex.prompt == "What is written in the image?"


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    out = tmp_path_factory.mktemp("smolvl_run")
    config = train.TrainConfig(batch_size=1, lora_rank=2, lsq_pages=4,
                               curriculum=((0, (("key_aligned", 1.0), ("text_passkey", 1.0))),))
    return train.Trainer(config, out, log=lambda message: None)


def test_train_step_checkpoint_and_changed_config_refused(trainer):
    rows = [trainer.train_step() for _ in range(2)]
    assert all(r["loss"] >= 0 for r in rows) and trainer.step == 2
    trainer.segments = [{"init": "scratch", "start_step": 0, "end_step": 2, "config": trainer.config.record()}]
    trainer.save_checkpoint()
    state = trainer.trainable_state()
    again = train.Trainer(trainer.config, trainer.out, log=lambda message: None)
    again.load_checkpoint()
    assert again.step == 2
    assert all(torch.equal(state[k], v) for k, v in again.trainable_state().items())
    changed = train.Trainer(train.TrainConfig(**{**trainer.config.record(), "lora_lr": 1e-4}), trainer.out)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['lora_lr'\]"):
        changed.load_checkpoint()
    record = json.loads((trainer.out / train.RECORD).read_text())
    assert record["segments"][0]["config"] == trainer.config.record()


def test_answer_loss_equals_the_models_own_loss(trainer):
    config = train.TrainConfig(batch_size=2, curriculum=((0, (("key_aligned", 1.0),)),))
    batch = train.collate(trainer.processor, train.draw_step(config, 3)[1])
    labels = batch.pop("labels")
    trainer.model.eval()
    with torch.no_grad():
        ours = train.answer_loss(trainer.model, dict(batch), labels)
        theirs = trainer.model(**batch, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_merged_weights_equal_base_plus_delta(trainer, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():   # non-zero deltas everywhere, so the merge is really tested
        for module in weights_io._lora_modules(trainer.model).values():
            module.lora_B["default"].weight.normal_(0, 0.01)
            for factor in (module.lora_A["default"].weight, module.lora_B["default"].weight):
                factor.copy_(factor.to(weights_io.LORA_DTYPE).float())   # what the float16 file stores, exactly
    weights_io.save_parts(trainer.model, trainer.config, tmp_path, record={"step": trainer.step})
    merged, _ = build.assemble()
    base = {k: v.clone() for k, v in merged.state_dict().items()}
    weights_io.merge_deltas(merged, tmp_path)
    scale = trainer.config.lora_alpha / trainer.config.lora_rank
    name = "model.language_model.layers.5.mlp.down_proj"
    lora = dict(trainer.model.named_modules())[name]
    expected = base[name + ".weight"] + scale * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    assert torch.allclose(merged.state_dict()[name + ".weight"], expected, atol=1e-7)
    untouched = "model.language_model.norm.weight"
    assert torch.equal(merged.state_dict()[untouched], base[untouched])
    # the merged model computes what the LoRA-injected model computes
    ids = trainer.processor.tokenizer(TEXT, return_tensors="pt").input_ids
    trainer.model.eval()
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - trainer.model(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-3


def test_from_weights_restores_the_trained_parts(trainer, tmp_path):
    weights_io.save_parts(trainer.model, trainer.config, tmp_path, record={"step": 2, "segments": []})
    fresh = train.Trainer(trainer.config, tmp_path / "run", log=lambda message: None)
    record = weights_io.load_parts_into(fresh.model, tmp_path)
    assert record["step"] == 2
    ours, theirs = trainer.trainable_state(), fresh.trainable_state()
    # LoRA factors come back as stored (float16), everything else exactly
    shipped = {k: v.to(weights_io.LORA_DTYPE).float() if "lora_" in k else v for k, v in ours.items()}
    assert all(torch.equal(shipped[k], theirs[k]) for k in ours)
    assert any("lora_" in k for k in ours) and any("lora_" not in k for k in ours)


def test_card_reports_intervals_targets_and_the_text_comparison():
    from ocrheads_lib.embedded.smolvl.card import card_markdown

    config = train.TrainConfig(eye_lr=5e-5).record()
    later = train.TrainConfig(seed=5, eye_lr=0.0, text_kl_weight=3.0,
                              curriculum=((0, (("read_page", 0.5), ("niah_book", 0.5))),)).record()
    record = {"step": 300, "segments": [{"init": "scratch", "start_step": 0, "end_step": 200, "config": config,
                                         "wall_seconds": 1800, "threads": 2},
                                        {"init": "from_weights", "start_step": 200, "end_step": 300, "config": later,
                                         "wall_seconds": 1800, "threads": 2}],
              "history": [{"step": 100, "key_aligned": {"n": 24, "accuracy": 0.5, "em": 0.5}}]}

    def result(correct, n):
        from ocrheads_lib.metrics import wilson_interval

        return {"n": n, "correct": correct, "accuracy": correct / n, "em": correct / n,
                "wilson95": list(wilson_interval(correct, n))}

    card = {"n": 200, "seed": 8_000_003, "results": {"key_aligned": result(199, 200), "page_book": result(150, 200),
                                                      "text_passkey": result(180, 200),
                                                      "text_passkey_smollm2": result(186, 200)}}
    text = card_markdown(card, record)
    assert "| 100 | 50.0 % |" in text                      # the training evaluations
    assert "99.5 % [97.2 %, 99.9 %]" in text                # Wilson interval of 199/200, by hand
    assert ">= 98.0 %: met" in text and ">= 97.0 %: not met" in text
    assert "SmolLM2 alone answers 93.0 %" in text and "minus 5 points: met" in text
    assert "2.0 CPU-hours" in text
    # every segment's own recipe, not only the last one's
    assert "  1. steps 0-200, from the least-squares merger and zero deltas, 0.5 h on 2 thread(s): data seed 0" in text
    assert "eye 5e-05; text KL weight 10.0; from step 0: key_aligned 0.45" in text
    assert ("; from step 100: key_aligned 0.12" in text and "from step 300" not in text)   # phases it trained on
    assert ("  2. steps 200-300, from the previous segment's weights, fresh optimizer, 0.5 h on 2 thread(s): data "
            "seed 5; LoRA learning rate 0.0005, merger 0.001, eye frozen; text KL weight 3.0; from step 200: "
            "read_page 0.5, niah_book 0.5") in text
    assert "Not evaluated yet" in card_markdown({}, record)


def test_shift_sets_hold_the_same_keys_at_every_shift():
    from ocrheads_lib.embedded.smolvl.evaluate import shift_sets

    sets = shift_sets(3, seed=11, shifts=(0, 2, 14))
    assert list(sets) == ["x0", "x2", "x14", "y2", "y14"]
    assert len({tuple(e.answer for e in examples) for examples in sets.values()}) == 1
    assert [e.meta["shift"] for e in sets["y14"]] == [(0, 14)] * 3 and sets["x2"][0].meta["shift"] == (2, 0)
    with pytest.raises(ValueError, match="non-negative integer"):
        shift_sets(3, seed=11, shifts=(-2,))


def test_card_states_what_a_shift_off_the_grid_costs():
    from ocrheads_lib.embedded.smolvl.card import card_markdown
    from ocrheads_lib.metrics import wilson_interval

    def result(correct):
        return {"n": 100, "correct": correct, "accuracy": correct / 100, "em": correct / 100,
                "wilson95": list(wilson_interval(correct, 100))}

    record = {"step": 1, "segments": [], "history": []}
    shift = {"n": 100, "seed": 5, "shifts": [0, 2, 7], "results": {"x0": result(70), "x2": result(6), "x7": result(2),
                                                                  "y2": result(40), "y7": result(0)}}
    text = card_markdown({"shift": shift}, record)
    assert "| 0 px (aligned) | 70.0 % [60.4 %, 78.1 %] | 70.0 % [60.4 %, 78.1 %] |" in text    # Wilson by hand
    assert "| 2 px | 6.0 % [2.8 %, 12.5 %] | 40.0 % [30.9 %, 49.8 %] |" in text
    assert "Less than half of the aligned accuracy is left at a shift of 2 px horizontally and 7 px vertically" in text
    shift["results"]["y7"] = result(50)
    assert ("Less than half of the aligned accuracy is left at a horizontal shift of 2 px; no vertical shift up to "
            "7 px costs that much.") in card_markdown({"shift": shift}, record)
    assert "## Off the grid" not in card_markdown({}, record)


def test_missing_parts_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--export"):
        weights_io.parts_hash(tmp_path)


@pytest.mark.skipif(not (WEIGHTS_DIR / weights_io.PARTS).is_file(), reason="no shipped smol-vl weights yet")
def test_load_model_smol_vl_and_probe():
    from ocrheads_lib.data import passkey_images
    from ocrheads_lib.models.loading import load_model
    from ocrheads_lib.scoring import score_ocr

    lm = load_model("smol-vl")
    assert (lm.family, lm.n_layers, lm.n_heads, lm.n_kv_heads) == ("qwen2_vl", 30, 9, 3)
    # the run identity follows the shipped parts, not the GGUF they are merged into (retraining changes it)
    from ocrheads_lib.models.smollm2 import GGUF_SHA256

    assert lm.revision and lm.revision != GGUF_SHA256[:16]
    assert type(lm).__name__ == "QwenVLAdapter"
    samples = passkey_images(2, seed=0)
    scores = score_ocr(lm, samples, max_new_tokens=8)
    assert len(scores.samples) + len(scores.failures) == 2
    for failure in scores.failures:      # a wrong answer is recorded with its reason, never dropped
        assert failure.reason


# ------------------------------------------------------------------ the per-cell stage and gate (issue 31)
def test_cell_loss_on_every_column_equals_the_whole_vocabulary():
    from ocrheads_lib.embedded.smolvl.cells import cell_loss

    torch.manual_seed(0)
    embed = torch.randn(49152, 8)
    tokens = torch.randn(6, 8, requires_grad=True)
    targets = torch.tensor([5, 17, -100, 3, 49151, 9])
    inked = torch.tensor([True, True, False, False, True, True])
    full, parts = cell_loss(tokens, targets, inked, embed, 0.5, 0.3)
    every, _ = cell_loss(tokens, targets, inked, embed, 0.5, 0.3, vocab=torch.arange(49152))
    assert torch.allclose(full, every, atol=1e-5)
    # by hand: blank cell 3 weighs 0.3, cell 2 is ignored
    logp = torch.log_softmax(tokens.detach() @ embed.T, -1)
    ce = -(logp[0, 5] + logp[1, 17] + 0.3 * logp[3, 3] + logp[4, 49151] + logp[5, 9]) / 4.3
    goal = embed[torch.tensor([5, 17, 49151, 9])]
    mse = ((tokens.detach()[[0, 1, 4, 5]] - goal) ** 2).sum(-1).mean() / (goal ** 2).sum(-1).mean()
    assert abs(parts["ce"] - float(ce)) < 1e-4 and abs(parts["mse"] - float(mse)) < 1e-4
    with pytest.raises(ValueError, match="candidate columns"):
        cell_loss(tokens, targets, inked, embed, 0.5, 0.3, vocab=torch.arange(10))


def test_candidate_vocab_keeps_short_and_hard_tokens_and_is_seeded():
    from ocrheads_lib.embedded.smolvl.cells import candidate_vocab, hard_negatives

    short = torch.tensor([1, 2, 3])
    embed = torch.zeros(49152, 2)
    embed[40000] = torch.tensor([10.0, 0.0])          # the rival every token below prefers
    hard = hard_negatives(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), embed, 1)
    assert hard.tolist() == [40000]
    a = candidate_vocab(short, 50, torch.Generator().manual_seed(3), hard)
    b = candidate_vocab(short, 50, torch.Generator().manual_seed(3), hard)
    assert torch.equal(a, b) and {1, 2, 3, 40000} <= set(a.tolist()) and len(a) == 54
    assert candidate_vocab(short, 0, torch.Generator()) is None


class _FakeVisual(torch.nn.Module):
    """A vision tower that hands over preset tokens (the test plants what the merger would output)."""

    def __init__(self, tokens):
        super().__init__()
        self.tokens = tokens

    def forward(self, pixel_values, grid_thw):
        return self.tokens


def test_cell_gate_counts_planted_tokens_right_and_wrong(assembled):
    from types import SimpleNamespace

    from ocrheads_lib.embedded.smolvl.cells import page_targets
    from ocrheads_lib.embedded.smolvl.evaluate import cell_gate, gate_pages

    _model, processor = assembled
    pages = gate_pages(2, seed=5, shifts=((0, 0), (7, 0)))
    assert list(pages) == ["x0", "x7"] and pages["x7"][0].meta["x_off"] == 7
    assert pages["x0"][0].meta["lines"] == pages["x7"][0].meta["lines"]       # the same glyphs at every shift
    embed = torch.nn.Embedding(49156, 576)
    targets, inked = page_targets(processor.tokenizer, pages["x0"])
    right = embed.weight[:49152].detach()[targets.clamp(min=0)] * 3.0
    fake = SimpleNamespace(model=SimpleNamespace(visual=_FakeVisual(right),
                                                 language_model=SimpleNamespace(embed_tokens=embed)))
    result = cell_gate(fake, processor, {"x0": pages["x0"]}, progress=False)["x0"]
    assert result["cells"] == int(inked.sum()) and result["accuracy"] == 1.0 and abs(result["cosine"] - 1.0) < 1e-4
    shuffled = torch.roll(right, 1, 0)                    # every token is its neighbour's character
    fake.model.visual.tokens = shuffled
    expected = float((torch.roll(targets, 1)[inked] == targets[inked]).float().mean())
    assert cell_gate(fake, processor, {"x0": pages["x0"]}, progress=False)["x0"]["accuracy"] == round(expected, 4)


def test_classifier_init_carries_the_tiny_cell_classifier(assembled):
    from safetensors.torch import load_file

    from ocrheads_lib.embedded.smolvl.cells import classifier_init
    from ocrheads_lib.embedded.smolvl.evaluate import cell_token_ids, visual_tokens
    from ocrheads_lib.embedded.tiny import WEIGHTS_DIR as TINY
    from ocrheads_lib.embedded.tiny.examples import dense_page_example
    from ocrheads_lib.embedded.tiny.train import AUX_CLASSES

    model, processor = build.assemble()
    classifier_init(model, processor.tokenizer)
    tiny = load_file(f"{TINY}/model.safetensors")
    head = load_file(f"{TINY}/cell_classifier.safetensors")
    hidden = {}
    hook = model.model.visual.merger.mlp[1].register_forward_hook(lambda _m, _i, out: hidden.__setitem__("h", out))
    examples = [dense_page_example(random.Random(i)) for i in range(3)]
    with torch.no_grad():
        tokens = visual_tokens(model, processor, examples)
    hook.remove()
    tiny_logits = (hidden["h"] @ tiny["visual.merger.mlp.2.weight"].T + tiny["visual.merger.mlp.2.bias"]) @ head["weight"].T + head["bias"]
    ids = torch.tensor(cell_token_ids(processor.tokenizer, [c if c.strip() else "" for c in AUX_CLASSES]))
    ours = tokens @ model.model.language_model.embed_tokens.weight[ids].T          # the 97 class tokens
    chars = [i for i, c in enumerate(AUX_CLASSES) if c.strip()]                     # blank and space share "Ġ"
    assert torch.allclose(ours[:, chars], tiny_logits[:, chars], atol=0.05 * float(tiny_logits.abs().max()))
    assert float((ours[:, chars].argmax(-1) == tiny_logits[:, chars].argmax(-1)).float().mean()) > 0.99


def test_spelled_prompt_is_the_text_prompt_one_token_per_character(assembled):
    _model, processor = assembled
    tok = processor.tokenizer
    ids = train.spelled_prompt(processor, train.JOIN_QUESTION, "water 42")
    plain = tok(train.chat_prompt(processor, 0, f"{train.JOIN_QUESTION}\nwater 42"), add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == tok.decode(plain)
    pieces = tok.convert_ids_to_tokens(ids)
    start = pieces.index("Ċ", pieces.index("Ġexactly") if "Ġexactly" in pieces else 0) + 1
    assert pieces[start:start + 8] == ["w", "a", "t", "e", "r", "Ġ", "4", "2"]
    assert len(plain) < len(ids)                           # the ordinary prompt joins "water" into one token
    with pytest.raises(ValueError, match="one SmolLM2 token"):
        train.spelled_prompt(processor, train.JOIN_QUESTION, "ok \U0001F642")


def test_new_tasks_draw_and_collate(assembled):
    _model, processor = assembled
    config = train.TrainConfig(batch_size=2, curriculum=((0, (("text_join", 1.0),)),))
    task, examples = train.draw_step(config, 0)
    batch = train.collate(processor, examples)
    answer = [int(t) for t in batch["labels"][0] if t != -100]
    assert processor.tokenizer.decode(answer[:-1]) == examples[0].answer        # ordinary tokens, then <|im_end|>
    rng = random.Random(4)
    words = [train.TASKS["key_words"](rng, config) for _ in range(40)]
    assert sum(e.meta["style"] == "words" for e in words) >= 12
    assert {e.meta["style"] for e in words} - {"words"} <= {"alnum", "digits", "paper"}


def test_replay_runs_the_cells_stage_before_the_joint_segment():
    record = {"segments": [
        {"init": "scratch", "start_step": 0, "end_step": 100, "config": {}},
        {"init": "cells", "start_step": 0, "end_step": 800, "config": {"seed": 0, "pages": 16}},
        {"init": "from_weights", "start_step": 100, "end_step": 400, "config": {}, "visual_from": "cells"}]}
    commands = train.replay_commands(record, "R")
    assert commands[1] == ["python", "-m", "ocrheads_lib.embedded.smolvl.cells", "--out", "R/cells", "--steps", "800",
                           "--seed", "0", "--pages", "16"]
    assert commands[-1][-7:-4] == ["R/segment2_start", "--visual_from", "R/cells"]


def test_card_reports_the_gate_and_key_kinds():
    from ocrheads_lib.embedded.smolvl.card import card_markdown
    from ocrheads_lib.metrics import wilson_interval

    def cells(correct, n, cosine):
        return {"cells": n, "correct": correct, "accuracy": correct / n, "wilson95": list(wilson_interval(correct, n)),
                "cosine": cosine}

    gate = {"n": 50, "seed": 1, "results": {"x0": cells(199, 200, 0.9), "x14": cells(150, 200, 0.5)}}
    styles = {"key_aligned": {"words": {"n": 200, "correct": 199, "accuracy": 0.995,
                                        "wilson95": list(wilson_interval(199, 200))}}}
    text = card_markdown({"gate": gate, "styles": styles}, {"step": 1, "segments": [], "history": []})
    assert "| x0 | 200 | 99.5 % [97.2 %, 99.9 %] | 0.90 |" in text
    assert "The weakest shift is x14 (75.0 %" in text and "not met" in text
    assert "mean cosine over all shifts is 0.70" in text
    assert "| 1-3 words | 99.5 % [97.2 %, 99.9 %] (n=200) |" in text
