"""The ``export`` stage: ONNX graphs of the student for the target, with an op/dtype inventory."""

from __future__ import annotations

from ..compress.stages import export_graphs
from ..data.calibration import calibration_batches
from ..engine import RunContext, StageResult
from ..models.dtype import load_for_runtime


class ExportStage:
    name = "export"
    description = "export the student to ONNX (full graph, or vision + LM graphs for restricted op sets)"

    def run(self, context: RunContext) -> StageResult:
        from .onnx import export_onnx, read_report

        if "onnx" in context.artifacts:  # the quantize stage already exported (and quantized) for ONNX Runtime
            report = read_report(context.artifacts["onnx"])
            return StageResult(artifacts={"onnx": str(context.artifacts["onnx"])},
                               figures={"reused": "graphs written by the quantize stage", "opset": report.opset,
                                        "mode": report.mode, "graphs": sorted(report.graphs)})
        model, processor, cast_from = load_for_runtime(context)
        example = calibration_batches(context, processor, count=1, batch_size=2)[0]
        report = export_onnx(model, context.work_dir / "onnx", example, split=export_graphs(context) == "split",
                             opset=context.config.export.opset)
        processor.save_pretrained(context.work_dir / "onnx")
        artifacts = {"onnx": "onnx"}
        target = context.target()
        if "deploy" not in context.artifacts and target is not None and target.runtime == "onnxruntime":
            artifacts["deploy"] = "onnx"
        return StageResult(artifacts=artifacts, figures={**report.model_dump(mode="json"), "cast_from": cast_from})
