"""Pipeline stages of the compression layers: they orchestrate the algorithms in this package.

``prune.structural`` (torch-pruning: channels and heads), ``prune.weights`` (zeros: magnitude,
Wanda, 2:4). Each loads the current student, compresses it, checks that the saved directory
reloads to the same outputs, and records figures for the scorecard.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..errors import StageError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.dtype import compute_dtype, load_for_runtime, model_dtype
from ..models.figures import model_figures
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
    """The quantization backend: the target's runtime when it is one we quantize for, else the config's."""
    cfg = context.config.quantize
    target = context.target()
    if cfg.follow_target and target is not None and target.runtime in ("torch", "onnxruntime", "openvino"):
        return target.runtime
    return cfg.backend


def export_graphs(context: RunContext, *, table_int8: bool = False) -> str:
    """``full`` or ``split`` for ``export.graphs=auto``: split when the target's op list lacks what the full graph
    needs (NonZero, ScatterND), or when the token-embedding table is to be int8 (``table_int8``): only a split
    export keeps the table outside the graphs, where it is quantized per row or read from the int8 lm_head."""
    choice = context.config.export.graphs
    if choice != "auto":
        return choice
    if table_int8:
        return "split"
    target = context.target()
    if target is not None and target.supported_ops is not None:
        if not {"NonZero", "ScatterND"} <= set(target.supported_ops):
            return "split"
    return "full"


class QuantizeStage:
    name = "quantize"
    description = ("quantize the student for the target's runtime: PyTorch int8, ONNX Runtime int8/int4, or "
                   "OpenVINO int8/int4 (NNCF)")

    def run(self, context: RunContext) -> StageResult:
        from .quantize import load_quantized, quantize_onnx, quantize_torch_dynamic, save_quantized

        backend = target_backend(context)
        if backend == "openvino":  # before any work: a missing extra is a setup error with its install command
            from ..runtimes.openvino import require_openvino

            require_openvino()
        cfg = context.config.quantize.model_copy(update={"backend": backend})
        cfg = type(cfg).model_validate(cfg.model_dump())  # mode/bits checked against the chosen backend
        model, processor, cast_from = load_for_runtime(context)
        calibration = calibration_batches(context, processor, count=cfg.calibration_batches,
                                          batch_size=context.config.prune.calibration_batch_size)
        if backend == "torch":
            quantized = quantize_torch_dynamic(model, cfg)
            directory = context.work_dir / "student-int8"
            save_quantized(quantized, directory, cfg)
            processor.save_pretrained(directory)
            reloaded = load_quantized(directory)
            probe = {k: v for k, v in calibration[0].items() if k != "labels"}
            with torch.no_grad():
                diff = float((quantized(**probe).logits - reloaded(**probe).logits).abs().max())
            if diff != 0.0:
                raise StageError(f"{directory} does not reload to identical outputs (max abs diff {diff:.3g})")
            figures = {"backend": backend, "bits": cfg.bits, "mode": cfg.mode, "reload_max_abs_diff": diff,
                       "size_bytes": _dir_bytes(directory), "cast_from": cast_from}
            return StageResult(artifacts={"deploy": "student-int8"}, figures=figures)
        from ..export.onnx import export_onnx

        fp32_dir = context.work_dir / "onnx-fp32"
        split = export_graphs(context, table_int8=cfg.embedding_dtype == "int8") == "split"
        export = export_onnx(model, fp32_dir, calibration[0], split=split, opset=context.config.export.opset)
        processor.save_pretrained(fp32_dir)
        if backend == "openvino":
            return self._openvino(context, cfg, fp32_dir, export, calibration, processor, cast_from)
        directory = context.work_dir / "onnx-int8" if cfg.bits == 8 else context.work_dir / "onnx-int4"
        report = quantize_onnx(fp32_dir, directory, cfg, calibration)
        processor.save_pretrained(directory)
        figures = {"backend": backend, "bits": cfg.bits, "mode": cfg.mode, "export": export.model_dump(mode="json"),
                   **report.model_dump(mode="json"), "size_bytes": report.bytes, "cast_from": cast_from}
        return StageResult(artifacts={"deploy": directory.name, "onnx": directory.name}, figures=figures)

    @staticmethod
    def _openvino(context: RunContext, cfg, fp32_dir: Path, export, calibration, processor,
                  cast_from: str | None) -> StageResult:
        """ONNX fp32 export -> OpenVINO IR -> NNCF compression, at the precision the config pins."""
        from .quantize import quantize_openvino

        precision = context.config.quantize.precision
        directory = context.work_dir / f"openvino-int{cfg.bits}"
        try:
            report = quantize_openvino(fp32_dir, directory, cfg, calibration, precision=precision)
        except ValueError as e:  # e.g. the saved IR does not reload to the same logits
            raise StageError(f"OpenVINO conversion failed: {e}") from e
        processor.save_pretrained(directory)
        figures = {"backend": "openvino", "bits": cfg.bits, "mode": cfg.mode, "precision": precision,
                   "label": report.label, "export": export.model_dump(mode="json"),
                   "openvino": report.model_dump(mode="json"), "size_bytes": report.bytes,
                   "reload_max_abs_diff": report.reload_max_abs_diff, "max_abs_diff": report.max_abs_diff,
                   "top1_agreement": report.top1_agreement, "cast_from": cast_from}
        # deploy: the IR; onnx: the fp32 graphs it was converted from (the export stage reuses them, and the
        # scorecard's opset/op checks read their inventory).
        return StageResult(artifacts={"deploy": directory.name, "openvino": directory.name, "onnx": fp32_dir.name},
                           figures=figures)


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
