"""Deterministic synthetic surface-inspection data (industrial vertical).

Each image is a textured surface (brushed metal, woven fabric, wood grain or cast
metal; grey-ish with a slight tint, random texture parameters, a lighting gradient and
sensor noise) carrying exactly one of: a scratch (long thin bright line), a dent
(shaded circular depression), a stain (irregular discoloured blob), a crack (dark,
jagged, branching line), or nothing (a good part).

Everything is drawn in normalised coordinates, so ``image_size`` changes resolution,
not content. Defects are sized for a 128 px image seen through 16 px patches (an 8x8
token grid): every defect spans several patches.

    rows = generate_rows("train", 1000, seed=0, image_size=128)
    rows[0]["question"], rows[0]["answer"]  # e.g. 'What defect is visible on this surface?', 'dent'
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image

from dsvl_adapt.data.synthetic import check_request, split_stream

NAME = "industrial"
SPLITS = ("train", "validation", "test")
DEFECTS = ("scratch", "dent", "stain", "crack", "none")
SURFACES = ("brushed metal", "fabric", "wood", "cast metal")
QUESTION_TYPES = ("defect",)
ANSWER_SPACE = {"defect": DEFECTS}  # question type -> possible answers
QUESTIONS = (
    "What defect is visible on this surface?",
    "What kind of defect does this part have?",
    "Inspect the surface. Which defect is present?",
    "Which defect do you see? Answer none if the part is good.",
    "Name the surface defect in this image.",
    "What is wrong with this surface?",
)
BALANCE_BLOCK = len(DEFECTS)  # rows are exactly balanced in every consecutive block of this many
LOCATIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


# --------------------------------------------------------------------------- seeding
def _stream(split: str) -> int:
    return split_stream(NAME, split)


_check = check_request


def _balanced(slots: tuple, split: str, seed: int, n: int) -> list:
    """``n`` labels cycling through every slot once per block, in a seeded order per block."""
    out, k = [], len(slots)
    for b in range(-(-n // k)):
        perm = np.random.default_rng([_stream(split), seed, 2, b]).permutation(k)
        out.extend(slots[j] for j in perm)
    return out[:n]


# --------------------------------------------------------------------------- drawing
def _grid(s: int):
    c = (np.arange(s, dtype=np.float32) + 0.5) / s
    return np.meshgrid(c, c)  # x (columns), y (rows), in [0, 1]


def _smooth(rng, s: int, cells: int) -> np.ndarray:
    """Value noise: a random ``cells``x``cells`` grid upsampled bicubically, ~N(0, 1)."""
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((s, s), Image.BICUBIC))


def _noise1d(rng, n: int, v: np.ndarray, smooth: int = 2) -> np.ndarray:
    """Smooth 1-D noise of ``n`` knots sampled at ``v`` in [-0.5, 1.5]."""
    k = rng.standard_normal(n + 2 * smooth).astype(np.float32)
    k = np.convolve(k, np.ones(2 * smooth + 1) / (2 * smooth + 1), mode="valid")
    return np.interp(v, np.linspace(-0.5, 1.5, n), k / (k.std() + 1e-6)).astype(np.float32)


def _seg_dist(x, y, p0, p1) -> np.ndarray:
    """Distance from every pixel to the segment p0-p1 (normalised units)."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    L2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / L2, 0.0, 1.0)
    return np.hypot(x - (p0[0] + t * dx), y - (p0[1] + t * dy))


def _poly_dist(x, y, pts) -> np.ndarray:
    d = np.full(x.shape, np.inf, dtype=np.float32)
    for a, b in itertools.pairwise(pts):
        d = np.minimum(d, _seg_dist(x, y, a, b))
    return d


def _walk(rng, start, heading: float, steps: int, step: tuple[float, float]) -> list[tuple[float, float]]:
    """Jagged but directed random walk; turns back into the frame at the borders."""
    p, pts, a = np.array(start, dtype=float), [tuple(start)], heading
    for _ in range(steps):
        a = heading + 0.5 * (a - heading) + rng.uniform(-0.75, 0.75)
        q = p + rng.uniform(*step) * np.array([math.cos(a), math.sin(a)])
        for k in (0, 1):  # reflect at the border
            if not 0.05 <= q[k] <= 0.95:
                q[k] = 2 * np.clip(q[k], 0.05, 0.95) - q[k]
        p = q
        pts.append(tuple(p))
    return pts


def _surface(rng, x, y, s: int):
    """Return (luminance HxW, tint RGB, surface name)."""
    kind = SURFACES[int(rng.integers(len(SURFACES)))]
    th = rng.uniform(0, math.pi)
    u = x * math.cos(th) + y * math.sin(th)
    v = -x * math.sin(th) + y * math.cos(th)
    base = rng.uniform(0.42, 0.58)
    if kind == "brushed metal":
        streak = _noise1d(rng, int(rng.integers(150, 400)), v, smooth=1)
        tex = 0.022 * streak + 0.01 * _smooth(rng, s, int(rng.integers(3, 7)))
        tint = 1 + rng.normal(0, 0.006, 3)
    elif kind == "fabric":
        f = rng.uniform(12, 22)
        weave = np.sin(2 * math.pi * f * u) * np.sin(2 * math.pi * f * v)
        tex = 0.025 * weave + 0.015 * _smooth(rng, s, int(rng.integers(4, 9)))
        tint = 1 + rng.normal(0, 0.016, 3)
    elif kind == "wood":
        f = rng.uniform(5, 12)
        warp = _smooth(rng, s, int(rng.integers(2, 5)))
        grain = np.sin(2 * math.pi * (f * v + rng.uniform(0.2, 0.6) * warp))
        tex = 0.03 * grain + 0.01 * _noise1d(rng, 300, v, smooth=1)
        tint = np.array([1.032, 0.992, 0.94]) + rng.normal(0, 0.008, 3)
    else:  # cast metal: mottled, speckled
        tex = 0.02 * _smooth(rng, s, int(rng.integers(6, 14))) + 0.0125 * _smooth(rng, s, int(rng.integers(20, 32)))
        tint = np.array([1.0, 1.0, 1.008]) + rng.normal(0, 0.006, 3)
    # lighting (a diffuse inspection light): mild linear gradient plus a soft vignette
    la = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(0.025, 0.09) * ((x - 0.5) * math.cos(la) + (y - 0.5) * math.sin(la))
    light -= rng.uniform(0.0, 0.06) * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    return (base + tex + light).astype(np.float32), tint, kind


def _bbox(mask: np.ndarray, s: int) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _location(bbox: list[int], s: int) -> str:
    cx, cy = (bbox[0] + bbox[2]) / 2 / s, (bbox[1] + bbox[3]) / 2 / s
    return LOCATIONS[min(2, int(cy * 3)) * 3 + min(2, int(cx * 3))]


def _render(rng, defect: str, s: int):
    x, y = _grid(s)
    lum, tint, kind = _surface(rng, x, y, s)
    px = 1.0 / s
    color = np.ones((s, s, 3), dtype=np.float32)  # per-channel multiplier (stains only)
    meta: dict = {}
    if defect == "scratch":
        # a long, thin, bright, slightly curved line with a faint dark shadow beside it
        length = rng.uniform(0.65, 0.95)
        ang = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        d = np.array([math.cos(ang), math.sin(ang)])
        nrm = np.array([-d[1], d[0]])
        bend = rng.uniform(-0.08, 0.08)
        t = np.linspace(-0.5, 0.5, 12)
        pts = [(cx + ti * length * d[0] + bend * (1 - 4 * ti * ti) * nrm[0],
                cy + ti * length * d[1] + bend * (1 - 4 * ti * ti) * nrm[1]) for ti in t]
        dist = _poly_dist(x, y, pts)
        w = rng.uniform(2.4, 3.2) * px
        prof = np.exp(-(dist / w) ** 2)
        lum = lum - 0.08 * np.exp(-((dist - 2.2 * w) / w) ** 2)
        lum = lum + (rng.uniform(0.92, 1.0) - lum) * prof
        mask = dist < 2 * w
        meta["length"] = round(float(length), 3)
    elif defect == "crack":
        # a dark, jagged line growing both ways from a centre point, with 2-3 branches
        main = rng.uniform(0, 2 * math.pi)
        c = rng.uniform(0.3, 0.7, 2)
        half = [_walk(rng, c, main + k * math.pi, int(rng.integers(6, 9)), (0.04, 0.065)) for k in (0, 1)]
        trunk = half[1][::-1] + half[0][1:]
        polys = [trunk]
        for _ in range(int(rng.integers(2, 4))):
            j = int(rng.integers(2, len(trunk) - 2))
            a = main + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1) + (math.pi if j < len(half[1]) else 0.0)
            polys.append(_walk(rng, trunk[j], a, int(rng.integers(3, 6)), (0.03, 0.05)))
        dist = np.minimum.reduce([_poly_dist(x, y, pl) for pl in polys])
        w = rng.uniform(2.8, 3.4) * px
        lum = lum * (1 - rng.uniform(0.88, 0.94) * np.exp(-(dist / w) ** 2))
        mask = dist < 2 * w
        meta["branches"] = len(polys) - 1
    elif defect == "dent":
        # shaded circular depression: slope of h = (1 - r^2/R^2)^2, lit from a random side
        R = rng.uniform(0.19, 0.25)
        cx, cy = rng.uniform(0.25, 0.75, 2)
        la = rng.uniform(0, 2 * math.pi)
        dx, dy = (x - cx) / R, (y - cy) / R
        r2 = dx * dx + dy * dy
        inside = r2 < 1
        slope = np.where(inside, 4 * (1 - r2), 0.0)  # -dh/dr-ish magnitude profile
        shade = slope * (dx * math.cos(la) + dy * math.sin(la))
        lum = lum + rng.uniform(0.22, 0.3) * shade
        # thin bright rim where the surface bends back up
        rim = np.exp(-((np.sqrt(r2) - 1.0) / (1.5 * px / R)) ** 2)
        lum = lum + 0.06 * rim - 0.05 * np.where(inside, 1 - r2, 0)
        mask = r2 < 1.1
        meta["radius"] = round(float(R), 3)
    elif defect == "stain":
        # irregular blob, discoloured (rust / oil / coolant), with a darker drying ring
        R = rng.uniform(0.19, 0.27)
        cx, cy = rng.uniform(0.28, 0.72, 2)
        r = np.hypot(x - cx, y - cy)
        th = np.arctan2(y - cy, x - cx)
        edge = np.ones_like(r)
        for k in range(2, 6):
            edge = edge + rng.uniform(0.05, 0.16) * np.cos(k * th + rng.uniform(0, 2 * math.pi))
        rr = r / (R * edge)
        alpha = 1.0 / (1.0 + np.exp((rr - 1.0) / 0.06))
        alpha = alpha * (0.85 + 0.15 * _smooth(rng, s, 10).clip(-1, 1))
        ring = np.exp(-((rr - 0.95) / 0.08) ** 2)
        hue = rng.integers(3)
        col = [np.array([1.0, 0.55, 0.3]), np.array([0.75, 0.5, 0.3]), np.array([1.0, 0.8, 0.35])][hue]
        col = col + rng.normal(0, 0.03, 3)
        col = col / (0.3 * col[0] + 0.59 * col[1] + 0.11 * col[2])  # a hue shift, not a darkening
        color = 1 + alpha[..., None] * (col[None, None, :] - 1)
        lum = lum * (1 - 0.08 * alpha - 0.08 * ring)
        mask = alpha > 0.5
        meta["stain"] = ("rust", "oil", "water")[hue]
    else:
        mask = np.zeros((s, s), dtype=bool)
    rgb = lum[..., None] * tint[None, None, :] * color
    rgb = rgb + rng.normal(0, rng.uniform(0.008, 0.02), (s, s, 1))  # sensor noise (grey)
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    if defect == "none":
        meta.update(bbox=None, location=None)
    else:
        bb = _bbox(mask, s)
        meta.update(bbox=bb, location=_location(bb, s))
    meta["surface"] = kind
    return img, meta


def generate_rows(split: str, n: int, *, seed: int = 0, image_size: int = 128) -> list[dict]:
    """``n`` inspection rows for ``split``; balanced over ``DEFECTS`` (exactly, per block of 5).

    Row ``i`` depends only on (split, seed, i, image_size), so a longer list extends a shorter one.
    """
    _check(n, seed, image_size)
    labels = _balanced(DEFECTS, split, seed, n)
    rows = []
    for i, defect in enumerate(labels):
        rng = np.random.default_rng([_stream(split), seed, 1, i])
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        img, meta = _render(rng, defect, image_size)
        meta = {"defect": defect, "question_type": "defect", **meta}
        rows.append({"id": f"{NAME}-{split}-{seed}-{i:06d}", "image": img, "question": q,
                     "answer": defect, "meta": meta})
    return rows
