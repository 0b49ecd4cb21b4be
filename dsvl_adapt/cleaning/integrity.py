"""Level 1, one row at a time: unreadable files, blank or near-constant images, absurd sizes and aspect
ratios, answers outside the split's answer set."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from .data import CleaningData
from .findings import Finding

_SOURCE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")
CLOSED_SET_ANSWERS = 50  # at most this many distinct answers ...
CLOSED_SET_COVER = 0.95  # ... covering this share of rows make a closed answer set


def unreadable_rows(data: CleaningData) -> Iterable[Finding]:
    """Rows the loader could not use (missing, empty, truncated or unreadable image, bad fields): the loader
    skipped them; they are reported and stay out of the cleaned view."""
    for name, split in data.splits.items():
        for message in split.skipped:
            match = _SOURCE.match(message)  # "/data/shop/train.jsonl:12: image file ... is damaged"
            source = f"{Path(match.group('file')).name}:{match.group('line')}" if match else message.split(": ", 1)[0]
            yield Finding(name, source, "unreadable", message, score=1.0, action="drop")


def image_quality(data: CleaningData) -> Iterable[Finding]:
    """Blank or near-constant images (grey-level standard deviation under ``clean.blank_std``), images with a
    side under ``clean.min_image_side`` pixels or an aspect ratio over ``clean.max_aspect_ratio``."""
    settings = data.settings
    for name, split in data.splits.items():
        for row in split.rows:
            width, height = row.image.size
            grey = np.asarray(row.image.convert("L"), dtype=np.float32)
            spread = float(grey.std())
            if spread < settings.blank_std:
                yield Finding(name, row.id, "blank_image",
                              f"the image is blank or near-constant (grey-level spread {spread:.2f} < "
                              f"clean.blank_std={settings.blank_std})", score=1.0, action="drop")
            if min(width, height) < settings.min_image_side:
                yield Finding(name, row.id, "absurd_size", f"the image is {width}x{height} pixels, a side under "
                              f"clean.min_image_side={settings.min_image_side}", score=0.9)
            ratio = max(width, height) / max(1, min(width, height))
            if ratio > settings.max_aspect_ratio:
                yield Finding(name, row.id, "absurd_aspect_ratio", f"the image is {width}x{height}: aspect ratio "
                              f"{ratio:.1f} > clean.max_aspect_ratio={settings.max_aspect_ratio}", score=0.8)


def answer_set(data: CleaningData) -> Iterable[Finding]:
    """Where the train answers form a closed set (at most 50 distinct answers covering 95% of rows), an answer
    given once and nowhere else is outside the answer format (a typo, a free-text note); the closest known
    answer is suggested."""
    counts: Counter[str] = Counter()
    for split in data.splits.values():
        counts.update(_key(row.answer) for row in split.rows)
    train = data.splits["train"].rows
    common = [answer for answer, _ in Counter(_key(r.answer) for r in train).most_common(CLOSED_SET_ANSWERS)]
    covered = sum(counts[a] for a in common) / max(1, sum(counts.values()))
    if len(train) < 20 or covered < CLOSED_SET_COVER:
        return  # open-ended answers: nothing to compare with
    known = [a for a in common if counts[a] > 1]
    for name, split in data.splits.items():
        for row in split.rows:
            key = _key(row.answer)
            if counts[key] > 1:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            suggestion = close[0] if close else None
            hint = f"; did it mean {suggestion!r}?" if suggestion else ""
            yield Finding(name, row.id, "answer_outside_set",
                          f"answer {row.answer!r} appears in no other row, outside the answer set of {len(known)} "
                          f"answers{hint}", score=0.8, action="flag", suggestion=suggestion)


def _key(answer: str) -> str:
    return " ".join(answer.casefold().split()).rstrip(".")
