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
from ocrheads_lib.scoring import batch, load_scores

REPO = Path(__file__).resolve().parents[1]
N = 6

DATASET = '''
import random
from PIL import Image
from ocrheads_lib.data.samples import ImageSample

def make(n, seed=0):
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


def test_resume_refuses_different_options(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    assert cli.main(score_args(dataset, out, "--limit", "1")) == 0
    with pytest.raises(ValueError, match="different options"):
        cli.main(score_args(dataset, out, "--row", "consume"))
    assert cli.main(score_args(dataset, out, "--row", "consume", "--no-resume", "--limit", "1")) == 0


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
        cli.resolve_dataset("no-such-dataset")
    with pytest.raises(ValueError, match="RANK/WORLD"):
        cli._parse_shard("two")
