"""Pipeline stages of the compression layers: they orchestrate the algorithms in this package.

``prune.structural`` (torch-pruning: channels and heads), ``prune.weights`` (zeros: magnitude,
Wanda, 2:4). Each loads the current student, compresses it, checks that the saved directory
reloads to the same outputs, and records figures for the scorecard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..errors import StageError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.figures import model_figures
from ..score.quick import validation_accuracy


def check_reload(model: torch.nn.Module, directory: Path, batch: dict[str, torch.Tensor],
                 tolerance: float = 1e-5) -> float:
    """Reload ``directory`` and compare logits with the in-memory model; returns the max abs difference."""
    reloaded, _ = load_checkpoint(directory)
    model.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        expected = model(**inputs, use_cache=False).logits
        actual = reloaded(**inputs, use_cache=False).logits
    if expected.shape != actual.shape:
        raise StageError(f"{directory} reloads with logits of shape {tuple(actual.shape)}, expected "
                         f"{tuple(expected.shape)}")
    diff = float((expected - actual).abs().max())
    if diff > tolerance:
        raise StageError(f"{directory} does not reload to the same outputs (max abs diff {diff:.3g} > {tolerance})")
    return diff


class StructuralPruneStage:
    name = "prune.structural"
    description = "structural pruning with torch-pruning: LM MLP channels and heads (GQA-aware), vision tower"

    def run(self, context: RunContext) -> StageResult:
        from .structural import prune_structural

        cfg = context.config.prune
        model, processor = context.load_model("student")
        if cfg.structural.is_noop():
            return StageResult(artifacts={"student": str(context.artifact("student"))},
                               figures={"skipped": "all structural ratios are 0"})
        calibration = None
        if cfg.structural.importance != "magnitude":
            calibration = calibration_batches(context, processor, count=cfg.structural.calibration_batches,
                                              batch_size=cfg.calibration_batch_size)
        report = prune_structural(model, cfg.structural, calibration)
        directory = context.work_dir / "student"
        save_checkpoint(model, processor, directory, role="student", stage=self.name)
        probe = calibration[0] if calibration else calibration_batches(context, processor, count=1, batch_size=2)[0]
        diff = check_reload(model, directory, probe)
        return StageResult(artifacts={"student": "student"}, figures={
            **report.model_dump(mode="json"), "reload_max_abs_diff": diff,
            "validation_accuracy": validation_accuracy(context, model, processor),
            **model_figures(model, directory),
        })


class WeightPruneStage:
    name = "prune.weights"
    description = "weight pruning: unstructured magnitude (layer/global), Wanda, or 2:4; masks made permanent"

    def run(self, context: RunContext) -> StageResult:
        from .sparse_format import save_sparse
        from .weights import prune_weights

        cfg = context.config.prune
        if cfg.weights.sparsity == 0:
            return StageResult(artifacts={"student": str(context.artifact("student"))},
                               figures={"skipped": "prune.weights.sparsity is 0"})
        model, processor = context.load_model("student")
        calibration = None
        if cfg.weights.ranking == "wanda":
            calibration = calibration_batches(context, processor, count=cfg.weights.calibration_batches,
                                              batch_size=cfg.calibration_batch_size)
        report = prune_weights(model, cfg.weights, calibration)
        directory = context.work_dir / "student"
        save_checkpoint(model, processor, directory, role="student", stage=self.name)
        save_sparse(model, context.work_dir / "student-sparse")
        probe = calibration[0] if calibration else calibration_batches(context, processor, count=1, batch_size=2)[0]
        diff = check_reload(model, directory, probe)
        return StageResult(artifacts={"student": "student", "student_sparse": "student-sparse"}, figures={
            **report.model_dump(mode="json"), "reload_max_abs_diff": diff,
            "sparse_size_bytes": sum(p.stat().st_size for p in (context.work_dir / "student-sparse").iterdir()),
            "validation_accuracy": validation_accuracy(context, model, processor),
            **model_figures(model, directory),
        })
