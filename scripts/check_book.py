#!/usr/bin/env python
"""Open the built HTML book in headless Chromium and check that widgets render and images load.

    python scripts/check_book.py _build/html [--out _build/check] [--page book/generated/09_explorer.html ...]

What it does, per checked page:
  1. serves the book folder on a free localhost port (a tiny http.server in a thread);
  2. asks Chromium (Debian's /usr/bin/chromium, headless, no network besides localhost) for the DOM
     after the page's JavaScript ran (`--dump-dom --virtual-time-budget=...`). The server injects a
     small probe script into the page (only for these requests) that records JavaScript errors,
     counts rendered widget elements, measures every <img>'s natural size and — on widget pages —
     changes the first dropdown's selection and records whether the visible image changed (the
     static page must react without a kernel). The probe writes its findings as JSON into the DOM,
     where --dump-dom picks them up;
  3. takes screenshots (`--screenshot`) into --out, one of the page scrolled to the first widget.

Pages checked by default: every page with saved widget state (the head explorer), one chapter
page with figures (an executed notebook with <img> outputs), and the index. Exit status 1 when a
page logs a JavaScript error or a request fails (e.g. a 404 for a font), a widget page renders no
widgets, an image fails to load, or the selection does not change the view. Figures shown at less
than 80 % of their drawn width (smaller fonts than intended) are listed as notes.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                  "--disable-default-apps", "--disable-extensions"]
WIDGET_STATE_MARK = "application/vnd.jupyter.widget-state+json"
# A page is a "widget page" (checked interactively) when its saved state holds a control a reader
# uses; pages whose only widgets are progress bars (tqdm) are figure pages.
CONTROL_MODELS = ("DropdownModel", "SelectionSliderModel", "IntSliderModel", "FloatSliderModel",
                  "ToggleButtonsModel", "SelectModel", "RadioButtonsModel")
RESULT_ID = "ocrheads-book-check"

# Injected at the top of <head> of the page under test (only when the URL has ?ocrheads_check=...).
# Virtual time makes the timers fire as soon as the page is idle, so the waits cost little.
PROBE_JS = r"""
<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
  }, true);
  window.addEventListener('unhandledrejection', function (e) { errors.push('unhandled rejection: ' + String(e.reason)); });
  var mode = new URLSearchParams(window.location.search).get('ocrheads_check');
  function visibleImages() {
    return Array.prototype.filter.call(document.querySelectorAll('.widget-image img, img.widget-image'),
      function (im) { return im.offsetParent !== null && im.getBoundingClientRect().width > 0; })
      .map(function (im) { return (im.src || '').slice(-48); });
  }
  function imageReport() {
    return Array.prototype.map.call(document.images, function (im) {
      return {src: (im.currentSrc || im.src || '').slice(0, 120), complete: im.complete,
              w: im.naturalWidth, h: im.naturalHeight,
              in_widget: !!(im.closest && im.closest('.jupyter-widgets'))};
    });
  }
  function count(sel) { return document.querySelectorAll(sel).length; }
  function failedResources() {
    // resource timing holds the HTTP status (Chromium >= 109): 404s of fonts and scripts never
    // raise a window error, so they are collected here
    return performance.getEntriesByType('resource').filter(function (r) {
      return r.responseStatus && r.responseStatus >= 400;
    }).map(function (r) { return r.responseStatus + ' ' + r.name.slice(-120); });
  }
  function scaledFigures() {
    // figures shown much smaller than drawn (their fonts shrink with them)
    return Array.prototype.filter.call(document.querySelectorAll('figure img, .cell_output img'), function (im) {
      return im.naturalWidth > 0 && im.clientWidth > 0 && im.clientWidth < 0.8 * im.naturalWidth;
    }).map(function (im) { return (im.currentSrc || im.src || '').slice(-60) + ' ' + im.clientWidth + '/' + im.naturalWidth; });
  }
  function finish(extra) {
    var report = {
      errors: errors,
      widget_state_scripts: count('script[type="application/vnd.jupyter.widget-state+json"]'),
      widget_view_scripts: count('script[type="application/vnd.jupyter.widget-view+json"]'),
      jupyter_widgets: count('.jupyter-widgets'),
      dropdowns: count('.widget-dropdown select'),
      sliders: count('.widget-slider, .widget-hslider'),
      widget_images: count('.widget-image'),
      images: imageReport(),
      failed_resources: failedResources(),
      scaled_figures: scaledFigures(),
      page_height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
    };
    for (var k in extra) { report[k] = extra[k]; }
    var pre = document.createElement('pre');
    pre.id = '""" + RESULT_ID + r"""';
    pre.style.display = 'none';
    pre.textContent = JSON.stringify(report);
    document.body.appendChild(pre);
    if (mode === 'shot-widget' || mode === 'interact' || mode === 'shot-figure') {
      // bring the first widget (figure) to the top of the screenshot: drop the cells before it
      // (after the report is written, so the checks above saw the whole page)
      var w = document.querySelector(mode === 'shot-figure' ? '.cell_output img' : '.jupyter-widgets');
      var node = w && w.closest('.cell');
      while (node && node.tagName !== 'ARTICLE' && node.tagName !== 'MAIN' && node !== document.body) {
        while (node.previousElementSibling) { node.previousElementSibling.remove(); }
        node = node.parentElement;
      }
    }
  }
  window.addEventListener('load', function () {
    setTimeout(function () {
      var extra = {};
      var select = document.querySelector('.widget-dropdown select');
      if (!select || select.options.length < 2 || mode !== 'interact') { finish(extra); return; }
      extra.visible_before = visibleImages();
      var old = select.selectedIndex;
      select.selectedIndex = (old + 1) % select.options.length;
      select.dispatchEvent(new Event('change', {bubbles: true}));
      extra.changed_dropdown = {from: old, to: select.selectedIndex,
                                label: (select.closest('.widget-dropdown') || select).innerText.split('\n')[0]};
      setTimeout(function () { extra.visible_after = visibleImages(); finish(extra); }, 1500);
    }, 2500);
  });
})();
</script>
"""


@dataclass
class PageCheck:
    """Findings for one page."""

    page: str
    kind: str                                   # "widgets" | "figures" | "index" (any other page)
    report: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)


def find_chromium() -> str:
    for cand in CHROMIUM_CANDIDATES:
        if Path(cand).exists():
            return cand
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    raise FileNotFoundError("Chromium not found: run `bash scripts/install_browser.sh` (Debian package 'chromium')")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; HTML pages requested with ?ocrheads_check=... get the probe script injected."""

    def log_message(self, fmt: str, *args: Any) -> None:  # keep the check's output readable
        return

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path, _, query = self.path.partition("?")
        if "ocrheads_check=" in query and path.endswith(".html"):
            local = Path(self.translate_path(path))
            if local.is_file():
                html = local.read_text(encoding="utf-8")
                html = re.sub(r"<head([^>]*)>", lambda m: m.group(0) + PROBE_JS, html, count=1)
                body = html.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run_chromium(chromium: str, url: str, extra: list[str], budget_ms: int, timeout: float = 90.0) -> str:
    with tempfile.TemporaryDirectory(prefix="ocrheads-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"chromium exited {proc.returncode} for {url}: {proc.stderr[-800:]}")
        return proc.stdout


def classify_pages(html_root: Path) -> dict[str, list[Path]]:
    """Widget pages, figure pages (executed notebooks with <img> outputs), and the index."""
    widgets, figures = [], []
    for page in sorted(html_root.rglob("*.html")):
        if "_static" in page.parts or page.name in {"search.html", "genindex.html"}:
            continue
        text = page.read_text(encoding="utf-8", errors="replace")
        if WIDGET_STATE_MARK in text and any(m in text for m in CONTROL_MODELS):
            widgets.append(page)
        elif re.search(r'class="cell_output[^"]*"', text) and re.search(r"<img[^>]+src=", text):
            figures.append(page)
    index = html_root / "index.html"
    # Jupyter Book's index.html is a meta-refresh redirect to the root page: check the target.
    refresh = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', index.read_text(encoding="utf-8"), re.I)
    if refresh and (html_root / refresh.group(1)).is_file():
        index = html_root / refresh.group(1)
    return {"widgets": widgets, "figures": figures, "index": [index]}


def check_page(chromium: str, port: int, html_root: Path, page: Path, kind: str, out: Path,
               budget_ms: int) -> PageCheck:
    rel = page.relative_to(html_root).as_posix()
    result = PageCheck(rel, kind)
    base = f"http://127.0.0.1:{port}/{rel}"
    mode = "interact" if kind == "widgets" else "passive"
    dom = run_chromium(chromium, f"{base}?ocrheads_check={mode}", ["--dump-dom"], budget_ms)
    match = re.search(rf'<pre id="{RESULT_ID}"[^>]*>(.*?)</pre>', dom, re.S)
    if not match:
        result.problems.append("the probe script produced no report (page JavaScript did not finish?)")
        return result
    import html as html_lib
    report = json.loads(html_lib.unescape(match.group(1)))
    result.report = report

    if report["errors"]:
        result.problems.append(f"{len(report['errors'])} JavaScript console error(s): " + "; ".join(report["errors"][:3]))
    if report.get("failed_resources"):
        result.problems.append(f"{len(report['failed_resources'])} failed request(s): "
                               + "; ".join(report["failed_resources"][:6]))
    broken = [im for im in report["images"] if not (im["w"] > 0 and im["h"] > 0)]
    if broken:
        result.problems.append(f"{len(broken)} of {len(report['images'])} images did not load: "
                               + "; ".join(im["src"] for im in broken[:5]))
    if kind == "widgets":
        if report["jupyter_widgets"] == 0:
            result.problems.append("saved widget state present but no widget rendered (.jupyter-widgets)")
        if report["widget_view_scripts"] and report["jupyter_widgets"] < report["widget_view_scripts"]:
            result.problems.append(f"{report['widget_view_scripts']} widget views saved but only "
                                   f"{report['jupyter_widgets']} rendered")
        if report.get("changed_dropdown") is not None:
            before, after = report.get("visible_before") or [], report.get("visible_after") or []
            if not before:
                result.problems.append("no visible widget image before interacting")
            elif before == after:
                result.problems.append("changing the dropdown did not change the visible image "
                                       "(links between widgets do not work in the static page)")
    elif kind == "figures":
        if not report["images"]:
            result.problems.append("figure page shows no <img>")

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.removesuffix(".html"))
    shot = out / f"{stem}.png"
    run_chromium(chromium, f"{base}?ocrheads_check=passive", ["--window-size=1280,1600", f"--screenshot={shot}"],
                 budget_ms)
    result.screenshots.append(str(shot))
    if kind == "figures":
        shot_f = out / f"{stem}.figure.png"
        run_chromium(chromium, f"{base}?ocrheads_check=shot-figure", ["--window-size=1280,1400", f"--screenshot={shot_f}"],
                     budget_ms)
        result.screenshots.append(str(shot_f))
    if kind == "widgets":
        shot_w = out / f"{stem}.widget.png"
        run_chromium(chromium, f"{base}?ocrheads_check=shot-widget",
                     ["--window-size=1280,1400", f"--screenshot={shot_w}"], budget_ms)
        result.screenshots.append(str(shot_w))
        shot_i = out / f"{stem}.after_select.png"
        # the dropdown changed to the next sample, the view cut to the widget
        run_chromium(chromium, f"{base}?ocrheads_check=interact", ["--window-size=1280,1600", f"--screenshot={shot_i}"],
                     budget_ms)
        result.screenshots.append(str(shot_i))
    for s in result.screenshots:
        if not Path(s).is_file() or Path(s).stat().st_size == 0:
            result.problems.append(f"screenshot {s} was not written")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", default="_build/html")
    parser.add_argument("--out", default=None, help="screenshots and report (default: <html>/../check)")
    parser.add_argument("--page", action="append", default=[], help="check only these pages (relative to html)")
    parser.add_argument("--budget-ms", type=int, default=10000, help="Chromium --virtual-time-budget")
    parser.add_argument("--all-pages", action="store_true",
                        help="check every chapter page with figures, not only the first one")
    args = parser.parse_args(argv)

    html_root = Path(args.html).resolve()
    if not (html_root / "index.html").is_file():
        print(f"[check] {html_root}/index.html not found: build the book first (make book)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve() if args.out else html_root.parent / "check"
    out.mkdir(parents=True, exist_ok=True)
    chromium = find_chromium()

    pages = classify_pages(html_root)
    todo: list[tuple[Path, str]] = []
    if args.page:
        for rel in args.page:
            p = html_root / rel
            text = p.read_text(encoding="utf-8", errors="replace")
            kind = ("widgets" if WIDGET_STATE_MARK in text and any(m in text for m in CONTROL_MODELS) else
                    "figures" if re.search(r'class="cell_output[^"]*"', text) and "<img" in text else "index")
            todo.append((p, kind))
    else:
        todo += [(p, "widgets") for p in pages["widgets"]]
        todo += [(p, "figures") for p in (pages["figures"] if args.all_pages else pages["figures"][:1])]
        todo += [(p, "index") for p in pages["index"]]
        if not pages["widgets"]:
            print("[check] WARNING: no page with saved widget state (head explorer missing?)")

    server, port = serve(html_root)
    results = []
    try:
        for page, kind in todo:
            try:
                res = check_page(chromium, port, html_root, page, kind, out, args.budget_ms)
            except (subprocess.TimeoutExpired, RuntimeError) as error:   # Chromium hung or crashed
                res = PageCheck(page.relative_to(html_root).as_posix(), kind,
                                problems=[f"Chromium failed: {str(error).splitlines()[0][:300]}"])
            results.append(res)
            r = res.report
            summary = (f"widgets={r.get('jupyter_widgets')} dropdowns={r.get('dropdowns')} "
                       f"widget_images={r.get('widget_images')} images={len(r.get('images', []))} "
                       f"js_errors={len(r.get('errors', []))}") if r else "no report"
            status = "ok" if not res.problems else "FAIL"
            print(f"[check] {status:4s} {kind:8s} {res.page}: {summary}")
            for prob in res.problems:
                print(f"[check]        problem: {prob}")
            for err in (r.get("errors") or [])[:5]:
                print(f"[check]        js error: {err}")
            for fig in (r.get("scaled_figures") or [])[:5]:
                print(f"[check]        note: figure shown below 80 % of its drawn width: {fig}")
            for s in res.screenshots:
                print(f"[check]        screenshot: {s}")
    finally:
        server.shutdown()
    (out / "report.json").write_text(json.dumps([res.__dict__ for res in results], indent=1) + "\n")
    failed = [r for r in results if r.problems]
    print(f"[check] {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
