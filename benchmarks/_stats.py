"""Statistics shared by the benchmarks: rotating round order, paired speed ratios with 95% intervals, paired bootstrap
intervals for accuracy, and the decision rules that turn them into claims.

The rules (the project's charter):

* Compared configurations run side by side in one process, in rounds; each round runs every configuration once, in
  an order that rotates (a Latin square over each block of ``n`` rounds, its base order reshuffled with a seed for
  the next block), so drift from other tenants and first/last-position effects hit every configuration alike.
* A speed ratio is ``baseline time / candidate time`` per round (> 1: the candidate is faster). The estimate is the
  geometric mean of the per-round ratios, with a **paired t interval on the log ratios** (95%, Student t with
  ``rounds - 1`` degrees of freedom), exponentiated.
* "faster" needs a ratio >= 1.10 whose interval lies above 1 (and "slower" the mirror image). An interval that holds 1
  is a "tie"; a ratio whose interval excludes 1 but is under the 10% bar is "no claim".
* An accuracy difference comes with a 95% **paired bootstrap** interval over test rows (the same rows resampled for
  both sides; with several seeds, seeds are resampled too). An interval holding 0 is a "tie"; a claim needs >= 500 test
  rows or >= 3 seeds, otherwise "no claim".

Nothing here reads a clock: the benchmarks time, this module decides. ``tests/test_benchmark_stats.py`` checks it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FASTER_AT = 1.10          # a "faster" claim needs at least this ratio...
CONFIDENCE = 0.95         # ... with this interval above 1
MIN_ROWS_FOR_CLAIM = 500  # an accuracy claim needs this many test rows ...
MIN_SEEDS_FOR_CLAIM = 3   # ... or this many seeds
RATIO_METHOD = "geometric mean of per-round paired ratios; 95% paired t interval on log ratios (df = rounds - 1)"
BOOTSTRAP_METHOD = "95% paired percentile bootstrap over test rows (same rows for both sides; seeds resampled too " \
                   "when there are several)"


# ------------------------------------------------------------------------------------------------------------ order


def round_orders(names: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of ``names`` in each of ``rounds`` rounds.

    Within each block of ``len(names)`` rounds the order rotates by one position per round (a Latin square: every
    name runs once in every position); each block starts from a fresh seeded shuffle, so neighbours change too.
    """
    names = list(names)
    if not names:
        return [[] for _ in range(rounds)]
    rng = random.Random(seed)
    orders: list[list[str]] = []
    base = names[:]
    for r in range(rounds):
        shift = r % len(names)
        if shift == 0:
            rng.shuffle(base)
        orders.append(base[shift:] + base[:shift])
    return orders


# ------------------------------------------------------------------------------------------------------------ t


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # terms cos^(k) theta with coefficients 2*4*.../(1*3*5*...)
                term *= c2 * (k - 1) / k
                total += term
        return (2 / math.pi) * (theta + math.sin(theta) * total) if df > 1 else 2 * theta / math.pi
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided critical value of Student's t: ``P(|T| <= q) = confidence`` (bisection on the exact CDF)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_two_sided_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ------------------------------------------------------------------------------------------------------------ speed


@dataclass(frozen=True)
class SpeedRatio:
    """``baseline / candidate`` time over paired rounds (> 1: the candidate is faster), with its 95% interval."""

    ratio: float
    low: float | None
    high: float | None
    rounds: int

    def to_json(self, threshold: float = FASTER_AT) -> dict[str, Any]:
        return {"ratio": round(self.ratio, 3),
                "ci95": None if self.low is None else [round(self.low, 3), round(self.high, 3)],
                "rounds": self.rounds, "claim": speed_claim(self, threshold)}


def paired_ratio(baseline_ms: Sequence[float], candidate_ms: Sequence[float],
                 confidence: float = CONFIDENCE) -> SpeedRatio:
    """Speed ratio of ``candidate`` over ``baseline`` from times measured in the same rounds (one pair a round)."""
    if len(baseline_ms) != len(candidate_ms):
        raise ValueError(f"{len(baseline_ms)} baseline rounds for {len(candidate_ms)} candidate rounds")
    if not baseline_ms:
        raise ValueError("no rounds")
    logs = np.log(np.asarray(baseline_ms, dtype=float) / np.asarray(candidate_ms, dtype=float))
    n = len(logs)
    mean = float(logs.mean())
    if n < 2:
        return SpeedRatio(math.exp(mean), None, None, n)
    half = t_quantile(confidence, n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return SpeedRatio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def speed_claim(estimate: SpeedRatio, threshold: float = FASTER_AT) -> str:
    """``faster`` (ratio >= threshold, interval above 1), ``slower`` (the mirror image), ``tie`` (the interval
    holds 1) or ``no claim`` (no interval, or a real difference under the threshold)."""
    if estimate.low is None or estimate.high is None:
        return "no claim"
    if estimate.low <= 1.0 <= estimate.high:
        return "tie"
    if estimate.ratio >= threshold and estimate.low > 1.0:
        return "faster"
    if estimate.ratio <= 1 / threshold and estimate.high < 1.0:
        return "slower"
    return "no claim"


def target_check(value: float, low: float | None, high: float | None, target: float) -> str:
    """Against a ``>= target`` requirement: ``met`` (the whole interval reaches it), ``not met`` (the whole interval
    falls short), ``within noise`` (the interval straddles it). Without an interval: ``no claim``."""
    if low is None or high is None:
        return "no claim"
    if low >= target:
        return "met"
    if high < target:
        return "not met"
    return "within noise"


# ------------------------------------------------------------------------------------------------------------ accuracy

RowMetric = Callable[[np.ndarray], float]  # the metric computed on the rows at these indices


def metric_on_rows(compute: Callable[[list[str], list[str], list[Any]], float], predictions: Sequence[str],
                   references: Sequence[str], rows: Sequence[Any]) -> RowMetric:
    """A :data:`RowMetric` for a vertical's metric function ``compute(predictions, references, rows)``: any metric,
    decomposable or not, recomputed on each resample."""
    predictions, references, rows = list(predictions), list(references), list(rows)
    if not len(predictions) == len(references) == len(rows):
        raise ValueError(f"{len(predictions)} predictions, {len(references)} references, {len(rows)} rows")

    def on(indices: np.ndarray) -> float:
        return float(compute([predictions[i] for i in indices], [references[i] for i in indices],
                             [rows[i] for i in indices]))

    return on


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        return {"value": round(self.value, digits), "ci95": [round(self.low, digits), round(self.high, digits)]}


@dataclass(frozen=True)
class Comparison:
    """``b`` against ``a`` on the same rows (per seed): both values, ``b - a`` and ``b / a`` with 95% intervals."""

    a: Estimate
    b: Estimate
    difference: Estimate
    ratio: Estimate | None  # None when a is 0
    rows: int
    seeds: int
    resamples: int

    def claim(self) -> str:
        return accuracy_claim(self)

    def to_json(self, names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
        return {names[0]: self.a.to_json(), names[1]: self.b.to_json(),
                "difference": self.difference.to_json(), "ratio": None if self.ratio is None else self.ratio.to_json(),
                "rows": self.rows, "seeds": self.seeds, "resamples": self.resamples, "claim": self.claim(),
                "method": BOOTSTRAP_METHOD}


def _percentiles(values: np.ndarray, point: float, confidence: float) -> Estimate:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Estimate(point, float(low), float(high))


def _resample(per_seed: Sequence[RowMetric], n_rows: int, resamples: int, seed: int,
              others: Sequence[Sequence[RowMetric]] = ()) -> list[np.ndarray]:
    """Bootstrap replicates (mean over resampled seeds of each metric on resampled rows), paired across series."""
    rng = np.random.default_rng(seed)
    series = [per_seed, *others]
    out = [np.empty(resamples) for _ in series]
    n_seeds = len(per_seed)
    for i in range(resamples):
        seeds = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        rows = rng.integers(0, n_rows, n_rows)
        for k, metrics in enumerate(series):
            out[k][i] = float(np.mean([metrics[s](rows) for s in seeds]))
    return out


def bootstrap_metric(per_seed: Sequence[RowMetric], n_rows: int, *, resamples: int = 1000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> Estimate:
    """A metric (mean over seeds) with its 95% percentile-bootstrap interval over rows (and seeds)."""
    if not per_seed or n_rows < 1:
        raise ValueError("need at least one seed and one row")
    everything = np.arange(n_rows)
    point = float(np.mean([m(everything) for m in per_seed]))
    (reps,) = _resample(per_seed, n_rows, resamples, seed)
    return _percentiles(reps, point, confidence)


def paired_comparison(a: Sequence[RowMetric], b: Sequence[RowMetric], n_rows: int, *, resamples: int = 1000,
                      seed: int = 0, confidence: float = CONFIDENCE) -> Comparison:
    """``b`` against ``a``, each given per seed as metrics over the same ``n_rows`` test rows (paired bootstrap)."""
    if len(a) != len(b) or not a or n_rows < 1:
        raise ValueError(f"need the same number (>= 1) of seeds on both sides, got {len(a)} and {len(b)}")
    everything = np.arange(n_rows)
    pa = float(np.mean([m(everything) for m in a]))
    pb = float(np.mean([m(everything) for m in b]))
    ra, rb = _resample(a, n_rows, resamples, seed, others=[b])
    ratio = None
    if pa != 0 and np.all(ra != 0):
        ratio = _percentiles(rb / ra, pb / pa, confidence)
    return Comparison(_percentiles(ra, pa, confidence), _percentiles(rb, pb, confidence),
                      _percentiles(rb - ra, pb - pa, confidence), ratio, n_rows, len(a), resamples)


@dataclass(frozen=True)
class Recovery:
    """What noise in the training data cost (``clean - noisy``) and what cleaning gave back (``cleaned - noisy``),
    on the same test rows, with the share recovered; 95% paired bootstrap intervals."""

    loss: Estimate
    regained: Estimate
    share: Estimate | None  # None unless the loss's interval lies above 0
    rows: int
    resamples: int

    def claim(self, target: float) -> str:
        """``met`` / ``not met`` / ``within noise`` for "recovers >= target of the loss"; ``no claim`` with fewer
        than 500 rows (one seed) or when the noise cost nothing beyond the loss's interval."""
        if not enough_evidence(self.rows, 1):
            return f"no claim: {self.rows} test rows, fewer than {MIN_ROWS_FOR_CLAIM}"
        if self.share is None:
            return "no claim: the noise cost no accuracy beyond the paired interval"
        return target_check(self.share.value, self.share.low, self.share.high, target)

    def to_json(self, target: float) -> dict[str, Any]:
        return {"loss": self.loss.to_json(), "regained": self.regained.to_json(),
                "share": None if self.share is None else self.share.to_json(), "target": target,
                "check": self.claim(target), "rows": self.rows, "resamples": self.resamples,
                "method": BOOTSTRAP_METHOD}


def paired_recovery(clean: RowMetric, noisy: RowMetric, cleaned: RowMetric, n_rows: int, *, resamples: int = 1000,
                    seed: int = 0, confidence: float = CONFIDENCE) -> Recovery:
    """Three models scored on the same ``n_rows`` test rows, resampled together. The share's interval is taken over
    the replicates whose loss is positive (all but a few when the loss's interval lies above 0)."""
    everything = np.arange(n_rows)
    c, n, k = clean(everything), noisy(everything), cleaned(everything)
    rc, rn, rk = _resample([clean], n_rows, resamples, seed, others=[[noisy], [cleaned]])
    loss = _percentiles(rc - rn, c - n, confidence)
    regained = _percentiles(rk - rn, k - n, confidence)
    share = None
    if loss.low > 0 and c > n:
        positive = rc - rn > 0
        share = _percentiles((rk - rn)[positive] / (rc - rn)[positive], (k - n) / (c - n), confidence)
    return Recovery(loss, regained, share, n_rows, resamples)


def enough_evidence(rows: int, seeds: int) -> bool:
    return rows >= MIN_ROWS_FOR_CLAIM or seeds >= MIN_SEEDS_FOR_CLAIM


def accuracy_claim(comparison: Comparison) -> str:
    """``better`` / ``worse`` (b against a: the difference's interval excludes 0), ``tie`` (it holds 0), or
    ``no claim`` when there are fewer than 500 rows and fewer than 3 seeds."""
    if not enough_evidence(comparison.rows, comparison.seeds):
        return "no claim"
    d = comparison.difference
    if d.low > 0:
        return "better"
    if d.high < 0:
        return "worse"
    return "tie"


def retention_check(comparison: Comparison, target: float) -> str:
    """``b / a >= target`` (e.g. 0.95 of the teacher): :func:`target_check` on the ratio's interval, ``no claim`` on
    too little evidence."""
    if not enough_evidence(comparison.rows, comparison.seeds) or comparison.ratio is None:
        return "no claim"
    r = comparison.ratio
    return target_check(r.value, r.low, r.high, target)
