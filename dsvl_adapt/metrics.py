"""Metrics shared by verticals: answer normalisation and exact-match accuracy."""

from __future__ import annotations

import re
from typing import Sequence

_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.!?,;:]+$")


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, drop trailing punctuation (idempotent)."""
    return _TRAILING.sub("", _SPACES.sub(" ", text.strip().lower())).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str], rows: Sequence[object] = ()) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)
