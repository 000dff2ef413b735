"""The embedded model: tokenizer/processor built in code, the shipped weights, the trainer."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from ocrheads_lib.data.grid import BOOK_PAGE, render_grid
from ocrheads_lib.embedded.tiny import WEIGHTS_DIR, weights_available
from ocrheads_lib.embedded.tiny.build import (CHARACTERS, SPECIAL_TOKENS, TinyConfig, build_config, build_processor,
                                              build_tokenizer, user_messages)
from ocrheads_lib.embedded.tiny.examples import key_example, page_example, shifted_key_example, text_example

MICRO = dict(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, intermediate=64, mrope_section=[2, 1, 1],
             vision_depth=1, vision_embed=32, vision_heads=2)


def test_tokenizer_is_character_level_and_decodes_without_spaces():
    tok = build_tokenizer()
    text = "The pass key is 4817. Remember it!\nk"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)                                   # one token per character
    assert tok.decode(ids) == text                                 # decoders.Fuse: no inserted spaces
    for special in SPECIAL_TOKENS:
        tid = tok.convert_tokens_to_ids(special)
        assert tok(special)["input_ids"] == [tid]                  # a special token is one id
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert len(tok) == len(SPECIAL_TOKENS) + len(set(CHARACTERS)) + 1   # + <unk>
    ids = tok("<|im_start|>ab<|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_processor_round_trips_and_gives_one_token_per_grid_cell(tmp_path):
    from transformers import AutoProcessor

    proc = build_processor()
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2VLProcessor"
    msgs = user_messages(1, "What is the pass key?")
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert loaded.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == text
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is the pass key?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    cols, rows = BOOK_PAGE["cols"], BOOK_PAGE["rows"]
    page = render_grid(["The pass key", "is 4817."], cols, rows)
    for p in (proc, loaded):
        enc = p(text=[text], images=[page.image], return_tensors="pt")
        # no resize: 14-px patches on a (rows*28) x (cols*28) page, merged 2x2 -> one token per 28-px cell
        assert enc["image_grid_thw"].tolist() == [[1, 2 * rows, 2 * cols]]
        n_image_tokens = int((enc["input_ids"] == p.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        assert n_image_tokens == cols * rows == enc["image_grid_thw"].prod().item() // 4
        assert "mm_token_type_ids" in enc


def test_both_embedded_models_render_message_contents_with_one_fragment():
    """The image / video / text items of a message are rendered by one shared fragment in both chat templates;
    only the turn's opening and closing differ (smol-vl keeps SmolLM2's)."""
    from jinja2 import Template

    from ocrheads_lib.embedded.chat import MESSAGE_CONTENT
    from ocrheads_lib.embedded.smolvl.build import CHAT_TEMPLATE as SMOLVL_TEMPLATE
    from ocrheads_lib.embedded.tiny.build import CHAT_TEMPLATE as TINY_TEMPLATE

    assert TINY_TEMPLATE.count(MESSAGE_CONTENT) == SMOLVL_TEMPLATE.count(MESSAGE_CONTENT) == 1
    message = {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Q?"}]}
    content = "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Q?"
    assert Template("{% for message in messages %}" + MESSAGE_CONTENT + "{% endfor %}").render(
        messages=[message]) == content
    for template in (TINY_TEMPLATE, SMOLVL_TEMPLATE):
        assert f"user\n{content}<|im_end|>\n" in Template(template).render(messages=[message])


def test_config_has_32_heads_and_valid_mrope():
    size = TinyConfig()
    cfg = build_config(build_tokenizer(), size)
    assert cfg.text_config.num_hidden_layers * cfg.text_config.num_attention_heads >= 32
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == size.head_dim // 2
    assert cfg.vision_config.hidden_size == cfg.text_config.hidden_size   # merger output = text width
    with pytest.raises(ValueError, match="mrope_section"):
        TinyConfig(head_dim=16)


def test_tasks_are_seeded_and_consistent():
    a = page_example(random.Random(3))
    b = page_example(random.Random(3))
    assert a.answer == b.answer and a.pages[0].tobytes() == b.pages[0].tobytes()
    # the answer is on the page: the cell labels hold the key's characters in reading order
    labels = "".join(c or " " for c in a.cell_labels[0])
    assert a.answer in labels
    t = text_example(random.Random(4), 256, 300)
    assert f"The pass key is {t.answer}." in t.prompt and len(t.prompt) >= 256
    k = key_example(random.Random(5), "offset")
    assert k.pages[0].size == (k.meta["cols"] * 28, k.meta["rows"] * 28)


def test_shifted_key_moves_the_same_key_by_exactly_the_pixels_asked():
    import numpy as np

    def ink(example):          # (left, top, right, bottom) of the dark pixels
        dark = np.argwhere(np.asarray(example.pages[0].convert("L")) < 128)
        (top, left), (bottom, right) = dark.min(0), dark.max(0)
        return left, top, right, bottom

    base = key_example(random.Random(3), "aligned")
    still, moved = shifted_key_example(base, 0, 0), shifted_key_example(base, 5, 3)
    assert ink(still) == ink(base)                                   # no shift: the glyphs stay where they were
    assert ink(moved) == tuple(v + d for v, d in zip(ink(base), (5, 3, 5, 3)))
    assert moved.pages[0].size == ((base.meta["cols"] + 1) * 28, (base.meta["rows"] + 1) * 28)
    assert (moved.answer, moved.prompt, moved.meta["shift"]) == (base.answer, base.prompt, (5, 3))
    assert "".join(moved.cell_labels[0]) == base.answer.replace(" ", "")   # each glyph still in one cell
    with pytest.raises(ValueError, match=r"\[0, 28\)"):
        shifted_key_example(base, 28, 0)
    with pytest.raises(ValueError, match="'aligned' layout"):
        shifted_key_example(key_example(random.Random(3), "offset"), 1, 0)


@pytest.mark.skipif(not weights_available(), reason=f"no shipped weights in {WEIGHTS_DIR} yet "
                    "(train with `python -m ocrheads_lib.embedded.tiny.train` and export with --export)")
def test_shipped_weights_read_fresh_grid_passkey_pages():
    from ocrheads_lib.embedded.tiny.evaluate import generate_answers, load

    torch.manual_seed(0)
    model, processor = load(WEIGHTS_DIR)
    assert sum(p.numel() for p in model.parameters()) > 1e6
    assert os.path.getsize(os.path.join(WEIGHTS_DIR, "model.safetensors")) <= 25 * 2**20
    from ocrheads_lib.data import passkey_images
    from ocrheads_lib.embedded.tiny.examples import Example

    # the book's default grid pages, from a seed nobody trained on
    samples = passkey_images(10, seed=424242, layout="grid")
    examples = [Example("page", s.pages, s.question, s.answer) for s in samples]
    answers, _ = generate_answers(model, processor, examples, batch=10, max_new_tokens=8)
    correct = sum(a == e.answer for a, e in zip(answers, examples))
    assert correct >= 9, list(zip([e.answer for e in examples], answers))


def _run(tmp_path, *extra):
    from ocrheads_lib.embedded.tiny.train import main

    args = ["--out", str(tmp_path), "--threads", "1", "--size", json.dumps(MICRO), "--batch_key", "2",
            "--batch_page", "2", "--batch_text", "2", "--eval_n", "2", "--warmup", "2", *extra]
    assert main(args) == 0
    return torch.load(os.path.join(tmp_path, "checkpoint.pt"), weights_only=False)


def test_training_smoke_run_resumes_exactly(tmp_path):
    straight = _run(tmp_path / "a", "--max_steps", "3")
    _run(tmp_path / "b", "--max_steps", "2")
    resumed = _run(tmp_path / "b", "--max_steps", "3", "--resume")
    assert straight["step"] == resumed["step"] == 3
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert straight["rng"] == resumed["rng"]
    # the exported folder loads with the stock classes
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    folder = tmp_path / "b" / "model"
    assert isinstance(AutoProcessor.from_pretrained(folder).tokenizer.decode([20, 21]), str)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    assert model.config.text_config.num_hidden_layers == MICRO["layers"]
    summary = json.load(open(folder / "training_summary.json"))
    assert summary["steps"] == 3 and summary["history"]


def test_export_records_the_training_arguments_not_its_own(tmp_path):
    from ocrheads_lib.embedded.tiny.train import main, replay_commands

    _run(tmp_path, "--max_steps", "2", "--seed", "5", "--warmup", "3", "--lr", "7e-4")
    assert main(["--out", str(tmp_path), "--size", json.dumps(MICRO), "--export", str(tmp_path / "shipped")]) == 0
    summary = json.load(open(tmp_path / "shipped" / "training_summary.json"))
    assert summary["args"]["seed"] == 5 and summary["args"]["lr"] == 7e-4 and not summary["args"]["export"]
    replay = replay_commands(summary, str(tmp_path / "replay"))[0]
    assert replay[replay.index("--seed") + 1] == "5" and replay[replay.index("--warmup") + 1] == "3"


def test_learning_rate_warms_up_then_follows_the_cosine_decay():
    from ocrheads_lib.embedded.tiny.train import TinyTrainer, TrainConfig

    trainer = TinyTrainer.__new__(TinyTrainer)      # the schedule needs no model
    trainer.config, trainer.decay, trainer.warmup_from = TrainConfig(lr=1e-3, warmup=50), None, 0
    assert trainer.lr_at(0) == pytest.approx(2e-5)          # 1/50 of the peak
    assert trainer.lr_at(49) == pytest.approx(1e-3)
    assert trainer.lr_at(5000) == pytest.approx(1e-3)       # constant without a decay
    trainer.decay = (100, 200, 0.05)                        # cosine over steps 100..300 down to 5 %
    assert trainer.lr_at(100) == pytest.approx(1e-3)
    assert trainer.lr_at(200) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))   # half way: cos = 0
    assert trainer.lr_at(300) == pytest.approx(5e-5)
    assert trainer.lr_at(900) == pytest.approx(5e-5)        # stays at the floor


def test_replay_of_recorded_segments_reproduces_the_weights(tmp_path):
    from ocrheads_lib.embedded.tiny.train import main, replay_commands

    # two segments: constant lr, then a resumed one with another lr, batch and a cosine decay
    _run(tmp_path / "orig", "--max_steps", "2")
    final = _run(tmp_path / "orig", "--resume", "--lr", "5e-4", "--decay_steps", "2", "--batch_text", "1",
                 "--batch_eye", "2", "--straddle_share", "0.5", "--alnum_share", "0.3")
    assert final["step"] == 4                                # the decay set --max_steps
    summary = json.load(open(tmp_path / "orig" / "summary.json"))
    commands = replay_commands(summary, str(tmp_path / "replay"))
    assert len(commands) == 2 and "--resume" in commands[1] and "--decay_steps" in commands[1]
    assert commands[0][commands[0].index("--batch_eye") + 1] == "0"
    assert commands[1][commands[1].index("--batch_eye") + 1] == "2"
    assert "--straddle_share" not in commands[0]
    assert commands[1][commands[1].index("--straddle_share") + 1] == "0.5"
    assert "--alnum_share" not in commands[0]
    assert commands[1][commands[1].index("--alnum_share") + 1] == "0.3"
    assert main(["--replay", str(tmp_path / "orig" / "summary.json"), "--out", str(tmp_path / "replay")]) == 0
    replayed = torch.load(tmp_path / "replay" / "checkpoint.pt", weights_only=False)
    assert replayed["step"] == 4
    for name, value in final["model"].items():
        assert torch.equal(value, replayed["model"][name]), name
    with pytest.raises(ValueError, match="segment"):
        replay_commands({"steps": 3}, "x")


def test_straddle_share_moves_offsets_into_the_band_and_leaves_share_zero_batches_unchanged():
    from ocrheads_lib.embedded.tiny.train import KEY_LAYOUTS, STRADDLE_BAND, Curriculum, draw_batch

    lo, hi = STRADDLE_BAND
    cur = Curriculum(key_phase=1)

    def in_band(example, axis):
        return lo <= example.meta[f"{axis}_off"] % 28 < hi

    def band_share(share):
        pages = draw_batch(random.Random(1), "eye", 400, cur, straddle_share=share)
        return sum(in_band(p, "y") for p in pages) / len(pages)

    # uniform offsets put (hi - lo) / 28 = 36 % in the band; share 1 puts every eye page there
    assert abs(band_share(0.0) - (hi - lo) / 28) < 0.08
    assert band_share(1.0) == 1.0
    keys = draw_batch(random.Random(2), "key", 200, cur, straddle_share=1.0)
    unaligned = [k for k in keys if k.meta["layout"].endswith("offset")]
    assert unaligned and all(in_band(k, "x") and in_band(k, "y") for k in unaligned)
    assert all(k.meta["x_off"] % 28 == 0 and k.meta["y_off"] % 28 == 0 for k in keys if not k.meta["layout"].endswith("offset"))
    for k in unaligned:   # the block still fits on its page, and the labels hold the answer's characters
        assert k.pages[0].size == (k.meta["cols"] * 28, k.meta["rows"] * 28)
        assert sorted(c for c in "".join(c or "" for c in k.cell_labels[0])) == sorted(k.answer.replace(" ", ""))
    # share 0 draws no extra random number: the batch equals the pre-option draw (a layout, then the page)
    drawn = draw_batch(random.Random(5), "key", 30, cur, straddle_share=0.0)
    r = random.Random(5)
    reference = [key_example(r, r.choice(KEY_LAYOUTS[cur.key_phase])) for _ in range(30)]
    assert any(x.meta["layout"].endswith("offset") for x in drawn)
    assert [(x.answer, x.meta) for x in drawn] == [(y.answer, y.meta) for y in reference]
    with pytest.raises(ValueError, match="band"):
        key_example(random.Random(0), "offset", band=(20, 40))


def test_alnum_share_draws_mixed_case_keys_and_share_zero_keeps_the_mixture():
    from ocrheads_lib.embedded.tiny.train import Curriculum, draw_batch

    cur = Curriculum(key_phase=1)

    def alnum_share(task, share):
        examples = draw_batch(random.Random(3), task, 300, cur, alnum_share=share)
        keys = [e for e in examples if e.meta["style"] != "words"]    # a quarter of key pages hold words
        return sum(e.meta["style"] == "alnum" for e in keys) / len(keys)

    # the usual mixture draws alnum keys with weight 1 of 11 (9 %)
    assert alnum_share("key", 0.0) < 0.16 and alnum_share("page", 0.0) < 0.16
    for task in ("key", "page", "eye"):
        assert alnum_share(task, 1.0) == 1.0
    assert 0.3 < alnum_share("key", 0.4) < 0.55                 # 0.4 + 0.6 / 11 = 45 %
    pages = draw_batch(random.Random(4), "page", 20, cur, alnum_share=1.0)
    assert all(e.answer.isalnum() and e.answer in "".join(c or "" for c in e.cell_labels[0]) for e in pages)


def test_eye_batches_train_the_vision_tower_and_cell_classifier_only():
    from ocrheads_lib.embedded.tiny.build import TinyConfig
    from ocrheads_lib.embedded.tiny.train import Batches, TinyTrainer, TrainConfig, draw_batch

    trainer = TinyTrainer(TinyConfig(**MICRO), seed=0,
                          config=TrainConfig(warmup=1, batch=Batches(key=0, page=0, text=0, eye=3)))
    pages = draw_batch(random.Random(0), "eye", 40, trainer.cur)
    assert all(p.kind in ("key", "page") and p.pages for p in pages)
    assert sum(p.meta.get("offset", p.meta.get("layout", "").endswith("offset")) for p in pages) == 40
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    stats = trainer.step()
    assert set(stats) == {"aux_eye", "lr"} and stats["aux_eye"] > 0
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.visual.") for n in changed), sorted(changed)[:5]
    assert any(n.startswith("model.visual.merger") for n in changed)


def test_model_card_status_says_met_or_missed_from_the_numbers():
    from ocrheads_lib.embedded.tiny.card import status_lines

    def result(accuracy, target):
        return dict(accuracy=accuracy, n=200, prompt_tokens=[40, 120], target=target, failures=[])

    card = dict(heldout=dict(sets=dict(a_key_aligned=result(0.985, 0.98), a_key_unaligned=result(0.5, 0.98),
                                       b_text_256=result(0.95, 0.95), c_page_book=result(0.899, 0.90))),
                training=dict(wall_s=59 * 60, segments=[{}, {}]))
    text = "\n".join(status_lines(card))
    assert "aligned 98.5 % (met)" in text
    assert "unaligned 50.0 % (**missed**, target 98 %)" in text
    assert ">= 256-token contexts: 95.0 % (met)" in text                # the boundary counts as met
    assert "grid default: 89.9 % (**missed**, target 90 %)" in text
    assert "passkey_text` (320 characters): not measured" in text      # absent sets are not invented
    assert "59 min of wall time over 2 segments (met" in text
    card["training"]["wall_s"] = 61 * 60
    assert "**missed** the 60-minute target" in "\n".join(status_lines(card))


def test_heldout_results_split_by_kind_of_key_and_the_card_tabulates_them():
    from ocrheads_lib.embedded.tiny.card import style_rows
    from ocrheads_lib.embedded.tiny.evaluate import evaluate_heldout

    results = evaluate_heldout(n=6, sets=["a_key_unaligned", "b_book_passkey_text_320"])
    key = results["a_key_unaligned"]
    assert sum(n for _, n in key.by_style.values()) == key.n == 6
    assert sum(c for c, _ in key.by_style.values()) == key.correct
    assert results["b_book_passkey_text_320"].by_style == {}      # book samples carry no key style
    held = {"a_key_unaligned": dict(by_style={"alnum": [9, 18], "digits": [67, 67]}),
            "a_key_aligned": dict(by_style={"alnum": [8, 9]}),
            "c_page_book": dict(by_style={"alnum": [1, 2]})}       # only key-alone sets are tabulated
    rows = style_rows(held)
    assert "| set | alnum | digits |" in rows
    assert "| a_key_unaligned | 9/18 | 67/67 |" in rows and "| a_key_aligned | 8/9 |  |" in rows
    assert not any(r.startswith("| c_page_book") for r in rows)
    assert style_rows({"a_key_aligned": dict(accuracy=1.0)}) == []    # cards written before the split


def test_heldout_decoding_budget_fits_the_longest_answer():
    """The held-out evaluation once generated 12 tokens for answers of up to 15 characters."""
    from ocrheads_lib.embedded.tiny.evaluate import MAX_NEW_TOKENS, heldout_sets

    longest = max(len(e.answer) for examples in heldout_sets(60).values() for e in examples)
    assert longest >= 13                              # word answers are longer than the old budget
    assert longest + 1 <= MAX_NEW_TOKENS              # one character = one token, + <|im_end|>


def test_style_rows_and_confusions_are_tallied_by_hand():
    from ocrheads_lib.embedded.tiny.diagnose import PageReading, format_styles, rows_by_style, top_confusions

    readings = [PageReading(dict(style="alnum"), 3, 5, False, [("S", "5"), ("g", "9")]),
                PageReading(dict(style="alnum"), 4, 5, False, [("S", "5")]),
                PageReading(dict(style="digits"), 4, 4, True, []),
                PageReading(dict(style="words"), 6, 7, True, [("t", "")])]
    rows = {r.style: r for r in rows_by_style(readings)}
    assert (rows["alnum"].chars_correct, rows["alnum"].chars, rows["alnum"].pages_correct, rows["alnum"].pages) == (7, 10, 0, 2)
    assert rows["alnum"].char_accuracy == pytest.approx(0.7)
    assert rows["digits"].char_accuracy == 1.0 and rows["words"].pages_correct == 1
    assert top_confusions(readings, k=2) == [("S", "5", 2), ("g", "9", 1)]
    table = format_styles(list(rows.values()), top_confusions(readings))
    assert "S->5 x2" in table and "t->blank x1" in table


def test_offset_diagnosis_bins_every_unaligned_page_once_per_axis(tmp_path):
    from ocrheads_lib.embedded.tiny.diagnose import BIN_PX, cell_accuracy_by_offset, format_bins, load_trainer, main

    _run(tmp_path, "--max_steps", "1")
    trainer = load_trainer(str(tmp_path / "checkpoint.pt"))
    bins = cell_accuracy_by_offset(trainer, n=12, seed=3)
    for axis in ("x", "y"):
        mine = [b for b in bins if b.axis == axis]
        assert sum(b.pages for b in mine) == 12
        assert all(b.start_px % BIN_PX == 0 and 0 <= b.start_px < 28 for b in mine)
        assert all(0 <= b.chars_correct <= b.chars and 0 <= b.pages_correct <= b.pages for b in mine)
    # both axes count the same characters
    assert sum(b.chars for b in bins if b.axis == "x") == sum(b.chars for b in bins if b.axis == "y") > 0
    table = format_bins(bins)
    assert "char-cell accuracy" in table
    # the closing row totals one axis: every page once, its exact pages and characters summed
    x_bins = [b for b in bins if b.axis == "x"]
    last = table.splitlines()[-1].split()
    assert last[0] == "all" and last[1] == "0-27"
    assert last[3] == str(sum(b.chars for b in x_bins))
    assert last[4] == f"{sum(b.pages_correct for b in x_bins)}/12"
    # the style table groups the same pages: every page once, the same characters
    from ocrheads_lib.embedded.tiny.diagnose import bins_by_offset, read_pages, rows_by_style
    readings = read_pages(trainer, n=12, seed=3)
    assert bins_by_offset(readings) == bins
    rows = rows_by_style(readings)
    assert sum(r.pages for r in rows) == 12 and sum(r.chars for r in rows) == sum(b.chars for b in x_bins)
    # an exported folder carries the cell classifier: the same readings as from the checkpoint
    from ocrheads_lib.embedded.tiny.train import CELL_CLASSIFIER
    from ocrheads_lib.embedded.tiny.train import main as train_main

    assert train_main(["--out", str(tmp_path), "--size", json.dumps(MICRO), "--export", str(tmp_path / "w")]) == 0
    assert read_pages(load_trainer(str(tmp_path / "w")), n=12, seed=3) == readings
    os.remove(tmp_path / "w" / CELL_CLASSIFIER)
    with pytest.raises(ValueError, match="cell_classifier"):
        load_trainer(str(tmp_path / "w"))
    assert {r.style for r in rows} <= {"digits", "paper", "char", "alnum", "words"}
    # each misread cell is one confusion pair, and the pairs are real misreadings
    assert sum(len(r.confusions) for r in readings) == sum(r.chars - r.chars_correct for r in readings)
    assert all(true and true != predicted for r in readings for true, predicted in r.confusions)
    torch.save({"model": {}}, tmp_path / "weights_only.pt")
    with pytest.raises(ValueError, match="training checkpoint"):
        main([str(tmp_path / "weights_only.pt")])


def test_a_segment_can_start_from_an_exported_folder_and_replays(tmp_path):
    """Checkpoints are not shipped: --from_weights continues from the exported folder (weights, cell
    classifier, step count, curriculum, history), with a fresh optimizer that warms up again; replay
    re-creates such a segment by exporting the replayed run where it started."""
    from safetensors.torch import load_file

    from ocrheads_lib.embedded.tiny.train import CELL_CLASSIFIER, main, replay_commands

    first = _run(tmp_path / "orig", "--max_steps", "2", "--batch_eye", "2")
    shipped = tmp_path / "shipped"
    assert main(["--out", str(tmp_path / "orig"), "--size", json.dumps(MICRO), "--export", str(shipped)]) == 0
    classifier = load_file(shipped / CELL_CLASSIFIER)
    assert torch.equal(classifier["weight"], first["aux_head"]["weight"])
    # the folder without its classifier: refused unless a refit is asked for
    (shipped / CELL_CLASSIFIER).rename(tmp_path / "kept.safetensors")
    with pytest.raises(SystemExit, match="refit_cells"):
        _run(tmp_path / "cont", "--from_weights", str(shipped), "--max_steps", "3")
    cont = _run(tmp_path / "cont", "--from_weights", str(shipped), "--refit_cells", "2", "--max_steps", "4",
                "--lr", "5e-4", "--warmup", "4")
    assert cont["step"] == 4 and cont["warmup_from"] == 2
    assert cont["opt"]["state"][0]["step"] == 2          # the optimizer took this segment's two steps only
    summary = json.load(open(tmp_path / "cont" / "summary.json"))
    assert [s["start_step"] for s in summary["segments"]] == [0, 2]
    assert summary["segments"][1]["from_weights"] and summary["segments"][1]["cell_classifier"] == "refit 2 steps"
    assert summary["history"][0]["step"] == 1 and summary["history"][-1]["step"] == 4   # history carried on
    commands = replay_commands(summary, str(tmp_path / "replay"))
    assert len(commands) == 3 and "--export" in commands[1]
    assert commands[2][commands[2].index("--from_weights") + 1] == commands[1][commands[1].index("--export") + 1]
    assert commands[2][commands[2].index("--refit_cells") + 1] == "2" and "--resume" not in commands[2]
    # each segment replays with its own warm-up
    assert commands[0][commands[0].index("--warmup") + 1] == "2" and commands[2][commands[2].index("--warmup") + 1] == "4"
    assert main(["--replay", str(tmp_path / "cont" / "summary.json"), "--out", str(tmp_path / "replay")]) == 0
    replayed = torch.load(tmp_path / "replay" / "checkpoint.pt", weights_only=False)
    for name, value in cont["model"].items():
        assert torch.equal(value, replayed["model"][name]), name
    assert torch.equal(cont["aux_head"]["weight"], replayed["aux_head"]["weight"])


def test_a_segment_record_is_its_train_config(tmp_path):
    """Every training knob is a typed TrainConfig field; a segment's record is asdict(config) plus where and
    when it started, and a share outside [0, 1] is refused with the option to fix."""
    from dataclasses import asdict

    from ocrheads_lib.embedded.tiny.train import Batches, TrainConfig

    _run(tmp_path, "--max_steps", "1", "--lr", "7e-4", "--batch_eye", "1", "--alnum_share", "0.25", "--aligned_only")
    segment = json.load(open(tmp_path / "summary.json"))["segments"][0]
    assert segment.pop("start_step") == 0 and segment.pop("started_utc")
    assert segment == asdict(TrainConfig(threads=1, lr=7e-4, warmup=2, aligned_only=True, alnum_share=0.25,
                                         batch=Batches(key=2, page=2, text=2, eye=1)))
    with pytest.raises(ValueError, match=r"straddle_share must be in \[0, 1\], got 1.5.*--straddle_share"):
        TrainConfig(straddle_share=1.5)


def test_warm_up_restarts_where_a_fresh_optimizer_started():
    from ocrheads_lib.embedded.tiny.train import TinyTrainer, TrainConfig

    trainer = TinyTrainer.__new__(TinyTrainer)
    trainer.config, trainer.decay, trainer.warmup_from = TrainConfig(lr=1e-3, warmup=50), None, 1000
    assert trainer.lr_at(1000) == pytest.approx(2e-5)
    assert trainer.lr_at(1049) == pytest.approx(1e-3)


def test_dense_and_reading_pages_label_every_glyph_and_are_seeded():
    from ocrheads_lib.embedded.tiny.examples import dense_page_example, read_page_example

    for make in (dense_page_example, lambda r: read_page_example(r, random_share=0.5)):
        first = [make(random.Random(s)) for s in range(30)]
        again = [make(random.Random(s)) for s in range(30)]
        assert [e.cell_labels for e in first] == [e.cell_labels for e in again]
        for e in first:
            cols, rows = e.pages[0].width // 28, e.pages[0].height // 28
            assert len(e.cell_labels[0]) == cols * rows
            glyphs = sorted(c for c in e.cell_labels[0] if c)
            # the page shows exactly the non-space characters of its lines (for reading: of the answer)
            shown = e.answer if e.kind == "read" else "".join(e.meta["lines"])
            assert glyphs == sorted(c for c in shown if c not in " \n")
            assert e.kind == "read" or (e.kind == "eye" and e.answer == "")
    offsets = [dense_page_example(random.Random(s)).meta["x_off"] for s in range(200)]
    assert 0.7 < sum(o > 0 for o in offsets) / 200 < 0.9      # 80 % unaligned (x offset 0 only on the grid)
    repeats = [read_page_example(random.Random(s), random_share=1.0).answer for s in range(200)]
    pairs = [(a, b) for line in repeats for part in line.split("\n") for a, b in zip(part, part[1:])]
    assert sum(a == b for a, b in pairs) / len(pairs) > 0.15   # adjacent repeats are planted (~20 %)


def _budget_plan(**kw):
    from ocrheads_lib.embedded.tiny.budget import BudgetPlan

    return BudgetPlan(eye_steps=3, eye_batch=4, joint_steps=4, batch=dict(key=2, page=2, text=2, read=2),
                      eval_every=2, eval_n=2, size=dict(MICRO), **kw)


def test_budget_run_trains_the_tower_then_only_the_decoder_and_resumes_exactly(tmp_path):
    from ocrheads_lib.embedded.tiny.budget import BudgetRun

    full = BudgetRun(_budget_plan(heldout_n=1), str(tmp_path / "full"))
    start = {n: p.detach().clone() for n, p in full.trainer.model.named_parameters()}
    for _ in range(full.plan.eye_steps):
        full.eye_step()
    after_eye = {n: p.detach().clone() for n, p in full.trainer.model.named_parameters()}
    changed = {n for n in start if not torch.equal(start[n], after_eye[n])}
    assert changed and all(n.startswith("model.visual.") for n in changed)
    result = full.run(progress=False)      # continues the eye phase's step count, then the joint phase
    final = dict(full.trainer.model.named_parameters())
    assert all(torch.equal(final[n], after_eye[n]) for n in after_eye if n.startswith("model.visual."))
    assert any(not torch.equal(final[n], after_eye[n]) for n in after_eye if not n.startswith("model.visual."))
    assert [h["phase"] for h in result["history"]] == ["eye", "joint", "joint"]
    assert {"a_key_unaligned", "b_text_256", "c_page_book"} <= set(result["heldout"])
    assert json.load(open(tmp_path / "full" / "budget.json"))["plan"]["joint_steps"] == 4
    assert os.path.exists(tmp_path / "full" / "model" / "model.safetensors")
    from ocrheads_lib.embedded.tiny.diagnose import load_trainer     # the exported folder is diagnosable
    diagnosed = load_trainer(str(tmp_path / "full" / "model"))
    assert torch.equal(diagnosed.aux_head.weight, full.trainer.aux_head.weight)
    assert json.load(open(tmp_path / "full" / "model" / "training_summary.json"))["steps"] == 3 + 4

    # the same plan, interrupted after the joint checkpoint at step 2, then resumed: identical weights
    plan = _budget_plan(heldout_n=0)
    reference = BudgetRun(plan, str(tmp_path / "ref"))
    reference.run(progress=False)
    broken = BudgetRun(plan, str(tmp_path / "resumed"))
    step = broken.joint_step

    def interrupt():
        if broken.step == 2:
            raise KeyboardInterrupt
        return step()

    broken.joint_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        broken.run(progress=False)
    resumed = BudgetRun(plan, str(tmp_path / "resumed"))
    resumed.load()
    assert (resumed.phase, resumed.step) == ("joint", 2)
    resumed.run(progress=False)
    ref_state, res_state = reference.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)
    with pytest.raises(FileNotFoundError, match="run without --resume"):
        BudgetRun(plan, str(tmp_path / "never_ran")).load()
    with pytest.raises(ValueError, match="another plan"):
        BudgetRun(_budget_plan(heldout_n=0, joint_lr=5e-4), str(tmp_path / "resumed")).load()


def test_the_card_reports_the_60_minute_run_against_targets_and_keeps_it_when_its_file_is_gone(tmp_path):
    from types import SimpleNamespace

    from ocrheads_lib.embedded.tiny.card import scratch_lines, scratch_summary, status_lines, with_measurements

    budget = dict(plan=dict(eye_steps=2400, joint_steps=2200, eval_n=64), threads=2, total_wall_min=59.5,
                  wall_s=dict(eye=900.0, joint=2670.0), cpu_s=dict(eye=1700.0, joint=5200.0),
                  history=[dict(phase="eye", step=2400, wall_s=900.0, key_offset=0.0, key_offset_cell_acc=0.993,
                                curriculum={}),
                           dict(phase="joint", step=2200, wall_s=3570.0, key_offset=0.72, text_40_150=0.9,
                                key_offset_cell_acc=0.993, curriculum=dict(page_max_lines=2))],
                  heldout=dict(a_key_unaligned=dict(accuracy=0.7, n=200), b_text_256=dict(accuracy=0.96, n=200)))
    scratch = scratch_summary(budget)
    assert scratch["eye_cell_acc"] == {"key_offset": 0.993}
    assert scratch["teacher_forced_final"] == {"key_offset": 0.72, "text_40_150": 0.9}
    assert scratch["curriculum_final"] == {"page_max_lines": 2}
    rows = scratch_lines(scratch, {"a_key_unaligned": 0.981})
    assert "| a_key_unaligned | 0.700 | 200 | 0.98 **missed** | 0.981 |" in rows
    assert "| b_text_256 | 0.960 | 200 | 0.95 met |  |" in rows
    assert any("key_offset 99.3 %" in r for r in rows)
    card = dict(heldout=dict(sets={}), training=dict(wall_s=900 * 60, segments=[{}]), scratch_60=scratch)
    status = "\n".join(status_lines(card))
    assert "reaches in 59.5 min: unaligned keys 70.0 %, 256-token text retrieval 96.0 %" in status

    args = SimpleNamespace(width_cost=str(tmp_path / "absent.json"), scratch_run=str(tmp_path / "budget.json"))
    json.dump(budget, open(tmp_path / "budget.json", "w"))
    fresh = with_measurements({}, {"width_cost": [{"name": "prototype"}]}, args)
    assert fresh["scratch_60"] == scratch and fresh["width_cost"] == [{"name": "prototype"}]
    os.remove(tmp_path / "budget.json")
    assert with_measurements({}, fresh, args)["scratch_60"] == scratch     # kept from the previous card
    assert "scratch_60" not in with_measurements({}, {}, args)
