"""The ``export`` stage: the student as the target's runtime backend deploys it, and ONNX graphs with their op/dtype
inventory for the scorecard's opset and op checks.

The backend is found in the registry by the target's runtime name (:func:`dsvl_adapt.compress.stages.target_backend`);
no backend module is imported here. A deployable artifact is prepared when the target's runtime is that backend and
neither the quantize stage made one nor the student's checkpoint already is one (the PyTorch backend's format).
"""

from __future__ import annotations

from typing import Any

from ..compress.stages import prepare_options, runtime_backend, stage_artifacts
from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..errors import StageError
from ..models.dtype import load_for_runtime
from ..runtimes.contract import PrepareRequest, QuantizationPlan


class ExportStage:
    name = "export"
    description = ("export the student for the target's runtime backend (ONNX graphs, OpenVINO IR ...), with an "
                   "ONNX op/dtype inventory")

    def run(self, context: RunContext) -> StageResult:
        from .onnx import choose_graphs, export_onnx, read_report

        if "onnx" in context.artifacts:  # the quantize stage already exported (and quantized)
            report = read_report(context.artifacts["onnx"])
            return StageResult(artifacts={"onnx": str(context.artifacts["onnx"])},
                               figures={"reused": "graphs written by the quantize stage", "opset": report.opset,
                                        "mode": report.mode, "graphs": sorted(report.graphs)})
        backend = runtime_backend(context)
        student = context.artifact("student")
        model, processor, cast_from = load_for_runtime(context)
        example = calibration_batches(context, processor, count=1, batch_size=2)
        artifacts: dict[str, str] = {}
        figures: dict[str, Any] = {"backend": backend.name, "cast_from": cast_from}
        target = context.target()
        serves_target = target is not None and target.runtime == backend.name
        if serves_target and "deploy" not in context.artifacts and not backend.owns(student):
            request = PrepareRequest(checkpoint_dir=student, out_dir=context.work_dir / backend.name,
                                     plan=QuantizationPlan(), calibration=example, options=prepare_options(context),
                                     model=model, scratch_dir=context.work_dir, release_model=True)
            try:
                artifact = backend.prepare(request)
            except ValueError as e:
                raise StageError(f"runtime backend {backend.name!r} could not prepare the student: {e}") from e
            artifacts.update(stage_artifacts(context, artifact))
            figures.update({**artifact.report, "cast_from": cast_from})
        if "onnx" not in artifacts:  # the scorecard's opset/op checks read an ONNX export of the student
            if any(p.is_meta for p in model.parameters()):  # handed to the backend, which freed its weights
                model, processor, _ = load_for_runtime(context)
            options = prepare_options(context)
            split = choose_graphs(options["graphs"], options["supported_ops"]) == "split"
            report = export_onnx(model, context.work_dir / "onnx", example[0], split=split, opset=options["opset"],
                                 release_model=True)  # the stage's last use of it: the check then holds one copy
            del model
            processor.save_pretrained(context.work_dir / "onnx")
            artifacts["onnx"] = "onnx"
            figures = {**report.model_dump(mode="json"), **figures}
        return StageResult(artifacts=artifacts, figures=figures)
