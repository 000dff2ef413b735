"""Data generators, loaders and contact sheet: determinism, exact boxes (pixel checks), page order,
clear errors, and loaders on small fixture files in each dataset's format."""
from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
from PIL import Image

from ocrheads_lib import data
from ocrheads_lib.data import grid
from ocrheads_lib.data.compose import NeedleText, image_sample
from ocrheads_lib.data.render import RenderError, TextLayout, render_text, wrap


# ------------------------------------------------------------------------------------------ helpers
def _diff_box(a: Image.Image, b: Image.Image):
    d = np.any(np.asarray(a) != np.asarray(b), axis=2)
    ys, xs = np.nonzero(d)
    if len(xs) == 0:
        return None
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _rerender(sample, hide=()):
    meta = sample.meta
    layout = TextLayout(**meta["layout_params"])
    return render_text(meta["text"], layout, glue=[tuple(g) for g in meta["glue_spans"]],
                       special_spans=[tuple(u) for u in meta["unit_spans"]], hide_spans=list(hide),
                       breaks=meta.get("line_breaks", ()))


def _assert_boxes_exact(sample):
    """Each box lies inside its page, holds dark ink, and is exactly the ink of its unit:
    hiding the unit changes pixels only inside its box, and those changes span the whole box."""
    page = sample.pages[sample.evidence_page]
    w, h = page.size
    again = _rerender(sample)
    assert [p.tobytes() for p in again.pages] == [p.tobytes() for p in sample.pages], "meta does not reproduce pages"
    grey = np.asarray(page.convert("L"))
    for unit, span, box in zip(sample.units, sample.meta["unit_spans"], sample.boxes):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (box, page.size)
        assert (grey[int(y0):int(y1), int(x0):int(x1)] < 128).any(), f"no dark ink in the box of {unit!r}"
        hidden = _rerender(sample, hide=[tuple(span)])
        for k, (p_a, p_b) in enumerate(zip(sample.pages, hidden.pages)):
            if k != sample.evidence_page:
                assert p_a.tobytes() == p_b.tobytes(), f"hiding {unit!r} changed page {k}"
        d = _diff_box(page, hidden.pages[sample.evidence_page])
        assert d is not None, f"hiding {unit!r} changed nothing"
        assert x0 <= d[0] and y0 <= d[1] and d[2] <= x1 and d[3] <= y1, f"ink of {unit!r} at {d} leaves box {box}"
        assert d[0] <= x0 + 1 and d[1] <= y0 + 1 and d[2] >= x1 - 1 and d[3] >= y1 - 1, f"box {box} loose around {d}"
    cx0, cy0, cx1, cy1 = sample.coarse_box
    for x0, y0, x1, y1 in sample.boxes:
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1


# ------------------------------------------------------------------------------------------ pass keys
@pytest.mark.parametrize("kw", [dict(), dict(layout="free", context_chars=600),
                                dict(grid_offset="random"), dict(layout="free", context_chars=500,
                                                                 font="DejaVuSansMono-Bold", font_size=19)])
def test_passkey_same_seed_identical_pages(kw):
    a = data.passkey_images(3, seed=7, **kw)
    b = data.passkey_images(3, seed=7, **kw)
    assert [[p.tobytes() for p in s.pages] for s in a] == [[p.tobytes() for p in s.pages] for s in b]
    assert [s.boxes for s in a] == [s.boxes for s in b]
    c = data.passkey_images(3, seed=8, **kw)
    assert [s.answer for s in a] != [s.answer for s in c]
    # sample i does not depend on n
    assert data.passkey_images(1, seed=7, **kw)[0].pages[0].tobytes() == a[0].pages[0].tobytes()


@pytest.mark.parametrize("kw", [dict(), dict(grid_offset="random"), dict(layout="free", context_chars=700),
                                dict(layout="free", context_chars=400, font="DejaVuSansMono", font_size=15,
                                     line_height=30, margin=5)])
def test_passkey_boxes_are_exact_ink(kw):
    for s in data.passkey_images(2, seed=3, **kw):
        assert s.units == list(s.answer) and len(s.boxes) == len(s.answer)
        assert s.question == "What is the pass key?" and s.golds == [s.answer]
        _assert_boxes_exact(s)


def test_passkey_text_content():
    for s in data.passkey_images(4, seed=11, layout="free", context_chars=800, filler="varied"):
        text = s.meta["text"]
        assert len(text) <= 800
        assert re.findall(r"\d", text) == list(s.answer), "the haystack must be digit-free"
        n0, n1 = s.meta["needle_span"]
        assert text[n0:n1] == f"The pass key is {s.answer}."
        assert n0 == 0 or text[n0 - 2:n0] == ". ", "needle not at a sentence boundary"
        assert 4 <= len(s.answer) <= 5 and s.answer[0] != "0"


def test_passkey_depth_and_key_digits():
    first = data.passkey_images(1, seed=0, layout="free", context_chars=500, depth=0.0, key_digits=3)[0]
    last = data.passkey_images(1, seed=0, layout="free", context_chars=500, depth=1.0, key_digits=(6, 6))[0]
    assert first.meta["needle_span"][0] == 0 and len(first.answer) == 3
    assert last.meta["needle_span"][1] == len(last.meta["text"]) and len(last.answer) == 6
    g0 = data.passkey_images(1, seed=0, depth=0.0)[0]
    g1 = data.passkey_images(1, seed=0, depth=1.0)[0]
    lines0, lines1 = g0.meta["page_lines"][0], g1.meta["page_lines"][0]
    assert "The pass" in lines0[0] and len(lines0) == 5          # needle on the window's first line
    assert g1.answer + "." in lines1[-1] and len(lines1) == 5     # ... or on its last line


def test_grid_default_is_the_book_page():
    s = data.passkey_images(1, seed=0)[0]
    assert s.meta["layout"] == "grid" and len(s.pages) == 1
    assert s.pages[0].size == (grid.BOOK_PAGE["cols"] * grid.CELL, grid.BOOK_PAGE["rows"] * grid.CELL)
    lines = s.meta["page_lines"][0]
    assert len(lines) == grid.BOOK_LAYOUT["max_lines"]
    assert all(len(ln) <= grid.BOOK_LAYOUT["line_chars"] for ln in lines)
    # same pixels as TINY's renderer for those lines
    assert grid.render_grid(lines, **grid.BOOK_PAGE).image.tobytes() == s.pages[0].tobytes()
    # aligned: every digit box lies inside one 28x28 cell
    for x0, y0, x1, y1 in s.boxes:
        assert x0 // 28 == (x1 - 1) // 28 and y0 // 28 == (y1 - 1) // 28


def test_font_size_is_respected():
    small = data.passkey_images(1, seed=2, layout="free", context_chars=300, font_size=14)[0]
    big = data.passkey_images(1, seed=2, layout="free", context_chars=300, font_size=42)[0]
    h_small = np.mean([b[3] - b[1] for b in small.boxes])
    h_big = np.mean([b[3] - b[1] for b in big.boxes])
    assert 2.6 < h_big / h_small < 3.4
    assert big.pages[0].size[1] > 2.5 * small.pages[0].size[1]


def test_numeric_page_order_with_many_pages():
    s = data.passkey_images(1, seed=4, layout="free", context_chars=1400, lines_per_page=2, depth=0.8)[0]
    n_pages = len(s.pages)
    assert n_pages >= 11
    lines = wrap(s.meta["text"], 50, [tuple(g) for g in s.meta["glue_spans"]])
    assert " ".join(ln.text for ln in lines) == s.meta["text"]
    chunks = [lines[k * 2:(k + 1) * 2] for k in range(n_pages)]
    assert s.meta["page_lines"] == [[ln.text for ln in c] for c in chunks]
    layout = TextLayout(**s.meta["layout_params"])
    for k, chunk in enumerate(chunks):
        # hiding the characters of chunk k changes page k and no other page
        spans = [(ln.start, ln.start + len(ln.text)) for ln in chunk]
        hidden = render_text(s.meta["text"], layout, glue=[tuple(g) for g in s.meta["glue_spans"]],
                             special_spans=[tuple(u) for u in s.meta["unit_spans"]] + spans, hide_spans=spans)
        changed = [j for j in range(n_pages) if hidden.pages[j].tobytes() != s.pages[j].tobytes()]
        assert changed == [k], (k, changed)
    key_at = s.meta["answer_span"][0]
    expected = next(k for k, c in enumerate(chunks) if c[0].start <= key_at < c[-1].start + len(c[-1].text))
    assert s.evidence_page == expected and expected >= 2


def test_multi_page_grid_fill():
    s = data.passkey_images(1, seed=5, pages=3)[0]
    assert len(s.pages) == 3 and all(len(p) == 5 for p in s.meta["page_lines"])
    _assert_boxes_exact(s)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(data.ContextTooShortError, match="cannot hold the needle"):
        data.passkey_images(1, layout="free", context_chars=10)
    with pytest.raises(FileNotFoundError, match="font"):
        data.passkey_images(1, layout="free", font="NoSuchFont")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.passkey_images(1, layout="free", font="/nonexistent/font.ttf")
    with pytest.raises(RenderError, match="over the limit"):
        data.passkey_images(1, layout="free", context_chars=4000, lines_per_page=2, max_pages=10)
    with pytest.raises(RenderError, match="does not fit on a line"):
        data.passkey_images(1, layout="free", context_chars=300, chars_per_line=3)
    # layout=None picks "free" when a free-layout option is given, "grid" otherwise
    assert data.passkey_images(1, font_size=20, context_chars=200)[0].meta["layout"] == "free"
    assert data.passkey_images(1, context_chars=200)[0].meta["layout"] == "grid"
    with pytest.raises(data.DatasetUnavailableError, match="NeedleBench"):
        data.niah_images(1, source="needlebench")
    with pytest.raises(ValueError, match="layout='free' only"):
        data.passkey_images(1, layout="grid", font_size=30)
    with pytest.raises(ValueError, match="layout must be"):
        data.passkey_images(1, layout="spiral")
    with pytest.raises(ValueError, match="depth"):
        data.passkey_images(1, depth=1.5)
    with pytest.raises(data.ContextTooShortError):
        data.niah_images(1, lines_per_page=1)    # the needle needs more than one 15-character line


# ------------------------------------------------------------------------------------------ PageLayout
@pytest.mark.parametrize("kw, error, match", [
    (dict(layout="spiral"), ValueError, "layout must be 'grid', 'free' or None"),
    (dict(layout="free", grid_offset="random"), ValueError, "grid_offset='random' moves the text of layout='grid' only"),
    (dict(font_size=30, grid_offset=(3, 4)), ValueError, r"grid_offset=\(3, 4\) .* drop grid_offset"),
    (dict(grid_offset="diagonal"), ValueError, "grid_offset must be 'aligned', 'random' or an"),
    (dict(grid_offset=(3, 40)), ValueError, r"grid x_off|grid y_off must be in \[0, 28\)"),
    (dict(layout="grid", margin=4), ValueError, "apply to layout='free' only"),
    (dict(layout="free", font_size=2), ValueError, "font_size must be in 4..256"),
    (dict(chars_per_line=0), ValueError, "chars_per_line and lines_per_page must be >= 1"),
    (dict(lines_per_page="5"), ValueError, "lines_per_page must be an int, got '5'"),
    (dict(max_pages=0), ValueError, "max_pages must be >= 1"),
    (dict(layout="free", font="NoSuchFont"), FileNotFoundError, "font 'NoSuchFont' not found"),
])
def test_page_layout_refuses_bad_input_when_built(kw, error, match):
    with pytest.raises(error, match=match):
        data.PageLayout(**kw)
    with pytest.raises(error, match=match):          # the flat keys go through the same checks
        data.passkey_images(1, **kw)


def test_page_layout_flat_keys_and_object_give_the_same_samples():
    page = data.PageLayout(grid_offset="random")
    assert page.mode == "grid" and data.PageLayout(font_size=30).mode == "free"
    assert data.PageLayout(grid_offset=[3, 7]).grid_offset == (3, 7)      # a YAML/JSON list is a pair
    a = data.passkey_images(2, seed=3, page=page)
    b = data.passkey_images(2, seed=3, grid_offset="random")
    assert [s.pages[0].tobytes() for s in a] == [s.pages[0].tobytes() for s in b] and a[0].meta == b[0].meta
    c = data.niah_images(1, seed=3, page=data.PageLayout(layout="free"), font_size=20, context_chars=300)
    assert c[0].meta["layout"] == "free" and c[0].meta["font_size"] == 20      # flat keys update the object
    assert data.case_study_images("7", page=page)[0].answer == "7"
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['colour'\]; the page layout keys are"):
        data.niah_images(1, colour="red")
    with pytest.raises(TypeError, match="page must be a PageLayout"):
        data.passkey_images(1, page={"layout": "free"})
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['chars'\]"):     # one name: characters
        data.case_study_images(chars="ab")


def test_wrap_keeps_glued_spans_and_reconstructs_text():
    text = "aaa bbb The pass key is 12345. ccc ddd eee fff"
    n0 = text.index("The")
    lines = wrap(text, 25, [(n0, n0 + 22)])
    assert any(ln.text == "The pass key is 12345." for ln in lines)
    assert " ".join(ln.text for ln in lines) == text
    assert all(text[ln.start:ln.start + len(ln.text)] == ln.text for ln in lines)
    assert [ln.text for ln in wrap(text, 12)] == textwrap.wrap(text, 12)
    with pytest.raises(RenderError, match="cannot stay on one line"):
        wrap(text, 10, [(n0, n0 + 22)])


def test_wrap_forced_breaks_start_new_lines():
    text = "town is climb the tower. The end of it"
    a0 = text.index("climb")
    lines = wrap(text, 15, [(a0, a0 + 15)], breaks=[a0])
    assert [ln.text for ln in lines] == ["town is", "climb the tower", ". The end of it"]
    assert all(text[ln.start:ln.start + len(ln.text)] == ln.text for ln in lines)
    assert [ln.text for ln in wrap(text, 15, [(a0, a0 + 15)])][:2] == ["town is climb t", "he tower. The"]
    with pytest.raises(RenderError, match="crosses the forced line break"):
        wrap(text, 15, [(a0, a0 + 15)], breaks=[a0 + 3])
    with pytest.raises(ValueError, match="must lie inside the text"):
        wrap(text, 15, breaks=[len(text)])


@pytest.mark.parametrize("kw", [dict(), dict(grid_offset="random")])
def test_niah_answer_at_a_page_break_stays_on_one_line(kw):
    """Seed 871991624 used to raise RenderError: 'climb the tower.' is 16 characters on a 15-character line,
    the wrapper cut the answer and the cut fell on the page break. The answer's word now starts a line."""
    s = data.niah_images(1, seed=871991624, **kw)[0]
    assert s.answer == "climb the tower" and s.units == ["climb", "the", "tower"]
    assert s.meta["page_lines"][0][-1] == "climb the tower" and s.evidence_page == 0
    assert s.meta["line_breaks"] == [s.meta["answer_span"][0]]
    assert s.meta["n_pages"] == 2 and all(len(p) == 5 for p in s.meta["page_lines"])   # still 2 full pages
    _assert_boxes_exact(s)


def test_answer_at_a_page_break_with_context_chars():
    """Sized texts (no fill window): a cut across a page break becomes a new line at the answer's word."""
    text = "town is climb the tower. The end of it"
    a0 = text.index("climb")
    nt = NeedleText(text, (0, a0 + 16), (a0, a0 + 15), 0.5)
    layout = TextLayout(mode="grid", chars_per_line=15, lines_per_page=1)
    s = image_sample("t-0-0", nt, layout, [(a0, a0 + 5)], "Q?", 0, "none", {})
    assert s.meta["line_breaks"] == [a0] and s.evidence_page == 1
    assert s.meta["page_lines"][1] == ["climb the tower"]
    _assert_boxes_exact(s)
    # the same cut inside a page is left as it always was: samples that rendered before do not change
    inside = image_sample("t-0-1", nt, TextLayout(mode="grid", chars_per_line=15, lines_per_page=3),
                          [(a0, a0 + 5)], "Q?", 0, "none", {})
    assert "line_breaks" not in inside.meta and inside.meta["page_lines"][0][:2] == ["town is climb t", "he tower. The"]


# ------------------------------------------------------------------------------------------ NIAH
@pytest.mark.parametrize("kw", [dict(), dict(layout="free", context_chars=900)])
def test_niah_boxes_and_needle(kw):
    a = data.niah_images(4, seed=1, **kw)
    b = data.niah_images(4, seed=1, **kw)
    assert [s.pages[0].tobytes() for s in a] == [s.pages[0].tobytes() for s in b]
    for s in a:
        text = s.meta["text"]
        assert s.units == s.answer.split()
        a0, a1 = s.meta["answer_span"]
        n0, n1 = s.meta["needle_span"]
        assert text[a0:a1] == s.answer and n0 <= a0 < a1 <= n1
        assert len(re.findall(re.escape(s.answer.lower()), text.lower())) == 1
        assert not re.search(r"\d", text)
        _assert_boxes_exact(s)


def test_niah_boxes_point_at_the_needle_not_an_earlier_match(monkeypatch):
    # a haystack that repeats the answer before the needle: boxes still sit on the needle's words
    from ocrheads_lib.data import haystack
    monkeypatch.setattr(haystack, "english_sentences",
                        lambda rng, n, avoid=(): ["The red panda sleeps."] * (n // 21 + 1))
    monkeypatch.setattr(haystack, "NIAH_NEEDLES", (("The rarest animal is the {answer}.", "What?", ("red panda",)),))
    s = data.niah_images(1, seed=0, layout="free", context_chars=300, depth=1.0)[0]
    a0, _ = s.meta["answer_span"]
    assert s.meta["text"].lower().index("red panda") < a0
    assert s.meta["text"][s.meta["needle_span"][0]:].startswith("The rarest animal is the red panda.")
    _assert_boxes_exact(s)


def test_text_versions():
    for s in data.passkey_text(3, seed=2, context_chars=500):
        assert s.context[s.answer_span[0]:s.answer_span[1]] == s.answer
        assert s.context[s.needle_span[0]:s.needle_span[1]] == f"The pass key is {s.answer}."
        assert len(s.context) <= 500 and s.prompt.endswith("\n\nWhat is the pass key?")
    texts = data.passkey_text(2, seed=9, context_chars=700)
    images = data.passkey_images(2, seed=9, layout="free", context_chars=700)
    assert [t.context for t in texts] == [i.meta["text"] for i in images]
    for s in data.niah_text(3, seed=2):
        n0, n1 = s.needle_span
        assert s.context[s.answer_span[0]:s.answer_span[1]] == s.answer
        assert n0 <= s.answer_span[0] and s.answer_span[1] <= n1
        assert s.question.endswith("?")
    assert [s.context for s in data.niah_text(2, seed=2)] == [s.context for s in data.niah_text(2, seed=2)]


# ------------------------------------------------------------------------------------------ case study
def test_case_study_characters():
    samples = data.case_study_images("a0z", 2, seed=0)
    assert [s.answer for s in samples] == ["a", "a", "0", "0", "z", "z"]
    for s in samples[:3]:
        assert len(s.boxes) == 1 and s.units == [s.answer]
        assert any(ln.endswith(f"pass key is {s.answer}.") for ln in s.meta["page_lines"][s.evidence_page])
        _assert_boxes_exact(s)
    free = data.case_study_images(characters="q5", n_per_char=2, seed=1, layout="free", context_chars=600)
    for s in free:
        assert any(f"The pass key is {s.answer}." in ln for page in s.meta["page_lines"] for ln in page)
    _assert_boxes_exact(free[0])


# ------------------------------------------------------------------------------------------ synthetic docs
@pytest.mark.parametrize("layout", ["free", "grid"])
def test_synthetic_docs(layout):
    a = data.synthetic_docs(8, seed=3, layout=layout)
    b = data.synthetic_docs(8, seed=3, layout=layout)
    assert [s.pages[0].tobytes() for s in a] == [s.pages[0].tobytes() for s in b]
    assert sorted({s.meta["kind"] for s in a}) == sorted(data.docs.KINDS)
    for s in a:
        assert s.question.startswith("Question: ") and s.question.endswith("\nAnswer: ")
        assert len(s.golds) == 1 and s.golds[0]
        (box,) = s.answer_boxes[0]
        w, h = s.pages[0].size
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        grey = np.asarray(s.pages[0].convert("L"))
        inside = grey[int(y0):int(y1), int(x0):int(x1)]
        assert (inside < 128).any()
        # tight box: ink touches all four edges of the box
        assert (inside[0] < 255).any() and (inside[-1] < 255).any()
        assert (inside[:, 0] < 255).any() and (inside[:, -1] < 255).any()
    with pytest.raises(ValueError, match="unknown document kinds"):
        data.synthetic_docs(1, kinds=("letter",))


def test_synthetic_doc_answers_are_unique_and_drawn():
    from ocrheads_lib.data import docs
    import random
    for kind, build in docs._BUILDERS.items():
        canvas, qa, _ = build(random.Random(5))
        for question, answer, box in docs._unique(qa, canvas.drawn):
            assert sum(answer in text for text, _ in canvas.drawn) == 1
            assert (answer, box) in canvas.drawn


# ------------------------------------------------------------------------------------------ loaders
def _png(color) -> Image.Image:
    return Image.new("RGB", (20, 16), color)


def test_docvqa_loader_from_save_to_disk_and_parquet(tmp_path):
    import datasets
    ds = datasets.Dataset.from_dict({"questionId": [10, 11, 12], "question": ["What is the date?", "Who?", "Total?"],
                                     "answers": [["1 May", "May 1"], ["Ann"], ["4.50"]],
                                     "image": [_png("red"), _png("green"), _png("blue")]})
    ds.save_to_disk(str(tmp_path / "docvqa"))
    out = data.load_docvqa("validation", 2, path=tmp_path / "docvqa")
    assert [s.id for s in out] == ["docvqa-10", "docvqa-11"]
    assert out[0].question == "Question: What is the date?\nAnswer: "
    assert out[0].golds == ["1 May", "May 1"] and out[0].pages[0].getpixel((0, 0)) == (255, 0, 0)
    ds.to_parquet(str(tmp_path / "docvqa.parquet"))
    again = data.load_docvqa("validation", 3, path=tmp_path / "docvqa.parquet")
    assert [s.golds for s in again] == [["1 May", "May 1"], ["Ann"], ["4.50"]]
    assert again[2].pages[0].getpixel((3, 3)) == (0, 0, 255)


def test_mpdocvqa_loader_skips_long_documents(tmp_path):
    import datasets
    ds = datasets.Dataset.from_dict({
        "questionId": [1, 2, 3], "question": ["q1", "q2", "q3"],
        "answers": ["['a1', 'A1']", "['a2']", "['a3']"], "answer_page_idx": [0, 2, 1],
        "image_1": [_png("red"), _png("red"), _png("red")],
        "image_2": [None, _png("green"), _png("green")],
        "image_3": [None, _png("blue"), None]})
    ds.save_to_disk(str(tmp_path / "mp"))
    out = data.load_mpdocvqa("val", 5, max_pages=2, path=tmp_path / "mp")
    assert [s.id for s in out] == ["mpdocvqa-1", "mpdocvqa-3"]
    assert out[0].golds == ["a1", "A1"] and len(out[0].pages) == 1 and len(out[1].pages) == 2
    assert out[1].meta["skipped_before"] == 1
    assert len(data.load_mpdocvqa("val", 5, max_pages=3, path=tmp_path / "mp")) == 3


def test_hub_loaders_offline_error():
    with pytest.raises(data.DatasetUnavailableError, match="save_to_disk"):
        data.load_docvqa("validation", 1, path=None)
    with pytest.raises(FileNotFoundError):     # DatasetUnavailableError is a FileNotFoundError
        data.load_mpdocvqa("val", 1)


def _nq_fixture(path):
    items = []
    for i in range(3):
        items.append({"question": f"question {i}?", "answers": [f"ans{i}"],
                      "positive_ctxs": [{"title": f"T{i}", "text": f"gold passage {i}", "score": 10, "title_score": 1},
                                        {"title": "x", "text": f"weak positive {i}", "score": 5, "title_score": 0}],
                      "negative_ctxs": [{"title": "n", "text": f"negative {i}-{k}"} for k in range(8)],
                      "hard_negative_ctxs": []})
    items.append({"question": "no positives?", "answers": ["x"], "positive_ctxs": [], "negative_ctxs": []})
    path.write_text(json.dumps(items))


def test_nq_loader(tmp_path):
    path = tmp_path / "biencoder-nq-dev.json"
    _nq_fixture(path)
    out = data.load_nq(path, 3, seed=0)
    assert len(out) == 3
    for i, s in enumerate(out):
        lines = s.context.split("\n")
        assert len(lines) == 6 and all(re.match(rf"Evidence {k}: ", ln) for k, ln in enumerate(lines, start=1))
        assert sum(f"gold passage {i}" in ln for ln in lines) == 1
        assert not any("weak positive" in ln for ln in lines)
        assert s.question == (f"Just answer the question and do not generate additional word\nQuestion: question {i}?"
                              "\n\nAnswer: ")
        assert s.golds == [f"ans{i}"] and not s.pages
    assert [s.context for s in data.load_nq(path, 3, seed=0)] == [s.context for s in out]
    assert [s.context for s in data.load_nq(path, 3, seed=1)] != [s.context for s in out]
    assert data.load_nq(path, 1, seed=0, n_distractors=2)[0].context.count("Evidence") == 3
    with pytest.raises(data.DatasetUnavailableError, match="biencoder-nq-dev"):
        data.load_nq(tmp_path / "missing.json", 1)


def test_hotpotqa_loader(tmp_path):
    items = []
    for i in range(4):
        items.append({"_id": f"id{i}", "question": f"q{i}?", "answer": f"a{i}", "type": "bridge", "level": "hard",
                      "supporting_facts": [[f"Gold{i}A", 0], [f"Gold{i}B", 1]],
                      "context": [[f"Gold{i}A", [f"Support A{i}.", " More A."]], [f"Gold{i}B", [f"Support B{i}."]],
                                  [f"Other{i}", [f"Unrelated {i}."]]]})
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(items))
    out = data.load_hotpotqa(path, 3, seed=0)
    assert [s.id for s in out] == ["hotpotqa-id0", "hotpotqa-id1", "hotpotqa-id2"]
    for i, s in enumerate(out):
        assert f"Support A{i}. More A." in s.context and f"Support B{i}." in s.context
        assert f"Unrelated {i}." not in s.context
        n = s.context.count("Evidence ")
        assert 3 <= n <= 7 and s.golds == [f"a{i}"]
    assert [s.context for s in data.load_hotpotqa(path, 3, seed=0)] == [s.context for s in out]


def test_load_dataset_by_name(tmp_path):
    assert len(data.load_dataset_by_name("passkey", 2, seed=1)) == 2
    assert data.load_dataset_by_name("passkey-text", 1, seed=1)[0].kind == "text"
    assert [s.answer for s in data.load_dataset_by_name("case_study", 3, seed=0, characters="xy")] == ["x", "y", "x"]
    assert len(data.load_dataset_by_name("synthetic_docs", 2, seed=0)) == 2
    with pytest.raises(ValueError, match="known names: .*passkey"):
        data.load_dataset_by_name("imagenet", 1)


# ------------------------------------------------------------------------------------------ contact sheet
def test_contact_sheet(tmp_path):
    samples = data.passkey_images(2, seed=0) + data.niah_images(1, seed=0) + data.synthetic_docs(2, seed=0)
    path = data.contact_sheet(samples, tmp_path / "figs" / "sheet.png", cols=2)
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] == 8 + 2 * (360 + 8)
    arr = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert ((arr == (220, 30, 30)).all(axis=1)).any() and ((arr == (30, 90, 230)).all(axis=1)).any()
    assert [p.name for p in path.parent.iterdir()] == ["sheet.png"]
    with pytest.raises(ValueError, match="TextSample"):
        data.contact_sheet(data.passkey_text(1), tmp_path / "x.png")


def test_free_layout_fill_pages():
    s = data.passkey_images(1, seed=6, layout="free", pages=2, lines_per_page=4)[0]
    assert len(s.pages) == 2 and [len(p) for p in s.meta["page_lines"]] == [4, 4]
    assert s.meta["context_chars"] is None
    _assert_boxes_exact(s)


def test_text_version_and_draw_evidence(tmp_path):
    s = data.passkey_images(1, seed=3, pages=2)[0]
    t = data.text_version(s)
    assert t.context == s.meta["text"] and t.answer == s.answer
    assert t.context[t.needle_span[0]:t.needle_span[1]].startswith("The pass key is")
    assert " ".join(ln for page in s.meta["page_lines"] for ln in page) == t.context
    img = data.draw_evidence(s)
    assert img.size == s.pages[s.evidence_page].size
    assert img.tobytes() != s.pages[s.evidence_page].tobytes()
    path = data.contact_sheet([s], tmp_path / "all.png", cols=2, all_pages=True)
    assert Image.open(path).size[0] == 8 + 2 * 368
    with pytest.raises(ValueError, match="not from a needle generator"):
        data.text_version(data.ImageSample("x", [Image.new("RGB", (4, 4))], "q", "a", 0, [], [], (0, 0, 1, 1), 0))


# ------------------------------------------------------------------------------------------ lazy sets
def _as_bytes(sample) -> dict:
    """Every field of a sample, pages as (mode, size, pixel bytes): equal dicts = byte-identical samples."""
    fields = dict(vars(sample))
    if "pages" in fields:
        fields["pages"] = [(p.mode, p.size, p.tobytes()) for p in fields["pages"]]
    return fields


LAZY_SETS = [   # (generator, arguments): the CLI's four aliases, with the layouts the book uses
    (data.passkey_images, {}), (data.passkey_images, {"grid_offset": "random"}),
    (data.passkey_images, {"filler": "varied"}), (data.passkey_images, {"layout": "free"}),
    (data.passkey_images, {"layout": "free", "context_chars": 1024, "font_size": 24}),
    (data.niah_images, {}), (data.niah_images, {"layout": "free"}), (data.passkey_text, {"context_chars": 320}),
    (data.passkey_text, {}), (data.niah_text, {}), (data.niah_text, {"context_chars": 400}),
]


@pytest.mark.parametrize("build, kw", LAZY_SETS, ids=[f"{b.__name__}-{kw}" for b, kw in LAZY_SETS])
def test_lazy_samples_equal_the_full_set_byte_for_byte(build, kw):
    from ocrheads_lib.data.lazy import lazy_samples

    n, seed = 4, 3
    full = build(n, seed=seed, **kw)
    lazy = lazy_samples(build, n, seed, **kw)
    assert lazy is not None and list(lazy.ids) == [s.id for s in full] and lazy.built == 0
    assert [_as_bytes(lazy[i]) for i in (3, 0, 2, 1)] == [_as_bytes(full[i]) for i in (3, 0, 2, 1)]
    assert lazy.built == 4 and all(isinstance(s, lazy.kind) for s in full)
    picked = build(n, seed=seed, indices=[2, 0], **kw)
    assert [_as_bytes(s) for s in picked] == [_as_bytes(full[2]), _as_bytes(full[0])]


def test_lazy_hold_builds_once_and_bad_indices_are_refused():
    from ocrheads_lib.data.lazy import lazy_samples

    lazy = lazy_samples(data.passkey_images, 3, 0)
    held = lazy.hold(1)
    assert lazy[1] is held and lazy.built == 1          # the held sample is handed out, not built again
    assert lazy[1] is not held and lazy.built == 2      # and then released
    assert lazy_samples(data.synthetic_docs, 3, 0) is None
    with pytest.raises(ValueError, match=r"indices \[3\] are outside the set of n=3 samples; give integers in"):
        data.passkey_images(3, indices=[0, 3])
    with pytest.raises(IndexError, match="sample index 5 is outside the set of 3 samples"):
        lazy[5]
