"""Level 1, pairs of rows: exact and near-duplicate images asked the same question (within a split), the same
image and question with different answers, and rows of one split that are rows of another (leakage).

Pictures are compared by their decoded pixels (SHA-256, :func:`dsvl_adapt.data.leakage.image_sha256`) and by a
perceptual hash (imagehash's pHash, within ``clean.near_duplicate_distance`` bits, confirmed by 32x32 thumbnails
that differ by at most ``NEAR_PIXEL_DIFF``) so that a re-encoded or resized copy is still found; questions by :func:`dsvl_adapt.data.leakage.normalize_question`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from .data import CleaningData, hamming
from .findings import Finding

#: a perceptual-hash match counts only where the 32x32 thumbnails differ by at most this mean absolute difference
#: (of 1): a re-encoded or resized copy differs by about 0.005, a striped and a solid mug of one colour by 0.05+
NEAR_PIXEL_DIFF = 0.02

#: which split loses its copy when two splits share a row: the one trained on, so that scores stay honest
LEAK_PAIRS = (("train", "test"), ("train", "validation"), ("validation", "test"))


def _candidates(data: CleaningData, split: str, other: str) -> Iterable[tuple[int, int]]:
    """Pairs (i in ``split``, j in ``other``) with the same normalised question and the same picture (pixels, or
    perceptual hashes within the distance); within one split, i > j (each pair once, the later row first)."""
    by_question: dict[str, list[int]] = defaultdict(list)
    for j, question in enumerate(data.questions(other)):
        by_question[question].append(j)
    hashes_other = data.perceptual_hashes(other)
    hashes = data.perceptual_hashes(split)
    digests, digests_other = data.pixel_digests(split), data.pixel_digests(other)
    limit = data.settings.near_duplicate_distance
    for i, question in enumerate(data.questions(split)):
        pool = np.array(by_question.get(question, []), dtype=np.int64)
        if split == other:
            pool = pool[pool < i]
        if not len(pool):
            continue
        near = pool[hamming(hashes[i], hashes_other[pool]) <= limit]
        if len(near):
            thumbs, thumbs_other = data.thumbnails(split), data.thumbnails(other)
            near = near[np.abs(thumbs_other[near] - thumbs[i]).mean(axis=(1, 2, 3)) <= NEAR_PIXEL_DIFF]
        exact = [j for j in pool if digests[i] == digests_other[j]]
        for j in sorted(set(near.tolist()) | set(exact)):
            yield i, j


def duplicates(data: CleaningData) -> Iterable[Finding]:
    """Within a split: a later row with the same picture and question as an earlier one is a duplicate (dropped
    when the answers agree); when they disagree, both rows are flagged as conflicting."""
    for name, split in data.splits.items():
        rows = split.rows
        digests = data.pixel_digests(name)
        seen_conflict: set[int] = set()
        dropped: set[int] = set()
        for i, j in _candidates(data, name, name):
            first, later = rows[j], rows[i]
            exact = digests[i] == digests[j]
            how = "the same pixels" if exact else "a near-identical picture (perceptual hash)"
            if _answer(first.answer) == _answer(later.answer):
                if i not in dropped:
                    dropped.add(i)
                    yield Finding(name, later.id, "duplicate" if exact else "near_duplicate",
                                  f"{how} and question as row {first.id!r}, same answer", score=0.95 if exact else 0.85,
                                  action="drop", related=[first.id])
            else:
                for index, other in ((i, first), (j, later)):
                    if index not in seen_conflict:
                        seen_conflict.add(index)
                        yield Finding(name, rows[index].id, "conflicting_answers",
                                      f"{how} and question as row {other.id!r}, which answers {other.answer!r} "
                                      f"(this row: {rows[index].answer!r})", score=0.9, action="flag",
                                      related=[other.id])


def leakage(data: CleaningData) -> Iterable[Finding]:
    """A row of one split whose picture and question are a row's of a later split (train in test or validation,
    validation in test): the earlier split's copy is dropped, so that scores measure skill, not memory."""
    for split, other in LEAK_PAIRS:
        if split not in data.splits or other not in data.splits:
            continue
        rows, others = data.splits[split].rows, data.splits[other].rows
        flagged: set[int] = set()
        for i, j in _candidates(data, split, other):
            if i in flagged:
                continue
            flagged.add(i)
            yield Finding(split, rows[i].id, f"leak_{other}",
                          f"the same picture and question as {other} row {others[j].id!r}", score=1.0, action="drop",
                          related=[others[j].id])


def _answer(answer: str) -> str:
    return " ".join(answer.casefold().split()).rstrip(".")
