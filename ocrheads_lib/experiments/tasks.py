"""The evaluation tasks of the experiment chapters, by name, built with :mod:`ocrheads_lib.data`.

    tasks, skipped = build_tasks(["passkey_image", "passkey_text", "synthetic_docs", "docvqa"], n=8, seed=0)

Names (any name of ``ocrheads_lib.data.DATASETS``): ``passkey_image`` (pass key on a rendered page,
accuracy), ``passkey_text`` (the same needle as plain text, accuracy), ``niah_image`` / ``niah_text``,
``synthetic_docs`` (offline document pages with QA pairs: ANLS / EM / F1), ``docvqa`` / ``mpdocvqa`` /
``nq`` / ``hotpotqa`` (local copies of the hub datasets). A dataset that is not available here is
*skipped* with the loader's reason (returned to the caller, never silently dropped).

Defaults per task (:data:`TASK_OPTIONS`, overridable): synthetic documents use the grid layout, the one
the embedded model was trained to read; everything else uses the data module's defaults.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ocrheads_lib import data

TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "synthetic_docs": {"layout": "grid"},
}


def build_tasks(names: Sequence[str] | Mapping[str, Any], n: int, seed: int = 0,
                options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """(tasks, skipped): task label -> the first n samples, and task label -> why it was skipped.

    names: dataset names (the label is the name), or a mapping label -> dataset name or (dataset name, options),
    e.g. ``{"passkey_text_100": ("passkey_text", {"context_chars": 100})}`` to run a variant under its own label.
    options: per-label keyword arguments for the data function, merged over :data:`TASK_OPTIONS` and the
    mapping's own options (e.g. ``{"passkey_text": {"context_chars": 400}}``). Unknown names raise ValueError.
    """
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    if isinstance(names, Mapping):
        for label, spec in names.items():
            name, extra = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
            specs[str(label)] = (name, extra)
    else:
        specs = {str(name): (str(name), {}) for name in names}
    tasks: dict[str, list[Any]] = {}
    skipped: dict[str, str] = {}
    for label, (name, extra) in specs.items():
        kwargs = {**TASK_OPTIONS.get(name, {}), **extra, **dict((options or {}).get(label, {}))}
        try:
            samples = data.load_dataset_by_name(name, n, seed=seed, **kwargs)
        except data.DatasetUnavailableError as error:
            skipped[label] = str(error).splitlines()[0] if str(error) else type(error).__name__
            continue
        tasks[label] = list(samples)[:n]
    return tasks, skipped
