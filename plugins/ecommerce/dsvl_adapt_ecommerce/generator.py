"""Deterministic synthetic product-photo data (e-commerce vertical).

Each image is a simple drawn product (shirt, mug, shoe, bag, hat, bottle) on a plain
studio backdrop with a soft floor shadow, in one colour and one pattern (solid, striped,
dotted), shot catalogue-style (centred, upright, small size/tilt jitter) under a random
key light. Each row asks about ONE attribute (category, colour or pattern); ``meta``
carries all of them and which was asked. Colour needs few examples, so category and
pattern questions get twice its share of rows (``QUESTION_WEIGHTS``).

Shapes are polygons in unit coordinates drawn 2x supersampled, so ``image_size`` changes
resolution, not content.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dsvl_adapt.data.synthetic import (
    balanced_order,
    balanced_slots,
    check_request,
    split_stream,
)

NAME = "ecommerce"
SPLITS = ("train", "validation", "test")
CATEGORIES = ("shirt", "mug", "shoe", "bag", "hat", "bottle")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
COLORS = COLOURS
PATTERNS = ("solid", "striped", "dotted")
QUESTION_TYPES = ("category", "colour", "pattern")
ATTRIBUTES = {"category": CATEGORIES, "colour": COLOURS, "pattern": PATTERNS}
ANSWER_SPACE = ATTRIBUTES  # question type -> possible answers
QUESTIONS = {
    "category": (
        "What kind of product is this?",
        "What category does this product belong to?",
        "What product is shown in this photo?",
        "Name the product type.",
    ),
    "colour": (
        "What colour is this product?",
        "What is the main color of the item?",
        "Which colour is the product?",
        "What color is this item?",
    ),
    "pattern": (
        "What pattern does this product have?",
        "Is the product solid, striped or dotted?",
        "Describe the pattern on the item.",
        "What is the pattern of this product?",
    ),
}
_RGB = {
    "red": (0.82, 0.1, 0.1),
    "orange": (0.95, 0.5, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.12, 0.6, 0.2),
    "blue": (0.12, 0.28, 0.82),
    "purple": (0.5, 0.18, 0.65),
    "black": (0.09, 0.09, 0.1),
    "white": (0.96, 0.96, 0.95),
}
_BACKDROPS = {"light grey": (0.78, 0.78, 0.78), "warm grey": (0.8, 0.77, 0.72), "cool grey": (0.74, 0.77, 0.8),
              "mid grey": (0.66, 0.66, 0.66)}


# Share of rows per question type. Colour is learnt from a handful of examples; shape
# (category) and texture (pattern) need more, so they get twice as many rows.
QUESTION_WEIGHTS = {"category": 2, "colour": 1, "pattern": 2}


_SLOTS = balanced_slots(ATTRIBUTES, QUESTION_WEIGHTS)
BALANCE_BLOCK = len(_SLOTS)  # rows are exactly balanced in every consecutive block of this many


# --------------------------------------------------------------------------- seeding
def _stream(split: str) -> int:
    return split_stream(NAME, split)


_check = check_request


def _balanced(slots: tuple, split: str, seed: int, n: int) -> list:
    return balanced_order(slots, NAME, split, seed, n)


# --------------------------------------------------------------------------- shapes
def _ellipse(cx, cy, rx, ry, a0=0.0, a1=2 * math.pi, n=48):
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(a0, a1, n)]


def _rrect(x0, y0, x1, y1, r, n=8):
    pts = []
    for cx, cy, a in ((x1 - r, y0 + r, -math.pi / 2), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, math.pi / 2),
                      (x0 + r, y0 + r, math.pi)):
        pts += _ellipse(cx, cy, r, r, a, a + math.pi / 2, n)
    return pts


def _shape(cat: str):
    """(body polygons added, holes subtracted, trim polygons in a neutral colour, detail lines)."""
    if cat == "shirt":
        body = [[(0.36, 0.12), (0.43, 0.17), (0.5, 0.19), (0.57, 0.17), (0.64, 0.12), (0.8, 0.17), (0.96, 0.38),
                 (0.84, 0.46), (0.76, 0.37), (0.76, 0.9), (0.24, 0.9), (0.24, 0.37), (0.16, 0.46), (0.04, 0.38),
                 (0.2, 0.17)]]
        return body, [], [], [[(0.36, 0.12), (0.43, 0.17), (0.5, 0.19), (0.57, 0.17), (0.64, 0.12)],
                              [(0.24, 0.37), (0.2, 0.24)], [(0.76, 0.37), (0.8, 0.24)]]
    if cat == "mug":
        body = [_rrect(0.2, 0.22, 0.66, 0.86, 0.05), _ellipse(0.68, 0.54, 0.17, 0.2)]
        holes = [_ellipse(0.7, 0.54, 0.09, 0.12)]
        return body, holes, [], [_ellipse(0.43, 0.24, 0.22, 0.035)]
    if cat == "shoe":
        upper = [[(0.1, 0.72), (0.11, 0.46), (0.2, 0.4), (0.32, 0.33), (0.4, 0.36), (0.46, 0.46), (0.62, 0.5),
                  (0.8, 0.54), (0.92, 0.6), (0.95, 0.72)]]
        sole = [_rrect(0.07, 0.68, 0.97, 0.8, 0.04)]
        return upper, [], sole, [[(0.44, 0.44), (0.6, 0.38)], [(0.5, 0.47), (0.64, 0.41)], [(0.56, 0.49), (0.68, 0.44)],
                                 [(0.12, 0.6), (0.9, 0.64)]]
    if cat == "bag":
        body = [[(0.2, 0.4), (0.8, 0.4), (0.88, 0.9), (0.12, 0.9)], _ellipse(0.5, 0.42, 0.22, 0.3, math.pi, 2 * math.pi)]
        holes = [_ellipse(0.5, 0.43, 0.16, 0.24, math.pi, 2 * math.pi)]
        return body, holes, [], [[(0.17, 0.5), (0.83, 0.5)]]
    if cat == "hat":
        body = [_ellipse(0.5, 0.62, 0.26, 0.34, math.pi, 2 * math.pi), _ellipse(0.5, 0.63, 0.46, 0.1)]
        band = [[(0.24, 0.5), (0.76, 0.5), (0.76, 0.58), (0.24, 0.58)]]
        return body, [], band, [_ellipse(0.5, 0.63, 0.26, 0.04, 0, math.pi)]
    if cat == "bottle":
        body = [_rrect(0.34, 0.32, 0.66, 0.92, 0.06), [(0.34, 0.36), (0.44, 0.22), (0.56, 0.22), (0.66, 0.36)]]
        cap = [_rrect(0.42, 0.08, 0.58, 0.23, 0.02)]
        return body, [], cap, [[(0.34, 0.5), (0.66, 0.5)], [(0.34, 0.78), (0.66, 0.78)]]
    raise ValueError(cat)


def _render(rng, cat: str, colour: str, pattern: str, s: int):
    ss = 2
    S = s * ss
    # catalogue-style placement: centred, upright, nearly the same scale in every shot (a
    # small model learns the silhouettes far faster from standardised shots than from free poses)
    scale = rng.uniform(0.88, 0.93)
    tilt = math.radians(rng.uniform(-2, 2))
    cx, cy = 0.5 + rng.uniform(-0.01, 0.01), 0.5 + rng.uniform(-0.01, 0.01)

    def tf(pts):
        out = []
        for x, y in pts:
            x, y = (x - 0.5) * scale, (y - 0.5) * scale
            x, y = x * math.cos(tilt) - y * math.sin(tilt), x * math.sin(tilt) + y * math.cos(tilt)
            out.append(((cx + x) * S, (cy + y) * S))
        return out

    body, holes, trim, details = _shape(cat)
    m = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(m)
    for p in body:
        d.polygon(tf(p), fill=255)
    for p in holes:
        d.polygon(tf(p), fill=0)
    t = Image.new("L", (S, S), 0)
    dt = ImageDraw.Draw(t)
    for p in trim:
        dt.polygon(tf(p), fill=255)
    ln = Image.new("L", (S, S), 0)
    dl = ImageDraw.Draw(ln)
    for p in details:
        dl.line(tf(p), fill=255, width=max(1, int(0.012 * S)))

    # pattern mask (1 where the secondary colour goes)
    pm = Image.new("L", (S, S), 0)
    dp = ImageDraw.Draw(pm)
    if pattern == "striped":
        period = rng.uniform(0.1, 0.11) * S
        width = period * rng.uniform(0.4, 0.5)
        ang = rng.choice([0.0, 90.0]) + math.degrees(tilt)
        big = Image.new("L", (2 * S, 2 * S), 0)
        db = ImageDraw.Draw(big)
        y0 = rng.uniform(0, period)
        while y0 < 2 * S:
            db.rectangle([0, y0, 2 * S, y0 + width], fill=255)
            y0 += period
        pm = big.rotate(ang, resample=Image.BILINEAR).crop((S // 2, S // 2, S // 2 + S, S // 2 + S))
    elif pattern == "dotted":
        step = rng.uniform(0.11, 0.12) * S
        r = step * rng.uniform(0.27, 0.3)
        ox, oy = rng.uniform(0, step, 2)
        row = 0
        y = -step + oy
        while y < S + step:
            x = -step + ox + (step / 2 if row % 2 else 0)
            while x < S + step:
                dp.ellipse([x - r, y - r, x + r, y + r], fill=255)
                x += step
            y += step * 0.87
            row += 1

    # compose in float at supersampled size
    X = (np.arange(S, dtype=np.float32) + 0.5) / S
    gx, gy = np.meshgrid(X, X)
    bd_name = list(_BACKDROPS)[int(rng.integers(len(_BACKDROPS)))]
    bd = np.array(_BACKDROPS[bd_name]) + rng.normal(0, 0.015, 3)
    sweep = 1.0 + rng.uniform(0.04, 0.1) * (0.5 - gy) + rng.uniform(-0.03, 0.03) * (gx - 0.5)  # studio sweep
    img = bd[None, None, :] * sweep[..., None]
    # soft floor shadow under the product
    sh = Image.new("L", (S, S), 0)
    bottom = max(y for p in body for _, y in tf(p))
    ImageDraw.Draw(sh).ellipse([cx * S - 0.36 * scale * S, bottom - 0.04 * S, cx * S + 0.36 * scale * S, bottom + 0.03 * S],
                               fill=255)
    sh = np.asarray(sh.filter(ImageFilter.GaussianBlur(0.03 * S)), dtype=np.float32) / 255
    img = img * (1 - 0.28 * sh[..., None])

    base = np.array(_RGB[colour]) * rng.uniform(0.92, 1.05) + rng.normal(0, 0.02, 3)
    # print colour: a lighter (dark goods) or darker (light goods) shade of the base colour
    if colour in ("white", "yellow"):
        second = base * rng.uniform(0.2, 0.25)
    else:
        second = base + (1 - base) * rng.uniform(0.8, 0.85)
    pmask = np.asarray(pm, dtype=np.float32)[..., None] / 255
    prod = base[None, None, :] * (1 - pmask) + second[None, None, :] * pmask
    # studio key light from one side: gentle falloff across the product, darker outline
    la = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + rng.uniform(0.08, 0.16) * ((gx - cx) * math.cos(la) + (gy - cy) * math.sin(la)) * 2
    mask = np.asarray(m, dtype=np.float32) / 255
    edge = mask - np.asarray(m.filter(ImageFilter.MinFilter(2 * int(0.006 * S) + 1)), dtype=np.float32) / 255
    prod = prod * shade[..., None] * (1 - 0.35 * edge[..., None])
    trim_col = np.array([0.9, 0.9, 0.88]) if colour != "white" else np.array([0.35, 0.35, 0.37])
    tmask = np.asarray(t, dtype=np.float32)[..., None] / 255
    lmask = np.asarray(ln, dtype=np.float32)[..., None] / 255 * mask[..., None]
    prod = prod * (1 - 0.3 * lmask)
    img = img * (1 - mask[..., None]) + prod * mask[..., None]
    img = img * (1 - tmask) + (trim_col * shade[..., None] * (1 - 0.3 * lmask)) * tmask
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB").resize((s, s), Image.LANCZOS)
    full = np.maximum(mask, tmask[..., 0]) > 0.5
    ys, xs = np.nonzero(full)
    bbox = [int(xs.min()) // ss, int(ys.min()) // ss, int(xs.max()) // ss + 1, int(ys.max()) // ss + 1]
    return out, {"backdrop": bd_name, "bbox": bbox}


def generate_rows(split: str, n: int, *, seed: int = 0, image_size: int = 128,
                  attributes: dict[str, tuple[str, ...]] | None = None,
                  asked: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """``n`` product rows for ``split``, each asking one attribute.

    Balanced per block of ``len(_SLOTS)`` rows: the three question types equally often and,
    within each, every answer equally often; the attributes not asked are uniform.
    Row ``i`` depends only on (split, seed, i, image_size).

    ``attributes`` narrows the catalogue to some values of each attribute (a shop that sells fewer products:
    ``{"category": ("shirt", "mug"), ...}``; a missing attribute keeps all its values); ``asked`` narrows the
    questions to rows whose asked answer is one of these values (the new items of a week: products of a new
    category, or of a new colour), the other attributes drawn from ``attributes``. Without either the rows are
    exactly those of the default catalogue (``benchmarks/continual.py`` uses both to simulate weekly increments).
    """
    _check(n, seed, image_size)
    catalogue = ATTRIBUTES if attributes is None else {k: tuple(attributes.get(k, v)) for k, v in ATTRIBUTES.items()}
    unknown = sorted({value for values in [*(attributes or {}).values(), *(asked or {}).values()] for value in values}
                     - {value for values in ATTRIBUTES.values() for value in values})
    if unknown:
        raise ValueError(f"unknown attribute value(s) {unknown}; the catalogue has {ATTRIBUTES}")
    slots = _SLOTS
    if attributes is not None or asked is not None:
        questions = {k: tuple(v) for k, v in (asked or catalogue).items() if v}
        slots = balanced_slots(questions, {k: QUESTION_WEIGHTS[k] for k in questions})
    labels = _balanced(slots, split, seed, n)
    rows = []
    for i, (kind, value) in enumerate(labels):
        rng = np.random.default_rng([_stream(split), seed, 1, i])
        attrs = {k: vals[int(rng.integers(len(vals)))] for k, vals in catalogue.items()}
        attrs[kind] = value
        q = QUESTIONS[kind][int(rng.integers(len(QUESTIONS[kind])))]
        img, extra = _render(rng, attrs["category"], attrs["colour"], attrs["pattern"], image_size)
        meta = {**attrs, "question_type": kind, "asked": kind, **extra}
        rows.append({"id": f"{NAME}-{split}-{seed}-{i:06d}", "image": img, "question": q,
                     "answer": value, "meta": meta})
    return rows
