"""Offline stand-in for document QA: synthetic forms, invoices, receipts and small tables.

    synthetic_docs(8, seed=0)                                   # free layout, one page per sample
    synthetic_docs(8, seed=0, kinds=("invoice",), layout="grid")  # "Label: value" lines on grid pages

Each page is drawn with PIL (DejaVu fonts from matplotlib) from a seeded field generator; the question
asks for one field value and the answer box is the exact ink of that value where it is drawn. The
answer string is drawn exactly once on the page (questions whose answer would be ambiguous are not
asked). The question text follows the DocVQA prompt ("Question: ...\\nAnswer: ").
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image, ImageDraw

from .compose import sample_rng
from .loaders import DOC_QUESTION
from .render import Line, TextLayout, load_font, render_lines, resolve_font
from .samples import DocSample

KINDS = ("form", "invoice", "receipt", "table")

_FIRST = ("Anna", "Ben", "Carla", "David", "Eva", "Felix", "Grace", "Henry", "Iris", "Jacob", "Lena", "Marco",
          "Nora", "Oscar", "Paula", "Quentin", "Ruth", "Samuel", "Tara", "Uma", "Walter", "Zoe")
_LAST = ("Archer", "Bennett", "Castillo", "Dawson", "Ellis", "Fischer", "Garcia", "Hughes", "Ivanova", "Jensen",
         "Keller", "Lindqvist", "Morales", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Schmidt", "Tanaka")
_CITIES = ("Springfield", "Riverton", "Lakewood", "Fairview", "Brookside", "Oakridge", "Hillcrest", "Westport",
           "Millbrook", "Kingsbury", "Ashford", "Cedar Falls")
_STREETS = ("Maple Street", "Station Road", "Harbour Lane", "Elm Avenue", "Church Road", "Mill Lane", "Park Drive")
_COMPANY_A = ("Northwind", "Bluepeak", "Silverline", "Greenfield", "Redwood", "Brightstone", "Oakmont", "Clearwater")
_COMPANY_B = ("Supplies", "Trading Co.", "Logistics", "Print Works", "Office Goods", "Hardware", "Textiles")
_STORES = ("CORNER MARKET", "DAILY FRESH", "CITY BAKERY", "GREEN GROCER", "QUICK STOP", "THE COFFEE HOUSE")
_ITEMS = ("Printer paper", "Ink cartridge", "Desk lamp", "Stapler", "Office chair", "Notebook pack", "USB cable",
          "Monitor stand", "Filing box", "Whiteboard", "Envelope set", "Label tape")
_GROCERIES = ("Bread", "Milk", "Eggs", "Coffee", "Apples", "Cheese", "Butter", "Tea", "Rice", "Pasta", "Tomatoes",
              "Orange juice")
_JOBS = ("Engineer", "Nurse", "Teacher", "Designer", "Accountant", "Chef", "Pharmacist", "Electrician", "Librarian")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_TABLES = (
    ("Monthly rainfall", ("City", "Rain (mm)", "Sunny days", "Max temp")),
    ("Team results", ("Team", "Wins", "Losses", "Points")),
    ("Product stock", ("Product", "In stock", "Ordered", "Price")),
)


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _date(rng: random.Random, style: int | None = None) -> str:
    y, m, d = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
    style = rng.randrange(3) if style is None else style
    return (f"{d} {_MONTHS[m - 1]} {y}", f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}")[style]


def _money(rng: random.Random, lo: float, hi: float) -> float:
    return round(rng.uniform(lo, hi), 2)


def _phone(rng: random.Random) -> str:
    return f"{rng.randint(200, 989)}-{rng.randint(200, 989)}-{rng.randint(1000, 9999)}"


# ------------------------------------------------------------------------------------------ page canvas
@functools.lru_cache(maxsize=2048)
def _text_ink(path: str, size: int, text: str) -> tuple[int, int, int, int] | None:
    font = load_font(path, size)
    pad = 2 * size
    width = int(font.getlength(text)) + 4 * size
    canvas = Image.new("L", (width, 5 * size), 0)
    ImageDraw.Draw(canvas).text((pad, pad), text, fill=255, font=font, anchor="la")
    box = canvas.getbbox()
    return None if box is None else (box[0] - pad, box[1] - pad, box[2] - pad, box[3] - pad)


@dataclass
class _Canvas:
    """A white page that remembers the exact ink box of every string drawn on it."""

    width: int
    height: int
    image: Image.Image = field(init=False)
    drawn: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image = Image.new("RGB", (self.width, self.height), "white")
        self.draw = ImageDraw.Draw(self.image)

    def text(self, xy: tuple[float, float], text: str, size: int = 18, bold: bool = False, fill: str = "black",
             align: str = "left") -> tuple[float, float, float, float] | None:
        path = resolve_font("DejaVuSans-Bold" if bold else "DejaVuSans")
        font = load_font(path, size)
        x, y = int(round(xy[0])), int(round(xy[1]))
        if align == "right":
            x -= int(round(font.getlength(text)))
        self.draw.text((x, y), text, fill=fill, font=font, anchor="la")
        rel = _text_ink(path, size, text)
        if rel is None:
            return None
        box = (float(x + rel[0]), float(y + rel[1]), float(x + rel[2]), float(y + rel[3]))
        self.drawn.append((text, box))
        return box

    def rect(self, box, outline="black", width=1, fill=None) -> None:
        self.draw.rectangle(box, outline=outline, width=width, fill=fill)

    def hline(self, x0, x1, y, width=1, fill="black") -> None:
        self.draw.line([(x0, y), (x1, y)], fill=fill, width=width)


# (question, answer string) candidates are produced with the drawn box of the answer.
QA = tuple[str, str, tuple[float, float, float, float]]


def _form(rng: random.Random) -> tuple[_Canvas, list[QA], dict]:
    title = rng.choice(("MEMBERSHIP APPLICATION", "VISITOR REGISTRATION", "EMPLOYEE DETAILS FORM",
                        "LIBRARY CARD APPLICATION"))
    fields = [("Full name", _name(rng), "What is the full name?"),
              ("Date of birth", _date(rng), "What is the date of birth?"),
              ("Phone", _phone(rng), "What is the phone number?"),
              ("City", rng.choice(_CITIES), "What is the city?"),
              ("Occupation", rng.choice(_JOBS), "What is the occupation?"),
              ("Member ID", f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(10000, 99999)}",
               "What is the member ID?")]
    rng.shuffle(fields)
    c = _Canvas(640, 120 + 70 * ((len(fields) + 1) // 2) + 60)
    c.text((32, 28), title, size=24, bold=True)
    c.hline(32, 608, 64, width=2)
    qa: list[QA] = []
    for k, (label, value, question) in enumerate(fields):
        col, row = k % 2, k // 2
        x, y = 32 + col * 300, 88 + row * 70
        c.text((x, y), label, size=14, fill="#444444")
        c.rect((x, y + 20, x + 276, y + 52), outline="#777777")
        box = c.text((x + 8, y + 26), value, size=18)
        qa.append((question, value, box))
    c.text((32, c.height - 40), "Signature: ______________________", size=14, fill="#444444")
    return c, qa, dict(title=title, fields={label: value for label, value, _ in fields})


def _invoice(rng: random.Random) -> tuple[_Canvas, list[QA], dict]:
    company = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
    number = f"INV-{rng.randint(10000, 99999)}"
    date, due = _date(rng, 1), _date(rng, 1)
    customer = _name(rng)
    items = rng.sample(_ITEMS, rng.randint(2, 4))
    rows = []
    for item in items:
        qty, price = rng.randint(1, 9), _money(rng, 2, 120)
        rows.append((item, qty, price, round(qty * price, 2)))
    subtotal = round(sum(r[3] for r in rows), 2)
    rate = rng.choice((5, 8, 10, 20))
    tax = round(subtotal * rate / 100, 2)
    total = round(subtotal + tax, 2)
    c = _Canvas(680, 300 + 34 * len(rows) + 130)
    c.text((32, 28), company, size=22, bold=True)
    c.text((32, 60), f"{rng.randint(1, 199)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}", size=14, fill="#444444")
    c.text((648, 28), "INVOICE", size=28, bold=True, align="right")
    qa: list[QA] = []
    y = 110
    for label, value, question in (("Invoice No.", number, "What is the invoice number?"),
                                   ("Date", date, "What is the invoice date?"),
                                   ("Due date", due, "What is the due date?"),
                                   ("Bill to", customer, "Who is the invoice billed to?")):
        c.text((32, y), label + ":", size=16, bold=True)
        qa.append((question, value, c.text((170, y), value, size=16)))
        y += 28
    y += 14
    cols = (32, 330, 420, 540)
    c.rect((32, y, 648, y + 30), outline="black", fill="#e8e8e8")
    for x, head in zip(cols, ("Description", "Qty", "Unit price", "Amount")):
        c.text((x + 6, y + 7), head, size=15, bold=True)
    y += 30
    for item, qty, price, amount in rows:
        c.text((cols[0] + 6, y + 8), item, size=15)
        c.text((cols[1] + 6, y + 8), str(qty), size=15)
        c.text((cols[2] + 6, y + 8), f"{price:.2f}", size=15)
        box = c.text((cols[3] + 6, y + 8), f"{amount:.2f}", size=15)
        qa.append((f"What is the amount for {item.lower()}?", f"{amount:.2f}", box))
        y += 34
        c.hline(32, 648, y, fill="#bbbbbb")
    y += 12
    for label, value, question in (("Subtotal", f"{subtotal:.2f}", "What is the subtotal?"),
                                   (f"Tax ({rate}%)", f"{tax:.2f}", "What is the tax amount?"),
                                   ("Total", f"{total:.2f}", "What is the total amount?")):
        bold = label == "Total"
        c.text((420, y), label, size=16, bold=bold)
        qa.append((question, value, c.text((546, y), value, size=16, bold=bold)))
        y += 28
    return c, qa, dict(company=company, number=number, date=date, due=due, customer=customer, total=f"{total:.2f}")


def _receipt(rng: random.Random) -> tuple[_Canvas, list[QA], dict]:
    store = rng.choice(_STORES)
    items = rng.sample(_GROCERIES, rng.randint(3, 6))
    prices = [_money(rng, 0.5, 15) for _ in items]
    total = round(sum(prices), 2)
    date, time = _date(rng, 2), f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}"
    cashier = rng.choice(_FIRST)
    payment = rng.choice(("CASH", "VISA", "MASTERCARD", "DEBIT"))
    c = _Canvas(360, 230 + 28 * len(items) + 80)
    c.text((180 - load_font(resolve_font("DejaVuSans-Bold"), 20).getlength(store) / 2, 24), store, size=20, bold=True)
    c.text((40, 58), f"{rng.randint(1, 99)} {rng.choice(_STREETS)}", size=13, fill="#444444")
    qa: list[QA] = []
    qa.append(("What is the date on the receipt?", date, c.text((40, 86), date, size=15)))
    qa.append(("What time was the purchase made?", time, c.text((320, 86), time, size=15, align="right")))
    c.hline(30, 330, 114)
    y = 126
    for item, price in zip(items, prices):
        c.text((40, y), item, size=15)
        qa.append((f"What is the price of {item.lower()}?", f"{price:.2f}",
                   c.text((320, y), f"{price:.2f}", size=15, align="right")))
        y += 28
    c.hline(30, 330, y + 4)
    y += 14
    c.text((40, y), "TOTAL", size=17, bold=True)
    qa.append(("What is the total?", f"{total:.2f}",
               c.text((320, y), f"{total:.2f}", size=17, bold=True, align="right")))
    y += 34
    c.text((40, y), "Paid by", size=14)
    qa.append(("How was the purchase paid?", payment, c.text((320, y), payment, size=14, align="right")))
    y += 26
    c.text((40, y), "Cashier:", size=14)
    qa.append(("Who was the cashier?", cashier, c.text((320, y), cashier, size=14, align="right")))
    c.text((104, y + 40), "THANK YOU!", size=16, bold=True)
    qa.append(("What is the name of the store?", store, next(b for t, b in c.drawn if t == store)))
    return c, qa, dict(store=store, total=f"{total:.2f}", date=date, time=time)


def _table(rng: random.Random) -> tuple[_Canvas, list[QA], dict]:
    title, heads = rng.choice(_TABLES)
    n_rows = rng.randint(3, 6)
    if heads[0] == "City":
        keys = rng.sample(_CITIES, n_rows)
        rows = [[k, str(rng.randint(20, 250)), str(rng.randint(3, 28)), f"{rng.randint(8, 35)} C"] for k in keys]
    elif heads[0] == "Team":
        keys = [f"{c} {rng.choice(('Rovers', 'United', 'Lions', 'Falcons'))}" for c in rng.sample(_CITIES, n_rows)]
        rows = []
        for k in keys:
            w, l_ = rng.randint(0, 20), rng.randint(0, 20)
            rows.append([k, str(w), str(l_), str(3 * w + rng.randint(0, 5))])
    else:
        keys = rng.sample(_ITEMS, n_rows)
        rows = [[k, str(rng.randint(0, 500)), str(rng.randint(0, 80)), f"{_money(rng, 1, 300):.2f}"] for k in keys]
    widths = (220, 130, 130, 130)
    c = _Canvas(32 * 2 + sum(widths), 110 + 36 * (n_rows + 1) + 40)
    c.text((32, 24), title, size=22, bold=True)
    y = 70
    x = 32
    c.rect((32, y, 32 + sum(widths), y + 36), outline="black", fill="#e8e8e8")
    for w, head in zip(widths, heads):
        c.text((x + 8, y + 9), head, size=15, bold=True)
        x += w
    qa: list[QA] = []
    for row in rows:
        y += 36
        c.rect((32, y, 32 + sum(widths), y + 36), outline="#999999")
        x = 32
        for k, (w, value) in enumerate(zip(widths, row)):
            box = c.text((x + 8, y + 10), value, size=15)
            if k > 0:
                qa.append((f"What is the {heads[k]} value for {row[0]}?", value, box))
            x += w
    return c, qa, dict(title=title, header=list(heads), rows=rows)


_BUILDERS = {"form": _form, "invoice": _invoice, "receipt": _receipt, "table": _table}


def _unique(qa: list[QA], drawn: list[tuple[str, Any]]) -> list[QA]:
    """Questions whose answer string appears exactly once on the page (also not inside another string)."""
    return [q for q in qa if sum(q[1] in text for text, _ in drawn) == 1]


def _grid_doc(rng: random.Random, kind: str, width: int, n_lines: int) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Short "Label: value" lines for the grid layout; returns (lines, [(question, answer, line index)])."""
    pool = {
        "form": [("Name", rng.choice(_FIRST), "What is the name?"), ("City", rng.choice(_CITIES), "What is the city?"),
                 ("Job", rng.choice(_JOBS), "What is the job?"),
                 ("ID", f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}",
                                                                   "What is the ID?")],
        "invoice": [("No", f"A-{rng.randint(1000, 9999)}", "What is the invoice number?"),
                    ("Date", f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}", "What is the date?"),
                    ("Total", f"{_money(rng, 10, 999):.2f}", "What is the total?"),
                    ("Tax", f"{_money(rng, 1, 99):.2f}", "What is the tax?")],
        "receipt": [("Milk", f"{_money(rng, 0.5, 9):.2f}", "What is the price of milk?"),
                    ("Bread", f"{_money(rng, 0.5, 9):.2f}", "What is the price of bread?"),
                    ("Total", f"{_money(rng, 10, 99):.2f}", "What is the total?"),
                    ("Time", f"{rng.randint(7, 21):02d}:{rng.randint(10, 59)}", "What time is it?")],
        "table": [(city, str(rng.randint(10, 999)), None)
                  for city in rng.sample([c for c in _CITIES if len(c) <= 9], 4)],
    }[kind]
    title = {"form": "FORM", "invoice": "INVOICE", "receipt": "RECEIPT", "table": "RAINFALL MM"}[kind]
    lines, qa = [title], []
    for label, value, question in pool[: n_lines - 1]:
        line = f"{label}: {value}"
        if len(line) > width:
            continue
        if question is None:
            question = f"What is the rainfall in {label}?"
        qa.append((question, value, len(lines)))
        lines.append(line)
    return lines, qa


def synthetic_docs(n: int, seed: int = 0, kinds: Sequence[str] = KINDS, *, layout: str = "free",
                   question_format: str = DOC_QUESTION) -> list[DocSample]:
    """n single-page synthetic documents cycling through `kinds` ("form", "invoice", "receipt", "table").

    layout "free": realistic-looking pages (DejaVu fonts, rules, boxes, tables), 360-700 px wide.
    layout "grid": "Label: value" lines on the embedded model's grid page (grid.py, 15 x 5 characters).
    Each sample: golds = [the field value]; answer_boxes = {0: [exact ink box of the value]};
    meta has kind, raw_question, and the generated fields.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    unknown = [k for k in kinds if k not in _BUILDERS]
    if unknown or not kinds:
        raise ValueError(f"unknown document kinds {unknown or list(kinds)}; choose from {list(KINDS)}")
    if layout not in ("free", "grid"):
        raise ValueError(f"layout must be 'free' or 'grid', got {layout!r}")
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rng = sample_rng(f"doc:{kind}", seed, i)
        if layout == "grid":
            lay = TextLayout(mode="grid", chars_per_line=15, lines_per_page=5)
            for _ in range(20):
                lines, qa = _grid_doc(rng, kind, lay.chars_per_line, lay.lines_per_page)
                qa = [q for q in qa if sum(q[1] in ln for ln in lines) == 1]
                if qa:
                    break
            else:
                raise RuntimeError(f"could not build a grid {kind} with an unambiguous question")
            question, answer, li = rng.choice(qa)
            rendered = render_lines([Line(text=t, start=-1) for t in lines], lay)
            col = lines[li].index(": ") + 2
            _, box = rendered.span_box([(li, c) for c in range(col, col + len(answer))])
            pages, info = rendered.pages, dict(lines=lines)
        else:
            for _ in range(20):
                canvas, qa, info = _BUILDERS[kind](rng)
                qa = [q for q in _unique(qa, canvas.drawn) if q[2] is not None]
                if qa:
                    break
            else:
                raise RuntimeError(f"could not build a {kind} with an unambiguous question")
            question, answer, box = rng.choice(qa)
            pages = [canvas.image]
        out.append(DocSample(id=f"doc-{kind}-{seed}-{i}", question=question_format.format(question=question),
                             golds=[answer], pages=pages, answer_boxes={0: [box]},
                             meta=dict(dataset="synthetic_docs", kind=kind, layout=layout, raw_question=question,
                                       index=i, seed=seed, fields=info)))
    return out
