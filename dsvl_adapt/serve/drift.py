"""Input drift against the training data: image statistics tested with Kolmogorov-Smirnov, and a simple embedding
distance.

The reference is a sample of the run's training images. For each served image the monitor computes a few statistics
(brightness, contrast, mean of each channel, saturation) and a small embedding (an 8x8 grey thumbnail and the channel
means). Over a sliding window of recent requests it runs SciPy's two-sample KS test of each statistic against the
reference (Bonferroni across statistics) and a one-sided binomial test of how many requests lie farther from every
reference image than 95% of the reference images lie from their nearest neighbour. Either test below ``alpha`` flags
drift. With fewer than ``min_requests`` in the window, or without SciPy, drift is ``None`` (unknown), never False.

Each image's figures are computed as it arrives (one 64x64 copy, well under a millisecond); the window tests (~2 ms of
SciPy, holding the interpreter beside the next request's handling) run every ``test_every`` requests, and the requests
between carry the last verdict: darkened images are still flagged within a few requests of the window filling.
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


def _small(image: Any) -> np.ndarray:
    """The image as 64x64 RGB planes (3, 64, 64) of float32 in [0, 1]: what every figure here is computed from
    (planes, not pixels: a reduction over a last axis of 3 is numpy's slowest case, and this runs per request)."""
    pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) / 255.0


def _grey(small: np.ndarray) -> np.ndarray:
    red, green, blue = small
    return 0.299 * red + 0.587 * green + 0.114 * blue


def _statistics(small: np.ndarray) -> np.ndarray:
    red, green, blue = small
    grey = _grey(small)
    saturation = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return np.array([grey.mean(), grey.std(), red.mean(), green.mean(), blue.mean(), saturation.mean()],
                    dtype=np.float64)


def _embedding(small: np.ndarray) -> np.ndarray:
    thumb = _grey(small).reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1)  # 8x8 cells of 8x8 pixels
    return np.concatenate([thumb, small.reshape(3, -1).mean(axis=1)]).astype(np.float64)


def image_statistics(image: Any) -> np.ndarray:
    """The statistics of :data:`STATISTICS` for a PIL image (computed on a 64x64 RGB copy, values in [0, 1])."""
    return _statistics(_small(image))


def image_embedding(image: Any) -> np.ndarray:
    """A cheap, model-free embedding: an 8x8 grey thumbnail and the three channel means (67 values in [0, 1])."""
    return _embedding(_small(image))


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
        small = [_small(i) for i in images]
        stats = np.stack([_statistics(i) for i in small])
        embeddings = np.stack([_embedding(i) for i in small])
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
    """One request's figures and the window's verdict (``drifted`` None = unknown). ``tested`` says whether this
    request ran the window tests; when not, ``drifted``, ``ks_min_p``, ``far_p`` and ``reason`` are the last test's."""

    statistics: dict[str, float]
    distance_ratio: float  # nearest reference distance / the reference's 95% threshold (> 1: far)
    far: bool
    window: int
    drifted: bool | None
    ks_min_p: float | None
    far_share: float
    far_p: float | None
    reason: str
    tested: bool = False


def _scipy_tests() -> tuple[Any, Any] | None:
    """SciPy's ``binomtest`` and ``ks_2samp``, or None without SciPy (drift is then unknown)."""
    try:
        from scipy.stats import binomtest, ks_2samp
    except ImportError:
        return None
    return binomtest, ks_2samp


class DriftMonitor:
    """Sliding-window drift tests of served images against a :class:`DriftReference` (thread-safe enough: called
    from one thread, the monitor's). The tests run once the window holds ``min_requests``, then every ``test_every``
    requests."""

    def __init__(self, reference: DriftReference, *, window: int = 50, min_requests: int = 20,
                 alpha: float = 0.01, test_every: int = 5) -> None:
        if test_every < 1:
            raise ValueError(f"test_every={test_every}: the window tests run every 1 or more requests")
        self.reference = reference
        self.window: deque[np.ndarray] = deque(maxlen=window)
        self.far: deque[bool] = deque(maxlen=window)
        self.min_requests = min_requests
        self.alpha = alpha
        self.test_every = test_every
        self._since_test: int | None = None  # requests since the last window test; None: none since the reset
        self._verdict: tuple[bool | None, float | None, float | None, str] = (None, None, None, "")
        # SciPy's tests are imported now, while the server starts: importing scipy.stats takes about 0.6 s, and at
        # the first window test it would hold every thread (the request being answered included) that long
        self._tests = _scipy_tests()

    def reset(self) -> None:
        """Forget the window and the last verdict: drift is unknown again until ``min_requests`` have arrived."""
        self.window.clear()
        self.far.clear()
        self._since_test = None
        self._verdict = (None, None, None, "")

    def observe(self, image: Any) -> DriftObservation:
        small = _small(image)
        stats = _statistics(small)
        ratio = self.reference.nearest_distance(_embedding(small)) / self.reference.distance_threshold
        self.window.append(stats)
        self.far.append(ratio > 1.0)
        named = {name: round(float(v), 5) for name, v in zip(STATISTICS, stats)}
        share = float(np.mean(self.far))
        if len(self.window) < self.min_requests:
            return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), None, None, share, None,
                                    f"unknown: {len(self.window)} of the {self.min_requests} requests needed")
        tested = self._since_test is None or self._since_test + 1 >= self.test_every
        if tested:
            verdict = self._test()
            if verdict is None:
                return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), None, None, share,
                                        None, 'unknown: scipy is not installed (pip install "dsvl-adapt[serve]")')
            self._verdict, self._since_test = verdict, 0
        else:
            self._since_test = (self._since_test or 0) + 1
        drifted, ks_min, far_p, reason = self._verdict
        return DriftObservation(named, round(ratio, 4), ratio > 1.0, len(self.window), drifted, ks_min,
                                round(share, 4), far_p, reason, tested)

    def _test(self) -> tuple[bool, float, float, str] | None:
        """SciPy's KS test of each statistic and the binomial test of far images, over the window (None: no SciPy)."""
        if self._tests is None:
            return None
        binomtest, ks_2samp = self._tests
        recent = np.stack(list(self.window))
        # One call tests every statistic (column): the same exact p-values as one call per column, a third of the time.
        p_values = [float(p) for p in np.atleast_1d(ks_2samp(self.reference.statistics, recent, axis=0).pvalue)]
        ks_min = min(p_values)
        share = float(np.mean(self.far))
        far_p = float(binomtest(int(sum(self.far)), len(self.far), 0.05, alternative="greater").pvalue)
        ks_drift = ks_min < self.alpha / len(STATISTICS)
        far_drift = far_p < self.alpha
        worst = STATISTICS[int(np.argmin(p_values))]
        reason = ("; ".join(filter(None, [
            f"{worst} differs from the training images (KS p={ks_min:.2g})" if ks_drift else "",
            f"{share:.0%} of recent images are far from every training image (binomial p={far_p:.2g})"
            if far_drift else ""])) or "no drift detected")
        return ks_drift or far_drift, round(ks_min, 6), round(far_p, 6), reason


__all__ = ["DriftMonitor", "DriftObservation", "DriftReference", "STATISTICS", "image_embedding",
           "image_statistics"]
