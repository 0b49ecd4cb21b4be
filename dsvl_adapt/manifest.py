"""The run manifest: what a run was made with (config, versions, plugins, seed, git revision)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("dsvl-adapt", "torch", "transformers", "peft", "torch-pruning", "onnx", "onnxruntime",
                    "openvino", "nncf", "accelerate", "hydra-core", "pydantic", "pluggy")
NOT_COMPARED = ("run_dir", "cache_dir")  # may change between a run and its resumption


def check_run_dir(run_dir: Path, raw: dict[str, Any]) -> None:
    """Refuse, before anything is written, a run folder that cannot take this run: one that holds a run made with
    another configuration, or one this process cannot write to. Raises :class:`ConfigError` with the fix."""
    run_dir = Path(run_dir)
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is not None and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ConfigError(f"run_dir: {existing} {what}; choose a run_dir you can write to (run_dir=PATH)")
    path = run_dir / MANIFEST
    if not path.is_file():
        return
    previous = json.loads(path.read_text())["config"]
    previous = {k: v for k, v in previous.items() if k not in NOT_COMPARED}
    differences = sorted(_diff(previous, {k: v for k, v in raw.items() if k not in NOT_COMPARED}))
    if differences:
        raise ConfigError(
            f"{run_dir} holds a run made with a different configuration (differs at: "
            f"{', '.join(differences[:8])}). Resume it with the same settings, or choose a new run_dir."
        )


def write_or_check_manifest(run_dir: Path, config: RunConfig, raw: dict[str, Any], manager: Any,
                            data: Any = None) -> None:
    """Write the manifest of a new run; for a resumed one, refuse other settings or other data.

    ``data`` is the run's ``DataFingerprint``: a run folder whose data changed since it was made
    is not continued on the new data (its finished stages were made from the old), and the message
    names the files that changed.
    """
    path = run_dir / MANIFEST
    check_run_dir(run_dir, raw)
    if path.is_file():
        _check_same_data(run_dir, json.loads(path.read_text()).get("data"), data)
        return
    manifest = {
        "config": raw,
        "data": data.as_dict() if data is not None else None,
        "seed": config.seed,
        "versions": package_versions(),
        "plugins": [info.as_dict() for info in manager.plugins()],
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.write_text(json.dumps(manifest, indent=2, default=str))


def _check_same_data(run_dir: Path, recorded: dict[str, Any] | None, data: Any) -> None:
    if data is None:
        return
    if recorded is None:
        print(f"note: {run_dir / MANIFEST} records no data fingerprint (made by an earlier version): whether the "
              "data changed since is unknown", file=sys.stderr)
        return
    changes = data.changes_since(recorded)
    if changes:
        listed = ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ConfigError(
            f"{run_dir} holds a run made from other data: since it was made, {listed}. Its finished stages were "
            "computed from the data as it was, so it is not continued on the new data: restore the data to resume "
            "it, or start a new run_dir for the new data."
        )


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    """The dsvl-adapt source revision, when running from a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
