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
    parameters and `model_id = "tiny"` by default."""
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
    assert namespace["model_id"] == "tiny", f"{path.name}: default model_id must be 'tiny'"
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
    assert params["model_id"] == "tiny"
    assert params["results_dir"] == "../results"


def test_hand_written_results_name_the_shipped_weights() -> None:
    """Prose that quotes the embedded model's numbers says which weights it measured ("step-N weights",
    "at step N)", "(step N,"); after retraining, the shipped step changes and this fails until the prose is
    re-read."""
    import re

    from ocrheads_lib.tiny.evaluate import KNOWN_LIMITS

    shipped = json.loads((ROOT / "ocrheads_lib" / "tiny" / "weights" / "training_summary.json").read_text())["steps"]
    sources = {p.name: "".join("".join(c["source"]) for c in json.loads(p.read_text(encoding="utf-8"))["cells"])
               for p in NOTEBOOKS}
    sources["params.yml"] = (ROOT / "book" / "params.yml").read_text(encoding="utf-8")
    sources["model card known limits"] = " ".join(KNOWN_LIMITS)
    stamp = re.compile(r"step-(\d+) weights|at step (\d+)\)|\(step (\d+),")
    stamps = {name: [int("".join(groups)) for groups in stamp.findall(text)] for name, text in sources.items()}
    stamped = {name: steps for name, steps in stamps.items() if steps}
    assert {"06_masking.ipynb", "07_sink.ipynb", "params.yml", "model card known limits"} <= set(stamped), stamped
    stale = {name: steps for name, steps in stamped.items() if set(steps) != {shipped}}
    assert not stale, f"prose measured on other weights than the shipped step {shipped}: {stale}; re-run and re-read it"


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
    run_notebooks(src, out, params, **kw)
    assert not (out / "02_b.ipynb").exists()
    # a library change re-runs (the executed copy of 01 was dropped when it failed; 01 fails again)
    (lib / "m.py").write_text("x = 2\n")
    _write_notebook(src / "01_a.ipynb", "print('fixed')")
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["executed"]
    assert [r.status for r in run_notebooks(src, out, params, **kw)] == ["cached"]


def test_library_hash_changes_with_files(tmp_path: Path) -> None:
    from ocrheads_lib.bookbuild import library_hash, notebook_key

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    h1 = library_hash(tmp_path)
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert library_hash(tmp_path) == h1
    (tmp_path / "a.py").write_text("x = 2\n")
    assert library_hash(tmp_path) != h1
    assert notebook_key(b"s", {"a": 1}, "h", "") != notebook_key(b"s", {"a": 2}, "h", "")
    assert notebook_key(b"s", {"a": 1}, "h", "") != notebook_key(b"s", {"a": 1}, "h", "prev")


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
