"""Read a user's dataset: ``<split>.jsonl`` files with image paths relative to the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

# The names a split's file may have, the canonical one first: users name their validation split in several ways.
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}


def split_file_candidates(directory: str | Path, split: str, suffix: str = ".jsonl") -> list[Path]:
    """The paths ``<directory>/<name><suffix>`` that may hold ``split``, for each name it may have."""
    return [Path(directory) / f"{name}{suffix}" for name in SPLIT_NAMES.get(split, (split,))]


def find_split_file(directory: str | Path, split: str, suffix: str = ".jsonl") -> Path | None:
    """The file holding ``split`` in ``directory`` (``val.jsonl``, ``dev.jsonl`` … for validation), or None.

    Two files that could both be the split (``val.jsonl`` and ``dev.jsonl``) are an error naming both:
    which one the user meant cannot be guessed. Works for any suffix (``.jsonl``, ``.csv``) and for
    folders (``suffix=""``), so plugins reading other formats accept the same names.
    """
    present = [path for path in split_file_candidates(directory, split, suffix) if path.exists()]
    if len(present) > 1:
        raise DataError(f"{directory} holds {' and '.join(p.name for p in present)}: both could be the "
                        f"{split!r} split; keep one (or rename the other so it is not read as {split!r})")
    return present[0] if present else None


def split_file_names(split: str, suffix: str = ".jsonl") -> str:
    """The accepted names of a split's file, for messages: ``validation.jsonl (or val.jsonl, …)``."""
    names = [f"{name}{suffix}" for name in SPLIT_NAMES.get(split, (split,))]
    return names[0] + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "")


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

    The validation split may also be called ``val.jsonl``, ``valid.jsonl`` or ``dev.jsonl``
    (:data:`SPLIT_NAMES`). Lines that are not JSON objects come as ``{"_source", "_error"}`` rows
    naming file and line; the core's ``on_bad_row`` policy decides whether that stops the run. Image
    paths stay relative; the core resolves them against the directory and refuses files that lie
    outside it (after following symbolic links) unless ``data.allow_outside`` lists their location.
    """
    directory = Path(directory)
    path = find_split_file(directory, split)
    if path is None or not path.is_file():
        needed = "; ".join(split_file_names(name) for name in SPLIT_NAMES)
        raise DataError(f"{split_file_candidates(directory, split)[0]} not found: a dataset folder needs {needed}")
    for source, row, error in iter_json_objects(path):
        if row is None:
            yield {"_source": source, "_error": error}
        else:
            yield {**row, "_source": source, "_root": str(directory)}
