"""dsvl-adapt plugin: industrial surface inspection.

Supplies the ``industrial`` vertical: a deterministic generator of textured surfaces with a
scratch, dent, stain or crack (or none), a loader for the user's own JSONL + images, the
prompt, inspection metrics and two hardware targets. Built only on dsvl-adapt's public hooks.
"""

from __future__ import annotations

from dsvl_adapt import hookimpl
from dsvl_adapt.schemas import (
    DatasetRequest,
    DatasetSpec,
    HardwareTarget,
    MetricSpec,
    Objectives,
    PromptTemplate,
    Vertical,
)

from . import metrics

__version__ = "0.1.0"


def load_rows(request: DatasetRequest):
    """Generated surfaces, or the user's ``<source>/<split>.jsonl`` with images beside it."""
    if request.source is not None:
        from dsvl_adapt.data.jsonl import read_jsonl_split

        return read_jsonl_split(request.source, request.split)
    from .generator import generate_rows

    return generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(
        name="industrial",
        description="Surface inspection: name the defect (scratch, dent, stain, crack) or 'none'",
        dataset="industrial-surfaces",
        prompt="industrial-inspection",
        metrics=["accuracy", "miss_rate", "overkill_rate"],
        targets=["cpu-box", "edge-npu", "cpu-box-openvino"],
        objectives=Objectives(min_retention=0.95),
        max_answer_tokens=6,
    ))


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name="industrial-surfaces", load=load_rows,
                         description="generated surfaces with one defect or none; or your JSONL via data.source"))


@hookimpl
def dsvl_adapt_register_prompts(register):
    register(PromptTemplate(
        name="industrial-inspection",
        system="You are a visual inspection assistant on a production line. Answer with one word.",
        user="{question}",
        answer_format="one of: scratch, dent, stain, crack, none",
    ))


@hookimpl
def dsvl_adapt_register_metrics(register):
    register(MetricSpec(name="accuracy", compute=metrics.accuracy, description="defect class accuracy"))
    register(MetricSpec(name="miss_rate", compute=metrics.miss_rate, higher_is_better=False,
                        description="defective parts called 'none' (shipped defects)"))
    register(MetricSpec(name="overkill_rate", compute=metrics.overkill_rate, higher_is_better=False,
                        description="good parts called defective (scrapped good parts)"))


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    register(HardwareTarget(
        name="cpu-box", description="x86 industrial PC beside the line, ONNX Runtime on CPU",
        device="cpu", runtime="onnxruntime", memory_gb=8, dtypes=["fp32", "int8"],
        peak_tops={"fp32": 0.2, "int8": 0.8}, memory_bandwidth_gbps=25, latency_p90_ms=200,
    ))
    register(HardwareTarget(
        name="edge-npu", description="int8-only edge NPU in the camera housing, restricted op set",
        device="npu", runtime="onnxruntime", memory_gb=2, dtypes=["int8"], peak_tops={"int8": 4.0},
        memory_bandwidth_gbps=8, opset_min=13, opset_max=17, latency_p90_ms=50,
        supported_ops=["Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal", "Erf",
                       "Expand", "Gather", "Gemm", "MatMul", "MatMulInteger", "Mul", "Neg", "Pow", "Range",
                       "ReduceMean", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub",
                       "Tanh", "Transpose", "Unsqueeze", "Where", "DynamicQuantizeLinear", "QuantizeLinear",
                       "DequantizeLinear", "Cos", "Sin", "Greater", "Less", "Max", "Min", "Trilu"],
    ))
    register(HardwareTarget(
        name="cpu-box-openvino", description="x86 industrial PC beside the line, OpenVINO on CPU (int8 via NNCF)",
        device="cpu", runtime="openvino", memory_gb=8, dtypes=["fp32", "int8"],
        peak_tops={"fp32": 0.2, "int8": 0.8}, memory_bandwidth_gbps=25, latency_p90_ms=200,
    ))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://dsvl_adapt_industrial.conf"
