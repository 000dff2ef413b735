"""Gemma 3's sliding-window study as shipped records (experiments/window_records.py), on planted results folders
(no model): conversion, the rebuilt tables and rankings, refusal of stale or incomplete inputs, the regeneration
command, the causal verdicts and the scorecard rows; and once end to end on the tiny model (score, mask, audit)."""
from __future__ import annotations

import numpy as np
import pytest

from ocrheads_lib import heads, nulls
from ocrheads_lib import records as rec
from ocrheads_lib.experiments import window_records as wr
from ocrheads_lib.experiments.evaluate import Prediction
from ocrheads_lib.experiments.sweep import prediction_cache
from ocrheads_lib.experiments.window import ContextSetting, causal_task, scorecard_row, window_sample_id
from ocrheads_lib.scoring.runs import score_path
from ocrheads_lib.scoring.store import Failure, HeadScores, SampleScore, ScoreMeta
from ocrheads_lib.splits import Split, Splits

FACTS = wr.ModelFacts("planted", "w1", n_layers=6, n_heads=2, global_layers=(2, 5))
RUN = wr.WindowRun(settings=("short", "long"), causal_settings=("short",), n_select=4, n_eval=5, ks=(2,),
                   control_seeds=(0, 1, 2), max_new_tokens=8)


def planted_scores(setting: str, best: list[tuple[int, int]], fail_last: bool = False) -> HeadScores:
    """4 scoring samples; the heads in `best` hit on every row (the first twice as often as the rest)."""
    meta = ScoreMeta(model_id="planted", kind="retrieval", n_layers=6, n_heads=2, seed=0, n=4, revision="w1",
                     dataset=f"passkey_text:{setting}:{wr.SETTINGS[setting].context_chars}", row="emit",
                     options={"variant": "wu", "max_new_tokens": 8, "answer_source": "generate"})
    scores = HeadScores(meta=meta)
    for i in range(4):
        sid = window_sample_id(setting, 0, i)
        if fail_last and i == 3:
            scores.failures.append(Failure(sid, "SampleFailure: the answer misses the key"))
            continue
        hits = np.zeros((6, 2), dtype=np.int64)
        for rank, (layer, head) in enumerate(best):
            hits[layer, head] = 4 if rank == 0 else 2
        hits[0, 0] = i % 2                                  # a little noise in a local layer
        scores.samples.append(SampleScore(sid, 1.0, 4, hits, {"answer": f"{1000 + i}"}))
    return scores


def write_results(root, short_best=((2, 1), (5, 0)), masked_right=False):
    """A finished results folder: score files at both lengths, the causal test's caches at `short` (answers right
    under every control, wrong with the top-k masked unless `masked_right`)."""
    by_setting = {"short": planted_scores("short", list(short_best)),
                  "long": planted_scores("long", [(5, 1), (2, 0), (1, 1)], fail_last=True)}
    for setting, scores in by_setting.items():
        scores.save(score_path(f"planted-{setting}", "retrieval", results_dir=root))
    return by_setting, write_caches(root, "short", by_setting["short"], RUN, masked_right)


def write_caches(root, setting, scores, run, masked_right=False):
    """The causal test's prediction caches at one length, as causal_at_length writes them; returns the conditions."""
    conditions = wr.conditions_for(scores, run, FACTS)
    for condition in conditions:
        cache = prediction_cache(root / f"planted-{setting}", "w1", "masking", causal_task(setting), condition.key, 8)
        for i in range(run.n_eval):
            right = masked_right or condition.head_set != "retrieval"
            cache.put(Prediction(window_sample_id(setting, 100, i), "1234" if right else "99", ["1234"],
                                 {"accuracy": float(right), "em": float(right), "char_sim": 1.0 if right else 0.0}))
    return conditions


def test_results_folder_to_records_and_back(tmp_path):
    planted, conditions = write_results(tmp_path)
    out = tmp_path / "window.jsonl.gz"
    wr.from_results(tmp_path, out, FACTS, RUN)
    first = out.read_bytes()
    wr.from_results(tmp_path, out, FACTS, RUN)
    assert out.read_bytes() == first                                   # canonical: same inputs, same bytes

    results = wr.load_results(out, "w1")
    assert results.facts == FACTS and results.run == RUN
    for setting, scores in planted.items():                            # the ranking is rebuilt exactly
        assert heads.ranked(results.scores[setting]) == heads.ranked(scores)
        assert [s.id for s in results.scores[setting].samples] == [s.id for s in scores.samples]
    assert [f.id for f in results.scores["long"].failures] == ["passkey-text-0-3-long"]

    # baseline, top-2, three random and three layer-matched draws, each on the 5 held-out samples
    table = results.causal
    assert len(conditions) == 8 and len(table) == 8 and set(table.task) == {"passkey_short"}
    assert list(table.head_set) == ["none", "retrieval", "random", "random", "random", "random_layer_matched",
                                    "random_layer_matched", "random_layer_matched"]
    top = table[table.head_set == "retrieval"].iloc[0]
    assert top.heads == "l2_h1 l5_h0" and top.accuracy == 0.0 and top.n == 5
    assert table[table.head_set != "retrieval"].accuracy.eq(1.0).all()
    matched = table[table.head_set == "random_layer_matched"].heads
    assert all(sorted(int(key[1]) for key in h.split()) == [2, 5] for h in matched)   # same layers as the top-2

    verdict = nulls.control_test(results.masked("short", 2), results.draws("short", "random_layer_matched", 2),
                                 "the top-2 retrieval heads", "layer-matched random")
    assert verdict.verdict == "holds" and verdict.estimate == 1.0 and verdict.n == 5 and verdict.n_boot == 1000

    rows = wr.scorecard_rows(results, k=2)           # 2 of 2 in global layers, chance 4 / 12: p = 6 / 66
    assert [r.estimate for r in rows] == [1.0, 0.5] and [r.n for r in rows] == [4, 3]   # long: a tie, layer 1 first
    assert rows[0].verdict.startswith("not distinguishable from chance 0.33 (p = 0.091")


def test_stale_incomplete_and_foreign_inputs_are_refused(tmp_path):
    write_results(tmp_path)
    out = tmp_path / "window.jsonl.gz"
    wr.from_results(tmp_path, out, FACTS, RUN)
    with pytest.raises(rec.StaleRecordsError, match=r"(?s)weights w1 -> w2.*Regenerate: python -m ocrheads_lib\."
                                                    r"records regenerate --model planted --experiment window"):
        wr.load_results(out, "w2")

    # the length definitions changed since the records were made: refused although the names agree
    import dataclasses
    longer = dataclasses.replace(wr.SETTINGS["short"], context_chars=1200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(wr.SETTINGS, "short", longer)
        with pytest.raises(rec.StaleRecordsError, match="params.contexts"):
            wr.load_results(out, "w1")

    cache = next((tmp_path / "planted-short").rglob("head_set=random_layer_matched__k=2__seed=1*.jsonl"))
    cache.write_text("".join(cache.read_text().splitlines(keepends=True)[:-1]))   # one answer missing
    with pytest.raises(wr.IncompleteResultsError, match=r"1 of 5 held-out answers are missing"):
        wr.from_results(tmp_path, out, FACTS, RUN)

    with pytest.raises(ValueError, match=r"revision 'w1' \(this run: 'other'\)"):
        wr.from_results(tmp_path, out, wr.ModelFacts("planted", "other", 6, 2, (2, 5)), RUN)
    with pytest.raises(wr.IncompleteResultsError, match="does not exist"):
        wr.from_results(tmp_path / "empty", out, FACTS, RUN)


def test_the_regeneration_command_rebuilds_the_same_run(tmp_path):
    identity = RUN.identity("gemma3-270m", "a5fd3b62230aa5ec")
    command = identity.command("records/x.jsonl.gz").split("   (or")[0].split()
    assert command[:4] == ["python", "-m", "ocrheads_lib.records", "regenerate"]
    args = rec.parser().parse_args(command[3:])
    splits = Splits(Split(*args.selection_seeds), Split(*args.evaluation_seeds))
    again = wr.WindowRun(tuple(args.settings), tuple(args.causal_settings), args.n_select, args.n_eval,
                         tuple(args.ks), tuple(args.control_seeds), args.max_new_tokens, splits)
    assert args.experiment == "window" and args.contexts == identity.params["contexts"]
    assert again.identity("gemma3-270m", "a5fd3b62230aa5ec").key() == identity.key()


def test_run_parameters_are_checked():
    with pytest.raises(ValueError, match="causal_settings"):
        wr.WindowRun(settings=("short",), causal_settings=("long",))
    with pytest.raises(ValueError, match="distinct names"):
        wr.WindowRun(settings=("short", "medium"))
    with pytest.raises(ValueError, match="one seed per split"):
        wr.WindowRun(splits=Splits(Split(0, 2), Split(100)))
    with pytest.raises(ValueError, match="ks must be"):
        wr.WindowRun(ks=(0,))


def test_control_test_undecided_on_a_tie_and_refuses_misaligned_samples():
    masked = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}
    draws = [{"a": 0.0, "b": 1.0, "c": 1.0, "d": 0.0}]
    verdict = nulls.control_test(masked, draws, "the top-2 heads", "random")
    assert verdict.estimate == 0.0 and verdict.verdict == "undecided"
    assert verdict.words().startswith("undecided at n = 4")
    with pytest.raises(ValueError, match="cover different samples"):
        nulls.control_test(masked, [{"a": 1.0}], "the top-2 heads", "random")
    with pytest.raises(ValueError, match="at least one draw"):
        nulls.control_test(masked, [], "the top-2 heads", "random")


def gemma_shaped(values: np.ndarray) -> HeadScores:
    """One scored sample per row of `values` ((n, 18, 4) hit counts out of 4 rows), Gemma 3's shape."""
    meta = ScoreMeta(model_id="gemma3-270m", kind="retrieval", n_layers=18, n_heads=4)
    return HeadScores(meta=meta, samples=[SampleScore(f"s{i}", 1.0, 4, v) for i, v in enumerate(values)])


def test_scorecard_row_on_planted_scores():
    global_layers = [5, 11, 17]
    values = np.zeros((20, 18, 4), dtype=np.int64)
    for layer in global_layers:                         # the 8 best heads all sit in global layers
        values[:, layer, :3] = 4 if layer == 17 else 3
    values[:, 0, 0] = 1                                  # a weaker local head
    row = scorecard_row(gemma_shaped(values), global_layers, "long", k=8)
    assert row.estimate == 1.0 and row.n == 20 and row.verdict.startswith("more in global layers than chance")
    assert row.interval[0] > 3 / 18

    uniform = scorecard_row(gemma_shaped(np.full((20, 18, 4), 2, dtype=np.int64)), global_layers, "short", k=8)
    assert "not distinguishable from chance 0.17" in uniform.verdict

    with pytest.raises(ValueError, match="no scored samples"):
        scorecard_row(HeadScores(meta=ScoreMeta(model_id="g", kind="retrieval", n_layers=18, n_heads=4)),
                      global_layers, "short")


def test_end_to_end_on_tiny_score_mask_audit(tmp_path, monkeypatch):
    """The whole path on the tiny model with short planted lengths: regenerate (scores, masking), resume without
    answering again, audit byte for byte, catch a tampered record and refuse new weights."""
    from ocrheads_lib.experiments import evaluate as evaluate_module
    from ocrheads_lib.scoring.runs import load_scoring_model

    monkeypatch.setitem(wr.SETTINGS, "short", ContextSetting("short", 240))
    monkeypatch.setitem(wr.SETTINGS, "long", ContextSetting("long", 400, depths=(0.1,)))
    lm = load_scoring_model("tiny")
    run = wr.WindowRun(n_select=2, n_eval=2, ks=(2,), control_seeds=(0,), causal_settings=("short",))
    out = tmp_path / "tiny_window.jsonl.gz"
    wr.regenerate(run, out, lm=lm)
    identity, data = rec.load(out)
    assert identity.experiment == "window" and identity.weights == lm.revision
    first = out.read_bytes()

    def refuse(*_args, **_kw):
        raise AssertionError("a resumed run must not answer again")

    monkeypatch.setattr(evaluate_module, "answer", refuse)
    wr.regenerate(run, out, lm=lm)
    assert out.read_bytes() == first
    monkeypatch.undo()
    monkeypatch.setitem(wr.SETTINGS, "short", ContextSetting("short", 240))
    monkeypatch.setitem(wr.SETTINGS, "long", ContextSetting("long", 400, depths=(0.1,)))

    report = wr.audit_file(out, fraction=0.3, seed=0, lm=lm)
    groups = {(r["task"], r["condition"]) for r in data}
    assert report.n_conditions == len(groups) and report.n_checked >= len(groups)

    tampered = [dict(r) for r in data]
    target = next(r for r in tampered if r["condition"] == "scores" and r["failure"] is None)
    target["n_rows"] = target["n_rows"] + 1
    rec.write_records(out, identity, tampered)
    with pytest.raises(rec.AuditError, match=r"regenerate them: python -m ocrheads_lib\.records regenerate"):
        wr.audit_file(out, fraction=1.0, seed=0, lm=lm)
    lm.revision = "0123456789abcdef"
    with pytest.raises(rec.StaleRecordsError, match=r"now has weights 0123456789abcdef.*Regenerate"):
        wr.audit_file(out, lm=lm)


def test_depth_profile_figure_has_no_label_overlap():
    from ocrheads_lib import plots
    from ocrheads_lib.experiments.window import depth_profile

    rng = np.random.default_rng(0)
    smol = gemma_shaped(rng.integers(0, 5, size=(6, 18, 4)))          # shapes only matter for the axis
    smol.meta.n_layers, smol.meta.n_heads = 30, 9
    smol.samples = [SampleScore(f"s{i}", 1.0, 4, rng.integers(0, 5, size=(30, 9))) for i in range(6)]
    gemma = gemma_shaped(rng.integers(0, 5, size=(6, 18, 4)))
    profiles = {"SmolLM2 (30 layers)": depth_profile(smol), "Gemma 3 short (18 layers)": depth_profile(gemma),
                "Gemma 3 long (18 layers)": depth_profile(gemma)}
    assert all(abs(p.sum() - 1) < 1e-12 for p in profiles.values())
    ax = plots.depth_profiles(profiles, marks=[(layer + 0.5) / 18 for layer in (5, 11, 17)],
                              mark_label="Gemma 3's global layers")
    assert plots.layout_problems(ax.figure) == []
    assert [line.get_xdata()[0] for line in ax.get_lines()[:2]] == [0.5 / 30, 0.5 / 18]


def test_the_chapter_verdicts_and_sentences_come_from_the_records(tmp_path):
    from ocrheads_lib.chapter import MAX_WORDS, conclusion_markdown

    write_results(tmp_path)
    out = tmp_path / "window.jsonl.gz"
    wr.from_results(tmp_path, out, FACTS, RUN)
    results = wr.load_results(out, "w1")
    shares = wr.share_verdicts(results, top_k=2)
    # per length: the top-2 and the selected set (short: 3 heads with mean >= 0.1, long: 4)
    assert [(v.details["setting"], v.details["heads"], v.n) for v in shares] == [
        ("short", "top-2", 2), ("short", "selected", 3), ("long", "top-2", 2), ("long", "selected", 3)]
    assert shares[0].null == pytest.approx(1 / 3) and shares[0].verdict == "undecided"   # 2 of 2: [0.16, 1]
    causal = wr.causal_verdicts(results)
    assert [(v.details["k"], v.details["control"], v.verdict) for v in causal] == [
        (2, "random", "holds"), (2, "random_layer_matched", "holds")]
    assert causal[0].details["baseline"] == 1.0 and causal[0].details["masked"] == 0.0
    rows = wr.verdict_rows(shares, causal)
    assert len(rows) == 6 and rows[-1]["estimate [95 % interval]"] == "+1.00 [+1.00, +1.00]"
    lines = wr.conclusion_sentences(results, shares, causal, "read from planted records")
    assert len(lines) == 3 and all(len(line.split()) <= MAX_WORDS for line in lines)
    assert "4 scoring samples per length (seed 0)" in lines[0] and "5 held-out samples (seed 100)" in lines[0]
    assert lines[1] == ("The 2 global layers of 6 (chance 0.33) hold 2 of the top-2 retrieval heads at `short` "
                        "(p = 0.091, undecided) and 1 of the top-2 retrieval heads at `long` (p = 0.58, undecided).")
    assert lines[2].endswith("at `short` from 1.00 to 0.00 (layer-matched draws 1.00: holds).")
    assert "<details>" not in conclusion_markdown(lines, rows)        # nothing folded away


def test_a_records_file_named_by_a_parameter_enters_the_chapter_cache_key(tmp_path):
    from ocrheads_lib.bookbuild import notebook_key, parameter_files

    (tmp_path / "records").mkdir()
    shipped = tmp_path / "records" / "g.jsonl.gz"
    shipped.write_bytes(b"one")
    params = {"gemma_records": "records/g.jsonl.gz", "model_id": "smol-vl", "n_samples": 3}
    files = parameter_files(params, tmp_path)
    assert list(files) == ["file:records/g.jsonl.gz"]                 # model_id names no file
    first = notebook_key(b"nb", {**params, **files}, "lib", "")
    shipped.write_bytes(b"two")                                        # records regenerated: the chapter runs again
    assert notebook_key(b"nb", {**params, **parameter_files(params, tmp_path)}, "lib", "") != first
    assert parameter_files({"model_id": "smol-vl"}, tmp_path) == {}     # no file: the key is as before


def test_records_without_a_causal_test_get_it_live_on_the_shipped_ranking(tmp_path, monkeypatch):
    import dataclasses
    import types

    from ocrheads_lib.experiments import window

    planted, _ = write_results(tmp_path)
    scores_only = dataclasses.replace(RUN, causal_settings=())
    out = tmp_path / "scores_only.jsonl.gz"
    wr.from_results(tmp_path, out, FACTS, scores_only)
    results = wr.load_results(out, "w1")
    assert results.causal.empty and wr.causal_verdicts(results) == []
    live = wr.WindowRun(n_select=2, n_eval=3, ks=(2,), control_seeds=(0, 1, 2))
    ran = []

    def fake_causal(lm, setting, scores, n, *, ks, seeds, seed, results_root, max_new_tokens):
        assert heads.ranked(scores) == heads.ranked(planted[setting.name])      # the shipped ranking
        assert (n, tuple(ks), tuple(seeds), seed) == (3, (2,), (0, 1, 2), 100)
        ran.append(setting.name)
        write_caches(results_root, setting.name, scores, dataclasses.replace(RUN, n_eval=n))

    monkeypatch.setattr(window, "causal_at_length", fake_causal)
    lm = types.SimpleNamespace(model_id="planted", revision="w1")
    merged, lengths = wr.with_live_causal(results, lm, tmp_path / "chapter", live)
    assert lengths == ("short", "long") and ran == ["short", "long"]
    assert merged.run.n_eval == 3 and merged.run.n_select == 4 and merged.scores is results.scores
    assert set(merged.causal.task) == {"passkey_short", "passkey_long"} and merged.causal.n.max() == 3
    assert [v.verdict for v in wr.causal_verdicts(merged)] == ["holds"] * 4
