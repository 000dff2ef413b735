"""Small shared types of the library (no imports of its own, so every module can use them).

``Head`` is one attention head as (layer, query head), both 0-based; the one definition every module imports.
"""
from __future__ import annotations

Head = tuple[int, int]  # (layer, query head), both 0-based
