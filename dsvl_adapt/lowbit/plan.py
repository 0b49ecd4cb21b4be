"""The precision plan written next to an artifact (``precision_plan.json``): which layer got which weight precision
and how the artifact's bytes split by precision.

The per-graph ``<graph>.layers.json`` files come from the quantizers (:mod:`.int4_onnxruntime`,
:mod:`.int4_openvino`); :func:`write_plan` merges them and adds the byte breakdown, read from the artifact itself:

* ONNX Runtime: each MatMulNBits node's weight, scales and zero points count at its ``bits``; every other
  initializer at its storage dtype (int8 MatMulInteger weights as int8, float as fp32).
* OpenVINO: each constant at its element type (u4/i4 -> int4, u8/i8 -> int8, f32 -> fp32, f16 -> fp16, as
  ``openvino.json`` lists them); the scales of an int4 group are f16/f32 constants and count there.
* The token-embedding table of a split export at its file's dtype.

Bytes of integer index tensors (shapes, ids) go to ``other``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["PLAN_FILE", "bytes_by_precision", "read_plan", "summary_line", "write_plan"]

PLAN_FILE = "precision_plan.json"
_ONNX_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 2: "int8", 3: "int8", 22: "int4", 21: "int4"}
_OV_DTYPES = {"u4": "int4", "i4": "int4", "nf4": "int4", "u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16",
              "bf16": "bf16"}


def _onnx_bytes(graph_path: Path) -> Counter[str]:
    import onnx

    from dsvl_adapt.export.onnx_format import _tensor_bytes

    model = onnx.load(str(graph_path), load_external_data=False)
    sizes = {t.name: (_tensor_bytes(t), t.data_type) for t in model.graph.initializer}
    out: Counter[str] = Counter()
    counted: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        for name in node.input[1:]:
            if name in sizes and name not in counted:
                out[f"int{bits}"] += sizes[name][0]
                counted.add(name)
    for name, (size, dtype) in sizes.items():
        if name not in counted:
            out[_ONNX_DTYPES.get(dtype, "other")] += size
    return out


def bytes_by_precision(directory: str | Path) -> dict[str, int]:
    """Bytes of the artifact in ``directory`` (ONNX Runtime export or OpenVINO IR) by weight precision."""
    from dsvl_adapt.runtimes.embedding import table_bytes, table_dtype

    directory = Path(directory)
    out: Counter[str] = Counter()
    if (directory / "openvino.json").is_file():
        report = json.loads((directory / "openvino.json").read_text())
        for graph in report["graphs"].values():
            for dtype, entry in graph["weights"].items():
                out[_OV_DTYPES.get(dtype, "other")] += int(entry["bytes"])
        embed = report.get("embed_file")
    else:
        report = json.loads((directory / "export.json").read_text())
        for info in report["graphs"].values():
            out.update(_onnx_bytes(directory / info["file"]))
        embed = report.get("embed_file")
    if embed and "#" not in embed:
        out[table_dtype(embed) or "fp32"] += table_bytes(directory, embed)
    return dict(sorted(out.items()))


def write_plan(directory: str | Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the ``*.layers.json`` of ``directory`` into ``precision_plan.json`` (layers, counts, bytes by
    precision, plus ``extra``: e.g. the search's evaluations); returns what was written."""
    directory = Path(directory)
    layers: dict[str, str] = {}
    options: dict[str, Any] = {}
    for path in sorted(directory.glob("*.layers.json")):
        data = json.loads(path.read_text())
        layers.update(data["layers"])
        options = data.get("options", options)
    plan = {"layers": layers, "counts": dict(sorted(Counter(layers.values()).items())),
            "bytes_by_precision": bytes_by_precision(directory), "options": options, **(extra or {})}
    (directory / PLAN_FILE).write_text(json.dumps(plan, indent=2, default=str) + "\n")
    return plan


def read_plan(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def summary_line(plan: dict[str, Any]) -> str:
    """``14 linear layers: int4 12, int8 2; bytes: int4 21.0 kB, int8 4.1 kB, fp32 310.2 kB``."""
    counts = plan.get("counts", {})
    layer_text = ", ".join(f"{k} {v}" for k, v in counts.items())
    byte_text = ", ".join(f"{k} {v / 1e3:.1f} kB" if v < 1e6 else f"{k} {v / 1e6:.2f} MB"
                          for k, v in plan.get("bytes_by_precision", {}).items() if v)
    return f"{sum(counts.values())} linear layers: {layer_text}; bytes: {byte_text}"


def markdown_lines(quantize_figures: dict[str, Any] | None) -> list[str]:
    """The scorecard's "Weight precision" section from the quantize stage's figures (empty when no plan ran)."""
    plan = (quantize_figures or {}).get("precision_plan")
    if not plan:
        return []
    lines = ["## Weight precision", "", f"{plan.get('precision', '')}: {plan['summary']}", ""]
    search = plan.get("search")
    if search:
        lines += [("" if search["reachable"] else "**") + search["message"] + ("" if search["reachable"] else "**"),
                  "", "| plan | layers | bytes | metric | retention | holds |", "|---|---|---|---|---|---|"]
        for e in search["evaluations"]:
            counts = ", ".join(f"{k} {v}" for k, v in e["counts"].items())
            retention = "unknown" if e["retention"] is None else f"{e['retention']:.3f}"
            lines.append(f"| {e['label']} | {counts} | {e['bytes']:,} | {e['metric']:.3f} | {retention} | "
                         f"{'yes' if e['holds'] else 'no'} |")
        lines.append("")
    lines += [f"Per-layer plan: `{plan['file']}`", ""]
    return lines
