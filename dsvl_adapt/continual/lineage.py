"""A parent run as an update reads it: finished or not, its artifacts, its manifest hash, the next version's name.

A parent is read, never written: its manifest, each stage's ``stage.json`` (through the engine's own reader) and
its scorecard. Anything an update needs that the parent lacks is refused before the update's first stage, with
the run folder and what is missing named.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import STAGE_RECORD, read_stage_artifacts, unfinished_stages
from ..errors import ConfigError
from ..manifest import MANIFEST

#: A version's folder name ends in ``-v<N>`` (the first run of a lineage is version 1 and has no suffix).
VERSION_SUFFIX = re.compile(r"^(?P<stem>.+)-v(?P<version>\d+)$")
#: Artifacts an update starts from: the parent's teacher, and its student (pruned and distilled) unless it re-prunes.
NEEDED = ("teacher", "student")


@dataclass
class ParentRun:
    """A finished run that an update continues from."""

    run_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    artifacts: dict[str, Path]  # the run's artifacts after its last stage (stage.json records, in pipeline order)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def version(self) -> int:
        """1 for a run made by ``dsvl-adapt run``; its update section's version otherwise."""
        update = self.config.get("update") or {}
        return int(update.get("version", 1))

    @property
    def stages(self) -> list[str]:
        return list(self.config["pipeline"]["stages"])


def manifest_sha256(run_dir: Path) -> str:
    """The sha256 of a run's ``manifest.json`` bytes (what an update records of its parent)."""
    return hashlib.sha256((Path(run_dir) / MANIFEST).read_bytes()).hexdigest()


def read_parent(run_dir: str | Path) -> ParentRun:
    """Read a finished run; :class:`ConfigError` naming the folder and the fix when it is not one."""
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} {'is not a folder' if run_dir.exists() else 'does not exist'}; give "
                          "the folder of a finished run (one `dsvl-adapt run` or `dsvl-adapt update` completed)")
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"RUN_DIR {run_dir} holds no {MANIFEST}: it is not a dsvl-adapt run folder; give the "
                          "folder of a finished run")
    manifest = json.loads(manifest_path.read_text())
    stages = manifest.get("config", {}).get("pipeline", {}).get("stages", [])
    unfinished = unfinished_stages(run_dir, stages)
    if unfinished:
        raise ConfigError(f"RUN_DIR {run_dir} is not a finished run: stage(s) {', '.join(unfinished)} did not "
                          "complete. Finish it first (run the same command again to resume it), or update an "
                          "earlier finished version")
    artifacts: dict[str, Path] = {}
    figures: dict[str, dict[str, Any]] = {}
    for name in stages:
        stage_dir = run_dir / "stages" / name
        artifacts.update(read_stage_artifacts(stage_dir))
        figures[name] = json.loads((stage_dir / STAGE_RECORD).read_text()).get("figures", {})
    missing = [name for name in NEEDED if name not in artifacts or not artifacts[name].exists()]
    if missing:
        raise ConfigError(f"RUN_DIR {run_dir} has no {' or '.join(missing)} artifact (pipeline: "
                          f"{' -> '.join(stages)}); an update starts from a run that fine-tuned a teacher "
                          "(and made a student)")
    if "score" in stages and not (run_dir / "scorecard.json").is_file():
        raise ConfigError(f"RUN_DIR {run_dir} has no scorecard.json although its score stage completed; "
                          "the folder is damaged or was edited")
    return ParentRun(run_dir, manifest, manifest_sha256(run_dir), artifacts, figures)


def next_version_dir(parent: ParentRun) -> Path:
    """The default folder of the next version: a sibling of the parent named ``<stem>-v<N+1>``."""
    match = VERSION_SUFFIX.match(parent.run_dir.name)
    stem = match.group("stem") if match and parent.version > 1 else parent.run_dir.name
    return parent.run_dir.parent / f"{stem}-v{parent.version + 1}"


def check_child_dir(parent: ParentRun, child: Path) -> None:
    """The update's folder may not be the parent's folder, lie inside it, or hold it."""
    child = Path(child).absolute()
    if child == parent.run_dir or parent.run_dir in child.parents or child in parent.run_dir.parents:
        raise ConfigError(f"run_dir {child}: an update writes a new run folder and never touches its parent "
                          f"{parent.run_dir}; choose a folder outside it (default: {next_version_dir(parent)})")


def lineage_chain(run_dir: Path) -> list[dict[str, Any]]:
    """The versions from the first run to ``run_dir``: name, folder, version, strategy and increment data, as far as
    the recorded parents can still be read (a moved or deleted ancestor ends the chain with ``missing``)."""
    chain: list[dict[str, Any]] = []
    current: Path | None = Path(run_dir).absolute()
    seen: set[Path] = set()
    while current is not None and current not in seen:
        seen.add(current)
        path = current / MANIFEST
        if not path.is_file():
            chain.append({"run_dir": str(current), "missing": True})
            break
        manifest = json.loads(path.read_text())
        config = manifest.get("config", {})
        update = config.get("update") or {}
        data = manifest.get("data") or {}
        chain.append({"run_dir": str(current), "version": int(update.get("version", 1)),
                      "strategy": update.get("strategy"), "data_source": (config.get("data") or {}).get("source"),
                      "data_fingerprint": data.get("digest") if isinstance(data, dict) else None,
                      "created": manifest.get("created")})
        current = Path(update["parent"]) if update.get("parent") else None
    return chain[::-1]
