"""Inspection metrics: accuracy, miss rate and overkill rate.

A *miss* is a defective part called good ("none"): it ships a bad part. *Overkill* is a good
part called defective: it scraps a good one. Both are rates over the relevant parts only.
"""

from __future__ import annotations

from typing import Sequence

from dsvl_adapt.metrics import normalize_answer

GOOD = "none"


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [(normalize_answer(p), normalize_answer(r)) for p, r in zip(predictions, references)]


def accuracy(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float:
    pairs = _pairs(predictions, references)
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 0.0


def miss_rate(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float:
    """Share of defective parts (reference != none) predicted as none."""
    defective = [(p, r) for p, r in _pairs(predictions, references) if r != GOOD]
    return sum(p == GOOD for p, _ in defective) / len(defective) if defective else 0.0


def overkill_rate(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float:
    """Share of good parts (reference == none) predicted as anything else."""
    good = [(p, r) for p, r in _pairs(predictions, references) if r == GOOD]
    return sum(p != GOOD for p, _ in good) / len(good) if good else 0.0
