"""The chapters' parameters: read from a notebook's ``parameters`` cell, checked before any work.

A chapter declares its parameters in its first code cell (plain assignments, papermill's ``parameters``
tag). Two callers check values against those declarations, with one set of rules:

* :func:`ocrheads_lib.chapter.setup`, the first call of every chapter: the names papermill injected must be
  declared (a misspelt ``-p n_sample 3`` is an error naming ``n_samples``, where papermill only prints
  "Passed unknown parameter"), and every value must have its default's type and lie in its range
  (:data:`RULES`) — before the chapter writes anything;
* :mod:`ocrheads_lib.bookbuild`, before any chapter runs: every key of ``book/params.yml`` must be a
  parameter of the chapters it goes to, every chapter name a notebook, every value valid.

Errors (:class:`ParameterError`) name the parameter, the value, the valid range and, for an unknown name,
the nearest valid one (``difflib.get_close_matches``).
"""
from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INJECTED_HEADER = "# Parameters"   # papermill's first line of the cell it injects


class ParameterError(ValueError):
    """A chapter parameter (or a book/params.yml entry) is unknown, of the wrong type, or out of range."""


def nearest(name: str, valid: Sequence[str]) -> str:
    """" (did you mean 'n_samples'?)" for the closest valid name, or a list of the valid names."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(valid))})"


def declared_parameters(source: str, where: str = "the parameters cell") -> dict[str, Any]:
    """name -> default value of a parameters cell (plain assignments of literals; anything else raises)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ParameterError(f"{where} is not valid Python: {error.msg} (line {error.lineno})") from error
    out: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParameterError(f"{where}: line {node.lineno} is not 'name = literal'; a parameters cell holds "
                                 "plain assignments only")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as error:
            raise ParameterError(f"{where}: {node.targets[0].id} is not a literal value") from error
    return out


def notebook_parameters(path: Any) -> dict[str, Any]:
    """The declared parameters (name -> default) of a notebook file: its first code cell."""
    import json
    from pathlib import Path

    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        raise ParameterError(f"{path}: the first code cell must be tagged 'parameters'")
    return declared_parameters("".join(code[0]["source"]), f"{Path(path).name}: parameters cell")


# ------------------------------------------------------------------------------------------ value rules
def _int_at_least(low: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"must be an integer >= {low}"
        return ""
    return check


def _int_list(low: int | None, allow_none: bool = False, distinct: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value is None and allow_none:
            return ""
        what = "a non-empty list of " + ("distinct " if distinct else "") + \
            ("integers" if low is None else f"integers >= {low}") + (", or None" if allow_none else "")
        if not isinstance(value, (list, tuple)) or not value:
            return f"must be {what}"
        if any(isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low) for v in value):
            return f"must be {what}"
        if distinct and len(set(value)) != len(value):
            return f"must be {what}"
        return ""
    return check


def _fractions(value: Any) -> str:
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0 for v in value):
        return "must be a non-empty list of numbers in [0, 1]"
    return ""


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        return "" if value in choices else f"must be one of {', '.join(map(repr, choices))}"
    return check


def _device(value: Any) -> str:
    if isinstance(value, str) and (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        return ""
    return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _task_names(value: Any) -> str:
    from ocrheads_lib.data import DATASETS   # imported here: the rules table stays cheap to import

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        return f"must be a non-empty list of task names ({', '.join(sorted(DATASETS))})"
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        return f"names the unknown task {unknown[0]!r}{nearest(unknown[0], list(DATASETS))}"
    return ""


def _non_empty_text(value: Any) -> str:
    return "" if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _text_list(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
        return ""
    return "must be a list of model names"


_COUNTS = ("n_samples", "causal_n", "sink_n", "text_n", "n_scoring_samples", "text_scoring_samples", "text_samples",
           "n_boot", "top", "k", "text_k", "grounding_heads", "max_new_tokens", "text_max_new_tokens",
           "max_new_tokens_cot", "free_context_chars", "width", "max_grid_heads", "top_k", "picker_heads")

# parameter name -> check(value) -> "" or what is wrong (the valid range); names not listed get the type check only
RULES: dict[str, Callable[[Any], str]] = {
    **{name: _int_at_least(1) for name in _COUNTS},
    "n_grounding": _int_at_least(0),
    "seed": _int_at_least(0),
    "model_id": _non_empty_text,
    "text_model_id": _non_empty_text,
    "results_dir": _non_empty_text,
    "characters": _non_empty_text,
    "device": _device,
    "ks": _int_list(1, allow_none=True),
    "causal_ks": _int_list(1),
    "random_seeds": _int_list(0, distinct=True),
    "causal_seeds": _int_list(0, distinct=True),
    "text_seeds": _int_list(0, distinct=True),
    "betas": _fractions,
    "text_betas": _fractions,
    "answer_source": _one_of("auto", "generate", "gold"),
    "mode": _one_of("fine", "coarse"),
    "layout": _one_of("grid", "free"),
    "sink_key": _one_of("first", "max"),
    "selection_rule": _one_of("readme", "paper-code"),
    "tasks_to_run": _task_names,
    "causal_tasks": _task_names,
    "text_task": _task_names,
    "compare_models": _text_list,
}


def _type_problem(value: Any, default: Any) -> str:
    """What is wrong with `value`'s type given the declared default ("" when it fits; None accepts anything)."""
    if default is None:
        return ""
    if isinstance(default, bool):
        return "" if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return "" if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return "" if ok else "must be a finite number"
    if isinstance(default, str):
        return "" if isinstance(value, str) else "must be a string"
    if isinstance(default, (list, tuple)):
        return "" if isinstance(value, (list, tuple)) else "must be a list"
    return ""


def check_values(values: Mapping[str, Any], declared: Mapping[str, Any], where: str) -> None:
    """ParameterError for the first value of `values` that is not declared, has another type than its
    default, or breaks its rule in :data:`RULES`."""
    for name, value in values.items():
        if name not in declared:
            raise ParameterError(f"{where}: unknown parameter {name!r}{nearest(name, list(declared))}")
        problem = RULES[name](value) if name in RULES else _type_problem(value, declared[name])
        if problem:
            raise ParameterError(f"{where}: parameter {name} = {value!r} {problem}; "
                                 f"e.g. -p {name} {declared[name]!r} (its default)")


def check_injected(declared_source: str, injected_source: str | None, values: Mapping[str, Any],
                   where: str = "this chapter") -> None:
    """The check of a running chapter: names in papermill's injected cell must be declared in the parameters
    cell, and every declared parameter's current value (from `values`, the notebook's namespace) must be valid."""
    declared = declared_parameters(declared_source, f"{where}: parameters cell")
    injected = declared_parameters(injected_source, f"{where}: injected parameters") if injected_source else {}
    unknown = [name for name in injected if name not in declared]
    if unknown:
        raise ParameterError(f"{where}: unknown parameter {unknown[0]!r}{nearest(unknown[0], list(declared))}; "
                             "nothing was run or written")
    check_values({name: values[name] for name in declared if name in values}, declared, where)
