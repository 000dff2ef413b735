"""The book: notebook conventions, table of contents, build cache, head explorer, browser check.

Cheap checks always run (notebook sources, _toc.yml, config, vendored JS). The build-cache test starts
two tiny kernels. The browser check runs only when a book has been built (`make book` → _build/html)
and Chromium is installed (`scripts/install_browser.sh`); otherwise it is skipped with the reason.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) if (ROOT / "notebooks").is_dir() else []
REQUIRED_PARAMETERS = ("model_id", "seed", "n_samples", "results_dir")


# ------------------------------------------------------------------------------------ notebook sources

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_source_conventions(path: Path) -> None:
    """NN_name.ipynb, committed without outputs, first code cell tagged `parameters` with the book's
    parameters and the book's image model `model_id = "smol-vl"` by default."""
    assert path.name[:2].isdigit() and path.name[2] == "_", f"{path.name}: name notebooks NN_name.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cell"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), \
        f"{path.name}: the first code cell must be tagged 'parameters' (papermill)"
    source = "".join(first["source"])
    namespace: dict = {}
    exec(compile(source, f"{path.name}:parameters", "exec"), namespace)   # plain assignments only
    missing = [p for p in REQUIRED_PARAMETERS if p not in namespace]
    assert not missing, f"{path.name}: parameters cell lacks {missing}"
    assert namespace["model_id"] == "smol-vl", f"{path.name}: default model_id must be 'smol-vl'"
    needs = (nb["metadata"].get("ocrheads") or {}).get("needs")
    assert isinstance(needs, list), (f"{path.name}: declare the earlier chapters whose results it reads in its "
                                     "metadata ocrheads.needs ([] for none), so `make book` can run it beside others")
    for cell in code:
        assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs (clear them)"
        assert cell.get("execution_count") is None, f"{path.name}: clear execution counts before committing"


def _toc_entries(node) -> list[dict]:
    out = []
    if isinstance(node, dict):
        if "file" in node or "glob" in node:
            out.append(node)
        for value in node.values():
            out += _toc_entries(value)
    elif isinstance(node, list):
        for item in node:
            out += _toc_entries(item)
    return out


def test_toc_references_existing_files() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    assert toc["format"] == "jb-book"
    entries = [{"file": toc["root"]}] + _toc_entries(toc.get("parts", toc.get("chapters", [])))
    for entry in entries:
        if "file" in entry:
            stem = ROOT / entry["file"]
            if entry["file"].startswith("book/generated/"):
                # executed copies are generated; their source notebook must exist
                stem = ROOT / "notebooks" / Path(entry["file"]).name
            found = [s for s in (".md", ".ipynb", "") if Path(str(stem) + s).is_file()]
            assert found, f"_toc.yml references {entry['file']}, which does not exist"
        else:
            assert entry["glob"] == "book/generated/*", f"unexpected glob {entry['glob']}: chapters come from notebooks/"


def test_book_config_points_at_vendored_widget_js() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["execute"]["execute_notebooks"] == "off"
    sphinx = config["sphinx"]["config"]
    static = [ROOT / p for p in sphinx["html_static_path"]]
    for rel in sphinx["nb_ipywidgets_js"]:
        assert "://" not in rel, f"nb_ipywidgets_js must not load {rel} from the web"
        assert any((s / rel).is_file() and (s / rel).stat().st_size > 1000 for s in static), \
            f"vendored {rel} missing: run scripts/vendor_widgets_js.sh"
    mathjax = sphinx["mathjax_path"]
    assert "://" not in mathjax and any((s / mathjax).is_file() for s in static), "vendored MathJax missing"
    assert not (ROOT / "_static").exists(), "a top-level _static/ makes Jupyter Book 1 load its .js twice"
    for bib in config["bibtex_bibfiles"]:
        assert (ROOT / bib).is_file()


def test_params_file_parses() -> None:
    from ocrheads_lib.bookbuild import load_parameters

    params = load_parameters(ROOT / "book" / "params.yml", "02_ocr_heads")
    assert params["model_id"] == "smol-vl"
    assert load_parameters(ROOT / "book" / "params.yml", "04_findings")["compare_models"] == ["tiny"]
    assert params["results_dir"] == "results"          # resolved against the repository (ocrheads_lib.chapter)


def test_hand_written_results_name_the_shipped_weights() -> None:
    """Prose that quotes the embedded model's numbers (the model card's known limits) says which weights it
    measured ("step-N weights", "at step N)", "(step N,"); after retraining, the shipped step changes and
    this fails until the prose is re-read. Chapters carry no such prose: their conclusions are computed."""
    import re

    from ocrheads_lib.embedded.tiny.card import card_notes

    shipped = json.loads((ROOT / "ocrheads_lib" / "embedded" / "tiny" / "weights" / "training_summary.json").read_text())["steps"]
    stamp = re.compile(r"step-(\d+) weights|at step (\d+)\)|\(step (\d+),")
    steps = [int("".join(groups)) for groups in stamp.findall(" ".join(card_notes()["known_limits"]))]
    assert steps and set(steps) == {shipped}, f"known limits measured on other weights than step {shipped}: {steps}"
    for path in NOTEBOOKS:
        text = "".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
        assert not stamp.findall(text), f"{path.name}: hand-written results of particular weights in a chapter"


# Result-like numbers in prose: decimals with two or more digits (0.93, 1.00), decimal percentages
# from 10 % up (94.1 %) and dates. Method constants (0.1, 0.1 %, 10 %, 28 × 28) are not matched.
RESULT_NUMBER = r"(?<![\w.])\d+\.\d{2,}(?![\w.])|\b[1-9]\d\.\d+\s?%|\b20\d\d-\d\d-\d\d\b"


def _prose(markdown: str) -> str:
    """Markdown without code spans, code fences, math and directive options."""
    import re

    text = re.sub(r"```\{glue:[^}]*\}.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    return re.sub(r"\$[^$]*\$", " ", text)


def test_result_number_pattern_by_hand() -> None:
    import re

    flagged = ["scored 0.93 here", "reached 94.1 % on", "on 2026-11-25 we", "1.00 everywhere"]
    allowed = ["mean ≥ 0.1 and 10 %", "a 28 × 28 cell", "β = 1 is the", "`0.929` in code", "(0.1 % of its area)"]
    assert all(re.search(RESULT_NUMBER, _prose(t)) for t in flagged)
    assert not any(re.search(RESULT_NUMBER, _prose(t)) for t in allowed)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chapter_reader_conventions(path: Path) -> None:
    """Every chapter: the defaults cell hidden, one library setup call, >= 1 glued captioned figure,
    ends with a computed "What this run shows", no result numbers typed into its prose, no file outside
    the repository named."""
    import re

    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    markdown = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "hide-cell" in code[0]["metadata"].get("tags", []), f"{path.name}: hide the defaults cell"
    sources = ["".join(c["source"]) for c in code]
    assert sum("chapter.setup(" in s for s in sources) == 1, f"{path.name}: one chapter.setup(...) call"
    assert not any("os.environ" in s or "set_flush_denormal" in s for s in sources), \
        f"{path.name}: setup belongs in ocrheads_lib.chapter.setup, not a copied cell"
    figures = re.findall(r"```\{glue:figure\} (\S+)\n:name: \S+\n\n\S", markdown)
    assert any(name.startswith("fig-") for name in figures), f"{path.name}: no captioned glued figure"
    glued = {name for s in sources for name in re.findall(r"ch\.(?:figure|image|table)\(\s*\"([^\"]+)\"", s)}
    assert set(figures) <= glued, f"{path.name}: figures without a glue call: {set(figures) - glued}"
    assert re.search(r"## What this run shows\s+```\{glue:md\} conclusion", markdown), \
        f"{path.name}: needs a final '## What this run shows' section showing the glued conclusion"
    assert any("ch.conclude(" in s and "conclusions." in s for s in sources), \
        f"{path.name}: the conclusion must come from ocrheads_lib.conclusions"
    last_heading = re.findall(r"^## .*$", markdown, flags=re.M)[-1]
    assert last_heading == "## What this run shows", f"{path.name}: the conclusion section must come last"
    numbers = re.findall(RESULT_NUMBER, _prose(markdown))
    assert not numbers, f"{path.name}: result numbers typed into prose {numbers}: glue them from the run"
    text = markdown + "\n".join(sources)
    assert "PAPER.md" not in text and "shared/" not in text, f"{path.name}: names a file outside the repository"
    params = {}
    exec(compile(sources[0], f"{path.name}:parameters", "exec"), params)
    assert params["results_dir"] == "results" and params["device"] == "auto", path.name


def test_book_pages_name_no_file_outside_the_repository() -> None:
    for page in (ROOT / "book").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert "PAPER.md" not in text and "../shared" not in text, page.name


def test_readme_papermill_line_runs_as_written(tmp_path: Path) -> None:
    """The README's real-model command, from the repository root, with only the model swapped for an
    untrained tiny one (and fewer samples): it runs, and writes its results under `results_dir`."""
    import os
    import re
    import shlex

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.startswith("papermill notebooks/")]
    assert lines, "the README shows no papermill command"
    args = shlex.split(lines[0])
    assert "-p" in args and "device" in args and "model_id" in args
    args = [a.replace("Qwen/Qwen2-VL-7B-Instruct", "tiny-random-qwen2_vl") for a in args]
    args = ["cpu" if prev == "device" else a for prev, a in zip([""] + args, args)]
    args[args.index("out.ipynb")] = str(tmp_path / "out.ipynb")
    args += ["-p", "n_samples", "2", "-p", "n_grounding", "1", "-p", "results_dir", str(tmp_path / "results"),
             "-k", "python3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    proc = subprocess.run([sys.executable, "-m", "papermill", *args[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results" / "tiny-random-qwen2_vl" / "ocr_scores.json").is_file()
    out = json.loads((tmp_path / "out.ipynb").read_text(encoding="utf-8"))
    from ocrheads_lib.bookbuild import output_problems

    assert not output_problems(tmp_path / "out.ipynb")
    conclusion = [o["data"]["application/papermill.record/text/markdown"] for c in out["cells"]
                  for o in c.get("outputs", []) if "application/papermill.record/text/markdown" in o.get("data", {})]
    assert conclusion and re.search(r"samples were scored on `tiny-random-qwen2_vl`", "".join(conclusion[0]))


# ------------------------------------------------------------------------------------------ build cache

def _write_notebook(path: Path, body: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('model_id = "tiny"\nseed = 0\nn_samples = 1\nresults_dir = "../results"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def test_run_notebooks_caches_and_reports_failures(tmp_path: Path) -> None:
    from ocrheads_lib.bookbuild import run_notebooks

    src, out = tmp_path / "notebooks", tmp_path / "book" / "generated"
    src.mkdir()
    params = tmp_path / "params.yml"
    params.write_text("defaults: {model_id: tiny, seed: 3}\nnotebooks: {02_b: {seed: 7}}\n")
    _write_notebook(src / "01_a.ipynb", "import pathlib; print(pathlib.Path.cwd().name, seed)")
    _write_notebook(src / "02_b.ipynb", "print('b', seed)")
    logs: list[str] = []
    lib = tmp_path / "lib"                      # a fixed library: the real package may change meanwhile
    lib.mkdir()
    (lib / "m.py").write_text("x = 1\n")
    kw = {"log": logs.append, "library_root": lib, "failed_dir": tmp_path / "failed"}

    runs = run_notebooks(src, out, params, **kw)
    assert [r.status for r in runs] == ["executed", "executed"]
    executed = json.loads((out / "02_b.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "b 7" in printed                                      # per-notebook override applied
    first = json.loads((out / "01_a.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in first["cells"] for o in c.get("outputs", []))
    assert "notebooks 3" in printed                              # cwd = notebooks/, defaults applied
    assert (out / "01_a.ipynb.key").read_text().strip() == runs[0].key

    again = run_notebooks(src, out, params, **kw)
    assert [r.status for r in again] == ["cached", "cached"]

    # a change upstream re-runs everything after it; a failure is reported, not written to out/
    _write_notebook(src / "01_a.ipynb", "raise RuntimeError('broken chapter')")
    third = run_notebooks(src, out, params, **kw)
    assert [r.status for r in third] == ["failed", "executed"]
    assert "broken chapter" in third[0].error
    assert not (out / "01_a.ipynb").exists() and (tmp_path / "failed" / "01_a.ipynb").exists()
    assert not (out / "01_a.ipynb.key").exists()

    # executed copies without a source are removed (they would stay in the table of contents)
    (src / "02_b.ipynb").unlink()
    params.write_text("defaults: {model_id: tiny, seed: 3}\n")   # a chapter params.yml names must exist (issue 32)
    run_notebooks(src, out, params, **kw)
    assert not (out / "02_b.ipynb").exists()
    # a library change re-runs (the executed copy of 01 was dropped when it failed; 01 fails again)
    (lib / "m.py").write_text("x = 2\n")
    _write_notebook(src / "01_a.ipynb", "print('fixed')")
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["executed"]
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["cached"]


def test_run_notebooks_in_parallel_waits_for_what_a_notebook_needs(tmp_path: Path) -> None:
    """jobs=2: a notebook that declares `ocrheads.needs` starts only after those notebooks have finished
    (02 reads the file 01 writes after a pause); one that needs nothing runs beside them (03 starts while
    01 is still pausing); a notebook without the metadata waits for every notebook before it (04)."""
    import nbformat
    from ocrheads_lib.bookbuild import notebook_needs, run_notebooks

    src, out = tmp_path / "notebooks", tmp_path / "book" / "generated"
    src.mkdir()
    bodies = {"01_a": "import pathlib, time; time.sleep(4); _ = pathlib.Path('../flag').write_text('one')",
              "02_b": "import pathlib; assert pathlib.Path('../flag').read_text() == 'one'",
              "03_c": "import pathlib; assert not pathlib.Path('../flag').exists(), 'started after 01 finished'",
              "04_d": "import pathlib; assert pathlib.Path('../flag').read_text() == 'one'"}
    needs = {"01_a": [], "02_b": ["01_a"], "03_c": []}
    for stem, body in bodies.items():
        _write_notebook(src / f"{stem}.ipynb", body)
        if stem in needs:
            nb = nbformat.read(str(src / f"{stem}.ipynb"), as_version=4)
            nb.metadata["ocrheads"] = {"needs": needs[stem]}
            nbformat.write(nb, str(src / f"{stem}.ipynb"))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "m.py").write_text("x = 1\n")
    runs = run_notebooks(src, out, None, log=lambda _: None, library_root=lib, failed_dir=tmp_path / "failed", jobs=2)
    assert [(r.name, r.status, r.error) for r in runs] == [(f"{s}.ipynb", "executed", "") for s in bodies]
    assert notebook_needs(src / "04_d.ipynb", ["01_a", "02_b", "03_c"]) == ["01_a", "02_b", "03_c"]
    with pytest.raises(ValueError, match="not notebooks before it"):
        notebook_needs(src / "02_b.ipynb", [])
    with pytest.raises(ValueError, match="jobs=0"):
        run_notebooks(src, out, None, jobs=0)


def test_library_hash_changes_with_files(tmp_path: Path) -> None:
    from ocrheads_lib.bookbuild import library_hash, notebook_key, parameter_files

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    h1 = library_hash(tmp_path)
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert library_hash(tmp_path) == h1
    (tmp_path / "a.py").write_text("x = 2\n")
    assert library_hash(tmp_path) != h1
    assert notebook_key(b"s", {"a": 1}, "h", "") != notebook_key(b"s", {"a": 2}, "h", "")
    assert notebook_key(b"s", {"a": 1}, "h", "") != notebook_key(b"s", {"a": 1}, "h", "prev")
    # a parameter naming a file (shipped records): the key follows the file's bytes, not only its name
    data = tmp_path / "records.jsonl.gz"
    data.write_bytes(b"one")
    params = {"shipped_records": data.name}
    first = notebook_key(b"s", {**params, **parameter_files(params, tmp_path)}, "h", "")
    data.write_bytes(b"two")
    assert notebook_key(b"s", {**params, **parameter_files(params, tmp_path)}, "h", "") != first


# ------------------------------------------------------------------------------------------ head explorer

def _two_token_maps(hot: int) -> "HeadAttentionMaps":
    from ocrheads_lib.widgets import HeadAttentionMaps

    attention = np.zeros((2, 3, 2))
    attention[..., hot] = 0.5                                   # every head attends token `hot` only
    return HeadAttentionMaps(sample_id=f"s{hot}", page=Image.new("RGB", (100, 50), "white"),
                             token_boxes=np.array([[0, 0, 50, 50], [50, 0, 100, 50]]), attention=attention,
                             evidence_boxes=[(60, 10, 70, 40)], answer="7")


def test_render_head_puts_heat_on_the_attended_token() -> None:
    import io

    from ocrheads_lib.widgets import render_head

    for hot in (0, 1):
        png = render_head(_two_token_maps(hot), layer=1, head=2, width=100)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)   # (50, 100, 3)
        inner = rgb[5:45]                                                          # away from outlines
        left, right = inner[:, 5:45].mean(axis=(0, 1)), inner[:, 55:58].mean(axis=(0, 1))
        hot_side, cold_side = (left, right) if hot == 0 else (right, left)
        # the hot token is tinted red (blue and green drop), the unattended one stays white
        assert np.all(cold_side > 245), (hot, cold_side)
        assert hot_side[1] < 150 and hot_side[0] - hot_side[2] > 40, (hot, hot_side)


def test_head_explorer_structure_and_links() -> None:
    import ipywidgets as widgets

    from ocrheads_lib.widgets import head_explorer

    maps = [_two_token_maps(0), _two_token_maps(1)]
    scores = {"OCR": np.arange(6.0).reshape(2, 3) / 10}
    box = head_explorer(maps, scores=scores, heads=[0, 2], width=100)
    sample_pick = box.children[0].children[0]
    layer_pick, head_pick = box.children[1].children
    stack = box.children[2]
    assert isinstance(stack, widgets.Stack) and len(stack.children) == 2                 # samples
    assert all(len(layer_stack.children) == 2 for layer_stack in stack.children)         # layers
    leaf_stacks = [hs for ls in stack.children for hs in ls.children]
    assert all(len(hs.children) == 2 for hs in leaf_stacks)                              # heads 0 and 2
    leaf = leaf_stacks[0].children[1]                                                    # sample 0, layer 0, head 2
    assert leaf.children[0].value[:4] == b"\x89PNG"
    assert "layer 0, head 2" in leaf.children[1].value and "0.200" in leaf.children[1].value
    assert [label for label, _ in head_pick.options] == ["0", "2"]
    # opens on the best offered head of the first score: OCR[1, 2] = 0.5 -> layer index 1, head index 1
    assert (layer_pick.index, head_pick.index) == (1, 1)
    assert all(ls.selected_index == 1 for ls in stack.children)
    assert all(hs.selected_index == 1 for hs in leaf_stacks)
    # every stack is driven by its control through a browser-side link (works in static HTML)
    from ipywidgets.widgets.widget import _instances
    from ipywidgets.widgets.widget_link import Link

    links = [w for w in list(_instances.values()) if isinstance(w, Link)]
    targets = {(id(link.source[0]), id(link.target[0])) for link in links}
    assert (id(sample_pick), id(stack)) in targets
    assert all((id(layer_pick), id(ls)) in targets for ls in stack.children)
    assert all((id(head_pick), id(hs)) in targets for hs in leaf_stacks)


def test_head_explorer_head_list_mode() -> None:
    import ipywidgets as widgets

    from ocrheads_lib.widgets import head_explorer, top_heads

    scores = {"OCR": np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]]), "retrieval": np.array([[0.0, 0.0, 0.8], [0.1, 0.2, 0.3]])}
    chosen = top_heads(scores, k=2)
    assert chosen == [(0, 1), (1, 0), (0, 2), (1, 2)]
    box = head_explorer([_two_token_maps(0), _two_token_maps(1)], scores=scores, head_list=chosen, width=100)
    head_pick = box.children[1].children[0]
    assert isinstance(head_pick, widgets.Dropdown)
    assert head_pick.options[0][0] == "L0H1 (OCR 0.90, retrieval 0.00)"
    stack = box.children[2]
    assert [len(s.children) for s in stack.children] == [4, 4]
    assert "layer 1, head 0" in stack.children[1].children[1].children[1].value


def test_head_explorer_refuses_oversized_state() -> None:
    from ocrheads_lib.widgets import head_explorer

    with pytest.raises(ValueError, match="max_state_mb"):
        head_explorer([_two_token_maps(0)], max_state_mb=0.001)
    with pytest.raises(ValueError, match="out of range"):
        head_explorer([_two_token_maps(0)], layers=[5])


def test_explorer_scores_skips_files_of_another_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ocrheads_lib.scoring as scoring
    from ocrheads_lib.scoring import HeadScores, ScoreMeta
    from ocrheads_lib.widgets import explorer_scores

    class FakeModel:                                                   # only the head grid is read
        n_layers, n_heads = 2, 4

    lm = FakeModel()
    HeadScores(ScoreMeta(model_id="other", kind="ocr", n_layers=9, n_heads=9)).save(tmp_path / "ocr_scores.json")
    HeadScores(ScoreMeta(model_id="same", kind="retrieval", n_layers=2, n_heads=4)).save(
        tmp_path / "retrieval_scores.json")
    scored = []

    def fake_score_ocr(model, samples):                                # the scorer has its own tests
        scored.append(list(samples))
        return HeadScores(ScoreMeta(model_id="computed", kind="ocr", n_layers=2, n_heads=4))

    monkeypatch.setattr(scoring, "score_ocr", fake_score_ocr, raising=False)
    asked = []
    with pytest.warns(UserWarning, match="9×9 heads"):
        got = explorer_scores(lm, tmp_path, samples_for=lambda kind: asked.append(kind) or ["s0", "s1"])
    assert asked == ["ocr"] and scored == [["s0", "s1"]]                # retrieval came from its file
    assert got["ocr"].meta.model_id == "computed" and got["retrieval"].meta.model_id == "same"
    cached = tmp_path / "cache" / "experiment_scores" / "ocr_scores.json"
    assert cached.exists()
    again = explorer_scores(lm, tmp_path / "nothing-here")              # nothing on disk, nothing to compute
    assert again == {}


def test_record_image_attention_matches_eager_attention() -> None:
    """Probe-recorded per-token attention == the eager model's attention weights, at the answer-emitting
    rows, on the evidence page's image tokens (tiny random Qwen2-VL, two pages)."""
    torch = pytest.importorskip("torch")
    testing = pytest.importorskip("ocrheads_lib.models.testing")
    from ocrheads_lib.data.samples import ImageSample
    from ocrheads_lib.inference import sample_inputs
    from ocrheads_lib.widgets import record_image_attention

    lm = testing.tiny_random("qwen2_vl", seed=0, attn="eager")
    pages = [Image.new("RGB", (112, 56), "white"), Image.new("RGB", (84, 84), (230, 230, 230))]
    sample = ImageSample(id="x", pages=pages, question="What is the pass key?", answer="42", evidence_page=1,
                         boxes=[(10, 30, 20, 40), (20, 30, 30, 40)], units=["4", "2"],
                         coarse_box=(10, 30, 30, 40), seed=0)
    maps = record_image_attention(lm, sample)
    inputs = sample_inputs(lm, sample, answer="42")
    tokens = inputs.image_tokens
    positions = tokens.positions[tokens.pages == 1]
    assert maps.attention.shape == (lm.n_layers, lm.n_heads, positions.numel())
    rows = inputs.answer_positions - 1
    assert maps.rows == rows.tolist()
    with torch.no_grad():
        out = lm.model(**inputs.tensors, output_attentions=True)
    for layer, att in enumerate(out.attentions):                            # (1, H, T, T)
        reference = att[0][:, rows][:, :, positions].mean(dim=1)            # (H, N)
        np.testing.assert_allclose(maps.attention[layer], reference.numpy(), atol=2e-5)
    assert np.allclose(maps.token_boxes, tokens.boxes[tokens.pages == 1].numpy())

    from ocrheads_lib.widgets import explorer_for

    scores = {"OCR": np.arange(lm.n_layers * lm.n_heads, dtype=float).reshape(lm.n_layers, lm.n_heads)}
    grid = explorer_for(lm, [sample], scores, width=120)
    assert len(grid.children[2].children[0].children) == lm.n_layers          # layer stacks: grid mode
    listed = explorer_for(lm, [sample], scores, max_grid_heads=2, top_k=3, width=120)
    assert [label for label, _ in listed.children[1].children[0].options][0].startswith(
        f"L{lm.n_layers - 1}H{lm.n_heads - 1}")                                # best head first


# ------------------------------------------------------------------------------------------ browser check

def test_built_book_renders_in_chromium() -> None:
    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built book (_build/html): run `make book` first")
    chromium = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(c).exists()),
                    shutil.which("chromium"))
    if not chromium:
        pytest.skip("Chromium not installed: run `bash scripts/install_browser.sh`")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_book.py"), str(html)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ data-chapter figures

def test_book_figures_on_a_synthetic_sample() -> None:
    torch = pytest.importorskip("torch")
    import matplotlib

    matplotlib.use("Agg")
    from ocrheads_lib.book_figures import pages_figure, text_sample_html, token_grid_figure
    from ocrheads_lib.data.samples import ImageSample, TextSample
    from ocrheads_lib.models.geometry import ImageTokenMap

    pages = [Image.new("RGB", (56, 28), "white") for _ in range(8)]
    sample = ImageSample(id="p", pages=pages, question="q?", answer="12", evidence_page=6,
                         boxes=[(2, 2, 10, 20), (30, 2, 40, 20)], units=["1", "2"], coarse_box=(2, 2, 40, 20), seed=0)
    fig = pages_figure(sample, max_pages=4, cols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["page 0", "page 1", "page 2", "page 6 (evidence)"]      # reading order, evidence kept

    # two tokens on page 6 (left / right half) and one on page 0: unit "1" -> left token, "2" -> right token
    tokens = ImageTokenMap(positions=torch.tensor([3, 10, 11]), pages=torch.tensor([0, 6, 6]),
                           boxes=torch.tensor([[0, 0, 56, 28], [0, 0, 28, 28], [28, 0, 56, 28]], dtype=torch.float),
                           page_sizes=[(56, 28)] * 8)
    fig = token_grid_figure(tokens, sample)
    assert "2 visual tokens on page 6" in fig.axes[0].get_title()
    assert "'1': 1, '2': 1" in fig.axes[0].get_title()

    context = "Filler text. The pass key is 4817. More filler."
    text = TextSample(id="t", context=context, question="What is the pass key?", answer="4817",
                      needle_span=(13, 34), answer_span=(29, 33), seed=0)
    out = text_sample_html(text, window=5)
    assert "<mark>The pass key is <b>4817</b>.</mark>" in out and out.startswith("<div")


def test_check_book_classifies_pages_and_injects_its_probe(tmp_path: Path) -> None:
    """Without a browser: which pages the check opens, and that only check requests get the probe."""
    import importlib.util
    import urllib.request

    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    check_book = importlib.util.module_from_spec(spec)
    sys.modules["check_book"] = check_book          # dataclasses look their module up there
    spec.loader.exec_module(check_book)

    (tmp_path / "book").mkdir()
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
    (tmp_path / "book" / "intro.html").write_text("<html><head></head><body>intro</body></html>")
    state = '<script type="application/vnd.jupyter.widget-state+json">{"DropdownModel": 1}</script>'
    (tmp_path / "book" / "explorer.html").write_text(f"<html><head></head><body>{state}</body></html>")
    bars = '<script type="application/vnd.jupyter.widget-state+json">{"FloatProgressModel": 1}</script>'
    (tmp_path / "book" / "chapter.html").write_text(
        f'<html><head></head><body>{bars}<div class="cell_output docutils"><img src="a.png"></div></body></html>')
    pages = check_book.classify_pages(tmp_path)
    assert [p.name for p in pages["widgets"]] == ["explorer.html"]
    assert [p.name for p in pages["figures"]] == ["chapter.html"]            # progress bars only: a figure page
    assert [p.name for p in pages["index"]] == ["intro.html"]                # the redirect is followed

    server, port = check_book.serve(tmp_path)
    try:
        plain = urllib.request.urlopen(f"http://127.0.0.1:{port}/book/intro.html").read().decode()
        probed = urllib.request.urlopen(f"http://127.0.0.1:{port}/book/intro.html?ocrheads_check=passive").read().decode()
    finally:
        server.shutdown()
    assert check_book.RESULT_ID not in plain
    assert probed.index(check_book.RESULT_ID) < probed.index("intro")        # injected into <head>


# ------------------------------------------------------------------------------------------ model card page

def test_model_card_page_is_rendered_from_the_json_card(tmp_path: Path) -> None:
    """The page is the template filled from model_card.json: short, intervals from the counts, no dumps,
    no file outside the repository, and the shipped page is what rendering gives."""
    import re

    from ocrheads_lib.metrics import wilson_interval
    from ocrheads_lib.embedded.tiny import MODEL_CARD
    from ocrheads_lib.embedded.tiny.card import write_markdown

    card = json.loads(Path(MODEL_CARD).read_text(encoding="utf-8"))
    out = tmp_path / "model_card.md"
    write_markdown(card, str(out))
    text = out.read_text(encoding="utf-8")
    assert text == (ROOT / "book" / "model_card.md").read_text(encoding="utf-8"), \
        "book/model_card.md is stale: python -m ocrheads_lib.embedded.tiny.card --render_only"
    assert len(re.sub(r"[|`#*\-–:]", " ", text).split()) <= 1500
    held = card["heldout"]["sets"]["a_key_unaligned"]
    lo, hi = wilson_interval(round(held["accuracy"] * held["n"]), held["n"])
    assert f"| `a_key_unaligned` | {held['accuracy']:.3f} | {lo:.3f}\u00a0–\u00a0{hi:.3f} |" in text
    assert "{download}`model_card.json" in text and "literalinclude" not in text
    assert "../shared" not in text and "the issue" not in text.lower() and "$" not in text.replace("$$", "")


# ------------------------------------------------------------------------------------------ chapter helpers

def test_results_dir_is_resolved_against_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ocrheads_lib import chapter

    monkeypatch.chdir(tmp_path)
    assert chapter.resolve_results_root("results") == ROOT / "results"
    assert chapter.resolve_results_root(tmp_path / "r") == tmp_path / "r"
    assert chapter.resolve_device("cpu") == "cpu" and chapter.resolve_device("cuda:1") == "cuda:1"
    assert chapter.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        chapter.resolve_device("gpu")


def test_format_table_rounds_hides_the_index_and_folds() -> None:
    import pandas as pd

    from ocrheads_lib.chapter import ci_cell, ci_text, format_table

    html = format_table(pd.DataFrame({"head": ["L2H1", "L3H0"], "score": [0.123456, 1.0]}, index=[5, 6]), digits=2)
    assert ">0.12<" in html and ">1.00<" in html and "0.123456" not in html
    assert ">5<" not in html and "<details>" not in html
    long = format_table(pd.DataFrame({"x": range(30)}), fold_rows=10)
    assert "<details><summary>show all 30 rows</summary>" in long
    assert ci_text(0.4213, 0.3, 0.55) == "0.42 [0.30, 0.55]"
    assert ci_cell(0.4213, 0.3, 0.55, 1) == "0.4<br><small>[0.3, 0.6]</small>"


def test_bookbuild_rejects_missing_file_messages_and_hides_injected_cell(tmp_path: Path) -> None:
    import nbformat

    from ocrheads_lib.bookbuild import finish_executed, output_problems

    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("model_id = 'x'")
    injected.metadata["tags"] = ["injected-parameters"]
    bad = nbformat.v4.new_code_cell("print('official file not found at x')")
    bad.outputs = [nbformat.v4.new_output("stream", name="stdout", text="official file not found at x\n")]
    nb.cells = [injected, bad]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, str(path))
    assert output_problems(path) == ["cell 1: official file not found at x"]
    finish_executed(path)
    assert "hide-cell" in json.loads(path.read_text())["cells"][0]["metadata"]["tags"]
    bad.outputs = [nbformat.v4.new_output("stream", name="stdout", text="all good\n")]
    nbformat.write(nb, str(path))
    assert output_problems(path) == []


# ------------------------------------------------------------------------------------------ conclusions

def test_conclusions_follow_the_numbers() -> None:
    import pandas as pd

    from ocrheads_lib import conclusions
    from ocrheads_lib.analysis import Interval

    separated = conclusions.findings_chapter("m", Interval(30.0, 25.0, 35.0, 50), Interval(10.0, 8.0, 12.0, 50),
                                             0.1, Interval(0.1, 0.0, 0.2, 50), 0.9, 0.5)
    assert "do not overlap" in separated[0] and "holds on this model" in separated[1]
    assert "distinct" in separated[2]
    overlapping = conclusions.findings_chapter("m", Interval(30.0, 20.0, 35.0, 50), Interval(25.0, 15.0, 32.0, 50),
                                               0.8, Interval(0.8, 0.7, 0.9, 50), float("nan"), 0.5)
    assert "intervals overlap" in overlapping[0] and "does not support" in overlapping[1]
    assert "against the paper's 'distinct' claim" in overlapping[2]

    # a masking comparison (experiments.sweep.compare_to_baseline): drop = baseline - score, and the worst
    # random draw's drop = baseline - worst; no layer-matched draw fitted at any k
    start = dict(task="t", modality="image", metric="accuracy", baseline=1.0, n_seeds=1)
    drops = pd.DataFrame([dict(start, head_set=name, k=k, score=score, change=score - 1.0, worst=worst, best=score)
                          for k, ocr_drop, random_drop in [(2, 0.5, 0.1), (5, 0.9, 0.95)]
                          for name, score, worst in [("ocr", 1.0 - ocr_drop, 1.0 - ocr_drop),
                                                     ("random", 0.99, 1.0 - random_drop)]])
    text = conclusions.masking_chapter(drops)[0]
    assert "masking the top OCR heads costs up to 0.90 (at k = 5)" in text and "more than every random draw at k = 2 (1 of 2 k values)" in text
    assert "layer-matched" not in text                       # no valid layer-matched draw
    low = conclusions.masking_chapter(drops.assign(baseline=0.1))[0]
    assert "too low" in low

    # the OCR / retrieval double dissociation, from the masking table (scores and intervals by hand)
    def row(task, modality, head_set, k, value, lo, hi):
        return dict(task=task, modality=modality, head_set=head_set, k=k, metric="accuracy", accuracy=value,
                    accuracy_lo=lo, accuracy_hi=hi)
    table = pd.DataFrame([row("img", "image", "none", 0, 0.9, 0.7, 1.0), row("txt", "text", "none", 0, 1.0, 1.0, 1.0),
                          row("img", "image", "ocr", 5, 0.3, 0.1, 0.5), row("txt", "text", "ocr", 5, 0.9, 0.8, 1.0),
                          row("img", "image", "retrieval", 5, 0.8, 0.6, 1.0),
                          row("txt", "text", "retrieval", 5, 0.0, 0.0, 0.0),
                          row("img", "image", "ocr", 20, 0.0, 0.0, 0.0), row("txt", "text", "ocr", 20, 0.0, 0.0, 0.0),
                          row("img", "image", "retrieval", 20, 0.5, 0.2, 0.8),
                          row("txt", "text", "retrieval", 20, 0.0, 0.0, 0.0),
                          row("img", "image", "random", 5, 0.9, 0.7, 1.0)])
    dissociation = conclusions.dissociation_sentences(table)
    assert dissociation == [
        "At k = 5, masking the top OCR heads leaves `img` at 0.30 [0.10, 0.50] and `txt` at 0.90 [0.80, 1.00]; masking "
        "as many top retrieval heads leaves them at 0.80 [0.60, 1.00] and 0.00 [0.00, 0.00] (95 % intervals): a double "
        "dissociation (the OCR heads matter more for reading the page, the retrieval heads for copying from text).",
        "At k = 20, masking the top OCR heads leaves `img` at 0.00 [0.00, 0.00] and `txt` at 0.00 [0.00, 0.00]; masking "
        "as many top retrieval heads leaves them at 0.50 [0.20, 0.80] and 0.00 [0.00, 0.00] (95 % intervals): no double "
        "dissociation at this k."]
    weak_text = table.copy()
    weak_text.loc[(weak_text.task == "txt") & (weak_text.head_set == "none"), "accuracy"] = 0.1
    assert conclusions.dissociation_sentences(weak_text) == []          # nothing to lose on the text task

    # chapter 02: the two row conventions' selections, counted by hand (2 shared of 3 and 3: Jaccard 0.5)
    rows = conclusions.ocr_heads_chapter("m", 10, [(0, 1), (1, 2), (2, 0)], [(0, 1), (1, 2), (3, 3)],
                                         [((0, 1), 0.7)], n_samples=4, n_failures=0, jaccard=0.5, spearman=0.6,
                                         n_shared=2, planted={})
    assert rows[2] == ("The paper's consuming row selects 3 heads; 2 of them are among the emitting row's 3, so the "
                       "two rows select largely the same heads (Jaccard 0.50), and the head rankings correlate with "
                       "Spearman 0.60.")

    cons = {"n_characters": 4, "mean_pairwise_jaccard": 0.5, "chance_jaccard": 0.1, "most_common": [[2, 1, 4]]}
    case = conclusions.case_study_chapter("m", cons, 5, 36)
    assert "5.0 times chance" in case[0] and "L2H1" in case[1] and "same few heads" in case[1]
    assert "too few" in conclusions.case_study_chapter("m", {"n_characters": 1}, 5, 36)[0]
    reading = conclusions.case_study_chapter("m", cons, 5, 36, characters={
        "0": {"answers": ["00", "0"]}, "a": {"answers": [" a", "b"]}})
    assert reading[0] == ("Left to answer on its own, `m` writes exactly the character on 2 of 4 pages (50 %; its "
                          "answer contains it on 3), and every page right for 0 of 2 characters.")
    assert "5.0 times chance" in reading[1]
    assert conclusions.heads_text([(0, 1), (2, 3), (4, 5)]) == "L0H1, L2H3 and L4H5"
    mass = np.zeros((2, 3))
    mass[1, 2], mass[0, 1] = 0.456, 0.02
    assert conclusions.first_token_sentence("m", "OCR", [(1, 2), (0, 1)], mass) == (
        "The top 2 OCR heads of `m` (L1H2 and L0H1) put 0.46 and 0.02 of their attention on the first token.")
    sink = conclusions.sink_chapter(None, 0.001, (0, 2))
    assert "No β sweep" in sink[0] and "No head uses the first token as a sink" in sink[1] and "L0H2" in sink[1]


def test_sphinx_ext_drops_repeated_scripts() -> None:
    from types import SimpleNamespace

    from ocrheads_lib.sphinx_ext import unique_scripts

    inline = SimpleNamespace(filename=None, attributes={"body": 'const THEBE_JS_URL = "x"'})
    again = SimpleNamespace(filename="", attributes={"body": 'const THEBE_JS_URL = "x"'})   # as Sphinx re-adds it
    other = SimpleNamespace(filename=None, attributes={"body": "const y = 1"})
    assert unique_scripts(["a.js", inline, "b.js", again, "a.js", other]) == ["a.js", inline, "b.js", other]


def test_built_pages_read_cleanly() -> None:
    """Over the built HTML (skipped without a build): no page names PAPER.md or prints "not found" or a
    traceback; every chapter shows a numbered captioned figure and its computed conclusion; the model card
    page stays short."""
    import re

    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built book (_build/html): run `make book` first")
    pages = [p for p in html.rglob("*.html") if "_static" not in p.parts]
    for page in pages:
        text = page.read_text(encoding="utf-8", errors="replace")
        for bad in ("PAPER.md", "not found", "Traceback"):
            assert bad not in text, f"{page.relative_to(html)} contains {bad!r}"
    chapters = sorted((html / "book" / "generated").glob("[0-9][0-9]_*.html"))
    anchor = 'id="what-this-run-shows"'
    assert len(chapters) == len(NOTEBOOKS)
    for page in chapters:
        text = page.read_text(encoding="utf-8")
        assert anchor in text, page.name
        assert re.search(r'<span class="caption-number">Fig\. [\d.]+ </span>', text), f"{page.name}: no numbered figure"
        section = text[text.index(anchor):]
        assert "<li>" in section[:20000], f"{page.name}: the conclusion is empty"
    card = (html / "book" / "model_card.html").read_text(encoding="utf-8")
    body = re.sub(r"<[^>]+>", " ", card[card.find("<main"):card.find("</main>")] if "<main" in card else card)
    assert len(body.split()) <= 2000, f"model card page has {len(body.split())} words"


def test_sphinx_ext_numbers_glued_tables_as_tables(tmp_path: Path) -> None:
    """A figure named tbl-… is captioned "Table N" and counted apart from the figures ("Fig. N")."""
    from sphinx.cmd.build import build_main

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), "white").save(src / "a.png")
    (src / "conf.py").write_text("extensions = ['myst_parser', 'ocrheads_lib.sphinx_ext']\nnumfig = True\n")
    figure = "```{{figure}} a.png\n:name: {name}\n\n{caption}\n```\n\n"
    (src / "index.md").write_text("# Page\n\n" + figure.format(name="fig-one", caption="A figure.")
                                  + figure.format(name="tbl-one", caption="A table.")
                                  + figure.format(name="fig-two", caption="Another figure.")
                                  + "See {numref}`tbl-one`.\n")
    assert build_main(["-q", "-b", "html", str(src), str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    import re

    captions = re.findall(r'<span class="caption-number">([^<]+)</span><span class="caption-text">([^<]+)<', html)
    assert [(n.strip(), t) for n, t in captions] == [("Fig. 1", "A figure."), ("Table 1", "A table."),
                                                     ("Fig. 2", "Another figure.")]
    assert "Table 1" in html[html.index("See "):]


def test_repr_outputs_flag_leaked_code_output(tmp_path: Path) -> None:
    """A returned path, string or dict shown as text/plain, or a printed '<… object at 0x…>', is leaked code
    output; a figure, an HTML table, Markdown and glued (hidden) values are not."""
    import nbformat

    from ocrheads_lib.bookbuild import output_problems, repr_outputs

    def result(data: dict) -> dict:
        return nbformat.v4.new_output("execute_result", data=data, execution_count=1)

    nb = nbformat.v4.new_notebook()
    cells = {"path": [result({"text/plain": "PosixPath('/work/results/findings.json')"})],
             "string": [result({"text/plain": "'- The 12 pass-key pages carry 48 answer un…'"})],
             "printed": [nbformat.v4.new_output("stream", name="stdout", text="<ocrheads_lib.chapter.Chapter object at 0x7f3a>\n")],
             "figure": [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure size 720x360>"})],
             "table": [nbformat.v4.new_output("display_data", data={"text/html": "<table></table>", "text/plain": "df"})],
             "glued": [nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": "'x'"})],
             "progress": [nbformat.v4.new_output("stream", name="stderr", text="100%|####| 24/24\n")]}
    for outputs in cells.values():
        cell = nbformat.v4.new_code_cell("x")
        cell.outputs = outputs
        nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, str(path))
    found = repr_outputs(path)
    assert [line.split(":")[0] for line in found] == ["cell 0", "cell 1", "cell 2"]
    assert "PosixPath(" in found[0] and "object at 0x" in found[2]
    assert found == [p for p in output_problems(path) if "raw output" in p or "printed repr" in p]


def test_executed_chapters_show_no_raw_output() -> None:
    """Over the executed chapters of a built book (skipped without one): no cell shows raw code output."""
    from ocrheads_lib.bookbuild import repr_outputs

    executed = sorted((ROOT / "book" / "generated").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        pytest.skip("no executed chapters (book/generated): run `make book` first")
    leaks = {p.name: repr_outputs(p) for p in executed}
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}


def test_book_figures_have_no_layout_problems() -> None:
    """Every figure the built book drew (Chapter.figure records figures/<name>.layout.json) has no
    overlapping labels and no legend over data."""
    records = sorted((ROOT / "results").glob("*/figures/*.layout.json"))
    if not (ROOT / "_build" / "html" / "index.html").is_file() or not records:
        pytest.skip("no built book with figure records: run `make book` first")
    problems = {}
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["problems"]:
            problems[f"{path.parent.parent.name}/{record['figure']}"] = record["problems"]
    assert not problems, problems


def test_conclusion_markdown_is_short() -> None:
    """At most three sentences in view (each at most 45 words), the verdict table first, the rest folded."""
    from ocrheads_lib.chapter import conclusion_markdown

    long = "word " * 60
    text = conclusion_markdown(["One.", long.strip() + ".", "Two.", "Three.", "Four."],
                               verdicts=[{"claim": "OCR heads less sparse", "verdict": "holds | barely"}])
    table, shown, folded = text.split("\n\n", 2)
    assert table.splitlines()[0] == "| claim | verdict |" and "holds \\| barely" in table
    assert shown.splitlines() == ["- One.", "- Two.", "- Three."]
    assert folded.startswith("<details><summary>2 more findings of this run") and "- Four." in folded
    assert long.strip() in folded and folded.endswith("</details>")
    assert conclusion_markdown(["Only."]) == "- Only."
    with pytest.raises(ValueError):
        conclusion_markdown([])


def test_meet_the_models_reads_the_cards_and_states_the_scale(tmp_path: Path) -> None:
    """The introduction's accuracy table comes from the card data files (the Wilson interval computed from
    the counts when a card has none), and its scale table from the generated data and the chapters' parameters."""
    from ocrheads_lib import meet_models
    from ocrheads_lib.metrics import wilson_interval

    smolvl = tmp_path / "smolvl.json"
    smolvl.write_text(json.dumps({"results": {
        "page_book": {"n": 50, "correct": 40, "accuracy": 0.8},
        "text_passkey_smollm2": {"n": 10, "correct": 9, "accuracy": 0.9, "wilson95": [0.6, 0.98]}}}))
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"heldout": {"sets": {"c_book_passkey_grid": {"n": 100, "accuracy": 0.97},
                                                     "a_key_aligned": {"n": 100, "accuracy": 1.0}}}}))
    rows = meet_models.reading_accuracy(smolvl, tiny)
    assert [(r["model"], r["task"], r["n"]) for r in rows] == [
        ("smol-vl", "pass key on a book page", 50), ("smollm2", "pass key as plain text", 10),
        ("tiny", "pass key on a book page", 100)]
    assert (rows[0]["low"], rows[0]["high"]) == pytest.approx(wilson_interval(40, 50))
    assert (rows[1]["low"], rows[1]["high"]) == (0.6, 0.98)
    assert (rows[2]["low"], rows[2]["high"]) == pytest.approx(wilson_interval(97, 100))
    table = meet_models.accuracy_markdown(rows)
    assert f"| `smol-vl` | pass key on a book page | 50 | 80.0 % | {100 * rows[0]['low']:.1f}–" in table

    shipped = json.loads(meet_models.SMOLVL_CARD.read_text())["results"]       # the real card, whatever it holds
    real = meet_models.reading_accuracy()
    assert {r["set"] for r in real if r["model"] != "tiny"} == {k for k, v in shipped.items() if "accuracy" in v}

    scale = {r[""]: r for r in meet_models.scale_rows()}
    from ocrheads_lib.data.grid import BOOK_LAYOUT

    assert scale["page"]["this book"].startswith(f"{BOOK_LAYOUT['max_lines']} lines × {BOOK_LAYOUT['line_chars']} characters")
    p02 = meet_models.chapter_parameters("02_ocr_heads")
    assert scale["head scores"]["this book"].startswith(f"{p02['n_samples']} image")
    assert "8,192" in scale["image context"]["the paper"]
    path = meet_models.write(tmp_path / "intro", examples=False)
    text = path.read_text()
    assert "### Meet the models" in text and "### Scale" in text and "`tiny`" in text


def test_built_tables_are_captioned_table_and_the_glossary_is_linked() -> None:
    """Over the built HTML (skipped without a build): every glued table (tbl-…) is captioned "Table N", no
    table is captioned "Fig.", and the glossary page exists and is linked from the chapters."""
    import re

    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built book (_build/html): run `make book` first")
    assert (html / "book" / "glossary.html").is_file()
    chapters = sorted((html / "book" / "generated").glob("[0-9][0-9]_*.html"))
    linked = 0
    for page in chapters:
        text = page.read_text(encoding="utf-8")
        for ident, block in re.findall(r'<figure[^>]*id="(tbl-[^"]+)"(.*?)</figure>', text, re.S):
            number = re.search(r'<span class="caption-number">([^<]+)</span>', block)
            assert number and number.group(1).startswith("Table "), f"{page.name}: {ident} captioned {number}"
        linked += "glossary.html#gloss-" in text
    assert linked >= 5, f"only {linked} chapters link to the glossary"
    intro = (html / "book" / "intro.html").read_text(encoding="utf-8")
    assert "Meet the models" in intro and "examples.png" in intro and "Wilson" in intro


def test_screenshot_script_captures_a_page(tmp_path: Path) -> None:
    """scripts/screenshots.py on the built introduction (skipped without a build or Chromium)."""
    html = ROOT / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("no built book (_build/html): run `make book` first")
    if not any(Path(c).exists() for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser")):
        pytest.skip("Chromium not installed: run `bash scripts/install_browser.sh`")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshots.py"), str(html), "--out", str(tmp_path),
                           "--page", "book/intro.html"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    whole = Image.open(tmp_path / "book_intro.png")
    assert whole.width == 1280 and whole.height > 1600                    # the whole page, not one screen
    tiles = sorted(tmp_path.glob("book_intro.[0-9][0-9].png"))
    assert len(tiles) >= 2 and sum(Image.open(t).height for t in tiles) == whole.height


def test_verdict_tables_follow_the_numbers() -> None:
    """Chapter 04's and the masking chapters' verdict rows, on numbers chosen by hand."""
    import pandas as pd

    from ocrheads_lib import conclusions
    from ocrheads_lib.analysis import Interval

    rows = conclusions.findings_verdicts(Interval(8.1, 7.5, 8.9, 50), Interval(5.9, 5.6, 6.3, 50), 0.34,
                                         Interval(0.34, 0.28, 0.37, 50), 0.95, 0.6, n=12)
    # the Jaccard interval straddles the 0.3 band edge: undecided, with the n at which it would clear it
    # (12 * (0.06 / 0.04) ** 2 = 27)
    assert [r["verdict"] for r in rows] == ["holds", "undecided at n = 12 (n ~ 27 would decide)",
                                            "undecided at n = 12 (one of the two below 0.8)"]
    assert rows[0]["this run"] == "8.1 % vs 5.9 % of heads above 0.1"
    overlapping = conclusions.findings_verdicts(Interval(8.1, 5.0, 8.9, 50), Interval(5.9, 5.6, 6.3, 50), 0.6,
                                                Interval(0.6, 0.5, 0.7, 50), 0.9, 0.85, n=12)
    assert [r["verdict"] for r in overlapping] == ["undecided at n = 12 (intervals overlap)", "fails", "holds"]
    reversed_shares = conclusions.findings_verdicts(Interval(3.0, 2.0, 4.0, 50), Interval(5.9, 5.6, 6.3, 50), 0.1,
                                                    Interval(0.1, 0.05, 0.2, 50), 0.2, 0.1, n=12)
    assert [r["verdict"] for r in reversed_shares] == ["fails", "holds", "fails"]
    start = dict(task="t", modality="image", metric="accuracy", baseline=1.0, n_seeds=1)
    drops = pd.DataFrame([dict(start, head_set=name, k=k, score=score, change=score - 1.0, worst=worst, best=score)
                          for k, ocr_drop, random_drop in [(2, 0.5, 0.1), (5, 0.9, 0.95)]
                          for name, score, worst in [("ocr", 1.0 - ocr_drop, 1.0 - ocr_drop),
                                                     ("random", 0.99, 1.0 - random_drop)]])
    assert conclusions.masking_verdicts(drops) == [
        {"task": "`t`", "masked": "OCR heads", "unmasked": "1.00", "largest drop": "0.90 at k = 5",
         "beats random at": "1 of 2 k", "beats layer-matched at": "–", "matters": "yes: beats the controls"}]
    assert conclusions.masking_verdicts(drops.assign(baseline=0.1))[0]["matters"] == "baseline too low"
