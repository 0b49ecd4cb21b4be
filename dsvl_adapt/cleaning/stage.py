"""The ``clean`` stage and the ``dsvl-adapt clean`` command: run the checks on the run's data, write the
report, the cleaned view and the review page; later stages load the data through the view."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ..data.loading import Split
from ..engine import StageResult
from .data import CleaningData
from .runner import REPORT_FILE, CleaningReport, applicable_checks, run_checks, summary_table, write_outputs
from .view import read_decisions

SPLITS = ("train", "validation", "test")


def clean_splits(config: Any, registry: Any, splits: dict[str, Split], out_dir: Path,
                 log: Callable[[str], None] = print) -> tuple[CleaningReport, dict[str, Path]]:
    """Run the registered checks for ``config``'s vertical on ``splits`` and write the outputs to ``out_dir``."""
    settings = config.clean
    check_skips(settings.skip_checks, registry)
    checks = applicable_checks(list(registry.data_checks), config.vertical.name, settings.skip_checks)
    decisions = read_decisions(settings.decisions) if settings.decisions is not None else {}
    data = CleaningData(config.vertical.name, splits, settings, log=log)
    report = run_checks(data, checks, decisions, level2=settings.level2, log=log)
    outputs = write_outputs(report, splits, out_dir, review_rows=settings.review_rows)
    log(summary_table(report))
    log(f"clean: report {outputs['clean_report']}; review page {outputs['review_page']}")
    return report, outputs


def check_skips(skip: list[str], registry: Any) -> None:
    """``clean.skip_checks`` names registered checks only (a typo would silently run the check)."""
    unknown = [name for name in skip if name not in registry.data_checks]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"clean.skip_checks: unknown data check(s) {', '.join(map(repr, unknown))}; registered: "
                          f"{', '.join(registry.data_checks.names())}")


def image_size_of(config: Any) -> int:
    """The image size the run's model reads (generated data is drawn at it)."""
    from ..preflight import _image_size, model_config

    return _image_size(model_config(config))


class CleanStage:
    """Integrity, duplicates, leakage, the vertical's own checks and label errors, before ``finetune``."""

    name = "clean"
    description = "clean the data: integrity, duplicates, leakage, label errors; report, cleaned view, review page"

    def run(self, context: Any) -> StageResult:
        size = image_size_of(context.config)
        splits = {name: context.split(name, size) for name in SPLITS}
        report, outputs = clean_splits(context.config, context.registry, splits, context.work_dir,
                                       log=lambda message: print(message, file=sys.stderr))
        return StageResult({key: str(path) for key, path in outputs.items()}, {"data": report.figures()})


def clean_dataset(overrides: list[str], out_dir: Path | None = None,
                  log: Callable[[str], None] = print) -> tuple[CleaningReport, dict[str, Path]]:
    """``dsvl-adapt clean``: compose the config from ``overrides``, load every split the run would use (rows
    that cannot be read are reported, not fatal) and clean them into ``out_dir`` (default
    ``clean/<vertical>-<time>``, a new folder: nothing written before is replaced)."""
    import time

    from ..config import compose
    from ..data.loading import load_configured_split
    from ..engine import check_pipeline
    from ..plugins import get_manager

    config, _raw = compose(overrides)
    manager = get_manager()
    check_pipeline(config, manager)
    check_skips(config.clean.skip_checks, manager.registry)
    config.data.on_bad_row = "skip"
    size = image_size_of(config)
    splits = {name: load_configured_split(config, manager.registry, name, size) for name in SPLITS}
    if out_dir is None:
        out_dir = Path("clean") / f"{config.vertical.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(out_dir) / REPORT_FILE).exists():
        from ..errors import ConfigError

        raise ConfigError(f"{out_dir} already holds a clean report ({REPORT_FILE}); give another --out (the review "
                          "decisions you exported are applied with clean.decisions=FILE), or remove the folder")
    return clean_splits(config, manager.registry, splits, Path(out_dir), log=log)
