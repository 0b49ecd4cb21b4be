"""Fixtures of the cleaning tests: the planted-fault folder, built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from planted_data import build_planted_folder


@pytest.fixture(scope="session")
def planted_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_planted_folder(tmp_path_factory.mktemp("planted") / "shop")


@pytest.fixture
def planted_copy(planted_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(planted_folder, tmp_path / "shop"))
