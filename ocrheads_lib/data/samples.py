"""The sample types every generator and loader returns.

A sample is what one question about one input looks like: the pages (or the text) the model sees,
the question, the gold answer, and where the answer's evidence sits — pixel boxes on a page for
images, a character span for text. Scorers only ever read these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# A box in page pixels, half-open: (x0, y0, x1, y1) with x0 < x1 and y0 < y1.
PixelBox = tuple[float, float, float, float]


@dataclass
class ImageSample:
    """A question about text rendered on one or more page images."""

    id: str
    pages: list[Image.Image]          # in reading order: page 0, 1, 2, ... (numeric, never lexicographic)
    question: str                      # the text that follows the images in the user turn
    answer: str                        # gold answer as a string ("4817", "blue whale", "k")
    evidence_page: int                 # index into `pages` of the page holding the answer
    boxes: list[PixelBox]              # fine boxes, one per answer unit, in answer order
    units: list[str]                   # the answer unit each fine box covers (a character or a word)
    coarse_box: PixelBox               # one box around the whole answer on the evidence page
    seed: int
    golds: list[str] = field(default_factory=list)   # all accepted answers (defaults to [answer])
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"

    def __post_init__(self) -> None:
        if not self.golds:
            self.golds = [self.answer]
        if len(self.boxes) != len(self.units):
            raise ValueError(f"sample {self.id}: {len(self.boxes)} boxes but {len(self.units)} units")
        if not 0 <= self.evidence_page < len(self.pages):
            raise ValueError(f"sample {self.id}: evidence_page {self.evidence_page} outside 0..{len(self.pages) - 1}")


@dataclass
class TextSample:
    """A question about a plain-text context (text retrieval heads)."""

    id: str
    context: str                       # the haystack with the needle inside
    question: str
    answer: str
    needle_span: tuple[int, int]       # [start, end) character offsets of the needle sentence in `context`
    answer_span: tuple[int, int]       # [start, end) character offsets of the answer inside `context`
    seed: int
    golds: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "text"

    def __post_init__(self) -> None:
        if not self.golds:
            self.golds = [self.answer]
        a0, a1 = self.answer_span
        if self.context[a0:a1] != self.answer:
            raise ValueError(f"sample {self.id}: answer_span {self.answer_span} holds "
                             f"{self.context[a0:a1]!r}, not the answer {self.answer!r}")

    @property
    def prompt(self) -> str:
        """The user-turn text: context, blank line, question."""
        return f"{self.context}\n\n{self.question}"


@dataclass
class DocSample:
    """A document-QA item (DocVQA, MP-DocVQA, the offline synthetic documents, NQ, HotpotQA)."""

    id: str
    question: str
    golds: list[str]
    pages: list[Image.Image] = field(default_factory=list)   # empty for text-only QA
    context: str = ""                                           # text QA: evidence passages, already formatted
    answer_boxes: dict[int, list[PixelBox]] = field(default_factory=dict)  # page -> boxes, when known
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "doc"

    @property
    def answer(self) -> str:
        return self.golds[0]
