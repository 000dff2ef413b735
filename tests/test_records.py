"""Shipped per-sample records: identity, byte-identical output, stale refusal, the audit, and the CLI on tiny
(issue 33, item 4)."""
from __future__ import annotations

import gzip

import pytest

from ocrheads_lib import records as rec
from ocrheads_lib.splits import Split, Splits


def identity(weights: str = "aaaa", **params) -> rec.RunIdentity:
    return rec.RunIdentity("tiny", weights, "masking", {"n_eval": 4, "ks": [2], **params}, Splits())


def rows(n_conditions: int = 3, n: int = 4) -> list[dict]:
    return [{"task": "passkey_image", "condition": f"c{c}", "id": f"passkey-1000-{i}", "prediction": str(1000 + i),
             "scores": {"accuracy": 1.0, "char_sim": 0.75}} for c in range(n_conditions) for i in range(n)]


def test_same_records_same_bytes_in_any_order(tmp_path):
    data = rows()
    a = rec.write_records(tmp_path / "a.jsonl.gz", identity(), data)
    b = rec.write_records(tmp_path / "b.jsonl.gz", identity(), list(reversed(data)))
    assert a.read_bytes() == b.read_bytes()
    text = gzip.decompress(a.read_bytes()).decode()
    first = text.splitlines()[1]
    assert first == ('{"condition":"c0","id":"passkey-1000-0","prediction":"1000",'
                     '"scores":{"accuracy":1.0,"char_sim":0.75},"task":"passkey_image"}')
    assert rec.read_records(a, identity()) == sorted(data, key=rec.record_key)
    with pytest.raises(ValueError, match="appear twice"):
        rec.encode(identity(), data + data[:1])


def test_identity_key_is_stable_and_stale_records_are_refused(tmp_path):
    assert identity().key() == identity().key() != identity("bbbb").key()
    assert identity().key() != rec.RunIdentity("tiny", "aaaa", "masking", {"n_eval": 4, "ks": [2]},
                                                Splits(Split(0), Split(2000))).key()
    path = rec.write_records(tmp_path / "r.jsonl", identity(), rows())
    with pytest.raises(rec.StaleRecordsError, match=r"weights aaaa -> bbbb.*python -m ocrheads_lib\.records "
                                                    r"regenerate --model tiny.*--n-eval 4"):
        rec.read_records(path, identity("bbbb"))
    with pytest.raises(rec.StaleRecordsError, match=r"params\.n_eval 4 -> 8"):
        rec.read_records(path, identity(n_eval=8))
    with pytest.raises(FileNotFoundError, match="regenerate"):
        rec.read_records(tmp_path / "missing.jsonl", identity())


def test_audit_sample_covers_every_condition_and_the_fraction():
    data = rows(3, 200)                                     # 600 records, 3 conditions
    few = rec.audit_sample(data, 0.001, seed=0)             # ceil(0.6) = 1 < 3 conditions -> one per condition
    assert len(few) == 3 and {data[i]["condition"] for i in few} == {"c0", "c1", "c2"}
    assert len(rec.audit_sample(data, 0.01, seed=0)) == 6   # ceil(6.0)
    assert len(rec.audit_sample(data, 0.5, seed=0)) == 300
    assert rec.audit_sample(data, 0.01, seed=1) == rec.audit_sample(data, 0.01, seed=1)
    assert rec.audit_sample(data, 0.01, seed=1) != rec.audit_sample(data, 0.01, seed=2)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        rec.audit_sample(data, 0.0)


def test_audit_fails_on_any_byte_difference():
    data = rows(2, 50)
    report = rec.audit(data, dict, fraction=0.1, seed=0, command="make results")
    assert report.n_checked == 10 and report.n_conditions == 2

    def drifted(record):
        out = dict(record)
        out["scores"] = {**record["scores"], "char_sim": 0.7500001}
        return out

    with pytest.raises(rec.AuditError, match=r"(?s)10 of 10 recomputed records differ.*0.7500001.*regenerate them: make results"):
        rec.audit(data, drifted, fraction=0.1, command="make results")


def test_cli_end_to_end_on_tiny(tmp_path, monkeypatch, capsys):
    from ocrheads_lib.experiments import evaluate as evaluate_module
    from ocrheads_lib.experiments import shipped
    from ocrheads_lib.models import load_model

    out = tmp_path / "tiny_masking.jsonl.gz"
    args = ["regenerate", "--model", "tiny", "--n-select", "2", "--n-eval", "2", "--ks", "2", "--control-seeds", "0",
            "--max-new-tokens", "6", "--tasks", "passkey_image", "--quiet", "--out", str(out)]
    assert rec.main(args) == 0
    found, data = rec.load(out)
    # baseline, ocr, retrieval, random, layer-matched random: 5 conditions x 2 evaluation samples
    assert len(data) == 10 and {r["id"] for r in data} == {"passkey-1000-0", "passkey-1000-1"}
    assert found.splits == Splits() and found.params["n_eval"] == 2
    first = out.read_bytes()

    # resumable: a second run answers nothing (every answer is in the part files) and writes the same bytes
    def refuse(*_args, **_kw):
        raise AssertionError("a resumed run must not answer again")

    monkeypatch.setattr(evaluate_module, "answer", refuse)
    assert rec.main(args) == 0 and out.read_bytes() == first
    monkeypatch.undo()

    lm = load_model("tiny")
    report = shipped.audit_file(out, fraction=0.5, seed=0, lm=lm)
    assert report.n_checked == 5 and report.n_conditions == 5
    assert rec.main(["audit", str(out)]) == 0 and "all byte-identical" in capsys.readouterr().out
    tampered = [dict(r) for r in data]
    tampered[0]["prediction"] = "0000"
    rec.write_records(out, found, tampered)
    with pytest.raises(rec.AuditError, match=r"(?s)1 of 10 recomputed.*regenerate them: python -m ocrheads_lib\.records regenerate"):
        shipped.audit_file(out, fraction=1.0, seed=0, lm=lm)
    # the command the book build runs: exit 1 and the regeneration command on stderr, no traceback
    assert rec.main(["audit", str(out), "--fraction", "1.0"]) == 1
    err = capsys.readouterr().err
    assert "FAILED (AuditError)" in err and "--model tiny" in err and "Traceback" not in err
    lm.revision = "0123456789abcdef"                        # the weights changed since the records were made
    with pytest.raises(rec.StaleRecordsError, match=r"now has weights 0123456789abcdef.*Regenerate"):
        shipped.audit_file(out, lm=lm)


def test_book_build_audits_every_records_file_before_the_chapters():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "build_book.sh").read_text()
    audit, chapters = script.index("ocrheads_lib.records audit"), script.index("-m ocrheads_lib.bookbuild")
    assert audit < chapters and "for records_file in records/*.jsonl.gz" in script
    loop = script[script.index("for records_file in"):chapters]
    assert "exit 1" in loop and "--fraction 0.01" in loop
