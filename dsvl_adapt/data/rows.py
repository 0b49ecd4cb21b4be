"""Validate raw row dicts into :class:`~dsvl_adapt.schemas.Row` objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..schemas import Row
from .images import open_image

REQUIRED = ("image", "question", "answer")


def parse_row(raw: Any, *, source: str, root: Path | None = None, max_pixels: int = 50_000_000) -> Row:
    """Check one raw row and load its image. ``source`` (e.g. ``train.jsonl:12``) is named in errors.

    Image paths are resolved against ``root``; a path that escapes ``root`` is refused.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{source}: a row must be an object with {', '.join(REQUIRED)}; got {type(raw).__name__}")
    missing = [key for key in REQUIRED if raw.get(key) in (None, "")]
    if missing:
        raise DataError(f"{source}: row is missing {', '.join(repr(m) for m in missing)}; every row needs "
                        f"{', '.join(REQUIRED)}")
    unknown = set(raw) - {*REQUIRED, "id", "meta"}
    if unknown:
        raise DataError(f"{source}: unknown field(s) {sorted(unknown)}; put extra information under 'meta'")
    texts = {}
    for key in ("question", "answer"):
        value = raw[key]
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{source}: {key!r} is not valid UTF-8 text; re-encode the file as UTF-8") from None
        if not isinstance(value, str):
            raise DataError(f"{source}: {key!r} must be text, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{source}: {key!r} is blank")
        texts[key] = value.strip()
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{source}: 'meta' must be an object, got {type(meta).__name__}")
    image = raw["image"]
    if isinstance(image, str) and root is not None:
        image = resolve_inside(root, image, source)
    return Row(
        id=str(raw.get("id") or source),
        image=open_image(image, source=source, max_pixels=max_pixels),
        question=texts["question"],
        answer=texts["answer"],
        meta=meta,
    )


def resolve_inside(root: Path, relative: str, source: str) -> Path:
    root = root.resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise DataError(
            f"{source}: image path {relative!r} points outside the dataset folder {root}; "
            "keep images inside it and use paths relative to the JSONL file"
        )
    return path
