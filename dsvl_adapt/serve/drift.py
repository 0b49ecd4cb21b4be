"""Input drift against the training data: image statistics tested with Kolmogorov-Smirnov, and a simple embedding
distance.

The reference is a sample of the run's training images. For each served image the monitor computes a few statistics
(brightness, contrast, mean of each channel, saturation) and a small embedding (an 8x8 grey thumbnail and the channel
means). Over a sliding window of recent requests it runs SciPy's two-sample KS test of each statistic against the
reference (Bonferroni across statistics) and a one-sided binomial test of how many requests lie farther from every
reference image than 95% of the reference images lie from their nearest neighbour. Either test below ``alpha`` flags
drift. With fewer than ``min_requests`` in the window, or without SciPy, drift is ``None`` (unknown), never False.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATISTICS = ("brightness", "contrast", "red", "green", "blue", "saturation")


def image_statistics(image: Any) -> np.ndarray:
    """The statistics of :data:`STATISTICS` for a PIL image (computed on a 64x64 RGB copy, values in [0, 1])."""
    small = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float64) / 255.0
    grey = small @ np.array([0.299, 0.587, 0.114])
    saturation = small.max(axis=-1) - small.min(axis=-1)
    return np.array([grey.mean(), grey.std(), *small.reshape(-1, 3).mean(axis=0), saturation.mean()])


def image_embedding(image: Any) -> np.ndarray:
    """A cheap, model-free embedding: an 8x8 grey thumbnail and the three channel means (67 values in [0, 1])."""
    rgb = image.convert("RGB")
    thumb = np.asarray(rgb.convert("L").resize((8, 8)), dtype=np.float64).reshape(-1) / 255.0
    means = np.asarray(rgb.resize((16, 16)), dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255.0
    return np.concatenate([thumb, means])


@dataclass
class DriftReference:
    """Statistics and embeddings of the training images, and the nearest-neighbour distance that 95% of them stay
    within (a served image beyond it counts as far from the training data)."""

    statistics: np.ndarray  # (N, len(STATISTICS))
    embeddings: np.ndarray  # (N, D)
    distance_threshold: float
    source: str = ""

    @classmethod
    def from_images(cls, images: Iterable[Any], source: str = "") -> DriftReference:
        images = list(images)
        if len(images) < 2:
            raise ValueError("a drift reference needs at least 2 training images")
        stats = np.stack([image_statistics(i) for i in images])
        embeddings = np.stack([image_embedding(i) for i in images])
        distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        nearest = distances.min(axis=1)
        return cls(stats, embeddings, float(np.percentile(nearest, 95)) or 1e-6, source)

    def nearest_distance(self, embedding: np.ndarray) -> float:
        return float(np.linalg.norm(self.embeddings - embedding, axis=-1).min())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"statistics": self.statistics.tolist(),
                                          "embeddings": self.embeddings.tolist(),
                                          "distance_threshold": self.distance_threshold, "source": self.source,
                                          "names": list(STATISTICS)}))

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        raw = json.loads(Path(path).read_text())
        return cls(np.asarray(raw["statistics"]), np.asarray(raw["embeddings"]), float(raw["distance_threshold"]),
                   raw.get("source", ""))


@dataclass
class DriftObservation:
    """One request's figures and the window's verdict (``drifted`` None = unknown)."""

    statistics: dict[str, float]
    distance_ratio: float  # nearest reference distance / the reference's 95% threshold (> 1: far)
    far: bool
    window: int
    drifted: bool | None
    ks_min_p: float | None
    far_share: float
    far_p: float | None
    reason: str


class DriftMonitor:
    """Sliding-window drift tests of served images against a :class:`DriftReference` (thread-safe enough: called
    from one thread, the monitor's)."""

    def __init__(self, reference: DriftReference, *, window: int = 50, min_requests: int = 20,
                 alpha: float = 0.01) -> None:
        self.reference = reference
        self.window: deque[np.ndarray] = deque(maxlen=window)
        self.far: deque[bool] = deque(maxlen=window)
        self.min_requests = min_requests
        self.alpha = alpha

    def observe(self, image: Any) -> DriftObservation:
        stats = image_statistics(image)
        ratio = self.reference.nearest_distance(image_embedding(image)) / self.reference.distance_threshold
        self.window.append(stats)
        self.far.append(ratio > 1.0)
        named = {name: round(float(v), 5) for name, v in zip(STATISTICS, stats)}
        share = float(np.mean(self.far))
        if len(self.window) < self.min_requests:
            return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), None, None, share, None,
                                    f"unknown: {len(self.window)} of the {self.min_requests} requests needed")
        try:
            from scipy.stats import binomtest, ks_2samp
        except ImportError:
            return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), None, None, share, None,
                                    'unknown: scipy is not installed (pip install "dsvl-adapt[serve]")')
        recent = np.stack(list(self.window))
        # One call tests every statistic (column): the same exact p-values as one call per column, a third of the time
        # (this runs after every answered request, beside the next request's handling).
        p_values = [float(p) for p in np.atleast_1d(ks_2samp(self.reference.statistics, recent, axis=0).pvalue)]
        ks_min = min(p_values)
        far_p = float(binomtest(int(sum(self.far)), len(self.far), 0.05, alternative="greater").pvalue)
        ks_drift = ks_min < self.alpha / len(STATISTICS)
        far_drift = far_p < self.alpha
        worst = STATISTICS[int(np.argmin(p_values))]
        reason = ("; ".join(filter(None, [
            f"{worst} differs from the training images (KS p={ks_min:.2g})" if ks_drift else "",
            f"{share:.0%} of recent images are far from every training image (binomial p={far_p:.2g})"
            if far_drift else ""])) or "no drift detected")
        return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), ks_drift or far_drift,
                                round(ks_min, 6), round(share, 4), round(far_p, 6), reason)


__all__ = ["DriftMonitor", "DriftObservation", "DriftReference", "STATISTICS", "image_embedding",
           "image_statistics"]
