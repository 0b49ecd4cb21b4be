"""The stage cache: completed stages shared between runs whose inputs are the same (a sweep's trials).

Each stage of a run gets a content key: a hash of its own config sections (``config_keys``)
and of every earlier stage's key, starting from the vertical, model, data settings, seed and the
data's content fingerprint (:mod:`dsvl_adapt.data.fingerprint`). A stage whose key is in the
cache is copied (hard-linked) into the run instead of being computed. Every stage builds on
``load``, which records the data's figures, so changed data invalidates every stage after it; when
a stage misses the cache only because the data changed, the console names the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

STAGE_RECORD = "stage.json"
CACHE_MARKER = "from-cache.txt"  # in a stage folder restored from the cache: the entry it came from
DATA_RECORDS = "data-records"  # in the cache: per stage and settings, the data its latest entry was made from

BASE_KEYS = ("vertical", "model", "data", "seed", "device")


class StageKey(str):
    """A stage's content key; ``settings_key`` is the key the same settings have without the data's
    fingerprint, ``data`` that fingerprint (``DataFingerprint``, or None): together they tell a miss
    caused by changed data from one caused by changed settings."""

    settings_key: str
    data: Any

    def __new__(cls, key: str, settings_key: str, data: Any = None) -> "StageKey":
        value = super().__new__(cls, key)
        value.settings_key, value.data = settings_key, data
        return value


class StageKeys:
    """Content keys of the stages of one run: each hashes its own config sections and every earlier key.

    ``data`` (a ``DataFingerprint``) enters the first key, so every stage's key depends on the data's
    content, not only on ``data.source``'s path.
    """

    def __init__(self, raw_config: dict[str, Any], data: Any = None) -> None:
        self.raw = raw_config
        self.data = data
        base = {key: raw_config.get(key) for key in BASE_KEYS}
        self.previous_settings = _digest(base)
        with_data = {**base, "data_fingerprint": data.digest} if data is not None else None
        self.previous = _digest(with_data) if with_data is not None else self.previous_settings

    def add(self, stage: Any) -> StageKey:
        keys = getattr(stage, "config_keys", None)
        if keys is None:
            section: Any = {k: v for k, v in self.raw.items() if k not in ("run_dir", "cache_dir")}
        else:
            section = {key: _lookup(self.raw, key) for key in keys}
        self.previous = _digest({"stage": stage.name, "config": section, "upstream": self.previous})
        self.previous_settings = _digest({"stage": stage.name, "config": section, "upstream": self.previous_settings})
        return StageKey(self.previous, self.previous_settings, self.data)


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

    def __init__(self, directory: Path | None, log: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self.log = log

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
                if (entry / STAGE_RECORD).is_file():
                    yield entry
                else:
                    self._say_if_data_changed(stage, key)
                    yield None
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
        self._remember_data(stage, key)

    # -- why a stage missed the cache ----------------------------------------------------------
    def _data_record(self, stage: Any, key: str) -> Path | None:
        settings_key = getattr(key, "settings_key", None)
        if self.directory is None or settings_key is None or getattr(key, "data", None) is None:
            return None
        return self.directory / DATA_RECORDS / f"{stage.name}-{settings_key}.json"

    def _remember_data(self, stage: Any, key: str) -> None:
        """In the cache's data-records folder: the data the entry was made from, under its settings' key."""
        record = self._data_record(stage, key)
        if record is not None:
            record.parent.mkdir(exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")  # trials of a sweep may write at once
            data = key.data.as_dict()  # type: ignore[attr-defined]
            tmp.write_text(json.dumps({"entry": f"{stage.name}-{key}", "data": data}, default=str))
            os.replace(tmp, record)

    def _say_if_data_changed(self, stage: Any, key: str) -> None:
        """A miss for settings that are cached with other data: say which files changed."""
        record = self._data_record(stage, key)
        if record is None or self.log is None or not record.is_file():
            return
        try:
            earlier = json.loads(record.read_text())
        except (OSError, ValueError):
            return
        changes = key.data.changes_since(earlier.get("data"))  # type: ignore[attr-defined]
        if changes:
            listed = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
            self.log(f"[{stage.name}] data changed since the cached run ({earlier.get('entry')}): {listed}; "
                     "computing it again")

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
