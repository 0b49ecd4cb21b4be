"""Cheap, fixed features for the level 2 model: no training, no download, milliseconds per row.

An image becomes four groups of numbers, each for a kind of answer the verticals ask about:

- **layout**: a 16x16 colour thumbnail and a 4x4-cell histogram of gradient orientations (where things are);
- **colour**: a hue histogram weighted by saturation and a joint RGB histogram (8 levels a channel: the colour of
  white, grey and black things too, which hue misses);
- **detail**, wherever it lies: percentiles of the image minus its blur (a thin dark crack, a bright scratch), the
  whole image's gradient orientations, saturation percentiles (a stain) and the share of spectral power per
  frequency band and direction (stripes, dots, a woven texture);
- **object**: pixels that differ from the border's colour are the object: its silhouette on a 16x16 grid (a mug,
  a shoe), its share of the picture, and its own colour (joint RGB histogram, 4 levels a channel; mean and spread),
  unmixed with the background.

What each group bought, out-of-sample accuracy on clean rows under the benchmark's injected noise (seed 0,
docs/cleaning.md): the joint RGB histogram took the e-commerce colour question from 0.88 to 0.95 (before noise);
detail took industrial defects from 0.92 to 0.97 (a defect anywhere in the picture looks the same to it, where the
layout features see it only at the place it was seen in training); object took the e-commerce category question
from 0.90 to 0.97 (its colour questions stay near 0.78: 170 rows for 8 colours, red and orange stripes on white the
usual confusion). A question becomes a hashed bag of words.

Why not the base model's vision tower: a reference preset's tower is trained only on the general set, and a real
DeepSeek-VL 1.3B tower (SigLIP-L at 384 px) costs about a third of a second per image on 2 cores, i.e. an hour for
10,000 rows, against the issue's 10 minutes (docs/cleaning.md).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

THUMBNAIL = 16
SIDE = 64  # the grey and colour arrays the detail, gradient and object features are read from
CELLS = 4
ORIENTATIONS = 8
HUES = 12
RGB_LEVELS = 8  # joint RGB histogram: 8 x 8 x 8 bins
RGB_SIDE = 32
DETAIL_BLUR = 3.0  # Gaussian radius (px at SIDE) of the blur whose difference is "detail"
DETAIL_PERCENTILES = (0.5, 2, 10, 90, 98, 99.5)
DETAIL_LEVEL = 0.08  # |image - blur| above this (0-1 grey) counts as a detail pixel
FREQUENCY_BANDS = ((1, 4), (4, 8), (8, 16), (16, 32))  # radii in the 64x64 spectrum
DIRECTIONS = 4
OBJECT_DISTANCE = 0.12  # RGB distance (0-1) from the border's median colour above which a pixel is the object
OBJECT_GRID = 16
OBJECT_LEVELS = 4
QUESTION_BUCKETS = 64


def image_features(images: Sequence[Image.Image]) -> np.ndarray:
    """One row of features per image (float32)."""
    return np.stack([_one_image(image) for image in images]).astype(np.float32)


def _one_image(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    grey_image = rgb.convert("L").resize((SIDE, SIDE), Image.BILINEAR)
    grey = np.asarray(grey_image, dtype=np.float32) / 255.0
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * ORIENTATIONS).astype(int),
                             ORIENTATIONS - 1)  # unsigned
    hsv = np.asarray(rgb.convert("HSV").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
    colour = np.asarray(rgb.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
    return np.concatenate([_layout(rgb, magnitude, orientation), _colour(rgb, hsv, grey),
                           _detail(grey_image, grey, magnitude, orientation, hsv), _object(colour)])


def _layout(rgb: Image.Image, magnitude: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    thumb = np.asarray(rgb.resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR), dtype=np.float32) / 255.0
    cell = SIDE // CELLS
    histogram = np.zeros((CELLS, CELLS, ORIENTATIONS), dtype=np.float32)
    for cy in range(CELLS):
        for cx in range(CELLS):
            window = (slice(cy * cell, (cy + 1) * cell), slice(cx * cell, (cx + 1) * cell))
            histogram[cy, cx] = np.bincount(orientation[window].ravel(), magnitude[window].ravel(), ORIENTATIONS)
    histogram /= histogram.sum() + 1e-6
    return np.concatenate([thumb.ravel(), histogram.ravel() * 4])


def _colour(rgb: Image.Image, hsv: np.ndarray, grey: np.ndarray) -> np.ndarray:
    hue_bins = np.minimum((hsv[..., 0] * HUES).astype(int), HUES - 1)
    hues = np.bincount(hue_bins.ravel(), hsv[..., 1].ravel() * hsv[..., 2].ravel(), HUES)
    hues /= hues.sum() + 1e-6
    brightness = np.array([hsv[..., 2].mean(), hsv[..., 1].mean(), grey.std()], dtype=np.float32)
    levels = np.asarray(rgb.resize((RGB_SIDE, RGB_SIDE), Image.BILINEAR), dtype=np.int64) // (256 // RGB_LEVELS)
    joint = np.bincount(((levels[..., 0] * RGB_LEVELS + levels[..., 1]) * RGB_LEVELS + levels[..., 2]).ravel(),
                        minlength=RGB_LEVELS**3).astype(np.float32) / (RGB_SIDE * RGB_SIDE)
    return np.concatenate([hues * 2, brightness, joint * 4])


def _detail(grey_image: Image.Image, grey: np.ndarray, magnitude: np.ndarray, orientation: np.ndarray,
            hsv: np.ndarray) -> np.ndarray:
    """Statistics that do not depend on where in the picture a thing is."""
    blur = np.asarray(grey_image.filter(ImageFilter.GaussianBlur(DETAIL_BLUR)), dtype=np.float32) / 255.0
    residual = grey - blur
    levels = np.percentile(residual, DETAIL_PERCENTILES) * 10
    shares = [(residual < -DETAIL_LEVEL).mean(), (residual > DETAIL_LEVEL).mean(), np.abs(residual).mean()]
    orientations = np.bincount(orientation.ravel(), magnitude.ravel(), ORIENTATIONS)
    orientations /= orientations.sum() + 1e-6
    saturation = np.percentile(hsv[..., 1], (50, 90, 99))
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    half = SIDE // 2
    yy, xx = np.mgrid[-half:half, -half:half]
    radius, angle = np.hypot(yy, xx), np.mod(np.arctan2(yy, xx), np.pi)
    direction = np.minimum((angle / np.pi * DIRECTIONS).astype(int), DIRECTIONS - 1)
    total = power.sum() + 1e-6
    bands = [power[(radius >= low) & (radius < high)].sum() / total for low, high in FREQUENCY_BANDS]
    directions = [power[(radius >= 4) & (direction == d)].sum() / total for d in range(DIRECTIONS)]
    return np.concatenate([levels, shares, orientations * 2, saturation, bands, directions]).astype(np.float32)


def _object(colour: np.ndarray) -> np.ndarray:
    """The object against its backdrop: pixels far from the border's median colour."""
    border = np.concatenate([colour[0], colour[-1], colour[:, 0], colour[:, -1]])
    mask = np.linalg.norm(colour - np.median(border, axis=0), axis=-1) > OBJECT_DISTANCE
    step = SIDE // OBJECT_GRID
    silhouette = mask.reshape(OBJECT_GRID, step, OBJECT_GRID, step).mean(axis=(1, 3))
    pixels = colour[mask] if mask.sum() >= 8 else colour.reshape(-1, 3)
    levels = np.minimum((pixels * OBJECT_LEVELS).astype(int), OBJECT_LEVELS - 1)
    joint = np.bincount((levels[:, 0] * OBJECT_LEVELS + levels[:, 1]) * OBJECT_LEVELS + levels[:, 2],
                        minlength=OBJECT_LEVELS**3) / len(pixels)
    return np.concatenate([[mask.mean() * 4], silhouette.ravel(), joint * 4, pixels.mean(axis=0) * 2,
                           pixels.std(axis=0) * 2]).astype(np.float32)


def question_features(questions: Sequence[str]) -> np.ndarray:
    """A hashed bag of words (and word pairs) per question, L2-normalised."""
    out = np.zeros((len(questions), QUESTION_BUCKETS), dtype=np.float32)
    for index, question in enumerate(questions):
        words = "".join(c if c.isalnum() else " " for c in question.casefold()).split()
        for token in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            out[index, zlib.crc32(token.encode()) % QUESTION_BUCKETS] += 1.0
        out[index] /= np.linalg.norm(out[index]) + 1e-6
    return out
