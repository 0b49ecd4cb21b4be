"""Deterministic synthetic finance-document data (finance vertical).

Each image is a rendered business document, drawn with Pillow's built-in font
(``ImageFont.load_default(size=...)``, offline, Pillow >= 10.1):

* an **invoice**: a portrait page with the vendor's coloured header band, logo and name,
  "INVOICE" title, invoice number / date / due date block, a line-item table and a total;
  paid invoices carry a big rotated "PAID" stamp;
* a **receipt**: a narrow thermal-paper strip lying on a desk, the vendor's logo and name
  on top, item lines, dashed rules, TOTAL and a barcode.

Every document has a vendor, an invoice/receipt number, a date and a total (all in
``meta``, with the line items), but reading arbitrary digits at 128 px is not learnable by
a small model in a short fine-tune, so the generated questions are the learnable ones:

* ``vendor``   "Which vendor issued this document?"    -> one of ``VENDOR_ANSWERS``
* ``doc_type`` "What type of document is this?"         -> "invoice" | "receipt"
* ``paid``     "Has this invoice been paid?" (invoices) -> "yes" | "no"

Each vendor has its own brand colour and logo shape, and its name is printed.
"""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dsvl_adapt.data.synthetic import (
    balanced_order,
    balanced_slots,
    check_request,
    split_stream,
)

NAME = "finance"
SPLITS = ("train", "validation", "test")
# name, brand colour (RGB 0-255), logo shape
VENDORS = (
    ("Acme Supplies", (0, 140, 150), "circle"),
    ("Bluewave Logistics", (25, 80, 200), "wave"),
    ("Greenleaf Foods", (30, 140, 60), "diamond"),
    ("Sunrise Energy", (240, 150, 20), "sun"),
    ("Violet Legal", (120, 50, 160), "square"),
    ("Nordic Tech", (40, 40, 48), "triangle"),
)
VENDOR_NAMES = tuple(v[0] for v in VENDORS)
VENDOR_ANSWERS = tuple(v.lower() for v in VENDOR_NAMES)
DOC_TYPES = ("invoice", "receipt")
PAID_ANSWERS = ("yes", "no")
QUESTION_TYPES = ("vendor", "doc_type", "paid")
ANSWERS = {"vendor": VENDOR_ANSWERS, "doc_type": DOC_TYPES, "paid": PAID_ANSWERS}
ANSWER_SPACE = ANSWERS  # question type -> possible answers
QUESTIONS = {
    "vendor": (
        "Which vendor issued this document?",
        "Who is the vendor on this document?",
        "Which company is this document from?",
        "Name the issuer of this document.",
    ),
    "doc_type": (
        "What type of document is this?",
        "Is this an invoice or a receipt?",
        "What kind of financial document is shown?",
        "Classify this document.",
    ),
    "paid": (
        "Has this invoice been paid?",
        "Is this invoice marked as paid?",
        "Is this invoice paid? Answer yes or no.",
        "Was this invoice settled?",
    ),
}
_ITEMS = ("Consulting services", "Office chairs", "Printer paper A4", "Freight charges", "Software licence",
          "Maintenance visit", "Catering platter", "Cloud hosting", "Legal review", "Fuel surcharge",
          "Coffee beans 1kg", "Network switch", "Cleaning supplies", "Training session")
_CURRENCIES = ("$", "EUR ", "GBP ")


_SLOTS = balanced_slots(ANSWERS)
BALANCE_BLOCK = len(_SLOTS)  # rows are exactly balanced in every consecutive block of this many


# --------------------------------------------------------------------------- seeding
def _stream(split: str) -> int:
    return split_stream(NAME, split)


_check = check_request


def _balanced(slots: tuple, split: str, seed: int, n: int) -> list:
    return balanced_order(slots, NAME, split, seed, n)


# --------------------------------------------------------------------------- content
def _fields(rng, vendor: str, doc_type: str, paid: bool) -> dict:
    n_items = int(rng.integers(2, 6))
    items = []
    for _ in range(n_items):
        qty = int(rng.integers(1, 10))
        unit = round(float(rng.uniform(3, 400)), 2)
        items.append({"description": _ITEMS[int(rng.integers(len(_ITEMS)))], "quantity": qty,
                      "unit_price": unit, "amount": round(qty * unit, 2)})
    subtotal = round(sum(i["amount"] for i in items), 2)
    tax_rate = float(rng.choice([0.0, 0.05, 0.1, 0.2]))
    tax = round(subtotal * tax_rate, 2)
    date = _dt.date(2021, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 1461)))
    prefix = "INV" if doc_type == "invoice" else "RCP"
    return {
        "vendor": vendor,
        "doc_type": doc_type,
        "number": f"{prefix}-{int(rng.integers(1000, 999999)):06d}",
        "date": date.isoformat(),
        "due_date": (date + _dt.timedelta(days=int(rng.choice([14, 30, 60])))).isoformat() if doc_type == "invoice" else None,
        "currency": _CURRENCIES[int(rng.integers(len(_CURRENCIES)))].strip(),
        "items": items,
        "subtotal": subtotal,
        "tax": tax,
        "total": round(subtotal + tax, 2),
        "paid": paid,
    }


def _money(cur: str, x: float) -> str:
    return f"{cur}{' ' if len(cur) > 1 else ''}{x:,.2f}"


# --------------------------------------------------------------------------- drawing
def _logo(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, bg) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        d.ellipse([cx - 0.45 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r], fill=bg)
    elif shape == "wave":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        for k in (-0.35, 0.15):
            pts = [(cx + t * r, cy + k * r + 0.22 * r * math.sin(t * 3 * math.pi)) for t in np.linspace(-0.8, 0.8, 24)]
            d.line(pts, fill=bg, width=max(1, int(0.18 * r)))
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "sun":
        for k in range(12):
            a = k * math.pi / 6
            d.line([(cx, cy), (cx + r * math.cos(a), cy + r * math.sin(a))], fill=fill, width=max(1, int(0.16 * r)))
        d.ellipse([cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
        d.rectangle([cx - 0.35 * r, cy - 0.35 * r, cx + 0.35 * r, cy + 0.35 * r], fill=bg)
    else:  # triangle
        d.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)


def _font(px: float):
    return ImageFont.load_default(size=max(6, round(px)))


def _invoice(rng, f: dict, brand, shape: str, S: int) -> Image.Image:
    paper = tuple(int(c) for c in np.clip(np.array([250, 250, 246]) - rng.uniform(0, 12), 0, 255))
    page = Image.new("RGB", (S, S), paper)
    d = ImageDraw.Draw(page)
    m = S * rng.uniform(0.05, 0.07)
    hb = S * rng.uniform(0.2, 0.24)  # header band
    d.rectangle([0, 0, S, hb], fill=brand)
    _logo(d, shape, m + 0.08 * S, hb / 2, 0.075 * S, (255, 255, 255), brand)
    d.text((m + 0.18 * S, hb / 2), f["vendor"], font=_font(0.075 * S), fill=(255, 255, 255), anchor="lm")
    ink = (30, 30, 34)
    y = hb + 0.05 * S
    d.text((m, y), "INVOICE", font=_font(0.08 * S), fill=brand, anchor="lt")
    small = _font(0.032 * S)
    for k, (lab, val) in enumerate((("Invoice no.", f["number"]), ("Date", f["date"]), ("Due", f["due_date"]))):
        d.text((S * 0.58, y + k * 0.042 * S), f"{lab}: {val}", font=small, fill=ink, anchor="lt")
    y += 0.16 * S
    # line-item table
    d.rectangle([m, y, S - m, y + 0.045 * S], fill=tuple(int(0.25 * c + 0.75 * 235) for c in brand))
    d.text((m + 0.01 * S, y + 0.022 * S), "Description", font=small, fill=ink, anchor="lm")
    d.text((S - m - 0.01 * S, y + 0.022 * S), "Amount", font=small, fill=ink, anchor="rm")
    y += 0.045 * S
    for it in f["items"]:
        d.text((m + 0.01 * S, y + 0.025 * S), f"{it['quantity']} x {it['description']}", font=small, fill=ink, anchor="lm")
        d.text((S - m - 0.01 * S, y + 0.025 * S), _money(f["currency"], it["amount"]), font=small, fill=ink, anchor="rm")
        y += 0.05 * S
        d.line([m, y, S - m, y], fill=(200, 200, 200), width=max(1, S // 256))
    y += 0.02 * S
    d.text((S * 0.45, y), "Tax", font=small, fill=ink, anchor="lt")
    d.text((S - m - 0.01 * S, y), _money(f["currency"], f["tax"]), font=small, fill=ink, anchor="rt")
    y += 0.05 * S
    d.text((S * 0.45, y), "TOTAL", font=_font(0.045 * S), fill=ink, anchor="lt")
    d.text((S - m - 0.01 * S, y), _money(f["currency"], f["total"]), font=_font(0.045 * S), fill=ink, anchor="rt")
    d.text((m, S - m), "Thank you for your business. Payment terms: net 30.", font=_font(0.026 * S),
           fill=(110, 110, 110), anchor="lb")
    if f["paid"]:
        # red rubber stamp (no vendor uses red, so the ink colour is the stamp's own)
        red = tuple(int(c) for c in np.array([210, 28, 32]) + rng.integers(-15, 16, 3))
        st = Image.new("RGBA", (int(0.66 * S), int(0.28 * S)), (0, 0, 0, 0))
        ds = ImageDraw.Draw(st)
        w = max(2, int(0.03 * S))
        ds.rectangle([w, w, st.width - w, st.height - w], outline=red + (225,), width=w)
        ds.text((st.width / 2, st.height / 2), "PAID", font=_font(0.19 * S), fill=red + (225,), anchor="mm",
                stroke_width=max(1, int(0.008 * S)), stroke_fill=red + (225,))
        st = st.rotate(rng.uniform(10, 30), expand=True, resample=Image.BICUBIC)
        page.paste(st, (int(rng.uniform(0.12, 0.3) * S), int(rng.uniform(0.42, 0.56) * S)), st)
    # scanned: slight skew on a grey scanner bed
    bed_col = tuple(int(c) for c in rng.uniform(70, 110, 3).round())
    bed = Image.new("RGB", (S, S), bed_col)
    page = page.resize((int(S * 0.9), int(S * 0.96)), Image.BILINEAR)
    page = page.rotate(rng.uniform(-1.5, 1.5), expand=True, resample=Image.BICUBIC, fillcolor=bed_col)
    bed.paste(page, ((S - page.width) // 2, (S - page.height) // 2))
    return bed


def _receipt(rng, f: dict, brand, shape: str, S: int) -> Image.Image:
    W, H = int(S * rng.uniform(0.46, 0.52)), int(S * 1.3)
    paper = tuple(int(c) for c in np.clip(np.array([246, 244, 236]) - rng.uniform(0, 14), 0, 255))
    strip = Image.new("RGB", (W, H), paper)
    d = ImageDraw.Draw(strip)
    ink = (45, 45, 50)
    y = 0.2 * S
    _logo(d, shape, W / 2, y, 0.1 * S, brand, paper)
    y += 0.14 * S
    d.text((W / 2, y), f["vendor"], font=_font(0.05 * S), fill=ink, anchor="mm")
    small = _font(0.03 * S)
    y += 0.05 * S
    d.text((W / 2, y), f"{f['date']}  {f['number']}", font=small, fill=ink, anchor="mm")
    y += 0.04 * S
    dash = "- " * 40
    d.text((W / 2, y), dash, font=small, fill=ink, anchor="mm")
    for it in f["items"]:
        y += 0.04 * S
        d.text((0.06 * W, y), it["description"][:14], font=small, fill=ink, anchor="lm")
        d.text((0.94 * W, y), f"{it['amount']:.2f}", font=small, fill=ink, anchor="rm")
    y += 0.04 * S
    d.text((W / 2, y), dash, font=small, fill=ink, anchor="mm")
    y += 0.05 * S
    d.text((0.06 * W, y), "TOTAL", font=_font(0.045 * S), fill=ink, anchor="lm")
    d.text((0.94 * W, y), _money(f["currency"], f["total"]), font=_font(0.04 * S), fill=ink, anchor="rm")
    y += 0.07 * S
    x, unit = int(0.12 * W), max(1, S // 256)
    while x < 0.88 * W:  # barcode
        bw = int(rng.integers(1, 4)) * unit
        d.rectangle([x, int(y), x + bw - 1, int(y + 0.08 * S)], fill=ink)
        x += bw + int(rng.integers(1, 3)) * unit
    # lying on a desk, slightly rotated, with a soft shadow
    desk = np.array(rng.choice([(92, 64, 44), (70, 72, 78), (120, 96, 70), (50, 52, 58)])) + rng.integers(-12, 12, 3)
    bg = Image.new("RGB", (S, S), tuple(int(c) for c in desk))
    strip = strip.rotate(rng.uniform(-4, 4), expand=True, resample=Image.BICUBIC, fillcolor=(0, 0, 0))
    alpha = strip.convert("L").point(lambda v: 255 if v > 0 else 0)
    top = int(S * 0.5 - 0.2 * S - rng.uniform(0.05, 0.12) * S)
    left = int(S * 0.5 - strip.width / 2 + rng.uniform(-0.05, 0.05) * S)
    shadow = Image.new("RGB", strip.size, tuple(int(0.6 * c) for c in desk))
    bg.paste(shadow, (left + int(0.015 * S), top + int(0.015 * S)), alpha)
    bg.paste(strip, (left, top), alpha)
    return bg


def _render(rng, f: dict, s: int) -> Image.Image:
    ss = 3
    S = s * ss
    _, brand, shape = next(v for v in VENDORS if v[0] == f["vendor"])
    brand = tuple(int(c) for c in np.clip(np.array(brand) + rng.integers(-12, 13, 3), 0, 255))
    img = _invoice(rng, f, brand, shape, S) if f["doc_type"] == "invoice" else _receipt(rng, f, brand, shape, S)
    img = img.resize((s, s), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.92, 1.05) + rng.normal(0, rng.uniform(2, 5), arr.shape)  # exposure, sensor noise
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def generate_rows(split: str, n: int, *, seed: int = 0, image_size: int = 128) -> list[dict]:
    """``n`` document rows for ``split``, each asking one learnable question.

    Balanced per block: the three question types equally often and, within each, every
    answer equally often. ``paid`` is only asked of invoices (receipts are always paid).
    Row ``i`` depends only on (split, seed, i, image_size).
    """
    _check(n, seed, image_size)
    labels = _balanced(_SLOTS, split, seed, n)
    rows = []
    for i, (asked, answer) in enumerate(labels):
        rng = np.random.default_rng([_stream(split), seed, 1, i])
        vendor = VENDOR_NAMES[int(rng.integers(len(VENDOR_NAMES)))]
        doc_type = DOC_TYPES[int(rng.integers(2))]
        paid = bool(rng.integers(2))
        if asked == "vendor":
            vendor = VENDOR_NAMES[VENDOR_ANSWERS.index(answer)]
        elif asked == "doc_type":
            doc_type = answer
        else:
            doc_type, paid = "invoice", answer == "yes"
        if doc_type == "receipt":
            paid = True
        f = _fields(rng, vendor, doc_type, paid)
        q = QUESTIONS[asked][int(rng.integers(len(QUESTIONS[asked])))]
        img = _render(rng, f, image_size)
        meta = {"question_type": asked, **f}
        rows.append({"id": f"{NAME}-{split}-{seed}-{i:06d}", "image": img, "question": q,
                     "answer": answer, "meta": meta})
    return rows
