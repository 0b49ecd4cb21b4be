"""The stage cache: completed stages shared between runs whose inputs are the same (a sweep's trials).

Each stage of a run gets a content key: a hash of its own config sections (``config_keys``)
and of every earlier stage's key, starting from the vertical, model, data and seed. A stage
whose key is in the cache is copied (hard-linked) into the run instead of being computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STAGE_RECORD = "stage.json"
CACHE_MARKER = "from-cache.txt"  # in a stage folder restored from the cache: the entry it came from

BASE_KEYS = ("vertical", "model", "data", "seed", "device")


class StageKeys:
    """Content keys of the stages of one run: each hashes its own config sections and every earlier key."""

    def __init__(self, raw_config: dict[str, Any]) -> None:
        self.raw = raw_config
        self.previous = _digest({key: raw_config.get(key) for key in BASE_KEYS})

    def add(self, stage: Any) -> str:
        keys = getattr(stage, "config_keys", None)
        if keys is None:
            section: Any = {k: v for k, v in self.raw.items() if k not in ("run_dir", "cache_dir")}
        else:
            section = {key: _lookup(self.raw, key) for key in keys}
        self.previous = _digest({"stage": stage.name, "config": section, "upstream": self.previous})
        return self.previous


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


class StageCache:
    """Completed stages shared between runs (a sweep's trials), keyed by content, safe across processes.

    The first process to claim a key holds a file lock while it computes; others wait for it and
    then copy the result. Files are hard-linked where the file system allows.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory else None

    def _usable(self, stage: Any) -> bool:
        return self.directory is not None and getattr(stage, "cacheable", True)

    @contextmanager
    def claim(self, stage: Any, key: str, enabled: bool = True) -> Iterator[Path | None]:
        if not enabled or not self._usable(stage):
            yield None
            return
        import fcntl

        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = self.directory / f"{stage.name}-{key}"
        with open(self.directory / f"{stage.name}-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield entry if (entry / STAGE_RECORD).is_file() else None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def store(self, stage: Any, key: str, final: Path) -> None:
        if not self._usable(stage) or not (final / STAGE_RECORD).is_file():
            return
        assert self.directory is not None
        entry = self.directory / f"{stage.name}-{key}"
        if entry.exists():
            return
        partial = entry.with_name(entry.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _link_tree(final, partial)
        os.replace(partial, entry)

    @staticmethod
    def restore(entry: Path, final: Path) -> None:
        partial = final.with_name(final.name + ".restoring")
        shutil.rmtree(partial, ignore_errors=True)
        _link_tree(entry, partial)
        os.replace(partial, final)


def _link_tree(source: Path, destination: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link)
