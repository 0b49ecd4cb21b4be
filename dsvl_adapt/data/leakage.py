"""Test rows that are train rows: the same image (by pixel content) asked the same question.

A model scored on rows it was trained on looks better than it is. Such rows are counted when the
data loads (the load stage's figure ``data.test_train_overlap``) and, past ``data.max_overlap``
(default 0), the run is refused with the count and examples.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import DataError
from ..schemas import Row
from .loading import Split

EXAMPLES = 5


def normalize_question(question: str) -> str:
    """Case, surrounding blanks, runs of whitespace and trailing punctuation do not make a question new."""
    return re.sub(r"\s+", " ", question.casefold()).strip().rstrip("?.!").strip()


def image_sha256(row: Row) -> str:
    """SHA-256 of the row's decoded RGB pixels and size: the same picture in another file or format matches."""
    image = row.image
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def row_signature(row: Row) -> tuple[str, str]:
    return image_sha256(row), normalize_question(row.question)


@dataclass
class Overlap:
    """How many test rows repeat a train row, with a few of them named (``test.jsonl:4 = train.jsonl:17``)."""

    count: int
    examples: list[str] = field(default_factory=list)


def test_train_overlap(train: Split, test: Split) -> Overlap:
    """Test rows whose image and normalised question equal a train row's (the rows each split keeps)."""
    seen: dict[tuple[str, str], str] = {}
    for row, source in zip(train.rows, _sources(train)):
        seen.setdefault(row_signature(row), source)
    count, examples = 0, []
    for row, source in zip(test.rows, _sources(test)):
        match = seen.get(row_signature(row))
        if match is not None:
            count += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{source} = {match} ({row.question!r})")
    return Overlap(count, examples)


def refuse_overlap(overlap: Overlap, max_overlap: int, test_rows: int) -> None:
    """A DataError when more test rows repeat train rows than ``data.max_overlap`` allows."""
    if overlap.count > max_overlap:
        raise DataError(
            f"{overlap.count} of {test_rows} test rows are also train rows (same image and question), more than "
            f"data.max_overlap={max_overlap}: their scores would measure memory, not skill; e.g. "
            + "; ".join(overlap.examples)
            + f". Remove them from the test split, or allow them with data.max_overlap={overlap.count}"
        )


test_train_overlap.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


def _sources(split: Split) -> Sequence[str]:
    if len(split.sources) == len(split.rows):
        return split.sources
    return [row.id for row in split.rows]
