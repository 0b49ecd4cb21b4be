"""The Python API: compose, validate and run a pipeline without the CLI."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import RunConfig, compose
from .engine import RunContext, run_pipeline
from .plugins import get_manager
from .score.scorecard import Scorecard, load_scorecard

PUBLISHED = ("scorecard.json", "scorecard.md", "scorecard.html")


def validate(overrides: Sequence[str] = (), log: Any = None) -> RunConfig:
    """Compose and validate a configuration, then make the checks ``run`` makes before its first stage
    (:mod:`dsvl_adapt.preflight`: a ``data.source`` folder's every row and image, the LoRA target
    modules and the distill layer map against the model); raises a
    :class:`~dsvl_adapt.errors.DsvlAdaptError` (``ConfigError``, ``DataError``) naming the problem."""
    from .engine import check_pipeline
    from .preflight import preflight

    config, _raw = compose(list(overrides))
    manager = get_manager()
    check_pipeline(config, manager)
    preflight(config, manager.registry, log=log or (lambda message: print(message, file=sys.stderr)), summary=True)
    return config


def execute(config: RunConfig, raw: dict[str, Any], run_dir: Path, log: Any = None) -> RunContext:
    """Run (or resume) the pipeline in ``run_dir`` and publish the scorecard at its top level."""
    from .progress import quiet_libraries

    quiet_libraries()
    log = log or (lambda message: print(message, file=sys.stderr))
    context = run_pipeline(config, raw, run_dir, get_manager(), log=log)
    publish(context)
    return context


def publish(context: RunContext) -> None:
    scorecard = context.artifacts.get("scorecard")
    if scorecard is None:
        return
    for name in PUBLISHED:
        source = scorecard.parent / name
        if source.is_file():
            shutil.copyfile(source, context.run_dir / name)


def run(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> Scorecard | None:
    """Run a pipeline: ``run(["vertical=industrial", "model=reference-tiny"], run_dir="runs/x")``.

    Returns the scorecard when the pipeline has a ``score`` stage. Running again with the same
    ``run_dir`` resumes.
    """
    overrides = list(overrides)
    if run_dir is not None:
        overrides.append(f"run_dir={Path(run_dir)}")
    config, raw = compose(overrides)
    if config.run_dir is None:
        raise ValueError("give run_dir (the folder the run writes to)")
    context = execute(config, raw, config.run_dir)
    path = context.run_dir / "scorecard.json"
    return load_scorecard(path) if path.is_file() else None


def update(run_dir: str | Path, overrides: Sequence[str] = (), new_run_dir: str | Path | None = None) -> Scorecard:
    """Update the finished run ``run_dir`` with new rows (``data.source=NEW_DIR``) as a new version; see
    :func:`dsvl_adapt.continual.update.update` and docs/continual.md."""
    from .continual.update import update as _update

    return _update(run_dir, overrides, new_run_dir)
