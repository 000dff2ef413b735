"""Command line: batch head scoring for users who outgrow a notebook.

    python -m ocrheads_lib score --model tiny --task ocr --dataset passkey --n 200 --seed 0 \\
        --out results/tiny/ocr_scores.json
    accelerate launch --num_processes 4 -m ocrheads_lib score ...      # samples split by process
    python -m ocrheads_lib score ... --shard 1/4                       # manual sharding, then:
    python -m ocrheads_lib merge --out results/tiny/ocr_scores.json
    python -m ocrheads_lib summary results/tiny/ocr_scores.json        # headline numbers (also official files)

Runs are resumable: re-run the same command after an interruption (see ocrheads_lib.scoring.batch).

Datasets: a name of a generator in ``ocrheads_lib.data`` (``passkey`` -> ``passkey_images``, ``niah`` ->
``niah_images``, ``passkey-text`` -> ``passkey_text``, ``niah-text`` -> ``niah_text``, or the function's
own name), or ``package.module:function`` / ``path/to/file.py:function``. The function is called as
``function(n, seed=seed, **dataset_args)`` and must return samples (ImageSample for --task ocr,
TextSample for --task retrieval). ``--dataset-arg key=value`` passes extra keyword arguments (values
parsed as JSON when possible: ``--dataset-arg pages=4``).

Models: anything ``load_model`` accepts ("tiny", "smollm2", a hub id in the local cache, a folder), or
``tiny-random-<family>`` for an untrained tiny model of that family (tests, benchmarks).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

DATASET_ALIASES = {"passkey": "passkey_images", "niah": "niah_images", "passkey-text": "passkey_text",
                   "niah-text": "niah_text"}


def resolve_dataset(name: str) -> Callable[..., Sequence[Any]]:
    """A dataset name -> the function that builds its samples (see the module docstring)."""
    if ":" in name:
        target, function = name.rsplit(":", 1)
        if target.endswith(".py"):
            path = Path(target)
            if not path.exists():
                raise FileNotFoundError(f"dataset file {path} does not exist")
            spec = importlib.util.spec_from_file_location(f"_ocrheads_dataset_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        if not hasattr(module, function):
            raise ValueError(f"dataset {name!r}: {target} has no function {function!r}")
        return getattr(module, function)
    data = importlib.import_module("ocrheads_lib.data")
    function = DATASET_ALIASES.get(name, name)
    if not callable(getattr(data, function, None)):
        available = sorted(k for k, v in vars(data).items() if callable(v) and not k.startswith("_")
                           and k[0].islower())
        raise ValueError(f"unknown dataset {name!r}: ocrheads_lib.data has no generator {function!r}. "
                         f"Known aliases: {sorted(DATASET_ALIASES)}; generators: {available}; or give "
                         "'module:function' / 'file.py:function'")
    return getattr(data, function)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_dataset(name: str, n: int, seed: int, args: Sequence[str] = ()) -> list[Any]:
    kwargs = {}
    for item in args:
        if "=" not in item:
            raise ValueError(f"--dataset-arg {item!r}: expected key=value")
        key, value = item.split("=", 1)
        kwargs[key] = _parse_value(value)
    samples = list(resolve_dataset(name)(n, seed=seed, **kwargs))
    if len(samples) != n:
        raise ValueError(f"dataset {name!r} returned {len(samples)} samples, {n} were requested")
    return samples


def load_lm(model: str, device: str = "cpu", dtype: str | None = None, seed: int = 0) -> Any:
    if model.startswith("tiny-random-"):
        from ocrheads_lib.models.testing import tiny_random

        return tiny_random(model[len("tiny-random-"):], seed=seed, attn="probe")
    from ocrheads_lib.models import load_model

    return load_model(model, device=device, dtype=dtype, attn="probe")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard {text!r}: expected RANK/WORLD, e.g. 0/2") from error
    return rank, world


def cmd_score(args: argparse.Namespace) -> int:
    import torch

    torch.set_flush_denormal(True)
    from functools import partial

    from ocrheads_lib.scoring import batch
    from ocrheads_lib.scoring.ocr import ocr_meta, score_ocr_sample
    from ocrheads_lib.scoring.retrieval import default_row, retrieval_meta, score_retrieval_sample

    samples = load_dataset(args.dataset, args.n, args.seed, args.dataset_arg)
    lm = load_lm(args.model, device=args.device, dtype=args.dtype, seed=args.model_seed)
    common = dict(answer_source=args.answer_source, max_new_tokens=args.max_new_tokens)
    passes = dict(passes=args.passes)
    if args.task == "ocr":
        row = args.row or "emit"
        meta = ocr_meta(lm, mode=args.mode, row=row, min_overlap=args.min_overlap, dataset=args.dataset,
                        seed=args.seed, n=args.n, **common)
        scorer = partial(score_ocr_sample, lm, mode=args.mode, row=row, min_overlap=args.min_overlap, **common,
                         **passes)
    else:
        row = args.row or default_row(args.variant)
        meta = retrieval_meta(lm, variant=args.variant, row=row, dataset=args.dataset, seed=args.seed, n=args.n,
                              **common)
        scorer = partial(score_retrieval_sample, lm, variant=args.variant, row=row, **common, **passes)
    scores = batch.run(samples, scorer, meta, args.out, resume=not args.no_resume, shard=_parse_shard(args.shard),
                       limit=args.limit, progress=args.progress)
    if scores is not None:
        print(f"{args.out}: {len(scores.samples)} samples scored, {len(scores.failures)} failed "
              f"{scores.failure_counts() or ''}".rstrip())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ocrheads_lib.scoring import batch

    scores = batch.merge(args.out)
    print(f"{args.out}: {len(scores.samples)} samples, {len(scores.failures)} failures")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from ocrheads_lib.analysis import summary
    from ocrheads_lib.scoring import load_scores

    print(json.dumps(summary(load_scores(args.path), threshold=args.threshold), indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ocrheads_lib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score every head of a model on a dataset (resumable, shardable)")
    score.add_argument("--model", required=True, help='"tiny", "smollm2", a hub id, a local folder, or tiny-random-<family>')
    score.add_argument("--task", required=True, choices=("ocr", "retrieval"))
    score.add_argument("--dataset", required=True, help="generator name or module:function / file.py:function")
    score.add_argument("--n", type=int, required=True, help="number of samples")
    score.add_argument("--out", required=True, help="output JSON (per-sample JSONL goes to <out>.parts/)")
    score.add_argument("--seed", type=int, default=0, help="dataset seed")
    score.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE")
    score.add_argument("--mode", choices=("fine", "coarse"), default="fine", help="OCR: box per unit or one box")
    score.add_argument("--variant", choices=("wu", "paper-code"), default="wu", help="retrieval score variant")
    score.add_argument("--row", choices=("emit", "consume"), default=None,
                       help="attention row per answer token (default: emit; paper-code retrieval: consume)")
    score.add_argument("--min-overlap", type=float, default=0.001)
    score.add_argument("--answer-source", choices=("generate", "gold"), default="generate")
    score.add_argument("--max-new-tokens", type=int, default=32)
    score.add_argument("--passes", type=int, choices=(1, 2), default=2,
                       help="2: generate, then a teacher-forced probe pass; 1: record the rows while generating")
    score.add_argument("--device", default="cpu")
    score.add_argument("--dtype", default=None)
    score.add_argument("--model-seed", type=int, default=0, help="seed of a tiny-random model")
    score.add_argument("--no-resume", action="store_true", help="discard an interrupted run and start over")
    score.add_argument("--shard", default=None, metavar="RANK/WORLD", help="score one shard only (merge later)")
    score.add_argument("--limit", type=int, default=None, help="stop after this many samples (per process)")
    score.add_argument("--progress", action="store_true")
    score.set_defaults(func=cmd_score)

    merge = sub.add_parser("merge", help="merge the shard files of a finished run")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=cmd_merge)

    summary = sub.add_parser("summary", help="headline numbers of a score file (ours or official)")
    summary.add_argument("path")
    summary.add_argument("--threshold", type=float, default=0.1)
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
