"""The sliding-window study of chapter 03 ("A second language model") as shipped records.

Scoring Gemma 3's heads at two context lengths and masking them (Wu's causal test) takes hours on a CPU at full
size, so the per-sample results ship in ``records/`` (:mod:`ocrheads_lib.records`) and chapter 03 reads them
when its parameter ``gemma_records`` names the file. Heads are ranked on the *selection* split (scoring
samples of seed ``splits.selection``) and masked on the *evaluation* split (held-out samples of seed
``splits.evaluation``); the identity holds both, the weights (``lm.revision``), the settings and their
definitions (``contexts``: a hash of the :class:`~ocrheads_lib.experiments.window.ContextSetting` fields).

Records, keyed (task, condition, id) like every records file::

    {"task": "model", "condition": "facts", "id": <model>, "n_layers", "n_heads", "global_layers"}
    {"task": "passkey_<length>", "condition": "scores", "id", "order", "weight", "n_rows", "hits", "info",
     "failure": null}                                   # one scored sample ("failure": reason, no hits, if it failed)
    {"task": "passkey_<length>", "condition": <cache key>, "head_set", "k", "seed", "heads", "id", "golds",
     "prediction", "failure", "scores"}                 # one answer of the causal test (shipped.record_of)

``order`` is the sample's place in its score file: head means are summed in that order, so the ranking (and with
it every masked head set) is rebuilt exactly. Three ways in:

* :func:`from_results` converts a results folder written by :func:`~ocrheads_lib.experiments.window.score_at_length`
  and :func:`~ocrheads_lib.experiments.window.causal_at_length` (score files and prediction caches) into a
  records file, refusing incomplete or mismatched inputs;
* :func:`regenerate` runs those two functions (resumable: a score file whose run matches is reused, every
  condition's answers are cached per sample) into a work folder and converts it;
* :func:`audit_file` recomputes a seeded subset (a sample's head scores at its length, or an answer under its
  masked heads) and compares bytes; stale weights or settings raise
  :class:`~ocrheads_lib.records.StaleRecordsError` naming the regeneration command.

:func:`load_results` gives the chapter what it shows: score sets per length, the causal test's table,
per-sample accuracies for :func:`ocrheads_lib.nulls.control_test`, and the model's global layers.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ocrheads_lib.experiments.evaluate import Prediction, primary_metric, summarize
from ocrheads_lib.experiments.masking import mask_conditions
from ocrheads_lib.experiments.shipped import recompute_prediction, record_of
from ocrheads_lib.experiments.sweep import BASELINE, LAYER_MATCHED, RANDOM, Condition, prediction_cache
from ocrheads_lib.experiments.window import LONG, SHORT, ContextSetting, ScorecardRow, causal_heads, causal_task, \
    scorecard_row, window_sample_id, window_sample_index
from ocrheads_lib.paths import model_slug
from ocrheads_lib.records import AuditReport, RunIdentity, StaleRecordsError, audit, canonical, load, read_records, \
    regeneration_command, write_records
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta
from ocrheads_lib.splits import Split, Splits, check_disjoint

EXPERIMENT = "window"
SETTINGS = {s.name: s for s in (SHORT, LONG)}   # the lengths a records file may hold, by name
SCORES = "scores"                               # condition of the score records
FACTS_TASK, FACTS = "model", "facts"            # task and condition of the model-facts record
VARIANT, ROW = "wu", "emit"                     # the retrieval score of the study (window.score_at_length)
CACHE_EXPERIMENT = "masking"                    # prediction caches of causal_at_length (run_masking)
DEFAULT_SPLITS = Splits(Split(0), Split(100))   # scoring seed 0, held-out causal samples of seed 100
ARCHIVE = "records/gemma3-270m_window.jsonl.gz"
CONTROL_LABELS = {RANDOM: "random", LAYER_MATCHED: "layer-matched random"}


class IncompleteResultsError(ValueError):
    """A results folder lacks part of a run (a score file, a condition, some answers)."""


def contexts_key(settings: Sequence[ContextSetting]) -> str:
    """12 hex digits of the settings' definitions (name, length, needle distance, depths): records made with
    other definitions are stale even when the names agree."""
    payload = canonical([dataclasses.asdict(s) for s in settings])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _positive_ints(values: Sequence[int], what: str, minimum: int) -> tuple[int, ...]:
    out = tuple(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in out):
        raise ValueError(f"WindowRun.{what} must be a non-empty list of integers >= {minimum}, got {values!r}")
    return out


@dataclass(frozen=True)
class WindowRun:
    """The parameters of one run of the study (all of them part of its identity)."""

    settings: tuple[str, ...] = ("short", "long")          # lengths scored (names of SETTINGS)
    causal_settings: tuple[str, ...] = ("short", "long")   # lengths with the causal test (a subset of settings)
    n_select: int = 200                                    # scoring samples per length (selection split)
    n_eval: int = 100                                      # held-out samples per length in the causal test
    ks: tuple[int, ...] = (2, 4, 8)
    control_seeds: tuple[int, ...] = (0, 1, 2)             # one random and one layer-matched draw per seed
    max_new_tokens: int = 8
    splits: Splits = DEFAULT_SPLITS

    def __post_init__(self) -> None:
        for name in ("settings", "causal_settings"):
            names = tuple(str(s) for s in getattr(self, name))
            unknown = [s for s in names if s not in SETTINGS]
            if unknown or len(set(names)) != len(names):
                raise ValueError(f"WindowRun.{name} must be distinct names of {sorted(SETTINGS)}, got {names}")
            object.__setattr__(self, name, names)
        if not self.settings:
            raise ValueError("WindowRun.settings must name at least one length, e.g. ('short', 'long')")
        extra = [s for s in self.causal_settings if s not in self.settings]
        if extra:
            raise ValueError(f"WindowRun.causal_settings {extra} are not scored (settings {self.settings}): the causal "
                             "test masks heads ranked at the same length")
        for name in ("n_select", "n_eval", "max_new_tokens"):
            _positive_ints([getattr(self, name)], name, 1)
        object.__setattr__(self, "ks", _positive_ints(self.ks, "ks", 1))
        seeds = _positive_ints(self.control_seeds, "control_seeds", 0)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"WindowRun.control_seeds must be distinct, got {seeds}")
        object.__setattr__(self, "control_seeds", seeds)
        if self.splits.selection.n_seeds != 1 or self.splits.evaluation.n_seeds != 1:
            raise ValueError(f"WindowRun.splits must hold one seed per split (window samples are drawn from one seed), "
                             f"got {self.splits.as_dict()}; e.g. Splits(Split(0), Split(100))")

    @property
    def selection_seed(self) -> int:
        return self.splits.selection.first_seed

    @property
    def evaluation_seed(self) -> int:
        return self.splits.evaluation.first_seed

    def contexts(self) -> list[ContextSetting]:
        return [SETTINGS[name] for name in self.settings]

    def params(self) -> dict[str, Any]:
        return {"settings": list(self.settings), "causal_settings": list(self.causal_settings),
                "contexts": contexts_key(self.contexts()), "n_select": self.n_select, "n_eval": self.n_eval,
                "ks": list(self.ks), "control_seeds": list(self.control_seeds), "max_new_tokens": self.max_new_tokens}

    def identity(self, model_id: str, weights: str) -> RunIdentity:
        return RunIdentity(model_id, weights, EXPERIMENT, self.params(), self.splits)

    @classmethod
    def from_identity(cls, identity: RunIdentity) -> "WindowRun":
        """The run a records file was made with, its settings taken from today's definitions (so an identity
        built from it differs from the file's when the definitions changed)."""
        if identity.experiment != EXPERIMENT:
            raise ValueError(f"these records come from the {identity.experiment!r} experiment, not {EXPERIMENT!r}")
        p = identity.params
        return cls(tuple(p["settings"]), tuple(p["causal_settings"]), int(p["n_select"]), int(p["n_eval"]),
                   tuple(p["ks"]), tuple(p["control_seeds"]), int(p["max_new_tokens"]), identity.splits)


@dataclass(frozen=True)
class ModelFacts:
    """What the records need to know about the model: its size, weights and global layers."""

    model_id: str
    weights: str
    n_layers: int
    n_heads: int
    global_layers: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        return {"task": FACTS_TASK, "condition": FACTS, "id": self.model_id, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "global_layers": list(self.global_layers)}


def facts_of(lm: Any) -> ModelFacts:
    """The facts of a loaded model (weights: ``lm.revision``; global layers from its config)."""
    from ocrheads_lib.experiments.window import layer_kinds

    global_layers, _ = layer_kinds(lm)
    return ModelFacts(str(lm.model_id), str(lm.revision or "unversioned"), int(lm.n_layers), int(lm.n_heads),
                      tuple(global_layers))


def gemma_facts() -> ModelFacts:
    """Gemma 3 270M's facts from its converted folder, without loading the weights (the revision is the one
    ``load_model`` gives, :func:`ocrheads_lib.models.loading.folder_revision`)."""
    import json

    from ocrheads_lib.models.gemma3 import MODEL_ID, ensure_gemma3
    from ocrheads_lib.models.loading import folder_revision

    folder = ensure_gemma3(verbose=False)
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    types = config["layer_types"]
    return ModelFacts(MODEL_ID, str(folder_revision(folder) or "unversioned"), int(config["num_hidden_layers"]),
                      int(config["num_attention_heads"]),
                      tuple(i for i, t in enumerate(types) if t == "full_attention"))


# --------------------------------------------------------------------------- records from a results folder
def score_record(task: str, order: int, result: SampleScore | Failure) -> dict[str, Any]:
    """The record of one scored (or failed) sample, `order` its place in the score file."""
    if isinstance(result, Failure):
        return {"task": task, "condition": SCORES, "id": result.id, "order": int(order), "failure": result.reason}
    payload = result.to_json()
    return {"task": task, "condition": SCORES, **payload, "order": int(order), "failure": None}


def _score_file(results_root: Path, model_id: str, setting: str) -> Path:
    from ocrheads_lib.scoring.runs import score_path

    return score_path(f"{model_id}-{setting}", "retrieval", results_dir=results_root)


def check_score_file(scores: HeadScores, setting: ContextSetting, run: WindowRun, facts: ModelFacts,
                     path: Any = "") -> None:
    """IncompleteResultsError / ValueError naming the field when a score file is not this run's."""
    meta = scores.meta
    want = {"model_id": facts.model_id, "revision": facts.weights, "seed": run.selection_seed, "n": run.n_select,
            "row": ROW, "dataset": f"passkey_text:{setting.name}:{setting.context_chars}",
            "shape": (facts.n_layers, facts.n_heads), "variant": VARIANT, "max_new_tokens": run.max_new_tokens}
    have = {"model_id": meta.model_id, "revision": meta.revision, "seed": meta.seed, "n": meta.n, "row": meta.row,
            "dataset": meta.dataset, "shape": scores.shape, "variant": meta.options.get("variant"),
            "max_new_tokens": meta.options.get("max_new_tokens")}
    wrong = [f"{name} {have[name]!r} (this run: {want[name]!r})" for name in want if have[name] != want[name]]
    if wrong:
        raise ValueError(f"score file {path} belongs to another run: " + "; ".join(wrong))
    ids = [s.id for s in scores.samples] + [f.id for f in scores.failures]
    expected = [window_sample_id(setting.name, run.selection_seed, i) for i in range(run.n_select)]
    if sorted(ids) != sorted(expected):
        raise IncompleteResultsError(f"score file {path} holds {len(ids)} samples, not the {run.n_select} of "
                                     f"{setting.name!r} seed {run.selection_seed}; finish or redo the scoring")


def conditions_for(scores: HeadScores, run: WindowRun, facts: ModelFacts) -> list[Condition]:
    """The causal test's conditions at one length, exactly as causal_at_length builds them from `scores`."""
    return mask_conditions(facts.n_layers, facts.n_heads, causal_heads(scores, run.control_seeds), run.ks)


def prediction_records(results_root: Path, scores: HeadScores, setting: str, run: WindowRun,
                       facts: ModelFacts) -> list[dict[str, Any]]:
    """The causal test's answers at one length from the prediction caches, one record per (condition, sample)."""
    task = causal_task(setting)
    out_dir = Path(results_root) / model_slug(f"{facts.model_id}-{setting}")
    ids = [window_sample_id(setting, run.evaluation_seed, i) for i in range(run.n_eval)]
    records = []
    for condition in conditions_for(scores, run, facts):
        cache = prediction_cache(out_dir, facts.weights, CACHE_EXPERIMENT, task, condition.key, run.max_new_tokens)
        missing = [i for i in ids if cache.get(i) is None]
        if missing:
            raise IncompleteResultsError(
                f"{task} {condition.describe()}: {len(missing)} of {run.n_eval} held-out answers are missing from "
                f"{cache.path} (e.g. {missing[0]}); finish the causal test (window.causal_at_length with n = "
                f"{run.n_eval}, seed = {run.evaluation_seed}) or regenerate")
        records += [record_of(task, condition, cache.get(i)) for i in ids]
    return records


def from_results(results_root: str | Path, out: str | Path, facts: ModelFacts, run: WindowRun) -> Path:
    """Write the records of `run` from a results folder (score files and prediction caches of
    window.score_at_length / causal_at_length under `results_root`); refuses missing or foreign parts."""
    from ocrheads_lib.scoring.store import load_scores

    root = Path(results_root)
    records = [facts.record()]
    for setting in run.contexts():
        path = _score_file(root, facts.model_id, setting.name)
        if not path.is_file():
            raise IncompleteResultsError(f"{path} does not exist: score {setting.name!r} first "
                                         f"(window.score_at_length with n = {run.n_select}) or regenerate")
        scores = load_scores(path)
        check_score_file(scores, setting, run, facts, path)
        task = causal_task(setting.name)
        results = [*scores.samples, *scores.failures]
        records += [score_record(task, order, result) for order, result in enumerate(results)]
        if setting.name in run.causal_settings:
            check_disjoint([r.id for r in results],
                           [window_sample_id(setting.name, run.evaluation_seed, i) for i in range(run.n_eval)], task)
            records += prediction_records(root, scores, setting.name, run, facts)
    return write_records(out, run.identity(facts.model_id, facts.weights), records)


def regenerate(run: WindowRun, out: str | Path, *, model_id: str = "gemma3-270m", work: str | Path | None = None,
               lm: Any = None) -> Path:
    """Score every length and run the causal test (window.score_at_length / causal_at_length) into `work`
    (default ``<out>.parts/<identity key>``), then write the records. Resumable: a score file of the same run
    is reused and every condition's answers are cached per sample, so a stopped run continues; pointing `work`
    at a finished results folder only converts it."""
    from ocrheads_lib.experiments.window import causal_at_length, score_at_length
    from ocrheads_lib.scoring.runs import load_scoring_model

    lm = lm if lm is not None else load_scoring_model(model_id)
    facts = facts_of(lm)
    out = Path(out)
    root = Path(work) if work is not None else out.with_name(out.name + ".parts") / run.identity(
        facts.model_id, facts.weights).key()
    for setting in run.contexts():
        scores = score_at_length(lm, setting, run.n_select, root, seed=run.selection_seed,
                                 max_new_tokens=run.max_new_tokens)
        if setting.name in run.causal_settings:
            causal_at_length(lm, setting, scores, run.n_eval, ks=run.ks, seeds=run.control_seeds,
                             seed=run.evaluation_seed, results_root=root, max_new_tokens=run.max_new_tokens)
    return from_results(root, out, facts, run)


# --------------------------------------------------------------------------- reading
def _setting_of(task: str) -> str:
    name = task[len("passkey_"):] if task.startswith("passkey_") else ""
    if name not in SETTINGS:
        raise ValueError(f"record task {task!r} is not a window length (passkey_<{'|'.join(SETTINGS)}>)")
    return name


@dataclass
class WindowResults:
    """What chapter 03 shows of the study, rebuilt from its records."""

    identity: RunIdentity
    run: WindowRun
    facts: ModelFacts
    scores: dict[str, HeadScores]                      # length -> score set (file order)
    causal: pd.DataFrame                               # the causal test's table (as run_masking returns it)
    accuracy: dict[tuple[str, str, int, int], dict[str, float]] = field(default_factory=dict)
    # (length, head set, k, seed) -> sample id -> accuracy of each causal condition

    def masked(self, setting: str, k: int) -> dict[str, float]:
        return self.accuracy[(setting, "retrieval", k, -1)]

    def draws(self, setting: str, control: str, k: int) -> list[dict[str, float]]:
        return [v for (s, name, kk, seed), v in sorted(self.accuracy.items()) if (s, name, kk) == (setting, control, k)]


def scores_from_records(records: Sequence[Mapping[str, Any]], setting: str, facts: ModelFacts,
                        run: WindowRun) -> HeadScores:
    """One length's score set, samples in their score-file order (the order head means were summed in)."""
    task = causal_task(setting)
    rows = sorted((r for r in records if r["task"] == task and r["condition"] == SCORES), key=lambda r: r["order"])
    meta = ScoreMeta(model_id=facts.model_id, kind="retrieval", n_layers=facts.n_layers, n_heads=facts.n_heads,
                     dataset=f"passkey_text:{setting}:{SETTINGS[setting].context_chars}", seed=run.selection_seed,
                     n=run.n_select, revision=facts.weights, row=ROW,
                     options={"variant": VARIANT, "max_new_tokens": run.max_new_tokens})
    scores = HeadScores(meta=meta)
    for row in rows:
        if row["failure"] is not None:
            scores.failures.append(Failure(str(row["id"]), str(row["failure"])))
        else:
            scores.samples.append(SampleScore.from_json(row))
    return scores.check_shapes()


def causal_table(records: Sequence[Mapping[str, Any]], run: WindowRun, facts: ModelFacts, n_boot: int = 1000,
                 boot_seed: int = 0) -> pd.DataFrame:
    """The causal test's table from its records: the columns run_masking writes (random_pool left empty), one
    row per (length, condition), predictions in sample order so the bootstrap intervals are the run's."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        if record["task"] != FACTS_TASK and record["condition"] != SCORES:
            groups.setdefault((str(record["task"]), str(record["condition"])), []).append(record)
    rank = {BASELINE: 0, "retrieval": 1, RANDOM: 2, LAYER_MATCHED: 3}
    rows = []
    for (task, _), group in sorted(groups.items(), key=lambda item: (
            item[0][0], int(item[1][0]["k"]), rank.get(item[1][0]["head_set"], 9), int(item[1][0]["seed"]))):
        setting = _setting_of(task)
        group = sorted(group, key=lambda r: window_sample_index(str(r["id"]), setting, run.evaluation_seed))
        first = group[0]
        preds = [Prediction(str(r["id"]), r["prediction"], list(r["golds"]), dict(r["scores"]), r["failure"])
                 for r in group]
        metrics = tuple(sorted({m for p in preds for m in p.scores})) or ("accuracy",)
        row = dict(model=f"{facts.model_id}-{setting}", task=task, modality="text", head_set=first["head_set"],
                   k=int(first["k"]), seed=int(first["seed"]), n_masked=len(str(first["heads"]).split()),
                   random_pool="", heads=first["heads"], metric=primary_metric(metrics))
        row.update(summarize(preds, metrics, n_boot=n_boot, boot_seed=boot_seed))
        rows.append(row)
    return pd.DataFrame(rows)


def results_from_records(identity: RunIdentity, records: Sequence[Mapping[str, Any]]) -> WindowResults:
    """A WindowResults of records already read (and checked)."""
    run = WindowRun.from_identity(identity)
    facts_rows = [r for r in records if r["task"] == FACTS_TASK]
    if len(facts_rows) != 1:
        raise ValueError(f"a window records file holds one model-facts record, this one {len(facts_rows)}; regenerate "
                         f"it: {regeneration_command(identity)}")
    f = facts_rows[0]
    facts = ModelFacts(identity.model_id, identity.weights, int(f["n_layers"]), int(f["n_heads"]),
                       tuple(int(x) for x in f["global_layers"]))
    scores = {name: scores_from_records(records, name, facts, run) for name in run.settings}
    return WindowResults(identity, run, facts, scores, causal_table(records, run, facts), accuracy_of(records))


def accuracy_of(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, float]]:
    """(length, head set, k, seed) -> sample id -> accuracy, over the answered causal-test records."""
    accuracy: dict[tuple[str, str, int, int], dict[str, float]] = {}
    for r in records:
        if r["task"] != FACTS_TASK and r["condition"] != SCORES and r["failure"] is None:
            key = (_setting_of(str(r["task"])), str(r["head_set"]), int(r["k"]), int(r["seed"]))
            accuracy.setdefault(key, {})[str(r["id"])] = float(r["scores"]["accuracy"])
    return accuracy


def with_live_causal(results: WindowResults, lm: Any, results_root: str | Path,
                     live: WindowRun) -> tuple[WindowResults, tuple[str, ...]]:
    """`results` with the causal test run now (``live``'s n_eval, ks and draws, held-out seed of the records) at
    the lengths whose records hold none, on the heads ranked on the shipped scores; (results, those lengths).
    Answers are cached under ``<results_root>/shipped-ranking/``, apart from a live run's own folders."""
    from ocrheads_lib.experiments.window import causal_at_length

    missing = tuple(name for name in results.run.settings if name not in results.run.causal_settings)
    if not missing:
        return results, ()
    run = dataclasses.replace(results.run, causal_settings=missing, n_eval=live.n_eval, ks=live.ks,
                              control_seeds=live.control_seeds)
    root = Path(results_root) / "shipped-ranking"
    records: list[dict[str, Any]] = []
    for name in missing:
        causal_at_length(lm, SETTINGS[name], results.scores[name], run.n_eval, ks=run.ks, seeds=run.control_seeds,
                         seed=run.evaluation_seed, results_root=root, max_new_tokens=run.max_new_tokens)
        records += prediction_records(root, results.scores[name], name, run, results.facts)
    merged_run = run if not results.run.causal_settings else dataclasses.replace(
        results.run, causal_settings=results.run.causal_settings + missing)
    causal = pd.concat([results.causal, causal_table(records, run, results.facts)], ignore_index=True)
    return dataclasses.replace(results, run=merged_run, causal=causal,
                               accuracy={**results.accuracy, **accuracy_of(records)}), missing


def expected_identity(found: RunIdentity, weights: str) -> RunIdentity:
    """The identity records of `found`'s run would have today: these weights and today's length definitions."""
    return WindowRun.from_identity(found).identity(found.model_id, weights)


def load_results(path: str | Path, weights: str) -> WindowResults:
    """The study's results from a records file, refused (StaleRecordsError, naming the regeneration command) when
    they were made with other weights than `weights` (``lm.revision`` of the loaded model) or other length
    definitions than today's."""
    found, _ = load(path)
    records = read_records(path, expected_identity(found, weights))
    return results_from_records(found, records)


def scorecard_rows(results: WindowResults, k: int = 8) -> list[ScorecardRow]:
    """The global-vs-local share of the top-k retrieval heads at each length, as scorecard rows."""
    return [scorecard_row(results.scores[name], results.facts.global_layers, name, k) for name in results.run.settings]


# --------------------------------------------------------------------------- audit
def recompute_fn(lm: Any, identity: RunIdentity) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """record -> the same record recomputed on `lm`: the facts from the loaded config, a score record by scoring
    its sample (rebuilt from its length, seed and index) once, an answer by answering its sample under its heads."""
    from ocrheads_lib.experiments.window import window_samples
    from ocrheads_lib.scoring.retrieval import score_retrieval_sample
    from ocrheads_lib.scoring.runs import resolve_answer_source

    run = WindowRun.from_identity(identity)

    def recompute(record: Mapping[str, Any]) -> dict[str, Any]:
        task, condition, sample_id_ = str(record["task"]), str(record["condition"]), str(record["id"])
        if task == FACTS_TASK:
            return facts_of(lm).record()
        setting = _setting_of(task)
        if condition == SCORES:
            index = window_sample_index(sample_id_, setting, run.selection_seed)
            sample = window_samples(lm, SETTINGS[setting], run.n_select, seed=run.selection_seed, indices=[index])[0]
            result = score_retrieval_sample(lm, sample, variant=VARIANT, row=ROW,
                                            answer_source=resolve_answer_source(lm, "auto"),
                                            max_new_tokens=run.max_new_tokens)
            return score_record(task, int(record["order"]), result)
        index = window_sample_index(sample_id_, setting, run.evaluation_seed)
        sample = window_samples(lm, SETTINGS[setting], run.n_eval, seed=run.evaluation_seed, indices=[index])[0]
        return recompute_prediction(lm, sample, record, run.max_new_tokens)

    return recompute


def audit_file(path: str | Path, *, fraction: float = 0.01, seed: int = 0, lm: Any = None) -> AuditReport:
    """Audit a window records file: today's weights and length definitions must be the file's (else
    StaleRecordsError naming the regeneration command), and a seeded subset (one record per condition at least,
    >= `fraction` of all) must recompute byte for byte (else AuditError)."""
    from ocrheads_lib.scoring.runs import load_scoring_model

    found, _ = load(path)
    lm = lm if lm is not None else load_scoring_model(found.model_id)
    weights = str(lm.revision or "unversioned")
    expected = expected_identity(found, weights)
    if found.weights != weights:
        raise StaleRecordsError(f"{path} was made with weights {found.weights} of {found.model_id}, which now has "
                                f"weights {weights}. Regenerate: {regeneration_command(expected, path)}")
    records = read_records(path, expected)
    return audit(records, recompute_fn(lm, found), fraction, seed, regeneration_command(expected, path))


# --------------------------------------------------------------------------- what chapter 03 shows
def for_chapter(lm: Any, records: str | Path | None, results_root: str | Path,
                live: WindowRun) -> tuple[WindowResults, str]:
    """The study's results for chapter 03 and where they come from: the shipped `records` (checked against the
    loaded model's weights, then audited: a seeded 1 % recomputed byte for byte; a length whose records hold no
    causal test gets it live at `live`'s small n, :func:`with_live_causal`), or, when `records` is empty, the
    `live` run computed now into `results_root` and read back through the same records."""
    weights = str(lm.revision or "unversioned")
    if records:
        results = load_results(records, weights)
        report = audit_file(records, lm=lm)
        results, live_lengths = with_live_causal(results, lm, results_root, live)
        note = "; causal test live, small n" if live_lengths else ""
        return results, (f"read from the shipped records ({report.n_records:,} records, {report.n_checked} "
                         f"recomputed now: byte-identical{note})")
    out = Path(results_root) / f"{model_slug(str(lm.model_id))}_window.jsonl.gz"
    regenerate(live, out, work=results_root, lm=lm)
    return load_results(out, weights), (f"computed live at small size ({live.n_select} scoring and {live.n_eval} "
                                        "held-out samples per length)")


def _decided(claim: str, estimate: float, interval: tuple[float, float], null: float, n: int,
             p_value: float | None, **details: Any) -> Any:
    from ocrheads_lib.nulls import Verdict, decide

    word, _ = decide(estimate, interval[0], interval[1], null, n, "greater")   # n counts heads: no n to plan
    return Verdict(claim, float(estimate), float(interval[0]), float(interval[1]), float(null), int(n), word, None,
                   p_value, 0, dict(details))


def share_verdicts(results: WindowResults, top_k: int = 8) -> list[Any]:
    """Per length, the global share of the top-k retrieval heads and of the selected set (the heads the selection
    rule keeps) against chance, as Verdicts: holds when the Clopper-Pearson interval lies above chance; p is the
    exact hypergeometric P(X >= observed); details hold the LayerShare."""
    from ocrheads_lib import heads
    from ocrheads_lib.experiments.window import global_share

    out = []
    f = results.facts
    for name in results.run.settings:
        scores = results.scores[name]
        scores.require_entries("a global-vs-local share")
        ranked = [h for h, _ in heads.ranked(scores)]
        for label, k in ((f"top-{min(top_k, len(ranked))}", min(top_k, len(ranked))),
                         ("selected", len(heads.select(scores)))):
            if k == 0:
                continue
            share = global_share(ranked, f.global_layers, f.n_layers, f.n_heads, k)
            out.append(_decided(f"the {label} retrieval heads sit in global layers more often than chance", share.share,
                                share.interval, share.chance, k, share.p_more, setting=name, heads=label,
                                share=share, n_samples=len(scores.samples)))
    return out


def causal_verdicts(results: WindowResults) -> list[Any]:
    """Wu's causal test per length, k and control (random, layer-matched random): masking the top-k costs more
    accuracy than masking k control heads (:func:`ocrheads_lib.nulls.control_test`, >= 1,000 bootstrap draws over
    the held-out samples answered under every condition). A control that could not be drawn at a k is absent."""
    from ocrheads_lib.nulls import control_test

    out = []
    for name in results.run.causal_settings:
        for k in results.run.ks:
            if (name, "retrieval", k, -1) not in results.accuracy:
                continue
            for control, label in CONTROL_LABELS.items():
                draws = results.draws(name, control, k)
                if not draws:
                    continue
                masked = results.masked(name, k)
                common = set(masked).intersection(*draws)
                verdict = control_test({i: masked[i] for i in common}, [{i: d[i] for i in common} for d in draws],
                                       f"the top-{k} retrieval heads", label)
                verdict.details.update(setting=name, k=k, control=control,
                                       baseline=_mean(results.accuracy.get((name, BASELINE, 0, -1), {}), common))
                out.append(verdict)
    return out


def _mean(values: Mapping[str, float], ids: set[str]) -> float:
    picked = [values[i] for i in ids if i in values]
    return sum(picked) / len(picked) if picked else float("nan")


def verdict_rows(shares: Sequence[Any], causal: Sequence[Any]) -> list[dict[str, str]]:
    """The section's verdict table: one row per claim and length (share of the global layers, causal test)."""
    rows = []
    for v in shares:
        d = v.details
        rows.append({"claim": f"{d['heads']} heads in global layers > chance", "length": f"`{d['setting']}`",
                     "estimate [95 % interval]": f"{v.estimate:.2f} [{v.low:.2f}, {v.high:.2f}]",
                     "null": f"{v.null:.2f}", "n": f"{v.n} heads of {d['n_samples']} samples",
                     "verdict": f"{v.words()} (p = {v.p_value:.2g})"})
    for v in causal:
        d = v.details
        rows.append({"claim": f"top-{d['k']} masked costs more than {CONTROL_LABELS[d['control']]}",
                     "length": f"`{d['setting']}`",
                     "estimate [95 % interval]": f"{v.estimate:+.2f} [{v.low:+.2f}, {v.high:+.2f}]",
                     "null": "0", "n": f"{v.n} held-out samples", "verdict": v.words()})
    return rows


def conclusion_sentences(results: WindowResults, shares: Sequence[Any], causal: Sequence[Any], source: str,
                         model: str = "Gemma 3 270M") -> list[str]:
    """At most three sentences, computed from the run: the held-out rule and source, where the top heads sit
    at each length against chance, and what masking the most heads did at each length."""
    run, f = results.run, results.facts
    out = [f"{model}'s heads were ranked on {run.n_select} scoring samples per length (seed {run.selection_seed}) and "
           f"masked on {run.n_eval} held-out samples (seed {run.evaluation_seed}); the results were {source}."]
    top = [v for v in shares if v.details["heads"].startswith("top-")]
    if top:
        parts = [f"{v.details['share'].in_global} of the {v.details['heads']} retrieval heads at "
                 f"`{v.details['setting']}` (p = {v.p_value:.2g}, {v.verdict})" for v in top]
        out.append(f"The {len(f.global_layers)} global layers of {f.n_layers} (chance {top[0].null:.2f}) hold "
                   + " and ".join(parts) + ".")
    largest = [v for v in causal if v.details["k"] == max(run.ks) and v.details["control"] == LAYER_MATCHED]
    if largest:
        parts = [f"at `{v.details['setting']}` from {v.details['baseline']:.2f} to {v.details['masked']:.2f} "
                 f"(layer-matched draws {v.details['control_mean']:.2f}: {v.verdict})" for v in largest]
        out.append(f"Masking the top-{max(run.ks)} retrieval heads takes pass-key accuracy " + " and ".join(parts)
                   + ".")
    elif run.causal_settings:
        out.append("No layer-matched draw could be made at the largest k, so the causal test has no verdict there.")
    return out
