"""Small shared types of the library (stdlib imports only, so every module can use them).

``Head`` is one attention head as (layer, query head), both 0-based; the one definition every module imports.
A head is written two ways, converted here and nowhere else:

* the file format ``head_key((9, 0)) == "l9_h0"`` — the key of the released score files, used by every
  file we write (score files, result rows, head counts);
* the display format ``head_label((9, 0)) == "L9H0"`` — the book's prose, tables, figures and widgets.

``parse_head`` reads either back.

``SAME_MODEL``, ``BEFORE_TRAINING`` and ``RETRIEVAL_KEPT`` name the relation of two head sets that chapter 04
compares (``findings.Comparison.relation``; ``conclusions`` reads it back from the table rows).
"""
from __future__ import annotations

import re

Head = tuple[int, int]  # (layer, query head), both 0-based

SAME_MODEL = "same model"                                         # OCR heads vs the model's own retrieval heads
BEFORE_TRAINING = "language half before VLM training"             # OCR heads vs the language half's retrieval heads
RETRIEVAL_KEPT = "retrieval heads after vs before VLM training"   # the model's retrieval heads vs its half's
RELATIONS = (SAME_MODEL, BEFORE_TRAINING, RETRIEVAL_KEPT)

_HEAD_TEXT = re.compile(r"^(?:l(\d+)_h(\d+)|L(\d+)H(\d+))$")
_HEAD_KEY = re.compile(r"^l\d+_h\d+$")


def _as_head(head: Head) -> Head:
    layer, index = head
    return int(layer), int(index)


def head_key(head: Head) -> str:
    """The file format of a head: (9, 0) -> "l9_h0" (the released score files' key)."""
    layer, index = _as_head(head)
    return f"l{layer}_h{index}"


def head_label(head: Head) -> str:
    """The display format of a head: (9, 0) -> "L9H0" (book, figures, widgets, prose)."""
    layer, index = _as_head(head)
    return f"L{layer}H{index}"


def is_head_key(text: object) -> bool:
    """True for a head in the file format ("l9_h0"): how an official score file is recognised."""
    return isinstance(text, str) and _HEAD_KEY.match(text) is not None


def parse_head(text: str) -> Head:
    """"l9_h0" or "L9H0" -> (9, 0); raises ValueError naming the text otherwise."""
    match = _HEAD_TEXT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a head; write it as 'l<layer>_h<head>' (files, e.g. 'l9_h0') "
                         "or 'L<layer>H<head>' (display, e.g. 'L9H0')")
    numbers = [g for g in match.groups() if g is not None]
    return int(numbers[0]), int(numbers[1])
