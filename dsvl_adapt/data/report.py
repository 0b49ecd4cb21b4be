"""What a run's data is, read once per process: splits (files, rows used of rows available), the
content fingerprint, and the test/train overlap, refused past ``data.max_overlap``.

The preflight builds it for a user's folder before any stage runs; the load stage records its
figures (``figures["data"]``: ``splits``, ``fingerprint``, ``test_train_overlap`` …), building it
there for generated data, which is too slow to generate twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .fingerprint import DataFingerprint, file_sha256, folder_fingerprint, generated_fingerprint
from .leakage import Overlap, refuse_overlap, test_train_overlap
from .loading import Split

SPLITS = ("train", "validation", "test")
_REPORTS: dict[str, "DataReport"] = {}


@dataclass
class DataReport:
    """The facts of a run's data; ``figures()`` is what the load stage records under ``data``."""

    fingerprint: DataFingerprint
    splits: dict[str, dict[str, Any]]
    overlap: Overlap
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "source": self.fingerprint.source,
            "fingerprint": self.fingerprint.digest,
            "splits": self.splits,
            "test_train_overlap": self.overlap.count,
            "test_train_overlap_examples": self.overlap.examples,
        }


def data_fingerprint(config: Any, registry: Any, splits: dict[str, Split] | None = None) -> DataFingerprint:
    """The fingerprint of ``config``'s data; a folder's includes the images ``splits`` referenced."""
    data = config.data
    decisions = getattr(getattr(config, "clean", None), "decisions", None)
    if data.source is None:
        dataset = registry.vertical(config.vertical.name).dataset
        sizes = {name: getattr(data, f"{name}_size") for name in SPLITS}
        extra = {"decisions": file_sha256(Path(decisions))} if decisions is not None else {}
        return generated_fingerprint(dataset, config.seed, sizes, **extra)
    referenced = set().union(*(split.image_files for split in (splits or {}).values()))
    if decisions is not None:  # a review decisions file changes the rows as much as the folder does
        referenced.add(Path(decisions))
    return folder_fingerprint(data.source, data.allow_outside, referenced)


def data_report(config: Any, registry: Any, load: Callable[[str], Split],
                log: Callable[[str], None] | None = None, *, reuse: bool = False) -> DataReport:
    """Load every split with ``load(name)``, check the test/train overlap and describe the data.

    The report is kept for this process; ``reuse=True`` returns the one made last for the same data
    settings (the load stage reuses the preflight's, made seconds before, instead of reading the
    folder again). Sizes that sample a user's split, or exceed it, are said through ``log``.
    """
    key = _memo_key(config, registry)
    if reuse and key in _REPORTS:
        return _REPORTS[key]
    loaded = {name: load(name) for name in SPLITS}
    overlap = test_train_overlap(loaded["train"], loaded["test"])
    if "clean" not in config.pipeline.stages:  # the clean stage drops the train copies of test rows
        refuse_overlap(overlap, config.data.max_overlap, len(loaded["test"].rows))
    report = DataReport(
        fingerprint=data_fingerprint(config, registry, loaded),
        splits={name: _split_facts(split, config.data.source) for name, split in loaded.items()},
        overlap=overlap,
        notes=_size_notes(loaded, config.data),
    )
    if report.notes and log is not None:
        log("data: " + "; ".join(report.notes))
    _REPORTS[key] = report
    return report


def _split_facts(split: Split, source: Path | None) -> dict[str, Any]:
    files = [_display(file, source) for file in split.files]
    return {"file": files[0] if len(files) == 1 else files or None, "rows": len(split.rows),
            "available": split.available, "skipped": len(split.skipped)}


def _size_notes(splits: dict[str, Split], data: Any) -> list[str]:
    if data.source is None:
        return []
    notes = []
    for name, split in splits.items():
        size = getattr(data, f"{name}_size")
        file = ", ".join(_display(f, data.source) for f in split.files) or name
        if split.sampled:
            notes.append(f"{name}: a seeded sample of {len(split.rows)} of the {split.available} rows of {file} "
                         f"(data.{name}_size={size})")
        elif split.available < size:
            notes.append(f"{name}: {file} holds {split.available} usable rows, fewer than data.{name}_size={size}; "
                         "all are used")
    return notes


def _display(file: str, source: Path | None) -> str:
    if source is None:
        return file
    path, root = Path(file), Path(source)
    for base in (root, root.resolve()):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return file


def _memo_key(config: Any, registry: Any) -> str:
    return json.dumps({"data": config.data.model_dump(mode="json"), "seed": config.seed,
                       "dataset": registry.vertical(config.vertical.name).dataset}, sort_keys=True)


def data_figures(context: Any, image_size: int) -> dict[str, Any]:
    """The load stage's ``data`` figures: the preflight's report for a user's folder (read once), or,
    for generated data, one made from the run's own splits (which later stages then reuse)."""
    config = context.config
    report = data_report(config, context.registry, lambda name: context.split(name, image_size),
                         reuse=config.data.source is not None)
    return report.figures()
