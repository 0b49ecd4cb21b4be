"""Pipeline stages of the compression layers: they orchestrate the algorithms in this package.

``prune.structural`` (torch-pruning: channels and heads), ``prune.weights`` (zeros: magnitude,
Wanda, 2:4). Each loads the current student, compresses it, checks that the saved directory
reloads to the same outputs, and records figures for the scorecard. ``quantize`` hands the student
to the target's runtime backend (found in the registry by name; no backend module is imported
here), which exports and quantizes it into a deployable artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..errors import ConfigError, StageError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.dtype import load_for_runtime
from ..models.figures import model_figures
from ..quantization import backend_name, config_for_backend
from ..runtimes.contract import Artifact, PrepareRequest, RuntimeBackend
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


def target_backend(context: RunContext) -> str:
    """The name of the runtime backend the quantize and export stages prepare for: the target's runtime when
    ``quantize.follow_target`` and a backend of that name is registered, else ``quantize.backend`` (a target may
    name a runtime that has no backend installed here, e.g. ``tensorrt``: its fit is then estimated)."""
    cfg = context.config.quantize
    target = context.target()
    return backend_name(cfg, target.runtime if target else None, context.registry.runtimes, cfg.follow_target)


def runtime_backend(context: RunContext) -> RuntimeBackend:
    """The registered backend of :func:`target_backend`, checked to be usable here (else a ``ConfigError`` with
    the backend's reason, e.g. its install command)."""
    backend = context.registry.runtimes.get(target_backend(context))
    reason = backend.available()
    if reason is not None:
        raise ConfigError(f"runtime backend {backend.name!r} is not available here: {reason}")
    return backend


def prepare_options(context: RunContext) -> dict[str, Any]:
    """The export options of a :class:`PrepareRequest` (``EXPORT_OPTIONS``), from the config and the target."""
    target = context.target()
    return {"opset": context.config.export.opset, "graphs": context.config.export.graphs,
            "supported_ops": list(target.supported_ops) if target and target.supported_ops is not None else None,
            "precision": context.config.quantize.precision, "allow_pickle": context.config.model.allow_pickle,
            "trust_remote_code": context.config.model.trust_remote_code}


def stage_artifacts(context: RunContext, artifact: Artifact) -> dict[str, str]:
    """``deploy`` and the artifact's related directories (``onnx`` ...), relative to the stage's directory."""
    def name(path: Path) -> str:
        path = Path(path)
        return path.name if path.parent.resolve() == context.work_dir.resolve() else str(path)

    return {"deploy": name(artifact.directory), **{kind: name(path) for kind, path in artifact.related.items()}}


class QuantizeStage:
    name = "quantize"
    description = ("quantize the student for the target's runtime backend (built in: PyTorch int8, ONNX Runtime "
                   "int8/int4, OpenVINO int8/int4 with NNCF)")

    def run(self, context: RunContext) -> StageResult:
        backend = runtime_backend(context)  # before any work: a missing extra is a setup error with its install command
        cfg = config_for_backend(context.config.quantize, backend)  # mode/bits checked against that backend
        model, processor, cast_from = load_for_runtime(context)
        calibration = calibration_batches(context, processor, count=cfg.calibration_batches,
                                          batch_size=context.config.prune.calibration_batch_size)
        plan = cfg.to_plan()
        request = PrepareRequest(checkpoint_dir=context.artifact("student"),
                                 out_dir=context.work_dir / f"{backend.name}-{plan.weights}", plan=plan,
                                 calibration=calibration, options=prepare_options(context), model=model,
                                 scratch_dir=context.work_dir)
        try:
            artifact = backend.prepare(request)
        except ValueError as e:  # e.g. the saved artifact does not reload to the same logits
            raise StageError(f"runtime backend {backend.name!r} could not prepare the student: {e}") from e
        figures = {"backend": backend.name, **artifact.report, "cast_from": cast_from}
        return StageResult(artifacts=stage_artifacts(context, artifact), figures=figures)
