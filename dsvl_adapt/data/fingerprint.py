"""A content fingerprint of a run's data: what the manifest records and the stage cache keys on.

Generated data is named by its generator, seed and sizes. A user's folder (``data.source``) by the
name, size and SHA-256 of every file in it (hidden ones excepted) and of every image its rows
reference outside it (through symbolic links into ``data.allow_outside``): change one label, add
or replace one image, and the fingerprint changes, naming the file. Hashes are memoised per
process by (path, size, modification time), so a folder is read once however often it is asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

CHUNK = 1 << 20
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class DataFingerprint:
    """What the data of a run was: ``digest`` is its short content key, ``files`` the per-file record."""

    kind: Literal["generated", "folder"]
    digest: str
    source: str | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": self.kind, "digest": self.digest}
        if self.kind == "generated":
            record["generator"] = self.generator
        else:
            record |= {"source": self.source, "files": self.files}
        return record

    def changes_since(self, previous: dict[str, Any] | None) -> list[str]:
        """What differs from an earlier fingerprint (``as_dict`` form): file names with how, or fields."""
        if not previous or previous.get("digest") == self.digest:
            return []
        if previous.get("kind") != self.kind:
            return [f"data went from {previous.get('kind')} to {self.kind} (data.source)"]
        if self.kind == "generated":
            old = previous.get("generator") or {}
            return [f"generator {key}" for key in sorted(old.keys() | self.generator.keys())
                    if old.get(key) != self.generator.get(key)] or ["generator"]
        old_files: dict[str, Any] = previous.get("files") or {}
        changed = [f"{name} (changed)" for name in sorted(old_files.keys() & self.files.keys())
                   if old_files[name] != self.files[name]]
        added = [f"{name} (added)" for name in sorted(self.files.keys() - old_files.keys())]
        removed = [f"{name} (removed)" for name in sorted(old_files.keys() - self.files.keys())]
        return changed + added + removed or ["files"]


def generated_fingerprint(dataset: str, seed: int, sizes: dict[str, int], **extra: str) -> DataFingerprint:
    """Generated rows are fixed by the generator's name, the seed and the sizes (and ``extra``: the hash of a
    review decisions file applied to them)."""
    generator = {"dataset": dataset, "seed": seed, "sizes": dict(sizes), **extra}
    return DataFingerprint("generated", _digest(generator), generator=generator)


def folder_fingerprint(source: Path, allow_outside: Sequence[Path] = (),
                       referenced: Iterable[Path] = ()) -> DataFingerprint:
    """Every file of ``source`` (hidden ones and links leading elsewhere excepted) and the ``referenced``
    files (images rows named, resolved), by name relative to ``source`` (absolute when outside it)."""
    root = source.resolve()
    allowed = [root, *(Path(folder).resolve() for folder in allow_outside)]
    paths = {path for path in _walk(root) if _inside(path, allowed)}
    paths |= {Path(path).resolve() for path in referenced}
    files = {}
    for path in sorted(paths):
        if path.is_file():
            files[_name(path, root)] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return DataFingerprint("folder", _digest(files), source=str(source), files=files)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised by (path, size, modification time) for this process."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _walk(root: Path) -> Iterable[Path]:
    """Files under ``root``, resolved; hidden entries skipped, linked folders not entered (what rows use
    through them is added as ``referenced``)."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield (Path(folder) / name).resolve()


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if root in path.parents else str(path)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]
