"""Inspection metrics: accuracy, miss rate and overkill rate.

A *miss* is a defective part called good ("none"): it ships a bad part. *Overkill* is a good
part called defective: it scraps a good one. Both are rates over the relevant parts only, and
only parts whose reference answer is in the vertical's label set (``LABELS``: scratch, dent,
stain, crack, none) count: an answer outside it is neither a known defect nor a good part.

When no test row is a relevant part (no defective part for the miss rate, no good part for the
overkill rate, e.g. data labelled for another task) the rate does not apply: it returns ``None``,
which the scorecard shows as "—", never as 0.000, its best value. :func:`not_applicable` says why.
"""

from __future__ import annotations

from typing import Sequence

from dsvl_adapt.metrics import normalize_answer

from .generator import DEFECTS as LABELS

GOOD = "none"


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [(normalize_answer(p), normalize_answer(r)) for p, r in zip(predictions, references)]


def outside_labels(references: Sequence[str]) -> list[str]:
    """The references that are not one of ``LABELS`` (after normalisation), in order."""
    return [r for r in references if normalize_answer(r) not in LABELS]


def not_applicable(references: Sequence[str]) -> dict[str, str]:
    """``{metric name: why it does not apply}`` for the rates that return None on these references."""
    normalised = [normalize_answer(r) for r in references]
    reasons = {}
    if not any(r in LABELS and r != GOOD for r in normalised):
        reasons["miss_rate"] = f"no test answer is a defect ({', '.join(LABELS[:-1])})"
    if GOOD not in normalised:
        reasons["overkill_rate"] = f"no test answer is '{GOOD}' (a good part)"
    return reasons


def accuracy(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float:
    pairs = _pairs(predictions, references)
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 0.0


def miss_rate(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float | None:
    """Share of defective parts (reference a defect of ``LABELS``) predicted as none; None without any."""
    defective = [(p, r) for p, r in _pairs(predictions, references) if r in LABELS and r != GOOD]
    return sum(p == GOOD for p, _ in defective) / len(defective) if defective else None


def overkill_rate(predictions: Sequence[str], references: Sequence[str],
                  rows: Sequence[object] = ()) -> float | None:
    """Share of good parts (reference none) predicted as anything else; None without any."""
    good = [(p, r) for p, r in _pairs(predictions, references) if r == GOOD]
    return sum(p != GOOD for p, _ in good) / len(good) if good else None
