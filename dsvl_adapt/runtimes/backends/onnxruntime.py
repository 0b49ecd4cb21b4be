"""The ONNX Runtime backend (``onnxruntime``): ONNX graphs on the CPU, fp32 or quantized.

``prepare`` exports the checkpoint with :func:`dsvl_adapt.export.onnx.export_onnx` (full graph, or vision + LM graphs
when the target's op list or an int8 token table asks for it: :func:`~dsvl_adapt.export.onnx.choose_graphs`) and, for
an int8/int4 plan, quantizes the export with :func:`dsvl_adapt.runtimes.onnxruntime.quantize_export` (the fp32 export
then lies in ``scratch_dir/onnx-fp32``). ``load`` gives an :class:`~dsvl_adapt.runtimes.onnxruntime.OnnxRuntimeModel`.
Its artifacts are export directories (``export.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...export.onnx_format import REPORT_FILE, read_report
from ...quantization import SUPPORTED, QuantizeConfig
from ..contract import Artifact, Capabilities, GenerativeModel, Inventory, PrepareRequest
from . import file_inventory, has_kv_cache, load_fp32, missing_modules, prepared_batches, scratch_directory

__all__ = ["INSTALL_HINT", "OnnxRuntimeBackend", "onnx_inventory"]

INSTALL_HINT = 'pip install "dsvl-adapt[onnxruntime]"'


def onnx_inventory(directory: Path, runtime: str) -> Inventory:
    """Files, op counts and initializer dtype bytes over every graph of an ONNX export directory."""
    report = read_report(directory)
    ops: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    for path in report.inventories.values():
        graph = json.loads(Path(path).read_text())
        for op, count in graph["op_types"].items():
            ops[op] = ops.get(op, 0) + int(count)
        for dtype, entry in graph["initializers"]["dtypes"].items():
            dtypes[dtype] = dtypes.get(dtype, 0) + int(entry["bytes"])
    weights = f"int{report.quantization['bits']}" if report.quantization else "fp32"
    return Inventory(files=file_inventory(Path(directory)), ops=ops, dtypes=dtypes, weights=weights,
                     label=f"{runtime}-{weights}")


class OnnxRuntimeBackend:
    """ONNX Runtime's CPU execution provider on ONNX graphs: fp32, int8 (dynamic, static QDQ, weight-only) or int4
    weight-only (MatMulNBits)."""

    name = "onnxruntime"
    description = "ONNX Runtime (CPU): ONNX graphs, int8 dynamic/static, int8/int4 weight-only (MatMulNBits)"

    def available(self) -> str | None:
        missing = missing_modules("onnxruntime", "onnx")
        if missing:
            return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
        return None

    def capabilities(self) -> Capabilities:
        from ..onnxruntime import OnnxRuntimeModel

        modes = SUPPORTED[self.name]
        return Capabilities(weight_formats=("fp32", "int8", "int4"), quantization_modes=tuple(modes),
                            devices=("cpu",), kv_cache=has_kv_cache(OnnxRuntimeModel),
                            streaming=callable(getattr(OnnxRuntimeModel, "stream", None)),
                            notes="int4 is weight-only; static int8 calibrates on the vertical's batches")

    def prepare(self, request: PrepareRequest) -> Artifact:
        from ...export.onnx import choose_graphs, export_onnx
        from ..onnxruntime import quantize_export

        reason = self.available()
        if reason is not None:
            raise ValueError(f"backend {self.name!r} is not available here: {reason}")
        config = QuantizeConfig.from_plan(self.name, request.plan)
        batches = prepared_batches(request, self.name)
        model, processor, cast_from = load_fp32(request)
        release = request.model is None or request.release_model  # freed before ONNX Runtime loads the graphs
        options = request.options
        table_int8 = config is not None and config.embedding_dtype == "int8"
        split = choose_graphs(options.get("graphs", "auto"), options.get("supported_ops"),
                              table_int8=table_int8) == "split"
        out = Path(request.out_dir)
        if config is None:
            export = export_onnx(model, out, batches[0], split=split, opset=options.get("opset"),
                                 threads=request.threads, release_model=release)
            processor.save_pretrained(out)
            return Artifact(directory=out, runtime=self.name, weights="fp32",
                            report={**export.model_dump(mode="json"), "cast_from": cast_from}, related={"onnx": out})
        with scratch_directory(request, "onnx-fp32") as (fp32_dir, kept):
            export = export_onnx(model, fp32_dir, batches[0], split=split, opset=options.get("opset"),
                                 threads=request.threads, release_model=release)
            processor.save_pretrained(fp32_dir)
            report = quantize_export(fp32_dir, out, config, batches, threads=request.threads)
        processor.save_pretrained(out)
        figures = {"bits": config.bits, "mode": config.mode, "export": export.model_dump(mode="json"),
                   **report.model_dump(mode="json"), "size_bytes": report.bytes, "cast_from": cast_from,
                   "fp32_export_kept": kept}
        return Artifact(directory=out, runtime=self.name, weights=f"int{config.bits}", report=figures,
                        related={"onnx": out})

    def load(self, directory: Path, *, threads: int | None = None) -> GenerativeModel:
        from ..onnxruntime import OnnxRuntimeModel

        model = OnnxRuntimeModel.load(directory, threads=threads)
        model.threads = threads
        return model

    def owns(self, directory: Path) -> bool:
        return (Path(directory) / REPORT_FILE).is_file()

    def inventory(self, directory: Path) -> Inventory:
        return onnx_inventory(Path(directory), self.name)
