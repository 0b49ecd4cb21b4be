"""dsvl-adapt: adapt DeepSeek-VL models to an industry vertical and ready them for a hardware target.

The 3-2-1 pipeline: three compression layers (structural pruning, weight pruning,
quantization), two knowledge-injection stages (LoRA fine-tune into a teacher, distillation
into the compressed student) and one scorecard.
"""

from __future__ import annotations

from typing import Any

from .plugins import hookimpl

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """Run a pipeline; see :func:`dsvl_adapt.api.run`."""
    from .api import run as _run

    return _run(*args, **kwargs)


def update(*args: Any, **kwargs: Any) -> Any:
    """Update a finished run with new rows as a new version; see :func:`dsvl_adapt.continual.update.update`."""
    from .continual.update import update as _update

    return _update(*args, **kwargs)


def rescore(*args: Any, **kwargs: Any) -> Any:
    """Score a version's deployed artifact on other test data; see :func:`dsvl_adapt.continual.update.rescore`."""
    from .continual.update import rescore as _rescore

    return _rescore(*args, **kwargs)


def load(directory: Any, **kwargs: Any) -> Any:
    """Load a checkpoint directory the SDK wrote (pruned or not) exactly: ``(model, processor)``."""
    from .models.checkpoint import load_checkpoint

    return load_checkpoint(directory, **kwargs)


def load_scorecard(path: Any) -> Any:
    """Read a ``scorecard.json`` or a run directory's scorecard."""
    from .score.scorecard import load_scorecard as _load

    return _load(path)


__all__ = ["__version__", "hookimpl", "load", "load_scorecard", "rescore", "run", "update"]
