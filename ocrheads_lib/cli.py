"""Command line: batch head scoring for users who outgrow a notebook.

    python -m ocrheads_lib score --model tiny --task ocr --dataset passkey --n 200 --seed 0 \\
        --out results/tiny/ocr_scores.json
    accelerate launch --num_processes 4 -m ocrheads_lib score ...      # samples split by process
    python -m ocrheads_lib score ... --shard 1/4                       # manual sharding, then:
    python -m ocrheads_lib merge --out results/tiny/ocr_scores.json
    python -m ocrheads_lib summary results/tiny/ocr_scores.json        # headline numbers (also official files)

Runs are resumable: re-run the same command after an interruption (see ocrheads_lib.scoring.batch).
A run's fingerprint covers the model (id, weights revision, dtype, device kind, model seed), the dataset
(name, arguments, seed, sample ids) and every scoring option; a run into an --out that holds a run with
another fingerprint is refused (use a new --out, or --overwrite), and a finished run with the same
fingerprint is reused. Recorded sample failures are rescored with --retry-failures; faults (out of
memory, device errors) are retried --fault-retries times, never stored, and stop the run if they persist.

Errors are one line on stderr (exit code 2 for bad arguments or inputs, 1 for faults and other errors,
130 for an interrupt); --debug shows the traceback.

Datasets: a name of a generator in ``ocrheads_lib.data`` (``passkey`` -> ``passkey_images``, ``niah`` ->
``niah_images``, ``passkey-text`` -> ``passkey_text``, ``niah-text`` -> ``niah_text``, or the function's
own name), or ``package.module:function`` / ``path/to/file.py:function``. The function is called as
``function(n, seed=seed, **dataset_args)`` and must return samples (ImageSample for --task ocr,
TextSample for --task retrieval). The four aliased generators are built one sample at a time, as each is
scored (a resumed run builds only the samples still to score); other functions (user datasets) are
called once for all n samples up front and held in memory for the whole run. ``--dataset-arg key=value``
passes extra keyword arguments (values parsed as JSON when possible: ``--dataset-arg pages=4``).

Models: anything ``load_model`` accepts ("tiny", "smollm2", a hub id in the local cache, a folder), or
``tiny-random-<family>`` for an untrained tiny model of that family (tests, benchmarks).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import traceback
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Sequence

from ocrheads_lib.analysis import summary
from ocrheads_lib.data import samples as kinds
from ocrheads_lib.data.lazy import LazySamples, lazy_samples
from ocrheads_lib.scoring import batch, load_scores
from ocrheads_lib.scoring.batch import FaultError

TASK_SAMPLES = {"ocr": "ImageSample", "retrieval": "TextSample"}   # classes of ocrheads_lib.data.samples
EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPT = 2, 1, 130


class UsageError(ValueError):
    """A command-line argument or input is invalid (exit code 2)."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_dataset_args(args: Sequence[str]) -> dict[str, Any]:
    """["pages=4", "layout=free"] -> {"pages": 4, "layout": "free"} (values parsed as JSON when possible)."""
    kwargs: dict[str, Any] = {}
    for item in args:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--dataset-arg {item!r}: expected KEY=VALUE, e.g. --dataset-arg pages=4")
        if key in kwargs:
            raise UsageError(f"--dataset-arg {key} is given twice; give each key once")
        kwargs[key] = _parse_value(value)
    return kwargs


def _check_keywords(function: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments the generator does not take (before calling it)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return
    valid = [k for k, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and k not in ("n", "seed")]
    if "page" in parameters:
        # the page generators take their PageLayout's fields as flat keys too (layout=free, grid_offset=random);
        # imported here like the generators themselves (resolve_dataset), not at CLI start-up
        from ocrheads_lib.data.layout import LAYOUT_KEYS

        valid += [k for k in LAYOUT_KEYS if k not in valid]
    elif any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters) - set(valid))
    if unknown:
        raise UsageError(f"dataset {name!r} takes no argument {', '.join(unknown)}; its arguments are {valid}")


def load_dataset(name: str, n: int, seed: int, args: Sequence[str] = ()) -> Sequence[Any]:
    """The n samples of a dataset: a lazy set (ids up front, each sample built when it is scored) for the
    built-in generators that can build single samples (ocrheads_lib.data.lazy.INDEXED), else the list the
    function returns (user datasets are built up front)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"--n {n!r}: the number of samples must be an integer >= 1")
    # the library's loaders import torch: imported here, not at the top, so `--help` starts torch-free
    from ocrheads_lib.scoring.runs import resolve_dataset

    kwargs = parse_dataset_args(args)
    function = resolve_dataset(name)
    _check_keywords(function, name, kwargs)

    lazy = lazy_samples(function, n, seed, **kwargs)
    if lazy is not None:
        return lazy
    samples = list(function(n, seed=seed, **kwargs))
    if len(samples) != n:
        raise ValueError(f"dataset {name!r} returned {len(samples)} samples, {n} were requested")
    return samples


def check_task_samples(task: str, dataset: str, samples: Sequence[Any]) -> None:
    """--task ocr needs ImageSamples, --task retrieval TextSamples: refuse a mismatch before any scoring."""
    wanted = TASK_SAMPLES[task]
    classes = [samples.kind] if isinstance(samples, LazySamples) else [type(s) for s in samples]
    wrong = [c for c in classes if not issubclass(c, getattr(kinds, wanted))]
    if wrong:
        given = wrong[0].__name__
        other = [t for t, kind in TASK_SAMPLES.items() if issubclass(wrong[0], getattr(kinds, kind))]
        hint = f"use --task {other[0]}, or " if other else ""
        raise UsageError(f"--task {task} scores {wanted}s, but dataset {dataset!r} gives "
                         f"{given}s; {hint}pick a dataset of {wanted}s "
                         f"({'passkey, niah' if task == 'ocr' else 'passkey-text, niah-text'})")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError as error:
        raise UsageError(f"--shard {text!r}: expected RANK/WORLD, e.g. 0/2") from error
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"--shard {text!r}: need WORLD >= 1 and RANK in 0..WORLD-1, e.g. 0/2 and 1/2")
    return rank, world


def check_score_args(args: argparse.Namespace) -> None:
    """Ranges of the numeric options (argparse checks the types and choices)."""
    if not 0.0 <= args.min_overlap < 1.0:
        raise UsageError(f"--min-overlap {args.min_overlap}: must be in [0, 1), the share of an image token's area "
                         "a box must cover (default 0.001)")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1 (default 32)")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: must be >= 0 (samples to score in this call)")
    if args.fault_retries < 0:
        raise UsageError(f"--fault-retries {args.fault_retries}: must be >= 0 (default 2)")
    if args.passes == 1 and args.answer_source != "generate":
        raise UsageError("--passes 1 records the rows while generating; it needs --answer-source generate")
    if args.task == "ocr" and args.variant != "wu":
        raise UsageError(f"--variant {args.variant} is a retrieval option; drop it for --task ocr")
    if args.task == "retrieval" and args.mode != "fine":
        raise UsageError(f"--mode {args.mode} is an OCR option; drop it for --task retrieval")
    _parse_shard(args.shard)


def build_first(samples: Sequence[Any], args: argparse.Namespace, batch: Any) -> None:
    """A lazy set: build the first sample this call will score before the model loads, so bad dataset
    arguments fail at once (as an eager set does), and hold it for scoring (built once). Samples already
    done are never built; with `accelerate launch` the first pending sample may belong to another process."""
    if not isinstance(samples, LazySamples) or args.limit == 0:
        return
    done = {} if args.overwrite or args.no_resume else batch.done_records(args.out, args.retry_failures)
    shard = _parse_shard(args.shard)
    order = range(len(samples)) if shard is None else range(shard[0], len(samples), shard[1])
    first = next((i for i in order if samples.ids[i] not in done), None)
    if first is not None:
        samples.hold(first)


def cmd_score(args: argparse.Namespace) -> int:
    check_score_args(args)
    # torch and the scorers are imported here, not at the top, so `--help`, merge and summary start torch-free
    import torch

    from ocrheads_lib.scoring.ocr import ocr_meta, score_ocr_sample
    from ocrheads_lib.scoring.retrieval import default_row, retrieval_meta, score_retrieval_sample
    from ocrheads_lib.scoring.runs import load_scoring_model

    torch.set_flush_denormal(True)

    samples = load_dataset(args.dataset, args.n, args.seed, args.dataset_arg)
    check_task_samples(args.task, args.dataset, samples)
    build_first(samples, args, batch)
    lm = load_scoring_model(args.model, device=args.device, dtype=args.dtype, seed=args.model_seed)
    common = dict(answer_source=args.answer_source, max_new_tokens=args.max_new_tokens, weighting=args.weighting)
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
    meta = replace(meta, dataset_args=parse_dataset_args(args.dataset_arg),
                   model_seed=args.model_seed if args.model.startswith("tiny-random-") else None)
    scores = batch.run(samples, scorer, meta, args.out, resume=not args.no_resume, overwrite=args.overwrite,
                       retry_failures=args.retry_failures, fault_retries=args.fault_retries,
                       shard=_parse_shard(args.shard), limit=args.limit, progress=args.progress,
                       log=lambda message: print(message, file=sys.stderr))
    if scores is not None:
        print(f"{args.out}: {len(scores.samples)} samples scored, {len(scores.failures)} failed "
              f"{scores.failure_counts() or ''}".rstrip())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    scores = batch.merge(args.out)
    print(f"{args.out}: {len(scores.samples)} samples, {len(scores.failures)} failures")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    print(json.dumps(summary(load_scores(args.path), threshold=args.threshold), indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)   # --debug before or after the command
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="python -m ocrheads_lib", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", parents=[common],
                           help="score every head of a model on a dataset (resumable, shardable)")
    score.add_argument("--model", required=True, help='"tiny", "smollm2", a hub id, a local folder, or tiny-random-<family>')
    score.add_argument("--task", required=True, choices=("ocr", "retrieval"))
    score.add_argument("--dataset", required=True,
                       help="generator name (passkey, niah, passkey-text, niah-text: built one sample at a time) or "
                            "module:function / file.py:function (all n samples built up front)")
    score.add_argument("--n", type=int, required=True, help="number of samples (>= 1)")
    score.add_argument("--out", required=True, help="output JSON (per-sample JSONL goes to <out>.parts/)")
    score.add_argument("--seed", type=int, default=0, help="dataset seed")
    score.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE")
    score.add_argument("--mode", choices=("fine", "coarse"), default="fine", help="OCR: box per unit or one box")
    score.add_argument("--variant", choices=("wu", "paper-code"), default="wu", help="retrieval score variant")
    score.add_argument("--row", choices=("emit", "consume"), default=None,
                       help="attention row per answer token (default: emit; paper-code retrieval: consume)")
    score.add_argument("--min-overlap", type=float, default=0.001, help="in [0, 1): share of a token a box covers")
    score.add_argument("--answer-source", choices=("generate", "gold"), default="generate")
    score.add_argument("--weighting", choices=("chars", "paper-ids"), default="chars",
                       help="sample weight of a generated answer: share of the gold characters written (default) "
                            "or the paper's token-id match score")
    score.add_argument("--max-new-tokens", type=int, default=32)
    score.add_argument("--passes", type=int, choices=(1, 2), default=2,
                       help="2: generate, then a teacher-forced probe pass; 1: record the rows while generating")
    score.add_argument("--device", default="auto", help='"auto" (cuda when available, else cpu), "cpu", "cuda", ...')
    score.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, "
                       "bfloat16 on CUDA)")
    score.add_argument("--model-seed", type=int, default=0, help="seed of a tiny-random model")
    score.add_argument("--overwrite", action="store_true",
                       help="discard any previous run at --out (its parts and merged file) and start over")
    score.add_argument("--no-resume", action="store_true", help="same as --overwrite")
    score.add_argument("--retry-failures", action="store_true", help="rescore the samples recorded as failures")
    score.add_argument("--fault-retries", type=int, default=2,
                       help="attempts after a fault (out of memory, device error) before the run stops")
    score.add_argument("--shard", default=None, metavar="RANK/WORLD", help="score one shard only (merge later)")
    score.add_argument("--limit", type=int, default=None, help="stop after this many samples (per process)")
    score.add_argument("--progress", action="store_true")
    score.set_defaults(func=cmd_score)

    merge = sub.add_parser("merge", parents=[common], help="merge the shard files of a finished run")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=cmd_merge)

    summary = sub.add_parser("summary", parents=[common], help="headline numbers of a score file (ours or official)")
    summary.add_argument("path")
    summary.add_argument("--threshold", type=float, default=0.1)
    summary.set_defaults(func=cmd_summary)
    return parser


def exit_code(error: BaseException) -> int:
    """2 for bad arguments or inputs (the user can fix the command), 130 for an interrupt, 1 otherwise."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPT
    if isinstance(error, FaultError):
        return EXIT_ERROR
    if isinstance(error, (ValueError, TypeError, LookupError, FileNotFoundError, NotImplementedError)):
        return EXIT_USAGE
    return EXIT_ERROR


def one_line(error: BaseException) -> str:
    """`error` as one line: its type and the first line of its message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, KeyboardInterrupt):
        message = message or "interrupted; re-run the same command to resume"
    return f"error: {type(error).__name__}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; an error prints one line on stderr and returns its exit code (``--debug``: the
    traceback is printed too)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - every error becomes one line + exit code
        if args.debug:
            traceback.print_exc()
        print(one_line(error) + ("" if args.debug else "  (--debug shows the traceback)"), file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
