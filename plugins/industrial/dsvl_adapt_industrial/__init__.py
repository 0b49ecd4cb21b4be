"""dsvl-adapt plugin: industrial surface inspection.

Supplies the ``industrial`` vertical: a deterministic generator of textured surfaces with a
scratch, dent, stain or crack (or none), a loader for the user's own JSONL + images, the
prompt, inspection metrics and three hardware targets. Before a run's first stage it warns when
most test answers of the user's ``data.source`` are outside the vertical's label set (data made
for another task). Built only on dsvl-adapt's public hooks.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

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

DATASET = "industrial-surfaces"
_warned_runs: "weakref.WeakSet[Any]" = weakref.WeakSet()  # run contexts already checked


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
        dataset=DATASET,
        prompt="industrial-inspection",
        metrics=["accuracy", "miss_rate", "overkill_rate"],
        targets=["cpu-box", "edge-npu", "cpu-box-openvino"],
        objectives=Objectives(min_retention=0.95),
        max_answer_tokens=6,
    ))


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name=DATASET, load=load_rows,
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
                        description="defective parts called 'none' (shipped defects); not applicable (—) when "
                                    "no test answer is a defect"))
    register(MetricSpec(name="overkill_rate", compute=metrics.overkill_rate, higher_is_better=False,
                        description="good parts called defective (scrapped good parts); not applicable (—) when "
                                    "no test answer is 'none'"))


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


def answer_format_warning(source: str | Path) -> str | None:
    """A warning when most test answers in the folder ``source`` are outside the label set; else None.

    Reads only the answers of ``<source>``'s test split (no image is opened). A folder that does not
    read is left to the load stage, which names the problem.
    """
    from dsvl_adapt.data.jsonl import read_jsonl_split

    try:
        answers = [row["answer"] for row in read_jsonl_split(source, "test")
                   if isinstance(row.get("answer"), str) and row["answer"].strip()]
    except Exception:
        return None
    outside = metrics.outside_labels(answers)
    if not answers or len(outside) * 2 <= len(answers):
        return None
    examples = ", ".join(repr(a) for a in list(dict.fromkeys(outside))[:4])  # a few distinct ones
    reasons = "; ".join(f"{name}: {why}" for name, why in metrics.not_applicable(answers).items())
    return (f"industrial: {len(outside)} of {len(answers)} test answers in data.source={source} are not one of "
            f"{', '.join(metrics.LABELS)} (the vertical's answer format), e.g. {examples}. The model is asked for "
            "a defect, so accuracy says little; "
            + (f"not applicable, shown as —: {reasons}. " if reasons else "")
            + "Is this folder meant for another vertical? For your own labels write a vertical: "
              "`dsvl-adapt new-plugin NAME --data files` (docs/plugins/file-only.md).")


@hookimpl
def dsvl_adapt_before_stage(stage: Any, context: Any) -> None:
    """Before the first stage a run executes: check a user's test answers against the label set."""
    if context.vertical.dataset != DATASET or context.config.data.source is None or context in _warned_runs:
        return
    _warned_runs.add(context)
    warning = answer_format_warning(context.config.data.source)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
