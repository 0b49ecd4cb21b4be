"""The OpenVINO backend (``openvino``): OpenVINO IR on the CPU, fp32 or compressed with NNCF (int8/int4).

``prepare`` exports the checkpoint to ONNX (:func:`dsvl_adapt.export.onnx.export_onnx`, into
``scratch_dir/onnx-fp32``, which the scorecard's op checks then read) and converts it with
:func:`dsvl_adapt.runtimes.openvino.convert_export`, compressing per the plan; the inference precision
(``options["precision"]``: f32 | bf16) is pinned in ``openvino.json``. ``load`` gives an
:class:`~dsvl_adapt.runtimes.openvino.OpenVinoModel`. Its artifacts hold ``openvino.json``.
"""

from __future__ import annotations

from pathlib import Path

from ...quantization import SUPPORTED, QuantizeConfig
from ..contract import Artifact, Capabilities, GenerativeModel, Inventory, PrepareRequest
from . import file_inventory, has_kv_cache, load_fp32, missing_modules, prepared_batches, scratch_directory

__all__ = ["OpenVinoBackend"]

INSTALL_HINT = 'pip install "dsvl-adapt[openvino]"'


class OpenVinoBackend:
    """OpenVINO's CPU plugin on IR converted from the ONNX export: fp32, int8 (weight-only, dynamic, static) or int4
    (weight-only, dynamic), at a pinned inference precision."""

    name = "openvino"
    description = "OpenVINO (CPU): IR from the ONNX export, NNCF int8/int4 weight compression or int8 PTQ"

    def available(self) -> str | None:
        missing = missing_modules("openvino", "nncf", "onnxruntime", "onnx")
        if missing:
            return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
        return None

    def capabilities(self) -> Capabilities:
        from ..openvino import OpenVinoModel

        return Capabilities(weight_formats=("fp32", "int8", "int4"), quantization_modes=tuple(SUPPORTED[self.name]),
                            devices=("cpu",), kv_cache=has_kv_cache(OpenVinoModel),
                            streaming=callable(getattr(OpenVinoModel, "stream", None)),
                            notes="inference precision pinned (f32 or bf16), never left to the CPU plugin")

    def prepare(self, request: PrepareRequest) -> Artifact:
        from ...export.onnx import choose_graphs, export_onnx
        from ..openvino import convert_export, require_openvino

        config = QuantizeConfig.from_plan(self.name, request.plan)
        require_openvino(compression=config is not None)  # a ConfigError with the install command
        batches = prepared_batches(request, self.name)
        model, processor, cast_from = load_fp32(request)
        options = request.options
        precision = options.get("precision") or "f32"
        table_int8 = config is not None and config.embedding_dtype == "int8"
        split = choose_graphs(options.get("graphs", "auto"), options.get("supported_ops"),
                              table_int8=table_int8) == "split"
        out = Path(request.out_dir)
        with scratch_directory(request, "onnx-fp32") as (fp32_dir, kept):
            export = export_onnx(model, fp32_dir, batches[0], split=split, opset=options.get("opset"),
                                 threads=request.threads, release_model=request.model is None or request.release_model)
            processor.save_pretrained(fp32_dir)
            report = convert_export(fp32_dir, out, precision=precision, quantize=config, batches=batches,
                                    threads=request.threads)
        processor.save_pretrained(out)
        figures = {"bits": config.bits if config else None, "mode": config.mode if config else None,
                   "precision": precision, "label": report.label, "export": export.model_dump(mode="json"),
                   "openvino": report.model_dump(mode="json"), "size_bytes": report.bytes,
                   "reload_max_abs_diff": report.reload_max_abs_diff, "max_abs_diff": report.max_abs_diff,
                   "top1_agreement": report.top1_agreement, "cast_from": cast_from}
        # openvino: the IR; onnx: the fp32 graphs it was converted from (the scorecard's opset/op checks read them)
        related = {"openvino": out, **({"onnx": fp32_dir} if kept else {})}
        return Artifact(directory=out, runtime=self.name, weights=report.dtype, report=figures, related=related)

    def load(self, directory: Path, *, threads: int | None = None) -> GenerativeModel:
        from ..openvino import OpenVinoModel

        model = OpenVinoModel.load(directory, threads=threads)  # the precision the artifact was made for, pinned
        model.threads = threads or model.properties.get("INFERENCE_NUM_THREADS")
        dq = model.properties.get("DYNAMIC_QUANTIZATION_GROUP_SIZE")
        model.note = (f"; precision {model.properties.get('INFERENCE_PRECISION_HINT', model.precision)}"
                      f"{f', dynamic activation quantization group {dq}' if dq else ''}")
        return model

    def owns(self, directory: Path) -> bool:
        from ..openvino import is_openvino_dir

        return is_openvino_dir(directory)

    def inventory(self, directory: Path) -> Inventory:
        from ..openvino import read_openvino_report

        report = read_openvino_report(directory)
        ops: dict[str, int] = {}
        dtypes: dict[str, int] = {}
        for graph in report.graphs.values():
            for op, count in graph.op_types.items():
                ops[op] = ops.get(op, 0) + int(count)
            for dtype, entry in graph.weights.items():
                dtypes[dtype] = dtypes.get(dtype, 0) + int(entry["bytes"])
        # what the scorecard calls its dtype: the weights' format, or bf16 when fp32 weights run at bf16
        weights = report.dtype if report.dtype != "fp32" or report.precision == "f32" else "bf16"
        return Inventory(files=file_inventory(Path(directory)), ops=ops, dtypes=dtypes, weights=weights,
                         label=report.label)
