"""ONNX Runtime: run an export directory (:class:`OnnxRuntimeModel`) and quantize one (:func:`quantize_export`).

Import this module only when ONNX Runtime is wanted; ``onnxruntime`` itself is imported on first use.

Quantization recipes (all CPU-oriented, linear layers only - MatMul/Gemm with a constant weight):

* ``dynamic`` int8: ``quantize_dynamic`` -> MatMulInteger; activations quantized per call.
* ``static`` int8: ``quantize_static`` in QDQ format (the format ORT's CPU kernels are tuned for), uint8 activations,
  int8 weights, MinMax calibration over ``calibration_batches`` batches. ``MatMulConstBOnly`` keeps the attention
  matmuls (activation x activation) in fp32.
* ``weight_only`` int4/int8: ``MatMulNBitsQuantizer`` -> MatMulNBits, blockwise (``block_size``), asymmetric.

Split exports carry the token-embedding table beside the graphs; it is written per-row int8 (``embed_tokens.int8.npz``)
unless ``QuantizeConfig.embedding='fp32'`` (:mod:`dsvl_adapt.runtimes.embedding`). With tied embeddings no table is
written at all: the int8 ``lm_head`` of ``lm.onnx`` already holds it (per-vocab scales), and the lookup reads it there
(``embed_file = "lm.onnx#<initializer>"``). Full graphs keep the table inside, fp32.

Every graph goes through ONNX Runtime's basic optimisation first (the optimising half of ``quant_pre_process``, run
from the file: :mod:`dsvl_adapt.runtimes.ort_quantization_memory`, which also keeps ``quantize_dynamic`` to one copy of
the weights): without it the tied ``lm_head`` - read through a Transpose of the embedding - stays fp32. The skip
policy of ``QuantizeConfig`` is applied through the module path the exporter stored on each node
(``pkg.torch.onnx.name_scopes``; TorchScript graphs: the node name), mapped to node names before pre-processing, which
keeps those names. The fp32-vs-quantized check loads one session at a time (fp32 outputs first), so the two copies
of the weights are never in memory together.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dsvl_adapt.export.onnx_format import (
    REPORT_FILE,
    WRAPPER_ATTR,
    ExportReport,
    check_rows,
    graph_files_bytes,
    read_report,
    write_inventory,
)
from dsvl_adapt.machine import return_freed_memory
from dsvl_adapt.runtimes import GraphRuntimeModel, to_numpy
from dsvl_adapt.runtimes.embedding import (
    INT8_FILE,
    copy_embedding_table,
    find_tied_table,
    table_dtype,
)
from dsvl_adapt.runtimes.ort_quantization_memory import optimize_for_quantization, shape_inference_in_place

if TYPE_CHECKING:  # pragma: no cover
    from dsvl_adapt.quantization import QuantizeConfig

__all__ = [
    "BatchCalibrationReader",
    "OnnxQuantizeReport",
    "OnnxRuntimeModel",
    "node_module_paths",
    "quantize_export",
]


_ORT_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(bfloat16)": 2, "tensor(double)": 8}


def _ort():
    import onnxruntime

    return onnxruntime


class OnnxRuntimeModel(GraphRuntimeModel):
    """An export directory (full or split, fp32 or quantized) in ONNX Runtime, CPU by default.

    With a KV-cache LM (``report.kv_cache``) every LM call goes through an ``IOBinding``: the present keys/values
    stay in the ``OrtValue`` buffers ONNX Runtime allocated for them and are bound as the next step's past without a
    copy to numpy; only the logits come back. (The graph concatenates past and new positions, so each step allocates
    its present buffers anew; fixed, pre-allocated cache buffers would need a static-cache graph.)"""

    name = "onnxruntime"
    runtime = "onnxruntime"
    graph_suffix = ".onnx"

    def __init__(self, report: ExportReport, *, threads: int | None = None, providers: Sequence[str] | None = None,
                 session_config: dict[str, str] | None = None):
        ort = _ort()
        self.report = report
        self.directory = Path(report.directory)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        for key, value in (session_config or {}).items():  # e.g. {"session.intra_op.allow_spinning": "0"}
            options.add_session_config_entry(key, value)
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.sessions = {name: ort.InferenceSession(str(report.graph_path(name)), sess_options=options,
                                                    providers=providers)
                         for name in report.graphs}
        self.image_token_id = report.image_token_id
        self.hybrid = report.hybrid
        self._embed = self._embedding_table(report, self.directory)
        self.kv_cache = report.kv_cache if report.mode == "split" else None
        self.threads = threads

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
             session_config: dict[str, str] | None = None) -> OnnxRuntimeModel:
        """Open what ``export_onnx`` (or ``quantize_export``) wrote in ``directory``; ``session_config``: ONNX
        Runtime session config entries."""
        return cls(read_report(directory), threads=threads, providers=providers, session_config=session_config)

    @property
    def size_bytes(self) -> int:
        return self.report.bytes

    @property
    def graphs(self) -> dict[str, Any]:
        return self.sessions

    def _infer(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        output = "image_embeds" if name == "vision" else "logits"
        return self.sessions[name].run([output], feeds)[0]

    def _lm_step(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                 cache: list[Any] | None, last_only: bool = False) -> tuple[np.ndarray, list[Any]]:
        kv = self.kv_cache
        past: dict[str, Any] = (kv.empty_past(inputs_embeds.shape[0]) if cache is None
                                else dict(zip(kv.past_inputs, cache, strict=True)))
        feeds = {"inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
                 "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
                 **kv.logits_feed(inputs_embeds.shape[1], last_only), **past}
        outputs = self._run_lm(feeds)
        return outputs[0].numpy(), outputs[1:]

    def _run_lm(self, feeds: dict[str, Any]) -> list[Any]:
        """One LM run through an IOBinding: numpy feeds are bound as CPU inputs, ``OrtValue`` feeds (the previous
        step's present keys/values) as they are; returns the outputs as ``OrtValue`` (logits first)."""
        session = self.sessions["lm"]
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in ["logits", *self.kv_cache.present_outputs]:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    @staticmethod
    def kv_cache_bytes(state: Any) -> int:
        """Bytes the keys and values of a :class:`~dsvl_adapt.runtimes.generation.CacheState` hold."""
        cache = getattr(state, "cache", None) or []
        return sum(int(np.prod(v.shape())) * _ORT_ITEMSIZE[v.data_type()] for v in cache)



# --------------------------------------------------------------------------------------------------------------------
# quantization


class BatchCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over a list of feed dicts (ORT accepts it by its ``get_next``)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


class OnnxQuantizeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str
    source: str
    config: dict[str, Any]
    graphs: dict[str, str] = Field(description="graph name -> quantized file")
    inventories: dict[str, str]
    quantized_nodes: dict[str, int] = Field(description="per graph: MatMul/Gemm nodes quantized")
    skipped_nodes: dict[str, int] = Field(description="per graph: MatMul/Gemm nodes kept fp32 by the skip policy")
    bytes_fp32: int
    bytes: int
    max_abs_diff: float | None = Field(None, description="logits vs the fp32 export, attended positions")
    top1_agreement: float | None = Field(None, description="share of attended positions with the same argmax")
    seconds: float
    reduce_range: bool | None = Field(None, description="7-bit weights used (int8 modes; auto resolved on this CPU)")


def _module_path(node) -> str | None:
    """The torch module path a node came from (wrapper prefix removed), or None when unknown."""
    prefix = f"{WRAPPER_ATTR}."
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            paths = [s for s in scopes if isinstance(s, str) and s.startswith(prefix)]
            return paths[-1][len(prefix):] if paths else ""
    if node.name.startswith(f"/{WRAPPER_ATTR}/"):  # TorchScript: /hf/model/language_model/layers.0/mlp/up_proj/MatMul
        return ".".join(node.name.split("/")[2:-1])
    return None


def node_module_paths(path: str | Path) -> dict[str, str | None]:
    """Node name -> module path for the MatMul/Gemm nodes of a graph written by ``export_onnx``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {n.name: _module_path(n) for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}


def _graph_feeds(source: ExportReport, batches: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of each graph of ``source`` for each batch (split: the LM gets the merged fp32 embeddings)."""
    runtime = OnnxRuntimeModel(source) if source.mode == "split" else None
    pixel_names = ["pixel_values"] + (["high_res_pixel_values"] if source.hybrid else [])
    feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in source.graphs}
    for batch in batches:
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        pixels = {n: to_numpy(batch[n], np.float32) for n in pixel_names}
        if runtime is None:
            feeds["model"].append({"input_ids": ids, "attention_mask": mask, **pixels})
        else:
            feeds["vision"].append(pixels)
            image = runtime.image_embeddings(pixels)
            embeds = runtime.inputs_embeds(ids, image)
            feeds["lm"].append(source.kv_cache.prefill_feeds(embeds, mask) if source.kv_cache is not None
                               else {"inputs_embeds": embeds, "attention_mask": mask})
    return feeds


_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps one file at 2 GiB


def _copy_graph(src: Path, dst: Path, external: bool) -> None:
    """Copy one graph with its weights. A graph the exporter wrote with external data (every graph of a model over
    the protobuf cap is, however small the graph itself) is re-saved, inline when it fits in one file: copying the
    ``.onnx`` file alone would leave its weights behind."""
    if not external and graph_files_bytes(src) == src.stat().st_size:
        shutil.copyfile(src, dst)
        return
    import onnx

    if not external:
        onnx.save_model(onnx.load(str(src)), str(dst))
        return
    onnx.save_model(onnx.load(str(src)), str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data")


def _quantize_graph(src: Path, dst: Path, config: QuantizeConfig, feeds: list[dict[str, np.ndarray]],
                    work: Path) -> tuple[int, int]:
    """Quantize one graph file; returns (quantized, skipped) MatMul/Gemm counts."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    paths = node_module_paths(src)
    excluded = sorted(name for name, module in paths.items() if module is not None and config.skips(module))
    external = graph_files_bytes(src) > _EXTERNAL_DATA_BYTES
    pre = work / f"{src.stem}.pre.onnx"
    # a graph whose weights the export wrote apart (every graph of a model over the cap, however small) gets its own
    # .data file in the work folder: written inline, ONNX Runtime would keep the references to the export's file
    written_apart = graph_files_bytes(src) != src.stat().st_size
    optimize_for_quantization(src, pre, external or written_apart)
    graph = onnx.load(str(pre), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    # Linear layers only: a MatMul of two activations (attention scores, attention x values) stays fp32. The QDQ
    # quantizer ignores MatMulConstBOnly, so these are excluded by name.
    excluded_set = set(excluded)
    excluded += [n.name for n in matmuls if n.name not in excluded_set and n.input[1] not in constants]
    candidates = [n.name for n in matmuls if n.name not in set(excluded)]
    skipped_by_policy = sum(1 for n in matmuls if n.name in excluded_set and n.input[1] in constants)
    if not candidates:
        _copy_graph(src, dst, external)  # nothing left to quantize (e.g. the vision graph under the default policy)
        return 0, skipped_by_policy

    if config.mode == "dynamic":
        with shape_inference_in_place():
            quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=config.per_channel, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                             use_external_data_format=external, reduce_range=config.reduce_range_resolved,
                             extra_options={"MatMulConstBOnly": True})
    elif config.mode == "static":
        if not feeds:
            raise ValueError("static quantization needs calibration batches")
        quantize_static(str(pre), str(dst), BatchCalibrationReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], per_channel=config.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        use_external_data_format=external, calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=config.reduce_range_resolved, extra_options={"MatMulConstBOnly": True})
    else:
        from onnxruntime.quantization.onnx_model import ONNXModel

        from dsvl_adapt.lowbit.int4_onnxruntime import quantize_graph_weights

        nbits = quantize_graph_weights(onnx.load(str(pre)), candidates, paths, config, dst.with_suffix(".layers.json"))
        ONNXModel(nbits).save_model_to_file(str(dst), use_external_data_format=external)

    quantized_ops = {"MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul", "QLinearMatMul"}
    model = onnx.load(str(dst), load_external_data=False)
    if config.mode == "static":
        inits = {t.name for t in model.graph.initializer}
        dq_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
        count = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
                    and n.input[1] in dq_inputs)
    else:
        count = sum(1 for n in model.graph.node if n.op_type in quantized_ops)
    return count, skipped_by_policy


def quantize_export(source: str | Path, destination: str | Path, config: QuantizeConfig,
                    batches: Sequence[dict[str, Any]] | None = None, *, compare_batches: int = 2,
                    threads: int | None = None) -> OnnxQuantizeReport:
    """Quantize every graph of the export in ``source`` into ``destination`` (same layout, new ``export.json``).

    ``batches``: model batches (``input_ids``, ``attention_mask``, ``pixel_values`` ...). Static mode calibrates on
    the first ``config.calibration_batches``; the first ``CHECK_ROWS`` rows of the first ``compare_batches`` measure
    the drift from fp32.
    """
    if config.backend != "onnxruntime":
        raise ValueError(f"quantize_export needs backend='onnxruntime', got {config.backend!r}")
    t0 = time.perf_counter()
    src = read_report(source)
    destination = Path(destination)
    if destination.resolve() == Path(src.directory).resolve():
        raise ValueError("destination must differ from the source export directory")
    destination.mkdir(parents=True, exist_ok=True)
    batches = list(batches or [])
    feeds = (_graph_feeds(src, batches[: config.calibration_batches]) if config.mode == "static"
             else {name: [] for name in src.graphs})

    quantized: dict[str, int] = {}
    skipped: dict[str, int] = {}
    graphs = {}
    inventories: dict[str, str] = {}
    noisy = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")  # "Unable to determine if NonZero..."
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="dsvl-ortq-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, info in src.graphs.items():
            dst = destination / info.file
            quantized[name], skipped[name] = _quantize_graph(src.graph_path(name), dst, config, feeds[name], Path(tmp))
            inv = write_inventory(dst)
            inventories[name] = str(inv)
            graphs[name] = info.model_copy(update={"inventory": inv.name, "bytes": graph_files_bytes(dst)})
    noisy.setLevel(level)
    shutil.copyfile(Path(src.directory) / src.config_file, destination / src.config_file)
    embed_file = copy_embedding_table(src.directory, src.embed_file, destination, config.embedding_dtype)
    if embed_file == INT8_FILE and "lm" in graphs:  # tied embeddings: read them from the int8 lm_head instead
        shared = find_tied_table(destination / graphs["lm"].file, np.load(Path(src.directory) / src.embed_file))
        if shared is not None:
            (destination / INT8_FILE).unlink()
            embed_file = shared
    opsets = [json.loads(Path(p).read_text())["opset"] for p in inventories.values()]
    report = src.model_copy(update={
        "directory": str(destination), "graphs": graphs, "inventories": inventories, "opset": max(opsets),
        "max_abs_diff": {}, "within_tolerance": None, "embed_file": embed_file,
        "quantization": {"backend": "onnxruntime", **config.model_dump(mode="json"), "source": str(source),
                         "reduce_range_used": config.reduce_range_resolved if config.mode != "weight_only" else None,
                         "embedding_table": table_dtype(embed_file),
                         "quantized_nodes": quantized, "skipped_nodes": skipped},
    })

    diff = agreement = None
    # the first rows of each batch: logits are rows x length x vocab floats, and the fp32 ones are held for the
    # comparison (0.25 GB per row of a 600-token batch at the 1.3B dimensions)
    checks = [check_rows(batch) for batch in batches[:compare_batches]]
    if checks:
        fp32 = OnnxRuntimeModel(src, threads=threads)
        references = [fp32.forward(batch) for batch in checks]
        del fp32  # one session's weights at a time: at the 1.3B dimensions each holds gigabytes
        return_freed_memory()
        quant = OnnxRuntimeModel(report, threads=threads)
        diffs, agree, total = [], 0, 0
        for batch, a in zip(checks, references, strict=True):
            b = quant.forward(batch)
            valid = to_numpy(batch.get("attention_mask", np.ones(a.shape[:2])), np.int64).astype(bool)
            diffs.append(float(np.abs(a[valid] - b[valid]).max()))
            agree += int((a.argmax(-1) == b.argmax(-1))[valid].sum())
            total += int(valid.sum())
        diff, agreement = max(diffs), agree / max(total, 1)
        report = report.model_copy(update={"max_abs_diff": {"vs_fp32_export": diff}, "within_tolerance": None})
    (destination / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")

    return OnnxQuantizeReport(
        directory=str(destination), source=str(source), config=config.model_dump(mode="json"),
        graphs={name: g.file for name, g in graphs.items()}, inventories=inventories, quantized_nodes=quantized,
        skipped_nodes=skipped, bytes_fp32=src.bytes, bytes=report.bytes, max_abs_diff=diff,
        top1_agreement=agreement, seconds=time.perf_counter() - t0,
        reduce_range=config.reduce_range_resolved if config.mode != "weight_only" else None)
