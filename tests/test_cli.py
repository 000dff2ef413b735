"""`python -m ocrheads_lib score`: resumable, shardable, identical merged files.

Two processes are launched the way a GPU user would (`accelerate launch --multi_gpu --num_processes 2`;
on a CPU-only machine accelerate then runs 2 gloo processes — its `--cpu` flag alone would need
mpirun). The tiny random model is scored with the gold answer teacher-forced (it cannot generate).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocrheads_lib import cli
from ocrheads_lib.scoring import batch, load_scores, runs

REPO = Path(__file__).resolve().parents[1]
N = 6

DATASET = '''
import random
from PIL import Image
from ocrheads_lib.data.samples import ImageSample

def make(n, seed=0, flag=0):      # flag: an argument that changes nothing but the fingerprint
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        answer = "".join(rng.choice("0123456789") for _ in range(4))
        col0 = rng.randint(1, 5)
        boxes = [(28 * (col0 + k) + 6, 60, 28 * (col0 + k + 1) - 6, 80) for k in range(4)]
        samples.append(ImageSample(id=f"s{seed}-{i}", pages=[Image.new("RGB", (280, 168), "white")],
                                   question="What is the pass key?", answer=answer, evidence_page=0, boxes=boxes,
                                   units=list(answer), coarse_box=(boxes[0][0], 60, boxes[-1][2], 80), seed=seed))
    samples[2].boxes[0] = (900.0, 900.0, 910.0, 910.0)      # one failing sample: box outside the page
    return samples
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ds") / "toy_dataset.py"
    path.write_text(DATASET)
    return f"{path}:make"


def score_args(dataset: str, out: Path, *extra: str) -> list[str]:
    return ["score", "--model", "tiny-random-qwen2_vl", "--task", "ocr", "--dataset", dataset, "--n", str(N),
            "--answer-source", "gold", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(dataset: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("ref") / "scores.json"
    assert cli.main(score_args(dataset, out)) == 0
    return out.read_bytes()


def test_single_process_run(reference: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    path.write_bytes(reference)
    scores = load_scores(path)
    assert len(scores.samples) == N - 1 and len(scores.failures) == 1
    assert scores.failures[0].reason.startswith("no evidence tokens: box 0")
    assert [s.id for s in scores.samples] == [f"s0-{i}" for i in range(N) if i != 2]
    assert scores.meta.model_id == "tiny-random-qwen2_vl" and scores.meta.n == N


def test_interrupted_run_resumes_to_identical_file(dataset: str, reference: bytes, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    assert cli.main(score_args(dataset, out, "--limit", "2")) == 0
    assert not out.exists()
    shard = batch.parts_dir(out) / "shard-000.jsonl"
    assert len(shard.read_text().splitlines()) == 2
    with open(shard, "a") as handle:            # a kill in the middle of a write
        handle.write('{"id": "s0-2", "hits": [[0, 0')
    with pytest.raises(RuntimeError, match="not done yet"):
        batch.merge(out)
    assert cli.main(score_args(dataset, out)) == 0
    assert out.read_bytes() == reference
    # a re-run of a finished run recomputes nothing and rewrites the same file
    before = shard.read_text()
    assert cli.main(score_args(dataset, out)) == 0
    assert shard.read_text() == before and out.read_bytes() == reference


def test_resume_refuses_different_options(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scores.json"
    assert cli.main(score_args(dataset, out, "--limit", "1")) == 0
    capsys.readouterr()
    assert cli.main(score_args(dataset, out, "--row", "consume")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "RunMismatchError" in error and "unfinished run" in error
    assert "row: 'emit' -> 'consume'" in error and "--overwrite" in error and "new --out" in error
    with pytest.raises(batch.RunMismatchError, match="different options"):     # --debug: the exception itself
        batch.run([], lambda s: s, load_scores_meta(out), out)
    assert cli.main(score_args(dataset, out, "--row", "consume", "--no-resume", "--limit", "1")) == 0


def load_scores_meta(out: Path):
    """The ScoreMeta of a run's run.json with one option changed (for the library-level refusal)."""
    from ocrheads_lib.scoring.store import ScoreMeta

    meta = json.loads((batch.parts_dir(out) / "run.json").read_text())["meta"]
    return ScoreMeta(**{**meta, "row": "emit"})


@pytest.mark.parametrize("change, field", [
    (("--dataset-arg", "flag=1"), "dataset_args.flag: (unset) -> 1"),
    (("--model-seed", "3"), "model_seed: 0 -> 3"),
    (("--seed", "1"), "seed: 0 -> 1"),
    (("--min-overlap", "0.5"), "options.min_overlap: 0.001 -> 0.5"),
    (("--weighting", "paper-ids"), "options.weighting: 'chars' -> 'paper-ids'"),
])
def test_changed_settings_never_mix_into_a_finished_run(dataset: str, reference: bytes, tmp_path: Path, change,
                                                        field: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's silent mixing: a finished run re-run with another setting is refused (exit 2), naming the
    field, and the file is untouched; the same command is reused and says so."""
    out = tmp_path / "scores.json"
    out.write_bytes(reference)                              # a finished file without its parts folder
    assert cli.main(score_args(dataset, out)) == 0
    assert "reused, nothing recomputed" in capsys.readouterr().err
    assert cli.main(score_args(dataset, out, *change)) == 2
    error = capsys.readouterr().err
    assert f"{out} holds a finished run with different options" in error and field in error
    assert out.read_bytes() == reference and not batch.parts_dir(out).exists()
    out.unlink()
    assert cli.main(score_args(dataset, out)) == 0          # a finished run with its parts folder
    assert cli.main(score_args(dataset, out, *change)) == 2
    error = capsys.readouterr().err
    assert "scores.parts holds a finished run with different options" in error and field in error
    assert out.read_bytes() == reference
    assert cli.main(score_args(dataset, out, *change, "--overwrite", "--limit", "1")) == 0
    assert not out.exists()                                 # discarded first: nothing looks complete


def test_fingerprint_is_in_run_json_and_score_file(reference: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    path.write_bytes(reference)
    meta = load_scores(path).meta
    assert meta.dtype == "float32" and meta.device == "cpu" and meta.model_seed == 0 and meta.dataset_args == {}
    from ocrheads_lib.scoring.store import run_fingerprint

    ids = [f"s0-{i}" for i in range(N)]
    assert meta.fingerprint == run_fingerprint(meta, ids) and len(meta.fingerprint) == 16
    assert run_fingerprint(meta, ids[::-1]) != meta.fingerprint
    assert oct(path.stat().st_mode & 0o777) == "0o644"


class _FaultyModel:
    """The scored model, except that building the inputs of chosen samples raises torch.OutOfMemoryError
    (`remaining[id]` more times; -1: always) or KeyboardInterrupt."""

    def __init__(self, lm, faults: dict[str, int], interrupt: str | None = None) -> None:
        self._lm, self.faults, self.interrupt, self.current = lm, faults, interrupt, None

    def __getattr__(self, name: str):
        return getattr(self._lm, name)

    def build_inputs(self, *args, **kwargs):
        import torch

        if self.current == self.interrupt:
            self.interrupt = None
            raise KeyboardInterrupt
        left = self.faults.get(self.current, 0)
        if left:
            self.faults[self.current] = left - 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self._lm.build_inputs(*args, **kwargs)


def test_faults_are_never_stored_and_resume_gives_the_clean_file(
        dataset: str, reference: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Fault injection: out-of-memory on 3 samples and an interrupt. Persistent faults stop the run without
    storing anything; transient ones are retried; the resumed run is byte-identical to a clean run."""
    from ocrheads_lib.scoring import ocr

    real_scorer, real_load = ocr.score_ocr_sample, runs.load_scoring_model
    setup: dict = {}

    def scorer(lm, sample, **kwargs):
        lm.current = sample.id
        return real_scorer(lm, sample, **kwargs)

    monkeypatch.setattr(ocr, "score_ocr_sample", scorer)
    monkeypatch.setattr(runs, "load_scoring_model", lambda *a, **k: _FaultyModel(real_load(*a, **k), **setup))
    out = tmp_path / "scores.json"
    shard = batch.parts_dir(out) / "shard-000.jsonl"

    # 1. persistent OOM on s0-1, s0-3, s0-4: the run stops at s0-1 after 1 + 1 attempts, nothing stored for it
    setup.update(faults={"s0-1": -1, "s0-3": -1, "s0-4": -1})
    assert cli.main(score_args(dataset, out, "--fault-retries", "1")) == 1
    error = capsys.readouterr().err
    assert "FaultError: sample s0-1: fault after 2 attempts (OutOfMemoryError" in error and "re-run" in error
    assert [json.loads(line)["id"] for line in shard.read_text().splitlines()] == ["s0-0"]
    assert not out.exists()

    # 2. transient OOM (2 failed attempts each, 2 retries allowed) on the same 3 samples, then an interrupt
    setup.update(faults={"s0-1": 2, "s0-3": 2, "s0-4": 2}, interrupt="s0-5")
    assert cli.main(score_args(dataset, out)) == 130
    error = capsys.readouterr().err
    assert error.count("retry 1 of 2") == 3 and error.count("retry 2 of 2") == 3 and "KeyboardInterrupt" in error
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"s0-{i}" for i in range(5)]
    assert not any("OutOfMemory" in r.get("reason", "") for r in records)

    # 3. resume on a healthy machine: byte-identical to the clean run
    setup.update(faults={}, interrupt=None)
    assert cli.main(score_args(dataset, out)) == 0
    assert out.read_bytes() == reference


def test_old_fault_records_and_retry_failures_are_rescored(dataset: str, reference: bytes, tmp_path: Path) -> None:
    """A fault stored as a failure by an older version is ignored on resume; --retry-failures rescores the
    recorded failures (here the box outside the page fails again, with the same reason)."""
    out = tmp_path / "scores.json"
    assert cli.main(score_args(dataset, out, "--limit", "2")) == 0
    shard = batch.parts_dir(out) / "shard-000.jsonl"
    with open(shard, "a") as handle:
        handle.write(json.dumps({"id": "s0-3", "type": "failure",
                                 "reason": "exception: OutOfMemoryError: CUDA out of memory"}) + "\n")
    assert cli.main(score_args(dataset, out)) == 0
    assert out.read_bytes() == reference
    lines = len(shard.read_text().splitlines())
    assert cli.main(score_args(dataset, out, "--retry-failures")) == 0
    assert len(shard.read_text().splitlines()) == lines + 1      # only the one failure was rescored
    assert out.read_bytes() == reference


def test_manual_shards_merge_to_identical_file(dataset: str, reference: bytes, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    assert cli.main(score_args(dataset, out, "--shard", "1/2")) == 0
    assert not out.exists()
    assert cli.main(score_args(dataset, out, "--shard", "0/2")) == 0
    assert cli.main(["merge", "--out", str(out)]) == 0
    assert out.read_bytes() == reference


def test_accelerate_two_processes_give_the_same_file(dataset: str, reference: bytes, tmp_path: Path) -> None:
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate launcher not installed in this environment")
    out = tmp_path / "scores.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ocrheads_lib",
               *score_args(dataset, out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(p.name for p in batch.parts_dir(out).glob("shard-*.jsonl"))
    assert shards == ["shard-000.jsonl", "shard-001.jsonl"]
    assert out.read_bytes() == reference


def test_summary_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from ocrheads_lib.data.official import official_path

    assert cli.main(["summary", str(official_path("InternVL2-8B_fg_2.json"))]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paper_code"] == 44 and printed["bins_raw"]["==0"] == 895
    with pytest.raises(ValueError, match="unknown dataset"):
        runs.resolve_dataset("no-such-dataset")
    with pytest.raises(ValueError, match="RANK/WORLD"):
        cli._parse_shard("two")


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "ocrheads_lib", "score", "--model", "tiny", "--task", "ocr", "--dataset",
               "passkey-text", "--n", "2", "--out", str(tmp_path / "x.json")]
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]
    assert "--task ocr scores ImageSamples" in plain.stderr and "--task retrieval" in plain.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.parts").exists()   # refused before scoring
    debug = subprocess.run(command + ["--debug"], env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


def test_a_resumed_run_builds_only_the_pending_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in dataset is built one sample at a time: an interrupted (--limit) run builds only what it
    scores, the resumed run only the rest, and the file equals a clean run's byte for byte."""
    from ocrheads_lib.data import passkey

    built: list[str] = []
    real = passkey.image_sample

    def counted(sample_id, *args, **kwargs):
        built.append(sample_id)
        return real(sample_id, *args, **kwargs)

    monkeypatch.setattr(passkey, "image_sample", counted)
    args = ["score", "--model", "tiny-random-qwen2_vl", "--task", "ocr", "--dataset", "passkey", "--n", "4",
            "--answer-source", "gold"]
    clean = tmp_path / "clean.json"
    assert cli.main([*args, "--out", str(clean)]) == 0
    assert built == [f"passkey-0-{i}" for i in range(4)]           # each sample built once
    built.clear()
    out = tmp_path / "resumed.json"
    assert cli.main([*args, "--out", str(out), "--limit", "2"]) == 0
    assert built == ["passkey-0-0", "passkey-0-1"] and not out.exists()
    built.clear()
    assert cli.main([*args, "--out", str(out)]) == 0
    assert built == ["passkey-0-2", "passkey-0-3"]
    assert out.read_bytes() == clean.read_bytes()
    built.clear()
    assert cli.main([*args, "--out", str(out)]) == 0                # a finished run is reused: nothing built
    assert built == []
