"""A Sphinx extension for the book (listed in _config.yml `sphinx.extra_extensions`).

Jupyter Book 1 runs sphinx-thebe's `env-before-read-docs` hook once per reading pass, and each pass
adds the same inline configuration script again, so every page declared `const THEBE_JS_URL` twice and
the browser logged "Identifier 'THEBE_JS_URL' has already been declared". This extension drops repeated
script entries (same file and same inline body) from each page's script list before it is rendered.
"""
from __future__ import annotations

from typing import Any


def _script_key(script: Any) -> tuple[str, str]:
    filename = getattr(script, "filename", script)
    body = (getattr(script, "attributes", None) or {}).get("body", "")
    return str(filename or ""), str(body)      # an inline script's filename is None, or "" once re-added


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """`scripts` in order, without repeats of the same (file, inline body)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            out.append(script)
    return out


def _dedupe(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        scripts[:] = unique_scripts(scripts)      # in place: themes add page scripts to this list later


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe, priority=100)   # early: html-page-context stops at the first handler that returns a value
    return {"parallel_read_safe": True, "parallel_write_safe": True}
