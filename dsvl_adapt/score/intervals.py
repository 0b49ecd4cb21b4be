"""Bootstrap intervals over test rows: how much a score would move with another draw of the same test set.

A metric is recomputed on rows drawn with replacement (a percentile bootstrap, seeded), so any
metric a vertical registers gets an interval, not only per-row means. Two models scored on the
same rows are compared with a *paired* bootstrap: each resample draws the same rows for both, so
the interval of their difference reflects the rows they disagree on, not the spread of each.
A difference whose 95% interval contains 0 is within noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95

# score(indices) -> the metric on the rows at ``indices`` (indices may repeat)
RowScore = Callable[[np.ndarray], float]


def resample_indices(rows: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` x ``rows`` row indices drawn with replacement; the same seed gives the same draws."""
    if rows < 1:
        raise ValueError("a bootstrap needs at least one row")
    return np.random.default_rng(seed).integers(0, rows, size=(resamples, rows))


def _scores(score: RowScore, draws: np.ndarray) -> np.ndarray:
    values = np.empty(len(draws), dtype=np.float64)
    for i, indices in enumerate(draws):
        try:
            values[i] = float(score(indices))
        except (ZeroDivisionError, ValueError, FloatingPointError):  # a metric undefined on this draw
            values[i] = math.nan
    return values


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return round(float(low), 6), round(float(high), 6)


def bootstrap_interval(score: RowScore, draws: np.ndarray, *, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of ``score`` over ``draws`` (from :func:`resample_indices`)."""
    return _interval(_scores(score, draws), level)


@dataclass(frozen=True)
class PairedDifference:
    """``after - before`` on the same rows, with its paired interval."""

    difference: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        """True when the interval contains 0 (or could not be computed)."""
        if math.isnan(self.low) or math.isnan(self.high):
            return True
        return self.low <= 0.0 <= self.high


def paired_difference(before: RowScore, after: RowScore, draws: np.ndarray, *,
                      level: float = LEVEL) -> PairedDifference:
    """``after - before`` on all rows and its interval, both models scored on the same resampled rows."""
    everything = np.arange(draws.shape[1])
    point = float(after(everything)) - float(before(everything))
    low, high = _interval(_scores(after, draws) - _scores(before, draws), level)
    return PairedDifference(difference=round(point, 6), low=low, high=high)


def paired_ratio_interval(numerator: RowScore, denominator: RowScore, draws: np.ndarray, *,
                          level: float = LEVEL) -> tuple[float, float]:
    """Interval of ``numerator / denominator`` (e.g. retention) over the same resampled rows; draws where the
    denominator is 0 are left out."""
    top, bottom = _scores(numerator, draws), _scores(denominator, draws)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), math.nan)
    return _interval(ratio, level)


def metric_on_rows(compute: Callable[..., float], predictions: Sequence[str], references: Sequence[str],
                   rows: Sequence[object]) -> RowScore:
    """A :data:`RowScore` for a registered metric ``compute(predictions, references, rows)``."""

    def score(indices: np.ndarray) -> float:
        picked = indices.tolist()
        return compute([predictions[i] for i in picked], [references[i] for i in picked], [rows[i] for i in picked])

    return score
