"""Shared fixtures: a tiny pipeline run (reference-tiny) reused by the tests that read its outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DSVL_ADAPT_NO_PROGRESS", "1")

TINY = [
    "vertical=industrial",
    "model=reference-tiny",
    "finetune=fast",
    "distill=fast",
    "prune.weights.sparsity=0.3",
    "data.train_size=48",
    "data.validation_size=8",
    "data.test_size=12",
    "score.latency_repeats=3",
    "score.latency_warmup=1",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete tiny run (load -> finetune -> score), shared read-only by many tests."""
    import dsvl_adapt

    run_dir = tmp_path_factory.mktemp("tiny-run")
    dsvl_adapt.run(TINY, run_dir=run_dir)
    return run_dir
