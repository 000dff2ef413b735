"""Disjoint selection / evaluation splits (issue 33, item 1)."""
import pytest

from ocrheads_lib.data.samples import DocSample
from ocrheads_lib.splits import Split, SplitOverlapError, Splits, check_disjoint, check_tasks_disjoint


def test_round_robin_plan_and_key_by_hand():
    split = Split(10, 3)
    assert split.plan(5) == [(10, 0), (11, 0), (12, 0), (10, 1), (11, 1)]
    assert Splits(Split(0, 2), Split(1000, 3)).key() == "sel0+2_eval1000+3"
    assert Splits().key() == "sel0+1_eval1000+1"
    assert Splits.from_dict(Splits(Split(4), Split(9, 2)).as_dict()) == Splits(Split(4), Split(9, 2))


def test_overlapping_seed_ranges_are_refused():
    with pytest.raises(SplitOverlapError, match=r"overlap.*Split\(1000\)"):
        Splits(Split(0, 5), Split(4))
    Splits(Split(0, 5), Split(5))            # touching ranges are disjoint


def test_generated_splits_are_disjoint_and_grow_stably():
    splits = Splits(Split(0, 2), Split(1000))
    chosen, tested = splits.samples_pair("passkey_text", 4, 3)
    assert [s.id for s in chosen] == ["passkey-text-0-0", "passkey-text-1-0", "passkey-text-0-1", "passkey-text-1-1"]
    assert [s.id for s in tested] == ["passkey-text-1000-0", "passkey-text-1000-1", "passkey-text-1000-2"]
    assert [s.id for s in splits.samples("selection", "passkey_text", 2)] == [s.id for s in chosen[:2]]
    assert chosen[0].context == splits.samples("selection", "passkey_text", 1)[0].context


def test_a_shared_id_fails_the_check():
    a = [DocSample("docvqa-7", "q?", ["x"]), DocSample("docvqa-8", "q?", ["y"])]
    b = [DocSample("docvqa-9", "q?", ["z"]), DocSample("docvqa-7", "q?", ["x"])]
    with pytest.raises(SplitOverlapError, match=r"1 sample id\(s\) of task 'docvqa'.*docvqa-7"):
        check_disjoint(a, b, "docvqa")
    check_disjoint(a, b[:1])
    with pytest.raises(SplitOverlapError, match="docvqa-7"):
        check_tasks_disjoint({"t1": a}, {"t2": b[1:]})


def test_bad_split_values_name_the_range():
    with pytest.raises(ValueError, match="n_seeds must be an integer >= 1, got 0"):
        Split(0, 0)
    with pytest.raises(ValueError, match="split must be one of"):
        Splits().split("train")
