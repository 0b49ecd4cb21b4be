"""What the quantize stage calls for ``quantize.precision=int4`` and ``mixed``: the plan next to the artifact and its
figures, the teacher's reference metric, the primary metric through a deployed artifact, and the mixed search.

Kept apart from the stage class so that a runtime backend's ``prepare`` can call the same functions.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from .mixed import search_mixed_plan
from .plan import PLAN_FILE, summary_line, write_plan
from .sensitivity import layer_sensitivity

__all__ = ["DEFAULT_MIN_RETENTION", "plan_figures", "run_mixed", "runtime_metric", "teacher_reference"]

#: the retention target when the vertical sets no ``objectives.min_retention`` (the issue's bar)
DEFAULT_MIN_RETENTION = 0.95


def _say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def plan_figures(directory: Path, precision: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``precision_plan.json`` in ``directory`` and return the stage figures that summarise it."""
    plan = write_plan(directory, extra=extra)
    return {"precision_plan": {"precision": precision, "summary": summary_line(plan), "counts": plan["counts"],
                               "bytes_by_precision": plan["bytes_by_precision"], "file": f"{directory.name}/"
                               f"{PLAN_FILE}", **({"search": extra["search"]} if extra and "search" in extra else {})}}


def runtime_metric(context: Any, backend: Any, directory: Path, processor: Any, *, threads: int | None = None) -> float:
    """The vertical's primary metric on the validation split, by greedy generation through the artifact in
    ``directory``, loaded by its runtime ``backend``: what a deployment would answer."""
    from ..data.batches import BatchEncoder
    from ..score.stage import compute_metrics

    model = backend.load(directory, threads=threads)
    encoder = BatchEncoder(processor, context.prompt)
    rows = context.split("validation", processor.image_processor.size["height"]).rows
    items = encoder.encode_all(rows)
    size = context.config.score.runtime_batch_size  # as the score stage answers through a runtime
    answers: list[str] = []
    for start in range(0, len(items), size):
        batch = encoder.generation_batch(items[start: start + size])
        new = model.generate(batch, context.vertical.max_answer_tokens, eos_token_id=encoder.eos_id,
                             pad_token_id=encoder.pad_id)
        answers += encoder.decode(torch.as_tensor(new))
    primary = context.registry.metrics.get(context.vertical.primary_metric)
    return float(compute_metrics([primary], answers, rows)[primary.name])


def teacher_reference(context: Any, fallback_model: Any, processor: Any) -> tuple[float, str]:
    """(metric, which model): the teacher's validation metric, the denominator of retention; the fp32 model being
    quantized when the pipeline has no teacher."""
    from ..score.quick import validation_accuracy

    if "teacher" not in context.artifacts:
        return validation_accuracy(context, fallback_model, processor), "fp32 student (no teacher in this pipeline)"
    teacher, teacher_processor = context.load_model("teacher")
    return validation_accuracy(context, teacher, teacher_processor), "teacher"


def run_mixed(context: Any, cfg: Any, *, backend: Any, model: torch.nn.Module, processor: Any,
              calibration: list[dict[str, torch.Tensor]], request: Callable[[Any, Path], Any],
              max_evaluations: int = 10) -> tuple[Any, dict[str, Any]]:
    """Sensitivity on the calibration rows, then the search, each candidate prepared by the runtime ``backend``
    (``request(config, out_dir)`` -> a PrepareRequest) and measured through it; the chosen artifact ends in
    ``<work>/<backend>-mixed`` with its ``precision_plan.json``. Returns (the backend's Artifact, the figures)."""
    sensitivities = layer_sensitivity(model, calibration[: cfg.calibration_batches],
                                      include=lambda name: not cfg.skips(name), group_size=cfg.block_size,
                                      symmetric=cfg.symmetric)
    reference, reference_of = teacher_reference(context, model, processor)
    target = context.vertical.objectives.min_retention
    target_source = "objectives.min_retention"
    if target is None:
        target, target_source = DEFAULT_MIN_RETENTION, "default (the vertical sets no objectives.min_retention)"
    candidates = context.work_dir / "mixed-candidates"
    counter = iter(range(10_000))
    artifacts: dict[Path, Any] = {}

    def build(per_layer: dict[str, str]) -> Path:
        directory = candidates / f"plan-{next(counter):02d}"
        artifact = backend.prepare(request(cfg.model_copy(update={"per_layer": per_layer}), directory))
        artifacts[Path(artifact.directory)] = artifact
        return Path(artifact.directory)

    def size(directory: Path) -> int:
        inventory = backend.inventory(directory)
        return inventory.model_bytes or inventory.total_bytes

    result = search_mixed_plan(sensitivities, build=build, size=size, reference=reference, min_retention=target,
                               evaluate=lambda d: runtime_metric(context, backend, d, processor),
                               max_evaluations=max_evaluations, log=_say)
    chosen = artifacts[Path(result.chosen.directory)]
    final = context.work_dir / f"{backend.name}-mixed"
    if final.exists():
        shutil.rmtree(final)
    shutil.move(str(result.chosen.directory), str(final))
    shutil.rmtree(candidates, ignore_errors=True)
    processor.save_pretrained(final)
    search = {**result.as_dict(), "reference_of": reference_of, "min_retention_source": target_source}
    figures = plan_figures(final, "mixed", extra={
        "search": search, "sensitivity": [s.as_dict() for s in sensitivities],
        "sensitivity_measure": "relative output error ||X dW^T||^2 / ||X W^T||^2 on calibration rows"})
    moved = {kind: (final if Path(path) == Path(result.chosen.directory) else path)
             for kind, path in chosen.related.items()}
    return replace(chosen, directory=final, related=moved), {**figures, "precision": "mixed",
                                                             "size_bytes": result.chosen.bytes}
