"""dsvl-adapt plugin: finance document question answering.

Supplies the ``finance`` vertical: a deterministic generator of financial documents (invoices
and receipts) with a question about one field each (vendor, document type, paid), loaders for the user's own JSONL +
images or PDF files (one page = one image, rendered with pypdfium2), the prompt, ANLS and exact
match overall and per field, and two hardware targets (a Xeon server with ONNX Runtime int8 at
p90 <= 200 ms, an L4 GPU). Built only on dsvl-adapt's public hooks; pypdfium2 and the generator
are imported when data is read.
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

DATASET = "finance-documents"
# the fields with their own ANLS / EM metrics: the generator's question types (meta["question_type"])
FIELDS = ("vendor", "doc_type", "paid")


def load_rows(request: DatasetRequest):
    """Generated documents, or the user's data in ``request.source``.

    ``source`` holds either ``<split>.jsonl`` files (images beside them) or one folder per
    split with ``labels.jsonl`` and PDF files (see :mod:`dsvl_adapt_finance.pdf`).
    """
    if request.source is not None:
        from dsvl_adapt.data.jsonl import find_split_file
        from dsvl_adapt.errors import DataError

        source = request.source
        jsonl = find_split_file(source, request.split) or source / f"{request.split}.jsonl"  # val.jsonl, dev.jsonl …
        pdf_labels = source / request.split / "labels.jsonl"
        if jsonl.is_file() and pdf_labels.is_file():
            raise DataError(f"{source} holds both {jsonl.name} and {request.split}/labels.jsonl for split "
                            f"{request.split!r}; keep one format per split")
        if pdf_labels.is_file():
            from .pdf import read_pdf_split

            return read_pdf_split(source, request.split)
        if not jsonl.is_file():
            raise DataError(f"{source}: no data for split {request.split!r}; expected {jsonl} (JSONL + images) or "
                            f"{pdf_labels} (PDF files with labels)")
        from dsvl_adapt.data.jsonl import read_jsonl_split

        return read_jsonl_split(source, request.split)
    from .generator import generate_rows

    return generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(
        name="finance",
        description="Financial document QA: read a field (vendor, document type, paid status …) off an invoice "
                    "or receipt",
        dataset=DATASET,
        prompt="finance-docqa",
        metrics=["anls", "em", *(f"anls_{f}" for f in FIELDS), *(f"em_{f}" for f in FIELDS)],
        targets=["cpu-xeon-ort", "gpu-l4"],
        objectives=Objectives(min_retention=0.95),
        max_answer_tokens=16,
    ))


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name=DATASET, load=load_rows,
                         description="generated financial documents, one field question each; or your JSONL or "
                                     "PDF folder via data.source"))


@hookimpl
def dsvl_adapt_register_prompts(register):
    register(PromptTemplate(
        name="finance-docqa",
        system="You read financial documents. Answer with the value exactly as printed, nothing else.",
        user="{question}",
        answer_format="the value as printed (e.g. 'acme supplies', '1,284.50'), or a short word ('invoice', 'yes')",
    ))


@hookimpl
def dsvl_adapt_register_metrics(register):
    register(MetricSpec(name="anls", compute=metrics.anls,
                        description="average normalized Levenshtein similarity, tau=0.5 (Biten et al. 2019)"))
    register(MetricSpec(name="em", compute=metrics.em,
                        description="exact match against the accepted answers, after normalisation"))
    for field in FIELDS:
        register(MetricSpec(name=f"anls_{field}", compute=metrics.anls_for(field),
                            description=f"ANLS on the rows asking the {field}"))
        register(MetricSpec(name=f"em_{field}", compute=metrics.em_for(field),
                            description=f"exact match on the rows asking the {field}"))


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    register(HardwareTarget(
        name="cpu-xeon-ort",
        description="16-core Xeon server in the bank's data centre (AVX-512 VNNI), ONNX Runtime int8; "
                    "p90 <= 200 ms per question",
        device="cpu", runtime="onnxruntime", memory_gb=64, dtypes=["int8"],
        peak_tops={"int8": 10.0}, memory_bandwidth_gbps=200,
        opset_min=13, opset_max=21, latency_p90_ms=200,
    ))
    register(HardwareTarget(
        name="gpu-l4",
        description="NVIDIA L4 (24 GB) for batch back-office processing, TensorRT, batch 16",
        device="gpu", runtime="tensorrt", memory_gb=24, dtypes=["fp16", "int8"],
        peak_tops={"fp16": 121, "int8": 242}, memory_bandwidth_gbps=300,
        opset_min=13, opset_max=20, throughput_rps=100, batch_size=16,
    ))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://dsvl_adapt_finance.conf"
