"""Deterministic general-capability VQA set, shipped with the core.

Simple scenes of flat coloured shapes on a plain background, asking one of four kinds
of question. A vertical fine-tune that forgets these is losing general visual skills, so
the scorecard tracks accuracy here next to the vertical's own metric.

* ``colour``   "What colour is the shape?"                   -> one of ``COLOURS``
* ``shape``    "What shape is this?"                         -> one of ``SHAPES``
* ``count``    "How many black dots are there?"              -> "1" .. "4"
* ``position`` "Is the black shape on the left or the right?" -> "left" | "right"

Colour and shape scenes hold one large coloured shape. Counting and position scenes use
black shapes, so the count or the side is the only thing that changes (with random
colours a small model needs far more steps for either). Position uses halves of the image
(not quadrants) and a large shape well inside its half. Colour needs few examples, so the
other question types get two or three times its share of rows (``QUESTION_WEIGHTS``).

    rows = generate_rows("test", 200, seed=0, image_size=128)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from dsvl_adapt.data.synthetic import (
    balanced_order,
    balanced_slots,
    check_request,
    split_stream,
)

NAME = "general"
SPLITS = ("train", "validation", "test")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
COLORS = COLOURS
SHAPES = ("circle", "square", "triangle", "star")
COUNTS = ("1", "2", "3", "4")
POSITIONS = ("left", "right")
QUESTION_TYPES = ("colour", "shape", "count", "position")
ANSWERS = {"colour": COLOURS, "shape": SHAPES, "count": COUNTS, "position": POSITIONS}
ANSWER_SPACE = ANSWERS  # question type -> possible answers
QUESTIONS = {
    "colour": ("What colour is the shape?", "What color is the object?", "Which colour is the shape in the picture?"),
    "shape": ("What shape is this?", "What shape is shown?", "Name the shape in the image."),
    "count": ("How many black dots are there?", "How many dots are in the image?", "Count the black circles."),
    "position": ("Is the black shape on the left or the right?", "Which side of the image is the black shape on?",
                 "Is the black object in the left or right half?"),
}
_RGB = {
    "red": (220, 30, 35),
    "green": (35, 160, 60),
    "blue": (35, 70, 215),
    "yellow": (240, 210, 30),
    "purple": (135, 45, 175),
    "orange": (245, 130, 20),
}


# Share of rows per question type: colour is learnt from a handful of examples, the
# others need more, so they get twice as many rows.
QUESTION_WEIGHTS = {"colour": 1, "shape": 2, "count": 2, "position": 3}


_SLOTS = balanced_slots(ANSWERS, QUESTION_WEIGHTS)
BALANCE_BLOCK = len(_SLOTS)  # rows are exactly balanced in every consecutive block of this many


# --------------------------------------------------------------------------- seeding
def _stream(split: str) -> int:
    return split_stream(NAME, split)


_check = check_request


def _balanced(slots: tuple, split: str, seed: int, n: int) -> list:
    return balanced_order(slots, NAME, split, seed, n)


# --------------------------------------------------------------------------- drawing
def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, rr = 4, [r * 0.92 * math.sqrt(2)] * 4
        a0 = math.pi / 4
    elif shape == "triangle":
        k, rr, a0 = 3, [r * 1.1] * 3, -math.pi / 2
    elif shape == "star":
        k, rr, a0 = 10, [r * 1.1 if j % 2 == 0 else r * 0.45 for j in range(10)], -math.pi / 2
    else:
        k, rr, a0 = 64, [r] * 64, 0.0
    return [(cx + rr[j] * math.cos(a0 + rot + 2 * math.pi * j / k), cy + rr[j] * math.sin(a0 + rot + 2 * math.pi * j / k))
            for j in range(k)]


def _place(rng, n: int, r: float, box: tuple[float, float, float, float], tries: int = 500) -> list[tuple[float, float]]:
    """``n`` non-overlapping centres for shapes of radius ``r`` inside ``box`` (x0, y0, x1, y1)."""
    for _ in range(tries):
        pts: list[tuple[float, float]] = []
        for _ in range(n):
            for _ in range(100):
                p = (rng.uniform(box[0] + r, box[2] - r), rng.uniform(box[1] + r, box[3] - r))
                if all(math.hypot(p[0] - q[0], p[1] - q[1]) > 2.3 * r for q in pts):
                    pts.append(p)
                    break
        if len(pts) == n:
            return pts
    raise RuntimeError("could not place shapes")  # pragma: no cover - radii are chosen to fit


def _render(rng, asked: str, answer: str, s: int):
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    count, side = 1, None
    if asked == "colour":
        colour = answer
    elif asked == "shape":
        shape = answer
    elif asked == "count":
        count = int(answer)
    else:
        side = answer
    if asked == "count":
        shape, r = "circle", 0.12  # counting dots: the count is the only thing that varies
        centres = _place(rng, count, r, (0.04, 0.04, 0.96, 0.96))
    elif asked == "position":
        r = rng.uniform(0.21, 0.23)
        cx = (0.25 if side == "left" else 0.75) + rng.uniform(-0.01, 0.01)
        centres = [(cx, 0.5 + rng.uniform(-0.06, 0.06))]
    else:
        r = rng.uniform(0.25, 0.28)
        centres = [(0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04))]
    ss = 2
    S = s * ss
    bg = tuple(int(c) for c in np.clip(rng.uniform(236, 244) + rng.normal(0, 2, 3), 0, 255))
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    if asked in ("count", "position"):
        # counting and position use black shapes: with one consistent look, "how many" and
        # "where" are what varies (with random colours a small model needs far more steps)
        colour, rgb = "black", (40, 40, 45)
    else:
        rgb = _RGB[colour]
    jitter = rng.integers(-15, 16, 3)
    if colour == "black":  # stays a neutral near-black
        jitter = np.full(3, jitter[0] // 2)
    fill = tuple(int(c) for c in np.clip(np.array(rgb) + jitter, 0, 255))
    rot = rng.uniform(-0.1, 0.1)
    for cx, cy in centres:
        d.polygon([(x * S, y * S) for x, y in _polygon(shape, cx, cy, r, rot)], fill=fill)
    img = img.resize((s, s), Image.LANCZOS)
    meta = {"colour": colour, "shape": shape, "count": count,
            "centres": [[round(x, 4), round(y, 4)] for x, y in centres], "radius": round(r, 4)}
    if asked == "position":
        meta["position"] = side
    return img, meta


def generate_rows(split: str, n: int, *, seed: int = 0, image_size: int = 128) -> list[dict]:
    """``n`` general VQA rows for ``split``, balanced over question types and answers.

    Row ``i`` depends only on (split, seed, i, image_size).
    """
    _check(n, seed, image_size)
    labels = _balanced(_SLOTS, split, seed, n)
    rows = []
    for i, (asked, answer) in enumerate(labels):
        rng = np.random.default_rng([_stream(split), seed, 1, i])
        q = QUESTIONS[asked][int(rng.integers(len(QUESTIONS[asked])))]
        img, meta = _render(rng, asked, answer, image_size)
        rows.append({"id": f"{NAME}-{split}-{seed}-{i:06d}", "image": img, "question": q, "answer": answer,
                     "meta": {"question_type": asked, **meta}})
    return rows
