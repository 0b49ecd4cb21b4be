"""Pipeline stages of the compression layers: they orchestrate the algorithms in this package.

``prune.structural`` (torch-pruning: channels and heads), ``prune.weights`` (zeros: magnitude,
Wanda, 2:4). Each loads the current student, compresses it, checks that the saved directory
reloads to the same outputs, and records figures for the scorecard. ``quantize`` hands the student
to the target's runtime backend (found in the registry by name; no backend module is imported
here), which exports and quantizes it into a deployable artifact.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..errors import ConfigError, StageError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.dtype import compute_dtype, load_for_runtime, model_dtype
from ..models.figures import model_figures
from ..quantization import backend_name, config_for_backend
from ..runtimes.contract import Artifact, PrepareRequest, RuntimeBackend
from ..score.quick import validation_accuracy


def reference_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits ``model`` gives for ``batch`` (labels ignored), in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits


def check_reload(expected: torch.Tensor, directory: Path, batch: dict[str, torch.Tensor], *,
                 dtype: torch.dtype = torch.float32, tolerance: float = 1e-5) -> float:
    """Reload ``directory`` (computing in ``dtype``) and compare its logits with ``expected``, those of the model
    that was saved, to ``tolerance`` relative to the largest logit; returns the max abs difference. The caller
    frees its model first: at the 1.3B dimensions two models side by side are what set the peak memory."""
    reloaded, _ = load_checkpoint(directory)
    actual = reference_logits(reloaded.to(dtype), batch)
    del reloaded
    if expected.shape != actual.shape:
        raise StageError(f"{directory} reloads with logits of shape {tuple(actual.shape)}, expected "
                         f"{tuple(expected.shape)}")
    diff = float((expected - actual).abs().max())
    allowed = tolerance * max(1.0, float(expected.abs().max()))  # relative: GEMM paths differ with memory layout
    if diff > allowed:
        raise StageError(f"{directory} does not reload to the same outputs (max abs diff {diff:.3g} > {allowed:.3g})")
    return diff


def _save_student(context: RunContext, model: torch.nn.Module, processor: Any, directory: Path, *,
                  stored: torch.dtype, probe: dict[str, torch.Tensor],
                  stage: str) -> tuple[dict[str, Any], torch.Tensor]:
    """Score ``model`` on the validation split and on ``probe`` in the dtype it computes in, then save it in the
    run's ``stored`` dtype. Returns the stage's figures and the probe's logits for :func:`check_reload`, which the
    caller runs once it has dropped its model. (Pruning slices and zeroes weights, so weights loaded in bf16 and
    pruned in fp32 are still exactly bf16 values: the saved model computes what was scored.)"""
    expected = reference_logits(model, probe)
    accuracy = validation_accuracy(context, model, processor)
    save_checkpoint(model.to(stored), processor, directory, role="student", stage=stage)
    return {**model_figures(model, directory), "validation_accuracy": accuracy}, expected


class StructuralPruneStage:
    name = "prune.structural"
    description = "structural pruning with torch-pruning: LM MLP channels and heads (GQA-aware), vision tower"

    def run(self, context: RunContext) -> StageResult:
        from .structural import prune_structural

        cfg = context.config.prune
        if cfg.structural.is_noop():
            return StageResult(artifacts={"student": str(context.artifact("student"))},
                               figures={"skipped": "all structural ratios are 0"})
        model, processor = context.load_model("student")
        stored = model_dtype(model)
        work = compute_dtype(stored, device=context.config.device)
        model.to(work)  # traced and scored at the CPU's speed, saved in the run's dtype
        calibration = None
        if cfg.structural.importance != "magnitude":
            calibration = calibration_batches(context, processor, count=cfg.structural.calibration_batches,
                                              batch_size=cfg.calibration_batch_size)
        report = prune_structural(model, cfg.structural, calibration)
        probe = calibration[0] if calibration else calibration_batches(context, processor, count=1, batch_size=2)[0]
        del calibration
        directory = context.work_dir / "student"
        figures, expected = _save_student(context, model, processor, directory, stored=stored, probe=probe,
                                          stage=self.name)
        del model
        gc.collect()
        figures["reload_max_abs_diff"] = check_reload(expected, directory, probe, dtype=work)
        return StageResult(artifacts={"student": "student"}, figures={**report.model_dump(mode="json"), **figures})


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
        stored = model_dtype(model)
        work = compute_dtype(stored, device=context.config.device)
        model.to(work)
        calibration = None
        if cfg.weights.ranking == "wanda":
            calibration = calibration_batches(context, processor, count=cfg.weights.calibration_batches,
                                              batch_size=cfg.calibration_batch_size)
        report = prune_weights(model, cfg.weights, calibration)
        save_sparse(model.to(stored), context.work_dir / "student-sparse")
        probe = calibration[0] if calibration else calibration_batches(context, processor, count=1, batch_size=2)[0]
        del calibration
        directory = context.work_dir / "student"
        figures, expected = _save_student(context, model, processor, directory, stored=stored, probe=probe,
                                          stage=self.name)
        del model
        gc.collect()
        figures["reload_max_abs_diff"] = check_reload(expected, directory, probe, dtype=work)
        sparse_bytes = sum(p.stat().st_size for p in (context.work_dir / "student-sparse").iterdir())
        return StageResult(artifacts={"student": "student", "student_sparse": "student-sparse"},
                           figures={**report.model_dump(mode="json"), **figures, "sparse_size_bytes": sparse_bytes})


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
            "precision": context.config.quantize.inference_precision, "allow_pickle": context.config.model.allow_pickle,
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

        def request(config: Any, out_dir: Path, *, last_use: bool = False) -> PrepareRequest:
            return PrepareRequest(checkpoint_dir=context.artifact("student"), out_dir=out_dir, plan=config.to_plan(),
                                  calibration=calibration, options=prepare_options(context), model=model,
                                  scratch_dir=context.work_dir, release_model=last_use)

        try:
            if cfg.precision == "mixed":  # per-layer int4/int8/fp32 searched against the retention objective
                from ..lowbit.stage import run_mixed

                artifact, plan_figures = run_mixed(context, cfg, backend=backend, model=model, processor=processor,
                                                   calibration=calibration, request=request)
            else:
                artifact = backend.prepare(request(cfg, context.work_dir / f"{backend.name}-{plan.weights}",
                                                   last_use=True))  # its weights may go before the runtime's load
                plan_figures = {}
                if cfg.bits == 4:  # the per-layer plan next to the artifact: which layer holds which precision
                    from ..lowbit.stage import plan_figures as int4_plan_figures

                    plan_figures = int4_plan_figures(Path(artifact.directory), "int4")
        except ValueError as e:  # e.g. the saved artifact does not reload to the same logits
            raise StageError(f"runtime backend {backend.name!r} could not prepare the student: {e}") from e
        figures = {"backend": backend.name, **artifact.report, "cast_from": cast_from, **plan_figures}
        return StageResult(artifacts=stage_artifacts(context, artifact), figures=figures)
