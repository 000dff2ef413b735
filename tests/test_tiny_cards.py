"""The embedded models' cards: markdown sources plus data (ocrheads_lib.embedded.cards), no model needed."""
import json

import pytest

from ocrheads_lib.embedded.cards import bullets, paragraph, read_sections, render
from ocrheads_lib.embedded.tiny import MODEL_CARD
from ocrheads_lib.embedded.tiny.card import NOTE_SECTIONS, card_notes


def test_sections_bullets_and_paragraphs_read_back_what_was_written(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# Title\n\npreface, not a section\n\n## limits\n\n<!-- measured on step 7 -->\n"
                     "- one item\n  wrapped over\n  three lines\n- two\n\n## probe\n\nA paragraph\non two lines.\n",
                     encoding="utf-8")
    sections = read_sections(notes, required=("limits", "probe"))
    assert list(sections) == ["limits", "probe"]
    assert bullets(sections["limits"]) == ["one item wrapped over three lines", "two"]
    assert paragraph(sections["probe"]) == "A paragraph on two lines."
    with pytest.raises(ValueError, match=r"no section 'known limits'.*'limits', 'probe'"):
        read_sections(notes, required=("known limits",))
    with pytest.raises(ValueError, match="before the first bullet"):
        bullets("loose text\n- item")


def test_render_fills_placeholders_and_names_a_missing_value():
    assert render("$a costs $$${b}.", {"a": "x", "b": 3}) == "x costs $3."
    with pytest.raises(KeyError, match=r"needs a value for \$b.*given: a"):
        render("$a and $b", {"a": 1})


def test_the_tiny_card_notes_are_the_prose_of_the_shipped_card():
    """card_notes.md is the one source of the card's prose: the shipped model_card.json quotes it verbatim."""
    notes = card_notes()
    card = json.loads(open(MODEL_CARD, encoding="utf-8").read())
    assert notes["known_limits"] == card["known_limits"] and notes["ingredients"] == card["ingredients"]
    assert all(notes[name.replace(" ", "_")] for name in NOTE_SECTIONS)
    assert notes["scratch_60_probe"].startswith("A from-scratch run of the default recipe stopped at 55 min")
    assert not any("  " in item or "\n" in item for item in notes["known_limits"] + notes["ingredients"])


def test_the_smolvl_card_is_its_template_filled_from_the_record(tmp_path):
    """smol-vl's static prose lives in card_template.md; the shipped card.md is that template filled from
    the shipped training record (and evaluation, when there is one)."""
    from ocrheads_lib.embedded.smolvl.card import CARD_JSON, CARD_MD, CARD_TEMPLATE, card_markdown
    from ocrheads_lib.embedded.smolvl.load import WEIGHTS_DIR
    from ocrheads_lib.embedded.smolvl.weights_io import RECORD

    record = json.loads((WEIGHTS_DIR / RECORD).read_text())
    card = json.loads((WEIGHTS_DIR / CARD_JSON).read_text()) if (WEIGHTS_DIR / CARD_JSON).is_file() else {}
    assert card_markdown(card, record) == CARD_MD.read_text(encoding="utf-8"), \
        "smolvl/card.md is stale: python -m ocrheads_lib.embedded.smolvl.card --write_only"
    template = CARD_TEMPLATE.read_text(encoding="utf-8")
    assert "## Limits" in template and "$summary" in template and "$evaluations" in template
    mine = tmp_path / "t.md"
    mine.write_text("# card\n$summary\n$recipe\n$record\n$evaluations\n", encoding="utf-8")
    text = card_markdown({}, {"step": 0}, template=mine)
    assert text.startswith("# card\nNot trained yet") and f"\n{RECORD}\n## Held-out results" in text


def test_the_smolvl_card_targets_table_compares_earlier_weights_and_says_met_or_not():
    """Planted results: one target met, one missed, one only measured now; the earlier weights' column and the
    at-a-glance count follow the numbers, not a fixed text."""
    from ocrheads_lib.embedded.smolvl.card import card_values

    def result(correct: int, n: int = 200) -> dict:
        return {"n": n, "correct": correct, "accuracy": correct / n, "em": correct / n, "wilson95": [0.0, 1.0]}

    card = {"n": 200, "seed": 1, "results": {"key_aligned": result(198), "page_book": result(100),
                                              "text_passkey": result(190), "text_passkey_smollm2": result(180)}}
    history = {"cards": [{"step": 7, "commit": "abc1234", "results": {"key_aligned": result(20)}}]}
    values = card_values(card, {"step": 9, "segments": []}, history)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in values["evaluations"].splitlines()
            if line.startswith("| key alone, aligned") or line.startswith("| key in a paragraph")
            or line.startswith("| text pass key")}
    assert "| 10.0 % [0.0 %, 100.0 %] | 99.0 % [0.0 %, 100.0 %] | met |" in rows["key alone, aligned"]
    assert "| not measured | 50.0 % [0.0 %, 100.0 %] | not met |" in rows["key in a paragraph page"]
    assert "| met |" in rows["text pass key, no image"]                     # 95 % >= 90 % - 5 points
    assert "step 7 (abc1234)" in values["evaluations"]
    assert "Of its 3 targets" in values["at_a_glance"] and "meets 2" in values["at_a_glance"]
    assert "1 of 3 targets are not met" in values["evaluations"]
