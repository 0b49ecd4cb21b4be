"""Shared fixtures: a tiny pipeline run (reference-tiny) reused by the tests that read its outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DSVL_ADAPT_NO_PROGRESS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (the default: `-n auto` in pyproject.toml) each worker process gets one core's share: torch,
    # and every CLI run a test starts, use one thread, so that workers do not oversubscribe the machine's cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def _once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """``build(folder)`` once per test session, however many pytest-xdist workers ask: the folder lies in the
    temporary root the workers share, and a file lock makes the others wait for the first and reuse its result."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name
    done = shared.with_name(name + ".done")
    with FileLock(str(shared) + ".lock"):
        if not done.exists():
            shared.mkdir(exist_ok=True)
            result = build(shared)
            done.write_text(str(result))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete tiny run of the default pipeline, shared read-only by many tests (and test workers).

    Run as a user would, in a fresh process: tests elsewhere change torch's thread count, and a
    different thread count changes float reductions, which the determinism tests would see.
    """
    import subprocess
    import sys

    def run(run_dir: Path) -> Path:
        result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *TINY, f"run_dir={run_dir}"],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    return _once_per_session(tmp_path_factory, "tiny-run", run)


def write_test_listing(predictions_file: Path, test_rows: int, directory: Path) -> Path:
    """The industrial test rows a prediction file answered, as ``rows.json`` (image path + question) in
    ``directory``, for a script that asks the model with transformers alone; checks the ids match the file's."""
    import json

    from dsvl_adapt_industrial.generator import generate_rows

    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    rows = generate_rows("test", test_rows, seed=0, image_size=32)
    assert [r["id"] for r in rows] == [p["id"] for p in predictions]
    listing = []
    for row in rows:
        path = directory / f"{row['id']}.png"
        row["image"].save(path)
        listing.append({"image": str(path), "question": row["question"]})
    (directory / "rows.json").write_text(json.dumps(listing))
    return directory / "rows.json"


# -- the cleaning tests' planted-fault folder (tests/cleaning/planted_data.py), built once per session. Kept here,
# not in a tests/cleaning/conftest.py: a second conftest module would shadow this one for `from conftest import`.
@pytest.fixture(scope="session")
def planted_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from planted_data import build_planted_folder  # tests/cleaning is on sys.path once its tests are collected

    return _once_per_session(tmp_path_factory, "planted", lambda folder: build_planted_folder(folder / "shop"))


@pytest.fixture
def planted_copy(planted_folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(planted_folder, tmp_path / "shop"))
