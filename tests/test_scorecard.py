"""The "Findings at a glance" scorecard on planted records (issue 33): a run where masking OCR heads clearly hurts
reading the page decides "holds", a run without an effect stays "undecided at n = ...", and claims without
shipped full-size data say so instead of showing a number."""
from __future__ import annotations

from ocrheads_lib import nulls, scorecard
from ocrheads_lib.experiments import masking_findings as mf

from test_masking_findings import planted_records, write


def _table(found):
    return {row.claim: row for row in scorecard.rows(found, {"sparsity": "released cell"})}


def test_planted_effect_holds_and_null_is_undecided(tmp_path):
    strong = mf.findings(write(tmp_path, planted_records()))
    rows = _table({"smol-vl": strong})
    assert len(rows) == 8
    dissociation = next(r for claim, r in rows.items() if "double dissociation" in claim)
    listed = dissociation.as_list()
    assert listed[-1] == "holds (smol-vl)" and listed[-3] == "200" and listed[2].startswith("k = 5: ")
    assert "; k = 20: " in listed[2]
    assert listed[3] == "– (an image claim)" and listed[4] == scorecard.NOT_RUN     # smollm2, tiny: nothing shipped
    chance = next(r for claim, r in rows.items() if "random heads" in claim)
    assert chance.headline.verdict == "holds" and "vs layer-matched" in chance.cells["smol-vl"]

    (tmp_path / "null").mkdir()
    null = mf.findings(write(tmp_path / "null", planted_records(ocr_image=0.9, retrieval_text=0.9, seed=1)))
    listed = next(r for claim, r in _table({"smol-vl": null}).items() if "double dissociation" in claim).as_list()
    assert listed[-1].startswith("undecided at n = 200") and listed[-1].endswith("(smol-vl)")


def test_claims_without_full_size_data_say_so(tmp_path):
    small = mf.findings(write(tmp_path, planted_records(n=20)))       # below the full size: shown, not a headline
    rows = scorecard.rows({"smol-vl": small}, {"sparsity": "released cell"})
    text = scorecard.markdown(rows)
    assert text.count(scorecard.NOT_RUN) >= 6 * 3            # sparsity ... case study: every model column
    assert "below the full size of 200" in text
    for row in rows:
        if "sink" in row.claim or "Chain-of-thought" in row.claim or "case study" in row.claim:
            assert row.headline is None and row.as_list()[-1] == scorecard.NOT_RUN
    assert rows[0].released == "released cell" and text.startswith("| the paper's claim |")


def test_write_reads_the_records_folder(tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    write(records, planted_records(n=200, ks=(5,)))
    monkeypatch.setattr(scorecard, "_released_rows", lambda *a, **k: {"sparsity": "x"})   # the release: tested below
    page = scorecard.write(tmp_path / "page", records).read_text()
    assert "holds (smol-vl)" in page and "smol-vl_masking.jsonl.gz" in page and "weights w1" in page


def test_released_files_cells(monkeypatch):
    """Sparsity is tested across the release's two models (nulls.sparsity_test, across_models: its bootstrap over
    the real files takes a minute, so here it is replaced by a planted verdict and its inputs are checked); the
    claims the release cannot test say why, from the files themselves."""
    seen = {}

    def planted(ocr, retrieval, **kwargs):
        seen.update(shapes=(ocr.shape, retrieval.shape), **kwargs)
        return nulls.Verdict("c", -0.13, -0.14, -0.12, 0.0, 51, "fails",
                             details={"share_ocr": 0.043, "share_retrieval": 0.173})

    monkeypatch.setattr(scorecard.nulls, "sparsity_test", planted)
    cells = scorecard._released_rows()
    assert seen["shapes"] == ((32, 32), (28, 12)) and seen["across_models"] and seen["n_boot"] >= 1000
    assert cells["sparsity"].startswith("InternVL2-8B OCR 4.3 % vs Qwen2-VL-2B retrieval 17.3 %")
    assert cells["sparsity"].endswith("-0.13 [-0.14, -0.12], n = 51: fails") and "frequency rule" in cells["sparsity"]
    assert cells["distinctness"].startswith("not computable") and "0 or 1" in cells["static"]
