"""Validate raw row dicts into :class:`~dsvl_adapt.schemas.Row` objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..schemas import Row
from .images import open_image

REQUIRED = ("image", "question", "answer")


def parse_row(raw: Any, *, source: str, root: Path | None = None, max_pixels: int = 50_000_000,
              allow_outside: Sequence[Path] = (), image_files: set[Path] | None = None) -> Row:
    """Check one raw row and load its image. ``source`` (e.g. ``train.jsonl:12``) is named in errors.

    Image paths are resolved against ``root``, symbolic links followed: the file must lie inside
    ``root`` or under one of ``allow_outside`` (see :func:`resolve_inside`). The resolved path of
    an image file is added to ``image_files`` when given (the data fingerprint hashes them).
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
        image = resolve_inside(root, image, source, allow_outside)
        if image_files is not None:
            image_files.add(image)
    return Row(
        id=str(raw.get("id") or source),
        image=open_image(image, source=source, max_pixels=max_pixels),
        question=texts["question"],
        answer=texts["answer"],
        meta=meta,
    )


def resolve_inside(root: Path, relative: str, source: str, allow_outside: Sequence[Path] = ()) -> Path:
    """The real path of image ``relative`` (relative to ``root``), symbolic links followed.

    Accepted when the file itself lies inside ``root`` or under one of the ``allow_outside``
    folders (``data.allow_outside``): an image folder that is a symbolic link to elsewhere in the
    dataset is fine, one that leads out of it must be allowed by name. Refused otherwise, saying
    where the path leads, through which link, and the option that would allow it.
    """
    root = root.resolve()
    path = (root / relative).resolve()
    allowed = [root, *(Path(folder).resolve() for folder in allow_outside)]
    if any(path == folder or folder in path.parents for folder in allowed):
        return path
    lexical = Path(os.path.normpath(root / relative))
    if lexical == root or root in lexical.parents:
        link = _first_link(root, lexical)
        target = link.resolve() if link.is_dir() else path.parent
        raise DataError(
            f"{source}: image path {relative!r} leads through the symbolic link {link} to {path}, outside the "
            f"dataset folder {root}; move the files into the folder, or allow their location with "
            f"data.allow_outside=[{target}]"
        )
    raise DataError(
        f"{source}: image path {relative!r} points outside the dataset folder {root} (to {path}); keep images "
        "inside it and use paths relative to the JSONL file, or allow their location with "
        f"data.allow_outside=[{path.parent}]"
    )


def _first_link(root: Path, lexical: Path) -> Path:
    """The first symbolic link on the way from ``root`` down to ``lexical`` (named in refusals)."""
    current = root
    for part in lexical.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            return current
    return lexical
