"""The ONNX export format of dsvl-adapt: what an export directory holds (:class:`ExportReport`, ``export.json``)
and the per-graph op/dtype inventory. No torch, no runtime: the exporter (:mod:`dsvl_adapt.export.onnx`), the ONNX
Runtime and OpenVINO runtimes and the scorecard all read it from here, so none of them has to import another to
understand an export directory. The layouts are described in :mod:`dsvl_adapt.export.onnx`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dsvl_adapt.runtimes.embedding import table_bytes

__all__ = [
    "CHECK_ROWS",
    "REPORT_FILE",
    "WRAPPER_ATTR",
    "ExportReport",
    "GraphInfo",
    "KvCacheInfo",
    "check_rows",
    "graph_files_bytes",
    "graph_inventory",
    "read_report",
    "write_inventory",
]

REPORT_FILE = "export.json"
# Rows of a batch the fp32 checks run (export vs PyTorch, quantized vs fp32): logits are rows x length x vocab floats,
# 0.25 GB per row of a 600-token example at the 1.3B dimensions (vocab 102400), held by both sides of a comparison.
CHECK_ROWS = 2


def check_rows(batch: dict[str, Any], rows: int = CHECK_ROWS) -> dict[str, Any]:
    """The first ``rows`` rows of a batch (every value batch-first): what the fp32 checks run."""
    return {k: v[:rows] for k, v in batch.items()}
WRAPPER_ATTR = "hf"  # module paths inside the graphs start with "hf." (the wrapper's attribute)
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GiB


class GraphInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    inputs: list[str]
    outputs: list[str]
    inventory: str
    bytes: int = Field(description="graph file plus its external data")


class KvCacheInfo(BaseModel):
    """The split LM's cache inputs and outputs: one (key, value) pair per layer, each (B, kv_heads, sequence,
    head_dim) in ``dtype``."""

    model_config = ConfigDict(extra="forbid")

    past_inputs: list[str] = Field(description="past_key_values.<i>.key, past_key_values.<i>.value, ... in order")
    present_outputs: list[str] = Field(description="present.<i>.key, present.<i>.value, ... in the same order")
    kv_heads: list[int] = Field(description="per layer")
    head_dims: list[int] = Field(description="per layer")
    dtype: str = "float32"
    logits_positions: str | None = Field(
        None, description="the input naming which new positions get logits ((K,) int64, the same for every row): "
                          "generation asks for the last only, checks and calibration for all; None on exports made "
                          "before it, whose LM returns logits for every new position")

    def empty_past(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero-length past tensors for a new request (the prefill), by input name."""
        shapes = [(h, d) for h, d in zip(self.kv_heads, self.head_dims, strict=True) for _ in ("key", "value")]
        return {name: np.zeros((batch_size, h, 0, d), dtype=self.dtype)
                for name, (h, d) in zip(self.past_inputs, shapes, strict=True)}

    def logits_feed(self, new_positions: int, last_only: bool) -> dict[str, np.ndarray]:
        """The ``logits_positions`` feed for ``new_positions`` new positions: the last one, or all of them (empty
        for an export without that input)."""
        if self.logits_positions is None:
            return {}
        start = new_positions - 1 if last_only else 0
        return {self.logits_positions: np.arange(start, new_positions, dtype=np.int64)}

    def prefill_feeds(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every input of the LM graph for a whole sequence with an empty past, logits at every position
        (calibration sees the head's inputs at all of them; the checks compare them all)."""
        positions = np.maximum(np.asarray(attention_mask, dtype=np.int64).cumsum(-1) - 1, 0)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "position_ids": positions,
                **self.logits_feed(inputs_embeds.shape[1], last_only=False), **self.empty_past(inputs_embeds.shape[0])}

    @property
    def bytes_per_token(self) -> int:
        """Bytes of keys and values one position adds to the cache (per row)."""
        itemsize = int(np.dtype(self.dtype).itemsize)
        return 2 * itemsize * sum(h * d for h, d in zip(self.kv_heads, self.head_dims, strict=True))


class ExportReport(BaseModel):
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduces PyTorch. Saved as ``export.json``."""

    model_config = ConfigDict(extra="forbid")

    directory: str
    mode: Literal["full", "split"]
    exporter: Literal["dynamo", "torchscript"]
    opset: int
    graphs: dict[str, GraphInfo]
    inventories: dict[str, str] = Field(description="graph name -> inventory JSON path")
    max_abs_diff: dict[str, float] = Field(default_factory=dict,
                                           description="ORT vs PyTorch logits per check (valid positions only)")
    tolerance: float
    within_tolerance: bool | None = Field(description="max_abs_diff <= tolerance; None for quantized graphs")
    model_class: str
    hybrid: bool
    image_token_id: int
    num_image_tokens: int
    embed_file: str | None = None
    config_file: str = "config.json"
    quantization: dict[str, Any] | None = Field(None, description="set on graphs quantized by ONNX Runtime")
    kv_cache: KvCacheInfo | None = Field(None, description="the split LM's past/present names (None: no cache)")
    patch_convs_as_matmul: list[str] = Field(default_factory=list,
                                             description="patch convolutions exported as MatMul (module paths)")
    process_peak_rss: dict[str, int] = Field(default_factory=dict,
                                             description="the exporting process's peak RSS in bytes after the export "
                                                         "and after the ONNX Runtime check")

    def graph_path(self, name: str) -> Path:
        return Path(self.directory) / self.graphs[name].file

    @property
    def bytes(self) -> int:
        extra = table_bytes(self.directory, self.embed_file)
        return sum(g.bytes for g in self.graphs.values()) + extra


def read_report(directory: str | Path) -> ExportReport:
    """The ``ExportReport`` saved in an export directory, with ``directory`` pointing where it now lies."""
    directory = Path(directory)
    report = ExportReport.model_validate_json((directory / REPORT_FILE).read_text())
    inventories = {name: str(directory / g.inventory) for name, g in report.graphs.items()}
    return report.model_copy(update={"directory": str(directory), "inventories": inventories})


# --------------------------------------------------------------------------------------------------------------------
# inventory


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(v) -> dict[str, Any]:
    t = v.type.tensor_type
    dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
    return {"name": v.name, "dtype": _dtype_name(t.elem_type), "shape": dims}


def _tensor_bytes(t) -> int:
    import onnx

    if t.data_location == onnx.TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in t.external_data}
        if "length" in entries:
            return int(entries["length"])
    if t.raw_data:
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # pragma: no cover - exotic dtypes
        itemsize = 1
    if _dtype_name(t.data_type) in ("int4", "uint4", "float4e2m1"):
        return (n + 1) // 2
    return n * itemsize


def graph_files_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX file plus the external-data files it names."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations)


def graph_inventory(path: str | Path) -> dict[str, Any]:
    """Op types with counts, opsets, and the dtypes of inputs, outputs and initializers of one ONNX graph."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    ops: Counter[str] = Counter()

    def walk(graph) -> None:
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            ops[f"{domain}.{node.op_type}" if domain else node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)

    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            ops[f"{fn.domain}.{fn.name}/{node.op_type}"] += 1
    init_dtypes: dict[str, dict[str, int]] = {}
    total_elems = 0
    for t in model.graph.initializer:
        entry = init_dtypes.setdefault(_dtype_name(t.data_type), {"count": 0, "elements": 0, "bytes": 0})
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        entry["count"] += 1
        entry["elements"] += n
        entry["bytes"] += _tensor_bytes(t)
        total_elems += n
    opsets = {(imp.domain or "ai.onnx"): int(imp.version) for imp in model.opset_import}
    return {
        "graph": path.name,
        "ir_version": int(model.ir_version),
        "opset": opsets.get("ai.onnx"),
        "opsets": opsets,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "node_count": int(sum(ops.values())),
        "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "initializers": {
            "count": len(model.graph.initializer),
            "elements": total_elems,
            "bytes": int(sum(d["bytes"] for d in init_dtypes.values())),
            "dtypes": dict(sorted(init_dtypes.items())),
        },
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer),
        "file_bytes": graph_files_bytes(path),
    }


def write_inventory(path: str | Path) -> Path:
    """Write ``<name>.inventory.json`` beside the graph ``<name>.onnx``; returns its path."""
    path = Path(path)
    out = path.with_name(f"{path.stem}.inventory.json")
    out.write_text(json.dumps(graph_inventory(path), indent=2) + "\n")
    return out
