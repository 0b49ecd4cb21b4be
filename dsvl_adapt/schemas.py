"""Typed objects that plugins supply and the core consumes.

Everything a plugin registers is validated here, on registration, so a mistake is reported
against the plugin that made it rather than deep inside a run.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SLUG = re.compile(r"^[a-z][a-z0-9_-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _slug(value: str) -> str:
    if not SLUG.match(value):
        raise ValueError(f"{value!r} is not a valid name: use lowercase letters, digits, '-' or '_', starting with a letter")
    return value


Name = Annotated[str, AfterValidator(_slug)]


class Objectives(_Strict):
    """What a vertical requires of an adapted model before it ships."""

    min_retention: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False,
        description="student primary metric / teacher primary metric must be at least this"
    )
    min_accuracy: float | None = Field(None, allow_inf_nan=False,
                                       description="the student's primary metric must be at least this")
    floor_margin: float | None = Field(
        0.5, ge=0, lt=1, allow_inf_nan=False,
        description="the teacher and the student must each beat the constant-answer floor (every row given the "
                    "test split's most common answer) of the primary metric by this share of the way to a perfect "
                    "score: bar = floor + floor_margin x (best - floor); null = no floor check")
    max_forgetting: float | None = Field(
        0.05, ge=0, le=1, allow_inf_nan=False,
        description="largest drop of general-capability accuracy accepted, fine-tuning (teacher vs base) and "
                    "compression (student vs teacher) each; a drop within its 95% paired bootstrap interval is "
                    "noise, not forgetting; null = not checked")


class Vertical(_Strict):
    """An industry vertical: what data, prompt, metrics and hardware it brings together."""

    name: Name = Field(description="identifier used as `vertical=<name>`")
    description: str
    dataset: str = Field(description="name of a registered DatasetSpec")
    prompt: str = Field(description="name of a registered PromptTemplate")
    metrics: list[str] = Field(min_length=1, description="registered metric names; the first is primary")
    targets: list[str] = Field(default_factory=list, description="registered hardware target names")
    objectives: Objectives = Field(default_factory=Objectives)
    max_answer_tokens: int = Field(16, ge=1, le=512, description="generation budget per answer")


    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


class DatasetRequest(_Strict):
    """What the core asks a dataset factory for."""

    split: Literal["train", "validation", "test"]
    size: int = Field(ge=1, description="number of rows wanted (a generator makes exactly this many)")
    seed: int = 0
    image_size: int = Field(128, ge=8)
    source: Path | None = Field(None, description="a user's data directory; None means the built-in generator")


class DatasetSpec(_Strict):
    """A named dataset factory: ``load(request) -> iterable of row dicts``."""

    name: Name
    description: str = ""
    load: Callable[[DatasetRequest], Iterable[dict[str, Any]]]



class PromptTemplate(_Strict):
    """How a row becomes the user's turn of a DeepSeek-VL conversation."""

    name: Name
    system: str = Field("", description="system text placed before the conversation")
    user: str = Field("{question}", description="user turn; fields from the row: {question} and meta keys")
    answer_format: str | None = Field(None, description="a note on the expected answer, for documentation")


    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.user) if f}

    def render(self, question: str, meta: dict[str, Any] | None = None) -> str:
        values = dict(meta or {}, question=question)
        missing = self.fields - values.keys()
        if missing:
            raise KeyError(f"prompt {self.name!r} needs field(s) {sorted(missing)} that the row does not have")
        return self.user.format(**values)


class MetricSpec(_Strict):
    """A metric over generated answers; ``compute(predictions, references, rows) -> float``."""

    name: Name
    compute: Callable[..., float]
    higher_is_better: bool = True
    lower: float = 0.0
    upper: float = 1.0
    description: str = ""



Runtime = Literal["torch", "onnxruntime", "openvino", "tensorrt", "executorch"]
DType = Literal["fp32", "bf16", "fp16", "int8", "int4"]


class HardwareTarget(_Strict):
    """A device an adapted model must fit, with the runtime it uses and its objectives."""

    name: Name
    description: str = ""
    device: Literal["cpu", "gpu", "npu"]
    runtime: Runtime
    memory_gb: float = Field(gt=0, description="memory available to the model")
    dtypes: list[DType] = Field(min_length=1, description="data types the device computes in")
    peak_tops: dict[DType, float] = Field(
        default_factory=dict, description="peak dense throughput per dtype, in tera-ops per second"
    )
    memory_bandwidth_gbps: float | None = Field(None, gt=0, description="memory bandwidth in GB/s")
    opset_min: int = Field(13, ge=7)
    opset_max: int = Field(21, ge=7)
    supported_ops: list[str] | None = Field(None, description="ONNX op types the device runs; None = all")
    latency_p90_ms: float | None = Field(None, gt=0, description="objective: p90 latency per request")
    throughput_rps: float | None = Field(None, gt=0, description="objective: requests per second at batch_size")
    batch_size: int = Field(1, ge=1)
    sequence_length: int = Field(1024, ge=1, description="context length used for the KV-cache estimate")


    @model_validator(mode="after")
    def _opset_range(self) -> "HardwareTarget":
        if self.opset_min > self.opset_max:
            raise ValueError(f"opset_min ({self.opset_min}) is above opset_max ({self.opset_max})")
        return self


class Row(_Strict):
    """One validated example: an RGB image, a question and its reference answer."""

    id: str
    image: Any = Field(description="a PIL.Image.Image in RGB mode")
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)
