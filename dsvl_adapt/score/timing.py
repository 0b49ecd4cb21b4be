"""Latency measurement in optimum-benchmark's manner: warm-up runs, then timed repeats."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    array = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}_ms": round(float(np.percentile(array, q)), 3) for q in (50, 90, 99)}


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
    """Milliseconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


