"""dsvl-adapt plugin: medical imaging (chest-radiograph reporting).

Supplies the ``medical`` vertical: a deterministic generator of synthetic chest radiographs with
a one-line templated report (nodule, opacity, pleural effusion with the patient's side, or no
acute finding), loaders for the user's own JSONL + images or DICOM folders, the report
prompt, finding-level precision/recall/F1 and ROUGE-L, and two hardware targets (a hospital
T4 GPU server with TensorRT, a reading-room CPU workstation with ONNX Runtime). Built only on
dsvl-adapt's public hooks; pydicom, numpy and the generator are imported when data is read.
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

DATASET = "medical-radiographs"
# asked of DICOM rows whose label has no question: the generator's first question
REPORT_QUESTION = "What is the main finding on this chest radiograph?"


def load_rows(request: DatasetRequest):
    """Generated radiographs, or the user's data in ``request.source``.

    ``source`` holds either ``<split>.jsonl`` files (images beside them) or one folder per
    split with ``labels.jsonl`` and DICOM files (see :mod:`dsvl_adapt_medical.dicom`).
    """
    if request.source is not None:
        from dsvl_adapt.data.jsonl import find_split_file
        from dsvl_adapt.errors import DataError

        source = request.source
        jsonl = find_split_file(source, request.split) or source / f"{request.split}.jsonl"  # val.jsonl, dev.jsonl …
        dicom_labels = source / request.split / "labels.jsonl"
        if jsonl.is_file() and dicom_labels.is_file():
            raise DataError(f"{source} holds both {jsonl.name} and {request.split}/labels.jsonl for split "
                            f"{request.split!r}; keep one format per split")
        if dicom_labels.is_file():
            from .dicom import read_dicom_split

            return read_dicom_split(source, request.split, default_question=REPORT_QUESTION)
        if not jsonl.is_file():
            raise DataError(f"{source}: no data for split {request.split!r}; expected {jsonl} (JSONL + images) or "
                            f"{dicom_labels} (DICOM files with labels)")
        from dsvl_adapt.data.jsonl import read_jsonl_split

        return read_jsonl_split(source, request.split)
    from .generator import generate_rows

    return generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(
        name="medical",
        description="Chest-radiograph reporting: a one-line impression naming the finding and the patient's side",
        dataset=DATASET,
        prompt="medical-report",
        metrics=["finding_f1", "finding_precision", "finding_recall", "rouge_l"],
        targets=["hospital-t4", "workstation-cpu"],
        objectives=Objectives(min_retention=0.95),
        max_answer_tokens=16,
    ))


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name=DATASET, load=load_rows,
                         description="generated chest radiographs with one-line reports; or your JSONL or DICOM folder "
                                     "via data.source"))


@hookimpl
def dsvl_adapt_register_prompts(register):
    register(PromptTemplate(
        name="medical-report",
        system="You are a radiology assistant reading PA chest radiographs. Give a one-line impression: the "
               "finding and the patient's side (the patient's right is on the image left), or 'no acute finding'.",
        user="{question}",
        answer_format="e.g. 'nodule in the right lung', 'pleural effusion on the left', 'no acute finding'",
    ))


@hookimpl
def dsvl_adapt_register_metrics(register):
    register(MetricSpec(name="finding_f1", compute=metrics.finding_f1,
                        description="micro F1 of (finding, side) labels parsed from generated vs reference reports"))
    register(MetricSpec(name="finding_precision", compute=metrics.finding_precision,
                        description="share of reported (finding, side) labels that are in the reference"))
    register(MetricSpec(name="finding_recall", compute=metrics.finding_recall,
                        description="share of reference (finding, side) labels that are reported"))
    register(MetricSpec(name="rouge_l", compute=metrics.rouge_l,
                        description="mean ROUGE-L F-measure (LCS, beta=1; Lin 2004) of the report text"))


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    register(HardwareTarget(
        name="hospital-t4",
        description="NVIDIA T4 (16 GB) in the hospital's inference server, TensorRT 8.6 in fp16/int8; "
                    "a report within 3.2 s",
        device="gpu", runtime="tensorrt", memory_gb=16, dtypes=["fp16", "int8"],
        peak_tops={"fp16": 65, "int8": 130}, memory_bandwidth_gbps=320,
        opset_min=13, opset_max=17, latency_p90_ms=3200,
    ))
    register(HardwareTarget(
        name="workstation-cpu",
        description="8-core x86 reading-room workstation (AVX-512 VNNI), ONNX Runtime on CPU; same 3.2 s per report",
        device="cpu", runtime="onnxruntime", memory_gb=32, dtypes=["fp32", "int8"],
        peak_tops={"fp32": 1.5, "int8": 6.0}, memory_bandwidth_gbps=80,
        opset_min=13, opset_max=21, latency_p90_ms=3200,
    ))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://dsvl_adapt_medical.conf"
