"""Deterministic synthetic chest-radiograph data (medical vertical).

Each image is a grey PA chest-radiograph look-alike: thorax silhouette, two dark lung
fields with ribs, clavicles, spine/mediastinum, heart shadow and diaphragm domes,
vascular markings, exposure variation and quantum noise. Each study carries one of:
a nodule, an opacity (consolidation), a pleural effusion, or no finding. Abnormal
findings are in one lung.

Sides follow radiological convention: the patient's RIGHT lung is on the IMAGE LEFT
(PA view, as if facing the patient). ``meta["side"]`` is the patient's side,
``meta["image_side"]`` where it appears in the picture.

Answers are a tiny templated report vocabulary so finding and side parse back exactly
(``parse_answer``) for finding-level precision/recall/F1:

    "no acute finding"
    "nodule in the right lung"        "nodule in the left lung"
    "opacity in the right lung"       "opacity in the left lung"
    "pleural effusion on the right"   "pleural effusion on the left"
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image

from dsvl_adapt.data.synthetic import balanced_order, check_request, split_stream

NAME = "medical"
SPLITS = ("train", "validation", "test")
FINDINGS = ("nodule", "opacity", "effusion", "normal")
ABNORMAL = ("nodule", "opacity", "effusion")
SIDES = ("right", "left")  # patient's side
QUESTION_TYPES = ("report",)
NORMAL_ANSWER = "no acute finding"
QUESTIONS = (
    "What is the main finding on this chest radiograph?",
    "Describe the key finding in this chest x-ray.",
    "Report the most important finding.",
    "What abnormality, if any, is seen on this radiograph?",
    "Give a one-line impression for this chest film.",
    "Is there an acute finding? Describe it briefly.",
)
# slots per balanced block: findings equally often, each abnormal finding on each side equally
_SLOTS = (("normal", None), ("normal", None)) + tuple((f, s) for f in ABNORMAL for s in SIDES)


def format_answer(finding: str, side: str | None) -> str:
    """The canonical report for a finding and the patient's side."""
    if finding == "normal":
        return NORMAL_ANSWER
    if finding not in ABNORMAL or side not in SIDES:
        raise ValueError(f"bad finding/side: {finding!r}, {side!r}")
    if finding == "effusion":
        return f"pleural effusion on the {side}"
    return f"{finding} in the {side} lung"


ANSWERS = tuple(dict.fromkeys(format_answer(f, s) for f, s in _SLOTS))
ANSWER_SPACE = {"report": ANSWERS}  # question type -> possible answers
BALANCE_BLOCK = len(_SLOTS)  # rows are exactly balanced in every consecutive block of this many


def parse_answer(text: str) -> dict:
    """``{"finding": ..., "side": ...}`` from a (generated) report; ``None`` where absent.

    Tolerant of casing, punctuation and extra words; 'no acute finding' / 'normal' -> normal.
    """
    t = re.sub(r"[^a-z ]+", " ", str(text).lower())
    words = t.split()
    finding = next((f for f in ABNORMAL if f in words), None)
    if finding is None and ("normal" in words or "no" in words):
        finding = "normal"
    side = next((w for w in words if w in SIDES), None) if finding not in (None, "normal") else None
    return {"finding": finding, "side": side}


# --------------------------------------------------------------------------- seeding
def _stream(split: str) -> int:
    return split_stream(NAME, split)


_check = check_request


def _balanced(slots: tuple, split: str, seed: int, n: int) -> list:
    return balanced_order(slots, NAME, split, seed, n)


# --------------------------------------------------------------------------- drawing
def _grid(s: int):
    c = (np.arange(s, dtype=np.float32) + 0.5) / s
    return np.meshgrid(c, c)


def _smooth(rng, s: int, cells: int) -> np.ndarray:
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((s, s), Image.BICUBIC))


def _soft(f: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-mask for an implicit function that is < 1 inside."""
    return 1.0 / (1.0 + np.exp(np.clip((f - 1.0) / edge, -30, 30)))


def _lung(x, y, cx, top, bottom, half_w, medial, dome):
    """Implicit lung field: < 1 inside. Elliptic apex; below mid-height bounded by the diaphragm dome."""
    t = np.clip((y - top) / (bottom - top), 0, 1)
    w = half_w * (0.45 + 0.55 * np.sqrt(t))  # narrow apex, wide base
    fx = (x - cx) / w
    fx = np.where(fx * medial > 0, fx * 1.15, fx)  # flatter medial border
    cy = (top + bottom) / 2
    fy = (y - cy) / ((bottom - top) / 2)
    dome_y = bottom - dome * (1 - np.clip(((x - cx) / half_w) ** 2, 0, 1))
    lower = fx ** 2 + np.clip((y - cy) / (dome_y - cy + 1e-6), 0, None) ** 6
    return np.where(fy < 0, fx ** 2 + fy ** 2, lower)


def _render(rng, finding: str, side: str | None, s: int):
    x, y = _grid(s)
    # patient positioning / scale jitter: transform the sampling grid
    sc = rng.uniform(0.96, 1.03)
    rot = rng.uniform(-0.025, 0.025)
    ox, oy = rng.uniform(-0.015, 0.015, 2)
    xr = (x - 0.5) * math.cos(rot) - (y - 0.5) * math.sin(rot)
    yr = (x - 0.5) * math.sin(rot) + (y - 0.5) * math.cos(rot)
    X, Y = 0.5 + xr / sc + ox, 0.5 + yr / sc + oy

    # thorax silhouette (soft tissue) with shoulders, on dark air
    body_hw = rng.uniform(0.41, 0.45)
    body = _soft(((X - 0.5) / body_hw) ** 4 + np.clip((0.12 - Y) / 0.1, 0, None) ** 2, 0.15)
    shoulder = _soft(((X - 0.5) / 0.49) ** 2 + ((Y - 0.05) / 0.14) ** 2, 0.2)
    img = 0.06 + 0.42 * np.maximum(body, 0.8 * shoulder)

    # lung fields (patient right = image left)
    top = rng.uniform(0.13, 0.18)
    bottom_r = rng.uniform(0.78, 0.84)
    bottom_l = bottom_r + rng.uniform(0.01, 0.04)  # left hemidiaphragm a little lower
    hw = rng.uniform(0.15, 0.17)
    gap = rng.uniform(0.17, 0.19)
    lungs = {}
    for sd, cx, bot, medial in (("right", 0.5 - gap, bottom_r, 1.0), ("left", 0.5 + gap, bottom_l, -1.0)):
        f = _lung(X, Y, cx, top, bot, hw, medial, rng.uniform(0.05, 0.08))
        lungs[sd] = {"f": f, "mask": _soft(f, 0.08), "cx": cx, "bottom": bot}
    lung_mask = np.maximum(lungs["right"]["mask"], lungs["left"]["mask"])

    # heart shadow: bulges into the image-right (patient's left) lower field
    hy = rng.uniform(0.66, 0.7)
    heart = _soft(((X - rng.uniform(0.53, 0.55)) / rng.uniform(0.15, 0.17)) ** 2
                  + ((Y - hy) / rng.uniform(0.14, 0.16)) ** 2 * (Y < hy), 0.12) * (Y < 0.9)
    mediastinum = np.maximum(heart, _soft(((X - 0.5) / (0.07 + 0.05 * np.clip(Y - 0.15, 0, 1))) ** 2, 0.3) * (Y > 0.06))

    # the finding: air replaced by fluid / consolidation ("airless"), or an added dense spot
    airless = np.zeros_like(X)
    dense = np.zeros_like(X)
    meta: dict = {"image_side": None, "bbox": None}
    if finding != "normal":
        L = lungs[side]
        cx = L["cx"]
        if finding == "nodule":
            r = rng.uniform(0.08, 0.095)
            nx = cx + rng.uniform(-0.05, 0.05)
            ny = rng.uniform(top + 0.17, L["bottom"] - 0.24)
            d2 = ((X - nx) ** 2 + (Y - ny) ** 2) / r ** 2
            dense = _soft(d2, 0.1) * rng.uniform(0.5, 0.56)
            area = d2 < 1.2
        elif finding == "opacity":
            # patchy, ill-defined consolidation over a large part of one lung
            blob = np.clip(0.4 * (_smooth(rng, s, 8) + 2.6), 0, 1)
            cy = rng.uniform(0.36, 0.52)
            cx = cx + (0.03 if side == "left" else -0.03)  # lateral, clear of the heart border
            reg = _soft(((X - cx) / 0.16) ** 2 + ((Y - cy) / rng.uniform(0.2, 0.25)) ** 2, 0.2)
            airless = rng.uniform(0.9, 1.0) * blob * reg * L["mask"]
            dense = 0.06 * airless
            area = airless * (1 - heart) > 0.3
        else:  # effusion: dependent fluid with a meniscus rising laterally, blunting the angle
            level = L["bottom"] - rng.uniform(0.27, 0.34)
            lateral = np.clip((X - cx) * (1 if side == "left" else -1) / hw, -1, 1)
            meniscus = level - 0.08 * ((lateral + 1) / 2) ** 2
            fluid = 1.0 / (1.0 + np.exp(-(Y - meniscus) / 0.015))
            airless = fluid * _soft(L["f"], 0.25)
            dense = 0.05 * fluid * _soft(L["f"] / 1.3, 0.2)
            area = airless > 0.5
        meta["image_side"] = "left" if side == "right" else "right"
        ys, xs = np.nonzero(area)
        if len(xs):
            meta["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]

    aerated = lung_mask * (1 - mediastinum) * (1 - airless)
    # vascular markings
    markings = 0.02 * _smooth(rng, s, 14) + 0.012 * _smooth(rng, s, 28)
    img = img + 0.05 * mediastinum * body - (0.28 + markings) * aerated

    # ribs: posterior arcs (concave down) over each hemithorax, clavicles on top
    ribs = np.zeros_like(img)
    dx = np.abs(X - 0.5)
    y0, step = top + rng.uniform(-0.01, 0.01), rng.uniform(0.072, 0.082)
    for k in range(9):
        cyk = y0 + k * step + 1.8 * (dx - 0.24) ** 2 - 0.03
        ribs += np.exp(-(((Y - cyk) / (0.011 + 0.001 * k)) ** 2)) * (dx > 0.06) * (dx < 0.42)
    clav = np.exp(-(((Y - (0.12 + 0.7 * (dx - 0.18) ** 2)) / 0.014) ** 2)) * (dx < 0.34) * (dx > 0.04)
    img = img + (0.04 * np.clip(ribs, 0, 1) * (0.4 + 0.6 * lung_mask) * (1 - 0.8 * mediastinum) + 0.1 * clav) * body
    # spine, seen through the mediastinum
    img = img + 0.06 * _soft(((X - 0.5) / 0.04) ** 2, 0.3) * body * (Y > 0.08)
    img = img + dense

    # exposure (window/level, gamma) and quantum noise
    img = np.clip(img, 0, 1) ** rng.uniform(0.92, 1.08)
    img = rng.uniform(0.95, 1.05) * img + rng.uniform(-0.02, 0.02)
    img = img + rng.normal(0, rng.uniform(0.01, 0.02), img.shape) + 0.01 * _smooth(rng, s, 40)
    g = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(g, mode="L").convert("RGB"), meta


def generate_rows(split: str, n: int, *, seed: int = 0, image_size: int = 128) -> list[dict]:
    """``n`` chest-radiograph rows for ``split``.

    Balanced per block of 8: 'normal' x2 and each abnormal finding on each side once, so
    the four findings are equally frequent and sides are balanced within each finding.
    Row ``i`` depends only on (split, seed, i, image_size).
    """
    _check(n, seed, image_size)
    labels = _balanced(_SLOTS, split, seed, n)
    rows = []
    for i, (finding, side) in enumerate(labels):
        rng = np.random.default_rng([_stream(split), seed, 1, i])
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        img, meta = _render(rng, finding, side, image_size)
        meta = {"finding": finding, "side": side, "question_type": "report", "view": "PA", **meta}
        rows.append({"id": f"{NAME}-{split}-{seed}-{i:06d}", "image": img, "question": q,
                     "answer": format_answer(finding, side), "meta": meta})
    return rows
