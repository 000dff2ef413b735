"""The catalogue of bad inputs and faults (issue 22): every case gets a clear error or an explicit behaviour.

Each case is a call that must raise a given exception type whose message holds the words that name the
problem (the value, the valid range or the fix). The cases of the issue's audit come first, then more.
Run-identity and fault cases use `batch.run` with a stand-in scorer (no model); the command-line cases
call `cli.main` and check the exit code and the one-line message; model cases use the embedded tiny model
or a copy of its folder with one file broken.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ocrheads_lib import cli, heads, metrics
from ocrheads_lib.attention import Plan, apply
from ocrheads_lib.data import case_study_images, passkey_images
from ocrheads_lib.data.render import RenderError
from ocrheads_lib.models import loading
from ocrheads_lib.models.base import ContextTooLongError
from ocrheads_lib.scoring import batch, load_scores
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta

L, H = 4, 8


# ------------------------------------------------------------------------------------------ helpers
@dataclass
class Item:
    id: str


def meta(**changes: Any) -> ScoreMeta:
    base = ScoreMeta(model_id="m", kind="ocr", n_layers=L, n_heads=H, dataset="d", seed=0, n=3, revision="r1",
                     dtype="float32", device="cpu", model_seed=None, dataset_args={}, options={"mode": "fine"})
    return replace(base, **changes)


class Scorer:
    """A stand-in scorer: sample i gets hits = i on every head; counts its calls; `raises` maps an id to an
    exception raised `times` times, `fault_reason` to a Failure carrying a fault."""

    def __init__(self, raises: dict[str, BaseException] | None = None, times: int = 10**9,
                 fault_reason: set[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.raises, self.left, self.fault_reason = raises or {}, times, fault_reason

    def __call__(self, sample: Item) -> SampleScore | Failure:
        self.calls.append(sample.id)
        if sample.id in self.raises and self.left > 0:
            self.left -= 1
            raise self.raises[sample.id]
        if sample.id in self.fault_reason:
            return Failure(sample.id, "exception: OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
        index = int(sample.id[1:])
        return SampleScore(id=sample.id, weight=1.0, n_rows=4, hits=np.full((L, H), index))


ITEMS = [Item(f"s{i}") for i in range(3)]


def finished(tmp_path: Path, **changes: Any) -> Path:
    out = tmp_path / "run.json"
    assert batch.run(ITEMS, Scorer(), meta(**changes), out) is not None
    return out


def scores_file(tmp_path: Path, hits: Any, n_rows: int = 4) -> Path:
    payload = HeadScores(meta=meta(), samples=[SampleScore("a", 1.0, 4, np.zeros((L, H)))]).to_json()
    payload["samples"][0]["hits"], payload["samples"][0]["n_rows"] = hits, n_rows
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(payload))
    return path


def one_sample_scores() -> HeadScores:
    hits = np.zeros((L, H), dtype=int)
    hits[1, 2] = 4
    return HeadScores(meta=meta(), samples=[SampleScore("a", 1.0, 4, hits)])


@pytest.fixture(scope="module")
def tiny():
    return loading.load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_text():
    from ocrheads_lib.models.testing import tiny_random

    return tiny_random("qwen2", attn="probe")


def broken_copy(tmp_path: Path, name: str, fix: Callable[[Path], None]) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(loading.TINY_WEIGHTS_DIR, folder)
    fix(folder / name)
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_layer(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v for k, v in tensors.items() if ".layers.1." not in k}, str(path))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err      # one line, no traceback
    return code, err


# ------------------------------------------------------------------------------------------ issue 32 helpers
def _second_writer(tmp_path: Path, request: Any) -> None:
    out = tmp_path / "x.json"
    with batch.writer_lock(out):          # a run in another process holds it
        batch.run(ITEMS, Scorer(), meta(), out, overwrite=True)


def _foreign_shard_line(tmp_path: Path, request: Any) -> None:
    out = tmp_path / "x.json"
    batch.run(ITEMS, Scorer(), meta(), out, limit=1)
    shard = batch.parts_dir(out) / "shard-000.jsonl"
    record = json.loads(shard.read_text().splitlines()[0])
    shard.write_text(json.dumps({**record, "id": "s1", "run": "another"}) + "\n", encoding="utf-8")
    batch.run(ITEMS, Scorer(), meta(), out)


def _duplicated_sample(tmp_path: Path, request: Any) -> None:
    payload = one_sample_scores().to_json()
    payload["samples"] *= 2
    (tmp_path / "dup.json").write_text(json.dumps(payload))
    load_scores(tmp_path / "dup.json")


def _foreign_cache_line(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.experiments.evaluate import Prediction, PredictionCache

    PredictionCache(tmp_path / "other.jsonl", {"condition": "none"}).put(Prediction("a", "1", ["1"]))
    (tmp_path / "mine.jsonl").write_text((tmp_path / "other.jsonl").read_text())
    PredictionCache(tmp_path / "mine.jsonl", {"condition": "ocr k=5"})


def _cache_for_other_budget(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.experiments.evaluate import evaluate
    from ocrheads_lib.experiments.sweep import prediction_cache

    cache = prediction_cache(tmp_path, "r1", "masking", "t", "none", max_new_tokens=16)
    evaluate(None, [], cache=cache, max_new_tokens=1, metrics=["accuracy"])


def _flipped_tiny_weights(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.checksums import package_rebuild_hint, verify

    folder = tmp_path / "weights"
    shutil.copytree(loading.TINY_WEIGHTS_DIR, folder)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 64)
    verify(folder, package_rebuild_hint(folder))


class _Crafted:
    def __reduce__(self) -> Any:
        return (print, ("code ran",))


def _pickle_checkpoint(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.embedded.checkpoint import load_checkpoint

    torch.save({"meta": _Crafted()}, tmp_path / "c.pt")
    load_checkpoint(tmp_path / "c.pt")


def _check_parameters(values: dict[str, Any]) -> None:
    from ocrheads_lib.parameters import check_values

    check_values(values, {"n_samples": 8, "seed": 0}, "02_ocr_heads")


def _zero_sample_scores(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.experiments.head_sets import experiment_heads

    HeadScores(meta=meta(n=0)).save(tmp_path / "m" / "ocr_scores.json")
    experiment_heads(None, tmp_path / "m")


def _nan_logits(tmp_path: Path, request: Any) -> None:
    from ocrheads_lib.models.base import check_logits

    check_logits(torch.tensor([[0.0, float("nan")]]), "m")


# ------------------------------------------------------------------------------------------ catalogue
# (case, call, exception type, words the message must contain). The call takes pytest's tmp_path and the
# fixtures it names through `request`.
Case = tuple[str, Callable[..., Any], type[BaseException], tuple[str, ...]]

CASES: list[Case] = [
    # 1. silent mixing: a run's identity covers every setting
    ("resume with another --dataset-arg", lambda t, r: batch.run(ITEMS, Scorer(), meta(dataset_args={"layout": "free"}),
                                                                  finished(t)), batch.RunMismatchError,
     ("finished run with different options", "dataset_args.layout: (unset) -> 'free'", "--overwrite", "new --out")),
    ("resume with another --dtype", lambda t, r: batch.run(ITEMS, Scorer(), meta(dtype="bfloat16"), finished(t)),
     batch.RunMismatchError, ("dtype: 'float32' -> 'bfloat16'",)),
    ("resume with another --device", lambda t, r: batch.run(ITEMS, Scorer(), meta(device="cuda"), finished(t)),
     batch.RunMismatchError, ("device: 'cpu' -> 'cuda'",)),
    ("resume with another --model-seed", lambda t, r: batch.run(ITEMS, Scorer(), meta(model_seed=3),
                                                                finished(t, model_seed=0)),
     batch.RunMismatchError, ("model_seed: 0 -> 3",)),
    ("finished run, changed seed: called finished, not interrupted",
     lambda t, r: batch.run(ITEMS, Scorer(), meta(seed=1), finished(t)), batch.RunMismatchError,
     ("a finished run", "seed: 0 -> 1")),
    ("unfinished run, other weights revision",
     lambda t, r: (batch.run(ITEMS, Scorer(), meta(), t / "x.json", limit=1),
                   batch.run(ITEMS, Scorer(), meta(revision="r2"), t / "x.json")),
     batch.RunMismatchError, ("an unfinished run", "revision: 'r1' -> 'r2'")),
    ("other sample ids", lambda t, r: batch.run([Item("s0"), Item("s9"), Item("s2")], Scorer(), meta(), finished(t)),
     batch.RunMismatchError, ("sample ids", "first difference at position 1")),
    ("--out is a file that is not a score file",
     lambda t, r: ((t / "x.json").write_text("{}"), batch.run(ITEMS, Scorer(), meta(), t / "x.json")),
     batch.RunMismatchError, ("not an ocrheads score file", "--overwrite")),
    ("--out is a score file of another run (no parts folder)",
     lambda t, r: (finished(t), shutil.rmtree(t / "run.parts"),
                   batch.run(ITEMS, Scorer(), meta(options={"mode": "coarse"}), t / "run.json")),
     batch.RunMismatchError, ("options.mode: 'fine' -> 'coarse'",)),
    ("duplicate sample ids", lambda t, r: batch.run([Item("a"), Item("a")], Scorer(), meta(), t / "x.json"),
     ValueError, ("not unique", "'a'")),
    # 2. faults are never results
    ("out of memory returned as a failure, every attempt",
     lambda t, r: batch.run(ITEMS, Scorer(fault_reason={"s1"}), meta(), t / "x.json", fault_retries=1),
     batch.FaultError, ("sample s1", "fault after 2 attempts", "OutOfMemoryError", "re-run the same command")),
    ("out of memory raised, every attempt",
     lambda t, r: batch.run(ITEMS, Scorer({"s0": torch.OutOfMemoryError("CUDA out of memory")}), meta(),
                            t / "x.json"),
     batch.FaultError, ("sample s0", "fault after 3 attempts")),
    ("a device error (RuntimeError 'CUDA error')",
     lambda t, r: batch.run(ITEMS, Scorer({"s2": RuntimeError("CUDA error: an illegal memory access")}), meta(),
                            t / "x.json", fault_retries=0),
     batch.FaultError, ("sample s2", "CUDA error")),
    ("an interrupt stops the run at once", lambda t, r: batch.run(ITEMS, Scorer({"s0": KeyboardInterrupt()}),
                                                                   meta(), t / "x.json"),
     KeyboardInterrupt, ()),
    ("get_scores on a machine out of memory", lambda t, r: _get_scores_out_of_memory(r.getfixturevalue("tiny"), t),
     batch.FaultError, ("2 of 2 samples hit a fault", "OutOfMemoryError", "nothing was saved")),
    ("negative fault retries", lambda t, r: batch.run(ITEMS, Scorer(), meta(), t / "x.json", fault_retries=-1),
     ValueError, ("fault_retries must be >= 0",)),
    ("shard rank out of range", lambda t, r: batch.run(ITEMS, Scorer(), meta(), t / "x.json", shard=(2, 2)),
     ValueError, ("RANK in 0..WORLD-1",)),
    # 3. wrong scores with no error
    ("top_k(scores, -1)", lambda t, r: heads.top_k(one_sample_scores(), -1), ValueError,
     ("k must be an int in 0..32", "-1")),
    ("top_k(scores, 33) on 32 heads", lambda t, r: heads.top_k(one_sample_scores(), 33), ValueError, ("0..32",)),
    ("top_k on scores without samples", lambda t, r: heads.top_k(HeadScores(meta=meta()), 5), ValueError,
     ("no scored samples", "zero samples")),
    ("select with a NaN threshold", lambda t, r: heads.select(one_sample_scores(), threshold=float("nan")),
     ValueError, ("threshold must be a finite number",)),
    ("load_scores: hits of the wrong shape", lambda t, r: load_scores(scores_file(t, [[0] * H] * (L - 1))),
     ValueError, ("hits have shape (3, 8)", "4 layers x 8 heads")),
    ("load_scores: hits > rows (a score of 24.75)", lambda t, r: load_scores(scores_file(t, [[99] * H] * L)),
     ValueError, ("hits must lie in 0..n_rows=4",)),
    ("load_scores: truncated file", lambda t, r: load_scores(
        (lambda p: (p.write_text(p.read_text()[:80]), p)[1])(scores_file(t, [[0] * H] * L))),
     ValueError, ("scores.json is not valid JSON", "truncated")),
    ("load_scores: no such file", lambda t, r: load_scores(t / "none.json"), FileNotFoundError,
     ("does not exist", "python -m ocrheads_lib score")),
    ("a sample weight outside [0, 1]", lambda t, r: SampleScore("a", 2.0, 4, np.zeros((L, H))), ValueError,
     ("weight must be a match score in [0, 1]",)),
    ("top_k of score_ocr(lm, [])", lambda t, r: heads.top_k(__import__("ocrheads_lib.scoring.ocr", fromlist=["x"])
                                                            .score_ocr(r.getfixturevalue("tiny"), []), 3),
     ValueError, ("no scored samples", "top_k")),
    # 4. devices
    ("load_model(device='cuda') without a GPU", lambda t, r: loading.load_model("tiny", device="cuda"),
     loading.DeviceUnavailableError, ("no CUDA GPU", "device='cpu'")),
    ("an unknown device name", lambda t, r: loading.load_model("tiny", device="gpu"), ValueError,
     ("unknown device 'gpu'", "'auto'")),
    ("an unknown dtype", lambda t, r: loading.load_model("tiny", dtype="float8"), ValueError,
     ("unknown dtype 'float8'", "bfloat16")),
    # 5. silently ignored settings
    ("font_size=0", lambda t, r: passkey_images(1, layout="free", font_size=0), ValueError,
     ("font_size must be in 4..256", "got 0")),
    ("chars_per_line=0", lambda t, r: passkey_images(1, chars_per_line=0), ValueError,
     ("chars_per_line and lines_per_page must be >= 1", "got 0")),
    ("lines_per_page=0", lambda t, r: passkey_images(1, layout="free", lines_per_page=0), ValueError,
     ("must be >= 1",)),
    ("load_model('tiny', max_pixel=5)", lambda t, r: loading.load_model("tiny", max_pixel=5), TypeError,
     ("unknown option(s) max_pixel", "max_pixels")),
    ("load_model('tiny', max_pixels=0)", lambda t, r: loading.load_model("tiny", max_pixels=0), ValueError,
     ("max_pixels must be a positive int",)),
    ("Plan(mask=[(0, 1.7)])", lambda t, r: Plan(mask=[(0, 1.7)]), ValueError,
     ("(0, 1.7) is not a (layer, head) pair of ints",)),
    ("Plan(rows=[T + 100]) drops the layer", lambda t, r: _record_beyond(r.getfixturevalue("tiny_text")), KeyError,
     ("layer 0 recorded nothing", "rows must be <")),
    ("Plan(record='all', rows=[1.5])", lambda t, r: Plan(record="all", rows=[1.5]), ValueError,
     ("int sequence positions", "1.5")),
    ("a nested apply", lambda t, r: _nested(r.getfixturevalue("tiny_text")), RuntimeError,
     ("plans do not nest", "one Plan")),
    ("Plan(mask=[(0, 99)]) on 4 heads", lambda t, r: _apply(r.getfixturevalue("tiny_text"), Plan(mask=[(0, 99)])),
     ValueError, ("head 99", "out of range")),
    ("Plan(sink={(0, 0): 1.5})", lambda t, r: Plan(sink={(0, 0): 1.5}), ValueError, ("beta must lie in [0, 1]",)),
    # 6. wrong data
    ("case_study_images('中') on the grid font", lambda t, r: case_study_images("中"), RenderError,
     ("no glyph for '中' (U+4E2D)", "placeholder box")),
    ("case_study_images('中') on the free-layout font", lambda t, r: case_study_images("中", layout="free"),
     RenderError, ("DejaVuSans.ttf has no glyph",)),
    # 7. metrics
    ("exact_match(None, 'none')", lambda t, r: metrics.exact_match(None, "none"), TypeError,
     ("exact_match: the prediction must be a str", "None")),
    ("passkey_accuracy(None, 'on')", lambda t, r: metrics.passkey_accuracy(None, "on"), TypeError,
     ("passkey_accuracy: the prediction must be a str",)),
    ("anls('x', None)", lambda t, r: metrics.anls("x", None), TypeError, ("anls: golds must be a str or a list",)),
    ("anls(None, 'x')", lambda t, r: metrics.anls(None, "x"), TypeError, ("anls: the prediction must be a str",)),
    ("f1('x', [None])", lambda t, r: metrics.f1("x", [None]), TypeError, ("a gold answer must be a str",)),
    ("anls with tau = 0", lambda t, r: metrics.anls("a", "a", tau=0.0), ValueError, ("tau must be in (0, 1]",)),
    # 8. misleading or raw errors
    ("a corrupt config.json", lambda t, r: loading.load_model(
        str(broken_copy(t, "config.json", lambda p: p.write_text('{"model_type": "qwen2_vl",')))),
     loading.CorruptCheckpointError, ("config.json is not valid JSON", "truncated or corrupt")),
    ("a local path that does not exist", lambda t, r: loading.load_model(str(t / "no" / "such" / "dir")),
     loading.WeightsNotFoundError, ("local checkpoint folder", "does not exist")),
    ("a truncated tokenizer.json", lambda t, r: loading.load_model(str(broken_copy(t, "tokenizer.json", truncate))),
     loading.CorruptCheckpointError, ("tokenizer.json is not valid JSON",)),
    ("a truncated model.safetensors",
     lambda t, r: loading.load_model(str(broken_copy(t, "model.safetensors", truncate))),
     loading.CorruptCheckpointError, ("model.safetensors is not a readable safetensors file",)),
    ("a checkpoint missing layer 1's tensors",
     lambda t, r: loading.load_model(str(broken_copy(t, "model.safetensors", drop_layer))),
     loading.CorruptCheckpointError, ("is incomplete", "weights missing", "layers.1.")),
    ("Plan(mask=(0, 1))", lambda t, r: Plan(mask=(0, 1)), ValueError, ("got the single pair (0, 1)", "[(0, 1)]")),
    # 9. leftovers
    ("font_size=2000 (a 90-megapixel page)", lambda t, r: passkey_images(1, layout="free", font_size=2000),
     ValueError, ("font_size must be in 4..256", "2000")),
    ("a page over 16 megapixels", lambda t, r: passkey_images(1, layout="free", chars_per_line=3000,
                                                               context_chars=20000),
     RenderError, ("megapixels", "exceeds the limit of 16", "fewer chars_per_line")),
    ("a 6,000-character text on a 2,048-position model",
     lambda t, r: r.getfixturevalue("tiny").build_inputs([], "word " * 1200), ContextTooLongError,
     ("has 2048 positions", "shorten the context")),
    # issue 32: every cache, weight file and parameter is checked before it is trusted
    ("a second writer while a run holds the output's lock", _second_writer, batch.RunLockedError,
     ("is being written by another run", "wait for it to finish", "new --out")),
    ("a shard line made under another run", _foreign_shard_line, batch.RunMismatchError,
     ("made under run", "mixes runs", "--overwrite")),
    ("a sample twice in a score file", _duplicated_sample, ValueError, ("sample 'a' is in the file twice", "re-score")),
    ("a prediction-cache line of another condition", _foreign_cache_line, ValueError,
     ("made under cache key", "delete it")),
    ("a prediction cache opened for another token budget", _cache_for_other_budget, ValueError,
     ("max_new_tokens=16", "max_new_tokens=1")),
    ("a shipped weights file with flipped bits", _flipped_tiny_weights, ValueError,
     ("model.safetensors is corrupt or was changed", "--write")),
    ("a crafted (pickle) checkpoint", _pickle_checkpoint, ValueError, ("not a plain checkpoint", "not loaded")),
    ("a chapter parameter out of range", lambda t, r: _check_parameters({"n_samples": 0}), ValueError,
     ("n_samples = 0 must be an integer >= 1", "-p n_samples 8")),
    ("a misspelt chapter parameter", lambda t, r: _check_parameters({"n_sample": 3}), ValueError,
     ("unknown parameter 'n_sample'", "did you mean 'n_samples'?")),
    ("a zero-sample score file read for the experiments", _zero_sample_scores, ValueError,
     ("holds no scored sample", "n_samples >= 1")),
    ("non-finite logits", _nan_logits, RuntimeError, ("non-finite logits", "checksums")),
    # more
    ("dataset generator with a negative n", lambda t, r: passkey_images(-1), ValueError, ("n must be >= 0", "-1")),
    ("a hub id that is not cached (offline)", lambda t, r: loading.load_model("no-org/no-such-model"),
     loading.WeightsNotFoundError, ("cannot load 'no-org/no-such-model'", "local Hugging Face cache")),
]


def _record_beyond(lm: Any) -> Any:
    tensors = lm.tokenizer("hello world", return_tensors="pt")
    with apply(lm, Plan(record="all", rows=[int(tensors["input_ids"].shape[1]) + 100])) as rec:
        lm.model(**tensors)
    return rec.argmax[0]


class _OutOfMemory:
    """A model whose every input raises torch.OutOfMemoryError (the scorer records it as a failure reason)."""

    def __init__(self, lm: Any) -> None:
        self._lm = lm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def build_inputs(self, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")


def _get_scores_out_of_memory(lm: Any, tmp_path: Path) -> Any:
    from ocrheads_lib.scoring.runs import get_scores, scoring_samples

    try:
        return get_scores(_OutOfMemory(lm), "ocr", scoring_samples("ocr", 2), results_dir=tmp_path)
    finally:
        assert not list(tmp_path.rglob("*.json"))   # nothing saved


def _nested(lm: Any) -> None:
    with apply(lm, Plan(mask=[(0, 0)])):
        with apply(lm, Plan(mask=[(1, 1)])):
            pass


def _apply(lm: Any, plan: Plan) -> None:
    with apply(lm, plan):
        pass


@pytest.mark.parametrize("case, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_catalogue(case: str, call: Callable[..., Any], error: type[BaseException], words: tuple[str, ...],
                   tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if case.startswith("load_model(device='cuda')") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(error) as raised:
        call(tmp_path, request)
    message = str(raised.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def test_the_catalogue_covers_the_issue_and_more() -> None:
    assert len(CASES) + len(CLI_CASES) >= 85      # 74 after issue 22's audit, 85 with issue 32's cases
    assert len({c[0] for c in CASES} | {c[0] for c in CLI_CASES}) == len(CASES) + len(CLI_CASES)


# ------------------------------------------------------------------------------------------ command line
CLI_CASES = [   # (case, arguments replaced or added, words of the one-line error)
    ("--min-overlap -1", {"--min-overlap": "-1"}, "--min-overlap -1.0: must be in [0, 1)"),
    ("--task ocr --dataset passkey-text", {"--dataset": "passkey-text"},
     "--task ocr scores ImageSamples, but dataset 'passkey-text' gives TextSamples; use --task retrieval"),
    ("--dataset-arg without '='", {"--dataset-arg": "layout"}, "expected KEY=VALUE"),
    ("--dataset-arg the generator does not take", {"--dataset-arg": "colour=red"}, "takes no argument colour"),
    ("--n 0", {"--n": "0"}, "--n 0: the number of samples must be an integer >= 1"),
    ("--max-new-tokens 0", {"--max-new-tokens": "0"}, "--max-new-tokens 0: must be >= 1"),
    ("--shard 2/2", {"--shard": "2/2"}, "need WORLD >= 1 and RANK in 0..WORLD-1"),
    ("--limit -1", {"--limit": "-1"}, "--limit -1: must be >= 0"),
    ("--passes 1 with --answer-source gold", {"--passes": "1", "--answer-source": "gold"},
     "--passes 1 records the rows while generating"),
    ("--variant for --task ocr", {"--variant": "paper-code"}, "--variant paper-code is a retrieval option"),
    ("an unknown dataset", {"--dataset": "nope"}, "unknown dataset 'nope'"),
    ("--dtype for a tiny-random model", {"--model": "tiny-random-qwen2_vl", "--dtype": "bfloat16"},
     "tiny-random-qwen2_vl is built in float32 on the CPU"),
    ("--device cuda without a GPU", {"--device": "cuda"}, "no CUDA GPU is available"),
    ("a local model folder that does not exist", {"--model": "./no/such/model"},
     "local checkpoint folder './no/such/model' does not exist"),
]


@pytest.mark.parametrize("case, changes, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_catalogue(case: str, changes: dict[str, str], words: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors: exit code 2, one line naming the value and the fix, nothing written."""
    if "--device" in changes and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = {"--model": "tiny", "--task": "ocr", "--dataset": "passkey", "--n": "2", "--out": str(tmp_path / "o.json"),
            **changes}
    code, err = run_cli(capsys, "score", *[f"{key}={value}" for key, value in args.items()])
    assert code == 2 and err.startswith("error: ") and words in err, err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ behaviours
def test_a_finished_run_is_reused_and_says_so(tmp_path: Path) -> None:
    out = finished(tmp_path)
    scorer, said = Scorer(), []
    scores = batch.run(ITEMS, scorer, meta(), out, log=said.append)
    assert scorer.calls == [] and len(scores.samples) == 3
    assert len(said) == 1 and "finished run with the same options" in said[0] and "reused" in said[0]


def test_transient_faults_are_retried_and_never_stored(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    scorer = Scorer({"s1": torch.OutOfMemoryError("CUDA out of memory")}, times=2)
    scores = batch.run(ITEMS, scorer, meta(), out, fault_retries=2)
    assert scorer.calls == ["s0", "s1", "s1", "s1", "s2"] and not scores.failures
    (tmp_path / "clean").mkdir()
    assert out.read_bytes() == finished(tmp_path / "clean").read_bytes()


def test_a_killed_overwrite_never_leaves_the_old_file_looking_complete(tmp_path: Path) -> None:
    out = finished(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        batch.run(ITEMS, Scorer({"s1": KeyboardInterrupt()}), meta(), out, overwrite=True)
    assert not out.exists()
    records = batch.read_done(batch.parts_dir(out))
    assert list(records) == ["s0"]                   # the interrupted sample was not stored


def test_result_files_are_world_readable(tmp_path: Path) -> None:
    out = finished(tmp_path)
    for path in (out, batch.parts_dir(out) / "run.json", batch.parts_dir(out) / "shard-000.jsonl"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_scores_of_zero_samples_are_undefined_not_zero(tiny: Any) -> None:
    """score_ocr(lm, []) used to give all-zero means; now NaN (undefined), so no threshold selects a head."""
    from ocrheads_lib.scoring.ocr import score_ocr

    empty = score_ocr(tiny, [])
    assert np.isnan(empty.mean()).all() and np.isnan(empty.activation_frequency()).all()
    assert heads.select(empty) == [] and heads.select(empty, rule="paper-code") == []
    assert all(np.isnan(value) for _, value in heads.ranked(empty))
    assert not empty.has_entries() and one_sample_scores().has_entries()


def test_metrics_none_policy_and_long_strings() -> None:
    """None is refused (TypeError above); int pass keys are accepted; long strings give exact values
    (the speed is in benchmarks/anls_speed.py, not asserted here)."""
    assert metrics.passkey_accuracy("key 12345", 12345) == 1.0
    gold = "ab" * 10_000                               # 20,000 characters
    prediction = "x" * 2_000 + gold[2_000:]            # 2,000 substitutions: NL = 0.1
    assert metrics.anls(prediction, gold) == pytest.approx(0.9)
    assert metrics.levenshtein(prediction, gold) == 2_000
