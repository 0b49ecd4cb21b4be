"""Read a user's dataset: ``<split>.jsonl`` files with image paths relative to the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}


def iter_json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """``(source, object, error)`` for each non-blank line of a JSONL file; ``source`` is ``file:line``.

    A line that is not UTF-8, not JSON or not an object gives ``object=None`` and the reason, so a
    loader can hand it on as a bad row (the core's ``on_bad_row`` policy decides).
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            source = f"{path}:{number}"
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield source, None, "line is not valid UTF-8; re-encode the file as UTF-8"
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield source, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(value, dict):
                yield source, None, f"expected a JSON object, got {type(value).__name__}"
                continue
            yield source, value, None


def read_jsonl_split(directory: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """Yield raw rows of ``<directory>/<split>.jsonl``; each carries ``_source`` = ``file:line``.

    Lines that are not JSON objects come as ``{"_source", "_error"}`` rows naming file and line; the
    core's ``on_bad_row`` policy decides whether that stops the run. Image paths stay relative; the
    core resolves them against the directory and refuses paths that leave it.
    """
    directory = Path(directory)
    path = directory / SPLIT_FILES.get(split, f"{split}.jsonl")
    if not path.is_file():
        raise DataError(f"{path} not found: a dataset folder needs {', '.join(SPLIT_FILES.values())}")
    for source, row, error in iter_json_objects(path):
        if row is None:
            yield {"_source": source, "_error": error}
        else:
            yield {**row, "_source": source, "_root": str(directory)}
