"""Read a user's dataset: ``<split>.jsonl`` files with image paths relative to the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}


def read_jsonl_split(directory: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """Yield raw rows of ``<directory>/<split>.jsonl``; each carries ``_source`` = ``file:line``.

    Lines that are not JSON objects raise :class:`DataError` naming file and line; the core's
    ``on_bad_row`` policy decides whether that stops the run. Image paths stay relative; the
    core resolves them against the directory and refuses paths that leave it.
    """
    directory = Path(directory)
    path = directory / SPLIT_FILES.get(split, f"{split}.jsonl")
    if not path.is_file():
        raise DataError(f"{path} not found: a dataset folder needs {', '.join(SPLIT_FILES.values())}")
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            source = f"{path}:{number}"
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield {"_source": source, "_error": "line is not valid UTF-8; re-encode the file as UTF-8"}
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield {"_source": source, "_error": f"not valid JSON ({exc.msg} at column {exc.colno})"}
                continue
            if isinstance(row, dict):
                row["_source"] = source
                row["_root"] = str(directory)
            else:
                row = {"_source": source, "_error": f"expected a JSON object, got {type(row).__name__}"}
            yield row
