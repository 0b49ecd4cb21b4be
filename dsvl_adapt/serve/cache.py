"""The response cache: a repeated request (same image content, same rendered prompt, same generation settings, same
model) is answered without running the model.

Two tiers: memory (LRU, bounded by entries and bytes) and, optionally, a folder on disk (bounded by bytes, oldest
files removed first) that survives restarts. Entries are small JSON documents (the answer and its figures); the key is
a SHA-256 over the model's identity, the image's pixel hash, the messages' text and the settings, so a changed model or a
changed chat template never returns a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..runtimes.contract import GenerationSettings


def cache_key(*, model_id: str, image_sha256: str, prompt: Sequence[Any], settings: GenerationSettings) -> str:
    """The key of one request's answer: the model (its folder, hence its chat template), the image's pixel hash, the
    prompt (the messages' roles and texts, in order) and the generation settings."""
    text = json.dumps({"model": model_id, "image": image_sha256, "prompt": list(prompt),
                       "settings": asdict(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Memory LRU (``max_entries``, ``max_bytes``) over an optional disk folder (``disk_max_bytes``)."""

    def __init__(self, *, max_entries: int = 4096, max_bytes: int = 64 * 2**20, disk_dir: str | Path | None = None,
                 disk_max_bytes: int = 512 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.disk_max_bytes = disk_max_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 or self.disk_dir is not None

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            blob = self._memory.get(key)
            if blob is not None:
                self._memory.move_to_end(key)
        if blob is None and self.disk_dir is not None:
            path = self._path(key)
            try:
                blob = path.read_bytes()
                os.utime(path)  # recently used: last to be evicted
            except OSError:
                blob = None
            if blob is not None:
                self._remember(key, blob)
        if blob is None:
            self.misses += 1
            return None
        try:
            value = json.loads(blob)
        except json.JSONDecodeError:  # a damaged disk entry is a miss, and is dropped
            self._forget(key)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        blob = json.dumps(value).encode()
        self._remember(key, blob)
        if self.disk_dir is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            self._trim_disk()

    def _remember(self, key: str, blob: bytes) -> None:
        if self.max_entries <= 0 or len(blob) > self.max_bytes:
            return
        with self._lock:
            old = self._memory.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._memory[key] = blob
            self._bytes += len(blob)
            while len(self._memory) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._bytes -= len(dropped)

    def _forget(self, key: str) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
        if self.disk_dir is not None:
            self._path(key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.json"

    def _trim_disk(self) -> None:
        assert self.disk_dir is not None
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.disk_dir.glob("*/*.json")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


__all__ = ["ResponseCache", "cache_key"]
