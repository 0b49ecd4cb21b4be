"""Helpers for deterministic synthetic datasets (the verticals' generators and the core's general set).

Every split draws from its own random stream, derived from the dataset name and split with a stable
hash (not Python's salted ``hash``), so splits never overlap and runs are reproducible anywhere.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Sequence, TypeVar

import numpy as np

SPLITS = ("train", "validation", "test")
T = TypeVar("T")


def split_stream(name: str, split: str) -> int:
    """Stable 32-bit id of a dataset split's random stream."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return int.from_bytes(hashlib.sha256(f"dsvl-adapt/{name}/{split}".encode()).digest()[:4], "little")


def check_request(n: int, seed: int, image_size: int) -> None:
    if n < 0:
        raise ValueError("n must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if image_size < 32:
        raise ValueError("image_size must be >= 32")


def balanced_slots(answers: Mapping[str, Sequence[str]],
                   weights: Mapping[str, int] | None = None) -> tuple[tuple[str, str], ...]:
    """One balanced block of (question type, answer) slots: each type in proportion to ``weights`` (1 each by
    default), each answer of a type equally often. Feed it to :func:`balanced_order`."""
    lcm = math.lcm(*(len(values) for values in answers.values()))
    return tuple((kind, answer) for kind, values in answers.items() for answer in values
                 for _ in range((weights or {}).get(kind, 1) * lcm // len(values)))


def balanced_order(slots: Sequence[T], name: str, split: str, seed: int, n: int) -> list[T]:
    """``n`` slots, each consecutive block of ``len(slots)`` a fresh permutation: exact class balance."""
    out: list[T] = []
    k = len(slots)
    for block in range(-(-n // k)):
        perm = np.random.default_rng([split_stream(name, split), seed, 2, block]).permutation(k)
        out.extend(slots[j] for j in perm)
    return out[:n]
