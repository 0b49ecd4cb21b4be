"""dsvl-adapt plugin: e-commerce product attribute extraction.

Supplies the ``ecommerce`` vertical: a deterministic generator of product photos asked for one
attribute each (category, colour, pattern), loaders for the user's own JSONL + images or a
product-catalogue CSV, the prompt, per-attribute accuracy and macro-F1, and two hardware targets
(an A100 serving fleet judged on throughput, a CPU batch box). Built only on dsvl-adapt's public
hooks; the generator is imported when data is read.
"""

from __future__ import annotations

from dsvl_adapt import hookimpl
from dsvl_adapt.schemas import (
    DataCheck,
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

DATASET = "ecommerce-products"
ATTRIBUTES = ("category", "colour", "pattern")
# the question a catalogue CSV line asks for each of its attributes: the generator's first one
CATALOGUE_QUESTIONS = {
    "category": "What kind of product is this?",
    "colour": "What colour is this product?",
    "pattern": "What pattern does this product have?",
}


def load_rows(request: DatasetRequest):
    """Generated products, or the user's ``<split>.jsonl`` or ``<split>.csv`` catalogue in ``request.source``."""
    if request.source is not None:
        from dsvl_adapt.data.jsonl import find_split_file
        from dsvl_adapt.errors import DataError

        source = request.source
        # the validation split may be called val, valid or dev too
        jsonl = find_split_file(source, request.split) or source / f"{request.split}.jsonl"
        csv = find_split_file(source, request.split, ".csv") or source / f"{request.split}.csv"
        if jsonl.is_file() and csv.is_file():
            raise DataError(f"{source} holds both {jsonl.name} and {csv.name}; keep one format per split")
        if csv.is_file():
            from .catalogue import read_catalogue_csv

            return read_catalogue_csv(csv, attributes=ATTRIBUTES, questions=CATALOGUE_QUESTIONS)
        if not jsonl.is_file():
            raise DataError(f"{source}: no data for split {request.split!r}; expected {jsonl} (JSONL + images) or "
                            f"{csv} (a product catalogue)")
        from dsvl_adapt.data.jsonl import read_jsonl_split

        return read_jsonl_split(source, request.split)
    from .generator import generate_rows

    return generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(
        name="ecommerce",
        description="Product attributes from catalogue photos: category, colour and pattern",
        dataset=DATASET,
        prompt="ecommerce-attribute",
        metrics=["attribute_accuracy", "attribute_macro_f1", *(f"{a}_accuracy" for a in ATTRIBUTES)],
        targets=["a100-serving", "cpu-batch"],
        objectives=Objectives(min_retention=0.9),
        max_answer_tokens=8,
    ))


@hookimpl
def dsvl_adapt_register_datasets(register):
    register(DatasetSpec(name=DATASET, load=load_rows,
                         description="generated product photos, one attribute question each; or your JSONL or "
                                     "catalogue CSV via data.source"))


@hookimpl
def dsvl_adapt_register_prompts(register):
    register(PromptTemplate(
        name="ecommerce-attribute",
        system="You tag product photos for an online catalogue. Answer with the attribute value only, in lower case.",
        user="{question}",
        answer_format="one value of the attribute asked, e.g. 'mug', 'blue', 'striped'",
    ))


@hookimpl
def dsvl_adapt_register_metrics(register):
    register(MetricSpec(name="attribute_accuracy", compute=metrics.attribute_accuracy,
                        description="mean over attributes of the accuracy on rows asking that attribute"))
    register(MetricSpec(name="attribute_macro_f1", compute=metrics.attribute_macro_f1,
                        description="macro F1 over (attribute, value) classes of the references"))
    for attribute in ATTRIBUTES:
        register(MetricSpec(name=f"{attribute}_accuracy", compute=metrics.accuracy_for(attribute),
                            description=f"accuracy on the rows asking the {attribute}"))


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    register(HardwareTarget(
        name="a100-serving",
        description="NVIDIA A100 80 GB serving fleet (TensorRT, batch 32): catalogue enrichment judged on throughput",
        device="gpu", runtime="tensorrt", memory_gb=80, dtypes=["fp32", "bf16", "fp16", "int8"],
        peak_tops={"fp32": 19.5, "bf16": 312, "fp16": 312, "int8": 624}, memory_bandwidth_gbps=2039,
        opset_min=13, opset_max=20, throughput_rps=400, batch_size=32,
    ))
    register(HardwareTarget(
        name="cpu-batch",
        description="16-core x86 batch server (AVX-512 VNNI), ONNX Runtime, batch 8, for off-peak re-tagging",
        device="cpu", runtime="onnxruntime", memory_gb=64, dtypes=["fp32", "int8"],
        peak_tops={"fp32": 3.0, "int8": 12.0}, memory_bandwidth_gbps=150,
        opset_min=13, opset_max=21, throughput_rps=20, batch_size=8,
    ))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://dsvl_adapt_ecommerce.conf"


def _catalogue_rules(data):
    from .checks import catalogue_rules

    return catalogue_rules(data)


@hookimpl
def dsvl_adapt_register_data_checks(register):
    register(DataCheck(name="ecommerce-catalogue-rules", level=1, run=_catalogue_rules, verticals=["ecommerce"],
                       description="an answer must be a value of the attribute asked; a title in meta.title must "
                                   "not name another colour than the answer"))
