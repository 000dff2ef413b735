"""Issue 32: every cache, weight file and parameter is checked before it is trusted.

One test per defect of the issue (``test_defect_N_...``; each failed on main 0fc194c), then the
lower-severity cases. Scoring runs use a stand-in scorer (no model); the prediction cache uses the planted
text reader of test_experiments with a stand-in answer function.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ocrheads_lib.scoring import batch, load_scores
from ocrheads_lib.scoring.store import HeadScores, SampleScore

from test_bad_inputs import H, L, Item, meta   # the catalogue's stand-in run: same samples, same metadata


def scorer_with(value: int, during: Any = None):
    """A stand-in scorer: every head of every sample gets `value` hits; `during(sample)` runs before the
    second sample is scored (a second writer starting mid-run)."""
    def score(sample: Item) -> SampleScore:
        if during is not None and sample.id == "s1":
            during(sample)
        return SampleScore(id=sample.id, weight=1.0, n_rows=4, hits=np.full((L, H), value))
    return score


ITEMS = [Item(f"s{i}") for i in range(3)]


# ------------------------------------------------------------------------------------------ defect 1
def test_defect_1_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """`score --out X` (fine) while `score --mode coarse --overwrite --out X` starts: the second is refused
    (naming the file and the fix), and the first ends with a file of its own mode only."""
    out = tmp_path / "x.json"
    refused: list[RuntimeError] = []

    def second_writer(_: Item) -> None:
        try:
            batch.run(ITEMS, scorer_with(2), meta(options={"mode": "coarse"}), out, overwrite=True)
        except RuntimeError as error:
            refused.append(error)

    scores = batch.run(ITEMS, scorer_with(1, during=second_writer), meta(), out)
    assert refused, "the second writer was not refused"
    assert type(refused[0]).__name__ == "RunLockedError" and str(out) in str(refused[0]) and "wait" in str(refused[0])
    final = load_scores(out)
    assert final.meta.options == {"mode": "fine"}
    assert [int(s.hits.max()) for s in final.samples] == [1, 1, 1] == [int(s.hits.max()) for s in scores.samples]
    # once the first run has finished, the lock is released: an overwrite is allowed again
    again = batch.run(ITEMS, scorer_with(2), meta(options={"mode": "coarse"}), out, overwrite=True)
    assert [int(s.hits.max()) for s in again.samples] == [2, 2, 2]


SIX = [Item(f"s{i}") for i in range(6)]


@pytest.mark.parametrize("layout, options, overwrite", [
    ((2, 3), {"mode": "fine"}, False),          # the same run in another --shard layout
    ((1, 3), {"mode": "coarse"}, True),         # another layout and other options, with --overwrite
    (None, {"mode": "fine"}, False),            # one process beside a sharded run
])
def test_the_writer_lock_covers_the_output_in_every_layout(tmp_path: Path, layout: Any, options: dict,
                                                           overwrite: bool) -> None:
    """`--shard 0/2` is running: a writer of the same output in another layout (or a merge) is refused, while
    `--shard 1/2` of the same run joins it; the merged file holds the first run's scores only."""
    out = tmp_path / "x.json"
    refused: list[RuntimeError] = []

    def meanwhile(sample: Item) -> SampleScore:
        if sample.id == "s2":
            for other in (lambda: batch.run(SIX, scorer_with(2), meta(options=options), out, shard=layout,
                                            overwrite=overwrite), lambda: batch.merge(out)):
                try:
                    other()
                except RuntimeError as error:
                    refused.append(error)
            assert batch.run(SIX, scorer_with(1), meta(), out, shard=(1, 2)) is None    # same launch: joins
        return scorer_with(1)(sample)

    batch.run(SIX, meanwhile, meta(), out, shard=(0, 2))
    assert [type(error).__name__ for error in refused] == ["RunLockedError", "RunLockedError"], refused
    assert all(str(out) in str(error) and "wait for it to finish" in str(error) for error in refused)
    assert "--shard RANK/2" in str(refused[0])
    assert sorted(p.name for p in batch.parts_dir(out).glob("shard-*.jsonl")) == ["shard-000.jsonl", "shard-001.jsonl"]
    merged = batch.merge(out)
    assert merged.meta.options == {"mode": "fine"} and [s.id for s in merged.samples] == [i.id for i in SIX]
    assert {int(s.hits.max()) for s in merged.samples} == {1}


def test_launches_share_an_output_only_within_themselves(tmp_path: Path) -> None:
    """Ranks of one launch join; another launch of the same layout (two accelerate launches draw different
    tokens), or a second process of the same rank, is refused while a rank runs; a finished launch frees it."""
    out = tmp_path / "x.json"
    first, second = batch.launch_id("f" * 16, 2, "aa"), batch.launch_id("f" * 16, 2, "bb")
    assert first != second and batch.launch_id("f" * 16, 2) != batch.launch_id("f" * 16, 3)
    with batch.writer_lock(out, first, rank=0, world=2):
        with batch.writer_lock(out, first, rank=1, world=2):
            for launch, rank in ((second, 1), (first, 1)):
                with pytest.raises(batch.RunLockedError):
                    with batch.writer_lock(out, launch, rank=rank, world=2):
                        pass
    with batch.writer_lock(out, second, rank=1, world=2):   # the first launch has finished
        pass


def test_a_shard_line_of_another_configuration_is_refused(tmp_path: Path) -> None:
    """A line written under another run identity (same id) in a shard file is refused, never merged."""
    out = tmp_path / "x.json"
    batch.run(ITEMS, scorer_with(1), meta(), out, limit=2)
    shard = batch.parts_dir(out) / "shard-000.jsonl"
    line = json.loads(shard.read_text().splitlines()[0])
    line["run"] = "0123456789abcdef"          # another configuration's fingerprint
    line["id"] = "s2"
    with open(shard, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    with pytest.raises(batch.RunMismatchError) as error:
        batch.run(ITEMS, scorer_with(1), meta(), out)
    assert str(shard) in str(error.value) and "--overwrite" in str(error.value)


def test_a_duplicated_sample_in_a_score_file_is_refused(tmp_path: Path) -> None:
    sample = SampleScore("a", 1.0, 4, np.ones((L, H)))
    path = tmp_path / "dup.json"
    payload = HeadScores(meta=meta(), samples=[sample]).to_json()
    payload["samples"] = payload["samples"] * 2
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError) as error:
        load_scores(path)
    assert str(path) in str(error.value) and "'a'" in str(error.value) and "twice" in str(error.value)


# ------------------------------------------------------------------------------------------ defect 2
@pytest.fixture(scope="module")
def reader():
    from test_experiments import digit_samples, plant_reader

    from ocrheads_lib.models.testing import tiny_random

    lm = tiny_random("qwen2", seed=0)
    plant_reader(lm)
    return lm, {"digit_text": digit_samples(4, seed=1)}


def budget_answer(lm: Any, sample: Any, max_new_tokens: int) -> str:
    """A stand-in answer whose correctness depends on the token budget: right with >= 2 tokens only."""
    return sample.answer if max_new_tokens >= 2 else ""


def test_defect_2_the_prediction_cache_key_holds_max_new_tokens(reader, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """run_masking with max_new_tokens=16, then the same folder with 1: the second answers anew."""
    from ocrheads_lib.experiments import evaluate as evaluate_module
    from ocrheads_lib.experiments.masking import run_masking
    from ocrheads_lib.experiments.sweep import RunSettings, SweepHeads

    monkeypatch.setattr(evaluate_module, "answer", budget_answer)
    lm, tasks = reader
    heads = SweepHeads({"ocr": [(1, 2)]}, seeds=[0], layer_matched_to=None)
    long = run_masking(lm, tasks, heads, RunSettings(out_dir=tmp_path, max_new_tokens=16, n_boot=10), ks=[1])
    short = run_masking(lm, tasks, heads, RunSettings(out_dir=tmp_path, max_new_tokens=1, n_boot=10), ks=[1])
    assert (long["accuracy"] == 1.0).all()
    assert (short["accuracy"] == 0.0).all()


def test_a_prediction_cache_line_of_another_condition_is_refused(tmp_path: Path) -> None:
    from ocrheads_lib.experiments.evaluate import CacheMismatchError, Prediction, PredictionCache

    path = tmp_path / "c.jsonl"
    PredictionCache(path, identity={"condition": "ocr k=5", "max_new_tokens": 16}).put(
        Prediction("s0", "7", ["7"], {"accuracy": 1.0}))
    other = tmp_path / "d.jsonl"
    PredictionCache(other, identity={"condition": "none", "max_new_tokens": 16}).put(
        Prediction("s1", "7", ["7"], {"accuracy": 1.0}))
    with open(path, "a", encoding="utf-8") as handle:      # a line copied from the other condition's cache
        handle.write(other.read_text())
    with pytest.raises(CacheMismatchError) as error:
        PredictionCache(path, identity={"condition": "ocr k=5", "max_new_tokens": 16})
    assert str(path) in str(error.value) and "delete" in str(error.value)


# ------------------------------------------------------------------------------------------ defect 8
class _RunsCode:
    """A pickle that runs code when unpickled: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_defect_8_a_crafted_checkpoint_runs_no_code(tmp_path: Path) -> None:
    """`diagnose` given a crafted .pt: refused with the file named, and its code never ran."""
    import torch

    from ocrheads_lib.embedded.tiny import diagnose

    marker = tmp_path / "code-ran"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "aux_head": {}, "meta": {}, "payload": _RunsCode(marker)}, crafted)
    with pytest.raises(Exception) as error:
        diagnose.load_trainer(str(crafted))
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert isinstance(error.value, ValueError)
    assert str(crafted) in str(error.value) and "not loaded" in str(error.value)


def test_plain_checkpoints_with_numpy_numbers_still_load(tmp_path: Path) -> None:
    import random

    import torch

    from ocrheads_lib.embedded.checkpoint import load_checkpoint

    state = {"rng": random.Random(0).getstate(), "torch_rng": torch.get_rng_state(), "w": torch.ones(2),
             "history": [{"em": np.float64(0.5), "step": np.int64(3)}]}
    torch.save(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["history"] == [{"em": 0.5, "step": 3}] and loaded["rng"] == state["rng"]
    assert torch.equal(loaded["w"], state["w"])


def test_no_pickle_loads_in_our_modules() -> None:
    """weights_only=True everywhere except smolvl/train.py (its owner switches it; see issue 32)."""
    root = Path(__file__).resolve().parent.parent / "ocrheads_lib"
    offenders = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
                 if "weights_only=False" in p.read_text(encoding="utf-8") and p.name != "checkpoint.py"]
    assert offenders in ([], ["embedded/smolvl/train.py"]), offenders


# ------------------------------------------------------------------------------------------ defects 3 and 6
def _flip_64k(path: Path) -> None:
    """Overwrite 64 KiB in the middle of a weights file with 0xFF bytes (float32 NaN)."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\xff" * 65536)


def test_defect_3_a_corrupted_converted_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """64 KiB flipped in the cached SmolLM2 model.safetensors: `score` stops with an error naming the file
    and the rebuild command, writes no score file, and a later run has no failures to reuse."""
    import shutil

    from ocrheads_lib import cli
    from ocrheads_lib.models import smollm2

    real = smollm2.ensure_smollm2(verbose=False)
    monkeypatch.setenv("OCRHEADS_CACHE", str(tmp_path / "cache"))
    copy = smollm2.converted_dir()
    shutil.copytree(real, copy)                      # copy2: time stamps kept, as in the user's cache
    _flip_64k(copy / "model.safetensors")
    out = tmp_path / "x.json"
    code = cli.main(["score", "--model", "smollm2", "--task", "retrieval", "--dataset", "passkey-text", "--n", "2",
                     "--max-new-tokens", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0, err
    assert "model.safetensors" in err and "--rebuild smollm2" in err
    assert not out.exists() and not list(batch.parts_dir(out).glob("shard-*.jsonl"))
    assert (copy / "model.safetensors").is_file()    # nothing deleted


def test_non_finite_logits_stop_a_run_and_are_never_stored(tmp_path: Path) -> None:
    """A model whose weights went NaN: the run stops (NonFiniteLogitsError), no failure is stored."""
    import torch

    from ocrheads_lib.data import passkey_text
    from ocrheads_lib.models.base import NonFiniteLogitsError
    from ocrheads_lib.models.testing import tiny_random
    from ocrheads_lib.scoring.retrieval import retrieval_meta, score_retrieval_sample

    lm = tiny_random("qwen2", seed=0, attn="probe")
    with torch.no_grad():
        next(lm.model.parameters()).fill_(float("nan"))
    samples = passkey_text(2, seed=0)
    out = tmp_path / "x.json"
    meta_ = retrieval_meta(lm, variant="wu", row="emit", answer_source="gold", max_new_tokens=4, dataset="d",
                           seed=0, n=2)
    with pytest.raises(NonFiniteLogitsError):
        batch.run(samples, lambda s: score_retrieval_sample(lm, s, answer_source="gold", max_new_tokens=4),
                  meta_, out)
    assert not out.exists()
    assert batch.read_done(batch.parts_dir(out)) == {}


def test_defect_6_flipped_bits_in_the_shipped_parts_build_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """smolvl_parts.safetensors with flipped bits: refused before any cache folder is built."""
    import shutil

    from ocrheads_lib.embedded.smolvl import load

    weights = tmp_path / "weights"
    shutil.copytree(load.WEIGHTS_DIR, weights)
    _flip_64k(weights / "smolvl_parts.safetensors")
    monkeypatch.setenv("OCRHEADS_CACHE", str(tmp_path / "cache"))

    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cache folder is being built from corrupted parts")

    monkeypatch.setattr(load, "build_merged", no_build)
    with pytest.raises(ValueError) as error:
        load.ensure_smolvl(weights, verbose=False)
    message = str(error.value)
    assert str(weights / "smolvl_parts.safetensors") in message and "--write" in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("smol-vl-*"))


def test_the_shipped_manifests_match_the_weights() -> None:
    """Every shipped weights file is recorded; after replacing weights run
    `python -m ocrheads_lib.checksums --write <weights folder>`."""
    from ocrheads_lib.checksums import read_manifest, verify, weight_files
    from ocrheads_lib.embedded.smolvl.load import WEIGHTS_DIR as SMOLVL
    from ocrheads_lib.models.loading import TINY_WEIGHTS_DIR

    for folder in (TINY_WEIGHTS_DIR, SMOLVL):
        assert sorted(read_manifest(folder)) == [p.name for p in weight_files(folder)] != []
        verify(folder, "regenerate the manifest")


def test_a_converted_folder_is_checked_by_stamp_and_rehashed_when_it_changed(tmp_path: Path) -> None:
    from ocrheads_lib import checksums

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    checksums.write_manifest(folder, stamps=True)
    calls: list[Path] = []
    real = checksums.file_sha256
    try:
        checksums.file_sha256 = lambda p: calls.append(Path(p)) or real(p)
        checksums.verify(folder, "rebuild", use_stamps=True)
        assert calls == []                                  # stamps match: nothing hashed
        (folder / "model.safetensors").write_bytes(b"y" * 1000)
        with pytest.raises(checksums.ChecksumError) as error:
            checksums.verify(folder, "REBUILD-HINT", use_stamps=True)
        assert calls and str(folder / "model.safetensors") in str(error.value) and "REBUILD-HINT" in str(error.value)
        assert (folder / "model.safetensors").is_file()
    finally:
        checksums.file_sha256 = real


def test_a_killed_conversion_leaves_no_staging_folder(tmp_path: Path) -> None:
    from ocrheads_lib.paths import atomic_folder, build_lock, remove_staging

    target = tmp_path / "models" / "smollm2"
    stale = target.parent / ".smollm2.abc123"        # what atomic_folder leaves when the process is killed
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"0" * 10)
    with build_lock(target):
        assert remove_staging(target) == [stale]
        with atomic_folder(target) as staging:
            (staging / "a").write_text("1")
    assert sorted(p.name for p in target.parent.iterdir()) == [".smollm2.lock", "smollm2"]


# ------------------------------------------------------------------------------------------ defect 4
def _chapter_head(source: Path, dest: Path) -> Path:
    """The parameters cell and the setup cell of a chapter (the real source), as a notebook of its own."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    setup = next(c for c in code if "chapter.setup(" in "".join(c["source"]))
    nb["cells"] = [code[0], setup]
    dest.write_text(json.dumps(nb), encoding="utf-8")
    return dest


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("parameters, words", [
    ({"n_samples": 0}, "n_samples = 0 must be an integer >= 1"),
    ({"n_sample": 3}, "unknown parameter 'n_sample' (did you mean 'n_samples'?)"),
])
def test_defect_4_a_chapter_with_bad_parameters_fails_before_any_work(tmp_path: Path, parameters: dict,
                                                                      words: str) -> None:
    """papermill 02_ocr_heads with -p n_samples 0 (or a misspelt name): the chapter fails at its setup call,
    naming the parameter, and writes nothing under results_dir."""
    import papermill

    notebook = _chapter_head(ROOT / "notebooks" / "02_ocr_heads.ipynb", tmp_path / "02_head.ipynb")
    results = tmp_path / "results"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters={"model_id": "tiny", "results_dir": str(results), "device": "cpu",
                                               **parameters}, progress_bar=False, cwd=str(ROOT / "notebooks"))
    assert "ParameterError" in str(error.value) and words in str(error.value)
    assert not results.exists()


def test_defect_4_a_zero_sample_score_file_ranks_no_heads(tmp_path: Path) -> None:
    """What a failed chapter 02 left (a 0-sample score file, head_sets/ocr.json with heads []) is refused,
    never ranked as (0, 0), (0, 1), ..."""
    from ocrheads_lib.experiments.head_sets import experiment_heads
    from ocrheads_lib.heads import save_head_set

    model_dir = tmp_path / "tiny"
    HeadScores(meta=meta(model_id="tiny", n=0)).save(model_dir / "ocr_scores.json")
    retrieval = SampleScore("t0", 1.0, 4, np.arange(L * H).reshape(L, H) % 4)
    HeadScores(meta=meta(model_id="tiny", kind="retrieval", n=1), samples=[retrieval]).save(
        model_dir / "retrieval_scores.json")
    save_head_set(model_dir / "head_sets" / "ocr.json", {"model": "tiny", "kind": "ocr", "rule": "readme", "heads": []})
    with pytest.raises(ValueError) as error:
        experiment_heads(None, model_dir)
    assert str(model_dir / "ocr_scores.json") in str(error.value) and "n_samples >= 1" in str(error.value)


def test_every_chapter_default_passes_its_own_rules() -> None:
    from ocrheads_lib.parameters import check_values, notebook_parameters

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        declared = notebook_parameters(path)
        check_values(declared, declared, path.name)


@pytest.mark.parametrize("values, words", [
    ({"n_samples": 1.5}, "n_samples = 1.5 must be an integer >= 1"),
    ({"ks": [0, 5]}, "ks = [0, 5] must be a non-empty list of integers >= 1, or None"),
    ({"betas": [0.0, 1.5]}, "numbers in [0, 1]"),
    ({"device": "gpu"}, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"tasks_to_run": ["passkey_imag"]}, "unknown task 'passkey_imag' (did you mean 'passkey_image'?)"),
    ({"mode": "fin"}, "must be one of 'fine', 'coarse'"),
    ({"random_seeds": [0, 0]}, "distinct"),
])
def test_chapter_parameter_rules(values: dict, words: str) -> None:
    from ocrheads_lib.parameters import ParameterError, check_values

    declared = {"n_samples": 8, "ks": None, "betas": [0.0], "device": "auto", "tasks_to_run": ["passkey_image"],
                "mode": "fine", "random_seeds": [0]}
    with pytest.raises(ParameterError) as error:
        check_values(values, declared, "06_masking")
    assert words in str(error.value) and "06_masking" in str(error.value)


# ------------------------------------------------------------------------------------------ defects 5 and 7
def _notebook(path: Path, body: str, needs: list[str] | None = None) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('model_id = "tiny"\nseed = 0\nn_samples = 1\nresults_dir = "results"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if needs is not None:
        nb.metadata["ocrheads"] = {"needs": needs}
    nbformat.write(nb, str(path))


def _stand_in_book(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Folders of a stand-in book: notebooks (made), executed copies, results, a fixed library (made)."""
    src, lib = tmp_path / "notebooks", tmp_path / "lib"
    src.mkdir()
    lib.mkdir()
    (lib / "m.py").write_text("x = 1\n")
    return src, tmp_path / "book" / "generated", tmp_path / "results", lib


def test_defect_5_a_chapter_rerun_by_hand_is_not_reused(tmp_path: Path) -> None:
    """make book, then chapter 01 run by hand with other parameters (its score file now holds 3 samples):
    the next build runs 01 again, and 02, which reads it, instead of reporting them cached."""
    from ocrheads_lib.bookbuild import run_notebooks

    src, out, results, lib = _stand_in_book(tmp_path)
    writes = ("import json, pathlib; p = pathlib.Path(results_dir) / 'tiny' / 'scores.json'; "
              "p.parent.mkdir(parents=True, exist_ok=True); written = p.write_text(json.dumps({'n': n_samples}))")
    _notebook(src / "01_a.ipynb", writes, needs=[])
    _notebook(src / "02_b.ipynb", "import json, pathlib; "
              "print('n =', json.loads((pathlib.Path(results_dir) / 'tiny' / 'scores.json').read_text())['n'])",
              needs=["01_a"])
    params = tmp_path / "params.yml"
    params.write_text(f"defaults: {{results_dir: {results}}}\nnotebooks: {{01_a: {{n_samples: 40}}}}\n")
    logs: list[str] = []
    kw = {"log": logs.append, "library_root": lib, "failed_dir": tmp_path / "failed"}
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["executed", "executed"]
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["cached", "cached"]
    (results / "tiny" / "scores.json").write_text('{"n": 3}')          # the chapter, run by hand
    runs = run_notebooks(src, out, params, **kw)
    assert [r.status for r in runs] == ["executed", "executed"]
    assert any("scores.json changed" in line for line in logs)
    assert '{"n": 40}' == (results / "tiny" / "scores.json").read_text()


def test_defect_7_typos_in_params_yml_fail_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt parameter or chapter name in book/params.yml stops the build, naming the nearest name."""
    import shutil

    from ocrheads_lib import bookbuild

    src = tmp_path / "notebooks"
    src.mkdir()
    shutil.copy(ROOT / "notebooks" / "06_masking.ipynb", src)
    params = tmp_path / "params.yml"
    cases = {"notebooks: {06_masking: {n_sample: 3}}": "unknown parameter 'n_sample' (did you mean 'n_samples'?)",
             "notebooks: {06_maskin: {n_samples: 3}}": "notebooks.06_maskin is not a chapter (did you mean '06_masking'?)",
             "defaults: {sed: 1}": "defaults.sed is not a parameter of 06_masking (did you mean 'seed'?)",
             "notebooks: {06_masking: {ks: [0]}}": "ks = [0] must be a non-empty list of integers >= 1"}
    for text, words in cases.items():
        params.write_text(text + "\n")
        with pytest.raises(ValueError) as error:   # the build is refused before it looks for a kernel
            bookbuild.run_notebooks(src, tmp_path / "gen", params, kernel_name="no-such-kernel", log=lambda _: None)
        assert type(error.value).__name__ == "ParameterError" and words in str(error.value), text
        code = bookbuild.main(["--notebooks", str(src), "--out", str(tmp_path / "gen"), "--params", str(params),
                               "--kernel", "no-such-kernel", "--jobs", "1"])
        assert code == 2 and words in capsys.readouterr().err
    params.write_text((ROOT / "book" / "params.yml").read_text())
    shutil.copytree(ROOT / "notebooks", src, dirs_exist_ok=True)
    bookbuild.check_params_file(params, sorted(src.glob("[0-9][0-9]_*.ipynb")))   # the book's own file is valid


def test_a_stopped_build_leaves_no_worker_processes() -> None:
    """A worker (and the kernel it started) of an interrupted build are stopped, grandchildren included."""
    import subprocess
    import sys
    import time

    import psutil

    from ocrheads_lib.bookbuild import stop_children

    worker = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
    deadline = time.time() + 20
    while not psutil.Process(worker.pid).children() and time.time() < deadline:
        time.sleep(0.1)
    kernel = psutil.Process(worker.pid).children()[0]
    stopped = stop_children()
    assert worker.pid in stopped and kernel.pid in stopped
    worker.wait(timeout=10)
    assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE


# ------------------------------------------------------------------------------------------ failed chapters
FAILING_CHAPTER = """\
import os, signal
from ocrheads_lib import chapter
from ocrheads_lib.paths import atomic_write_text
ch = chapter.setup(model_id, results_dir=results_dir, device="cpu", seed=seed)
_ = (ch.out / "new.json").write_text("new")                      # created
_ = (ch.out / "head_sets").mkdir()
_ = (ch.out / "head_sets" / "ocr.json").write_text('{"heads": []}')
_ = (ch.out / "edited.json").write_text("changed")               # rewritten in place
_ = atomic_write_text(ch.out / "swapped.json", "changed")        # replaced
with open(ch.out / "cache.jsonl", "a") as handle:                # appended
    _ = handle.write("line 2\\n")
(ch.out / "gone.json").unlink()                                  # removed
{failure}
"""
BEFORE = {"edited.json": "old", "swapped.json": "old", "cache.jsonl": "line 1\n", "gone.json": "old",
          "kept.json": "untouched"}


def _results_before(results: Path) -> Path:
    model = results / "tiny"
    model.mkdir(parents=True)
    for name, text in BEFORE.items():
        (model / name).write_text(text)
    return model


def _assert_put_aside(results: Path, chapter: str) -> Path:
    """Nothing the failed chapter wrote is left where a chapter reads; what it changed holds its old bytes;
    what it wrote is kept under results/.failed/<chapter>-<time>/."""
    model = results / "tiny"
    assert sorted(p.name for p in model.iterdir()) == sorted(BEFORE)       # new.json and head_sets/ are gone
    assert {name: (model / name).read_text() for name in BEFORE} == BEFORE
    [aside] = [p for p in (results / ".failed").iterdir() if p.name.startswith(chapter + "-")]
    assert (aside / "tiny" / "new.json").read_text() == "new"
    assert (aside / "tiny" / "head_sets" / "ocr.json").read_text() == '{"heads": []}'
    assert (aside / "tiny" / "edited.json").read_text() == "changed"
    assert (aside / "tiny" / "cache.jsonl").read_text() == "line 1\nline 2\n"
    assert not list((results / ".failed").glob(".journal-*"))
    return aside


@pytest.mark.parametrize("failure", ["raise RuntimeError('half-way')", "os.kill(os.getpid(), signal.SIGKILL)"])
def test_a_failed_chapter_leaves_no_result_a_later_chapter_reads(tmp_path: Path, failure: str) -> None:
    """A chapter of the book fails half-way (an error, or its kernel killed): every file it created or changed
    is moved to results/.failed/<chapter>-<time>/, the files it changed hold their previous bytes again, and
    the build's error names them and that folder."""
    from ocrheads_lib.bookbuild import run_notebooks

    src, out, results, lib = _stand_in_book(tmp_path)
    _results_before(results)
    _notebook(src / "01_a.ipynb", FAILING_CHAPTER.replace("{failure}", failure), needs=[])
    params = tmp_path / "params.yml"
    params.write_text(f"defaults: {{results_dir: {results}}}\n")
    logs: list[str] = []
    [run] = run_notebooks(src, out, params, log=logs.append, library_root=lib, failed_dir=tmp_path / "failed")
    assert run.status == "failed"
    aside = _assert_put_aside(results, "01_a")
    assert str(aside) in run.error and "new.json" in run.error and "previous bytes" in run.error, run.error


def test_a_chapter_run_by_hand_that_fails_leaves_no_result(tmp_path: Path) -> None:
    """papermill on a chapter by hand (no book build): the kernel itself puts aside what the chapter wrote
    when a cell fails, and says so under the failing cell."""
    import papermill

    results = tmp_path / "results"
    _results_before(results)
    notebook = tmp_path / "02_b.ipynb"
    _notebook(notebook, FAILING_CHAPTER.replace("{failure}", "raise RuntimeError('half-way')"))
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters={"results_dir": str(results)}, progress_bar=False, cwd=str(tmp_path))
    aside = _assert_put_aside(results, "chapter")
    printed = json.dumps(json.loads((tmp_path / "out.ipynb").read_text())["cells"][-1]["outputs"])
    assert str(aside) in printed and "fix the error and run the chapter again" in printed


def test_the_writes_of_a_chapter_whose_kernel_died_are_put_aside_by_the_next(tmp_path: Path) -> None:
    """A journal nobody holds (a kernel killed while a chapter ran by hand) is an orphan: put aside."""
    from ocrheads_lib import quarantine

    results = tmp_path / "results"
    model = _results_before(results)
    folder, lock = quarantine.new_journal(results, "03_c", quarantine.KERNEL_LOCK)
    assert quarantine.orphans(results) == []                  # its kernel holds it
    (folder / "backup" / "000000").write_text("old")
    with open(folder / "journal.jsonl", "w") as handle:
        handle.write(json.dumps({"path": "tiny/edited.json", "backup": "000000"}) + "\n")
        handle.write(json.dumps({"path": "tiny/new.json", "backup": None}) + "\n")
        handle.write('{"path": "tiny/torn')                  # the kernel died mid-line
    (model / "edited.json").write_text("changed")
    (model / "new.json").write_text("new")
    lock.release()                                            # the kernel died
    assert quarantine.orphans(results) == [folder]
    outcome = quarantine.put_aside(folder)
    assert outcome.moved == ["tiny/edited.json", "tiny/new.json"] and outcome.restored == ["tiny/edited.json"]
    assert (model / "edited.json").read_text() == "old" and not (model / "new.json").exists()
    assert (Path(outcome.destination) / "tiny" / "new.json").read_text() == "new"
    assert quarantine.put_aside(folder) == outcome            # once only
