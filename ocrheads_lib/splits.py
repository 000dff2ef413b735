"""Disjoint data splits: heads are chosen on one set of samples and tested on another.

A head set picked on the very samples an experiment then measures would be graded on its own exam. So
scoring (which heads are OCR / retrieval heads) reads the *selection* split, and every experiment that
uses those heads (masking, sink, chain-of-thought, case study, grounding, static activation) reads the
*evaluation* split. The two are told apart by generator seed: every generated sample depends on
(seed, index) alone and its id names the seed ("passkey-3-7"), so two disjoint seed ranges give two
disjoint sets of samples.

    splits = Splits()                                         # selection seeds 0..0, evaluation 1000..1000
    chosen = splits.samples("selection", "passkey_image", n=40)
    tested = splits.samples("evaluation", "passkey_image", n=200)
    check_disjoint(chosen, tested)                            # raises SplitOverlapError on a shared id
    splits.key()                                              # "sel0+1_eval1000+1": part of a run identity

A split of several seeds takes its n samples round-robin over its seeds (sample j comes from seed
``first_seed + j % n_seeds``, index ``j // n_seeds``), so growing n never changes the samples already drawn.
Hub datasets that ignore the seed (DocVQA and the like) would give the same ids in both splits:
:meth:`Splits.samples_pair` / :func:`check_disjoint` refuse them instead of silently reusing samples.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SPLIT_NAMES = ("selection", "evaluation")


class SplitOverlapError(ValueError):
    """A sample id is in both the selection and the evaluation split."""


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Split:
    """A range of generator seeds: ``first_seed, first_seed + 1, ..., first_seed + n_seeds - 1``."""

    first_seed: int
    n_seeds: int = 1

    def __post_init__(self) -> None:
        _check_int(self.first_seed, "Split.first_seed", 0)
        _check_int(self.n_seeds, "Split.n_seeds", 1)

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.n_seeds)

    def overlaps(self, other: "Split") -> bool:
        return max(self.first_seed, other.first_seed) < min(self.seeds.stop, other.seeds.stop)

    def plan(self, n: int) -> list[tuple[int, int]]:
        """(seed, index) of the n samples of this split, round-robin over its seeds."""
        n = _check_int(n, "n", 0)
        return [(self.first_seed + j % self.n_seeds, j // self.n_seeds) for j in range(n)]

    def key(self) -> str:
        return f"{self.first_seed}+{self.n_seeds}"


@dataclass(frozen=True)
class Splits:
    """The selection and the evaluation split of one run. Their seed ranges must not overlap."""

    selection: Split = field(default_factory=lambda: Split(0))
    evaluation: Split = field(default_factory=lambda: Split(1000))

    def __post_init__(self) -> None:
        if self.selection.overlaps(self.evaluation):
            raise SplitOverlapError(
                f"the selection seeds {list(self.selection.seeds)} and evaluation seeds "
                f"{list(self.evaluation.seeds)} overlap; heads would be tested on the samples that chose them. "
                f"Give the evaluation split seeds from {self.selection.seeds.stop} on, e.g. "
                f"Splits(Split({self.selection.first_seed}, {self.selection.n_seeds}), "
                f"Split({max(1000, self.selection.seeds.stop)}))")

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {name!r}")
        return self.selection if name == "selection" else self.evaluation

    def key(self) -> str:
        """A short, stable, file-name-safe key, e.g. ``sel0+1_eval1000+1`` (part of a run identity)."""
        return f"sel{self.selection.key()}_eval{self.evaluation.key()}"

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: {"first_seed": s.first_seed, "n_seeds": s.n_seeds}
                for name, s in (("selection", self.selection), ("evaluation", self.evaluation))}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Mapping[str, int]]) -> "Splits":
        return cls(Split(**payload["selection"]), Split(**payload["evaluation"]))

    def samples(self, name: str, task: str, n: int, **options: Any) -> list[Any]:
        """The n samples of dataset `task` in split `name` ("selection" or "evaluation"); `options` go to the
        generator (see :func:`ocrheads_lib.data.load_dataset_by_name`)."""
        return split_samples(self.split(name), task, n, **options)

    def samples_pair(self, task: str, n_selection: int, n_evaluation: int,
                     **options: Any) -> tuple[list[Any], list[Any]]:
        """(selection samples, evaluation samples) of one task, checked disjoint (:func:`check_disjoint`)."""
        chosen = self.samples("selection", task, n_selection, **options)
        tested = self.samples("evaluation", task, n_evaluation, **options)
        check_disjoint(chosen, tested, task)
        return chosen, tested


def split_samples(split: Split, task: str, n: int, **options: Any) -> list[Any]:
    """n samples of dataset `task` from the seeds of `split`, round-robin (see :meth:`Split.plan`)."""
    from ocrheads_lib import data   # the data package is heavy (fonts, PIL); import on use

    plan = split.plan(n)
    per_seed = math.ceil(n / split.n_seeds) if n else 0
    by_seed: dict[int, list[Any]] = {}
    for seed in sorted({seed for seed, _ in plan}):
        by_seed[seed] = list(data.load_dataset_by_name(task, per_seed, seed=seed, **options))
    out = []
    for seed, index in plan:
        got = by_seed[seed]
        if index >= len(got):
            raise ValueError(f"dataset {task!r} gave only {len(got)} samples for seed {seed}, but the split needs "
                             f"{per_seed}; lower n or use more seeds (Split(first_seed, n_seeds))")
        out.append(got[index])
    return out


def sample_ids(samples: Iterable[Any]) -> list[str]:
    """The ids of samples (objects with an ``id``) or the strings themselves."""
    return [str(s) if isinstance(s, str) else str(s.id) for s in samples]


def check_disjoint(selection: Iterable[Any], evaluation: Iterable[Any], task: str = "") -> None:
    """Raise :class:`SplitOverlapError` naming the shared ids when a sample (or id) is in both splits."""
    shared = sorted(set(sample_ids(selection)) & set(sample_ids(evaluation)))
    if shared:
        where = f" of task {task!r}" if task else ""
        raise SplitOverlapError(
            f"{len(shared)} sample id(s){where} are in both the selection and the evaluation split "
            f"(e.g. {shared[:3]}); the heads would be tested on samples that chose them. Use disjoint seed "
            "ranges (Splits(selection=Split(0), evaluation=Split(1000))) or, for a dataset that ignores the seed, "
            "disjoint index ranges")


def check_tasks_disjoint(selection: Mapping[str, Sequence[Any]], evaluation: Mapping[str, Sequence[Any]]) -> None:
    """:func:`check_disjoint` across every task: no id of any selection task may appear in any evaluation task."""
    chosen = [i for samples in selection.values() for i in sample_ids(samples)]
    tested = [i for samples in evaluation.values() for i in sample_ids(samples)]
    check_disjoint(chosen, tested)
