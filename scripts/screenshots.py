#!/usr/bin/env python
"""Screenshots of every page of the built book in headless Chromium, as a newcomer sees them.

    python scripts/screenshots.py _build/html --out _build/screenshots [--page book/generated/04_findings.html]

Uses the Chromium setup of scripts/check_book.py (Debian's chromium, `bash scripts/install_browser.sh`;
the book served on a localhost port, no other network). Per page: the DOM after its JavaScript ran gives the
page height, then one screenshot of the whole page at 1280 px wide (folded tables and conclusions stay
folded, as a reader first sees them), cut into tiles of --tile px for viewing (`<page>.NN.png`). Prints
every file written and a one-line summary; exits 1 when a page cannot be captured.
"""
from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_book  # noqa: E402  (the same Chromium flags, server and probe)

WIDTH = 1280
MAX_HEIGHT = 30000


def pages_of(html_root: Path) -> list[Path]:
    """The book's pages: the introduction, the fixed pages and every chapter, in the order of the files."""
    pages = sorted(p for p in (html_root / "book").rglob("*.html") if "_static" not in p.parts)
    return [p for p in pages if p.name not in {"search.html", "genindex.html"}]


def page_height(chromium: str, base: str, budget_ms: int) -> int:
    dom = check_book.run_chromium(chromium, f"{base}?ocrheads_check=passive", ["--dump-dom"], budget_ms)
    match = re.search(rf'<pre id="{check_book.RESULT_ID}"[^>]*>(.*?)</pre>', dom, re.S)
    if not match:
        raise RuntimeError("the probe wrote no report")
    return int(json.loads(html_lib.unescape(match.group(1))).get("page_height") or 1600)


def capture(chromium: str, port: int, html_root: Path, page: Path, out: Path, tile: int, budget_ms: int) -> list[Path]:
    from PIL import Image

    rel = page.relative_to(html_root).as_posix()
    base = f"http://127.0.0.1:{port}/{rel}"
    height = min(MAX_HEIGHT, page_height(chromium, base, budget_ms) + 40)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.removesuffix(".html"))
    whole = out / f"{stem}.png"
    check_book.run_chromium(chromium, f"{base}?ocrheads_check=passive",
                            [f"--window-size={WIDTH},{height}", f"--screenshot={whole}"], budget_ms, timeout=180)
    written = [whole]
    if tile:
        image = Image.open(whole)
        for i, top in enumerate(range(0, image.height, tile)):
            part = out / f"{stem}.{i:02d}.png"
            image.crop((0, top, image.width, min(image.height, top + tile))).save(part)
            written.append(part)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", default="_build/html")
    parser.add_argument("--out", default="_build/screenshots")
    parser.add_argument("--page", action="append", default=[], help="only these pages (relative to html)")
    parser.add_argument("--tile", type=int, default=1400, help="tile height in px (0: whole pages only)")
    parser.add_argument("--budget-ms", type=int, default=8000, help="Chromium --virtual-time-budget")
    args = parser.parse_args(argv)
    html_root = Path(args.html).resolve()
    if not (html_root / "index.html").is_file():
        print(f"[shots] {html_root}/index.html not found: build the book first (make book)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chromium = check_book.find_chromium()
    pages = [html_root / p for p in args.page] if args.page else pages_of(html_root)
    server, port = check_book.serve(html_root)
    failed = 0
    try:
        for page in pages:
            try:
                files = capture(chromium, port, html_root, page, out, args.tile, args.budget_ms)
                print(f"[shots] {page.relative_to(html_root)}: " + ", ".join(f.name for f in files))
            except Exception as error:   # noqa: BLE001 (report the page, go on with the others)
                failed += 1
                print(f"[shots] FAIL {page.relative_to(html_root)}: {str(error).splitlines()[0][:300]}")
    finally:
        server.shutdown()
    print(f"[shots] {len(pages) - failed} of {len(pages)} pages captured into {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
