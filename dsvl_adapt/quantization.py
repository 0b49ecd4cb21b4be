"""Quantization settings shared by the quantize stage and the runtime backends (a neutral module: no stage, no
backend, nothing heavy imported).

:class:`QuantizeConfig` is what ``quantize.*`` in the run configuration holds; :meth:`QuantizeConfig.to_plan` turns
it into the runtime contract's :class:`~dsvl_adapt.runtimes.contract.QuantizationPlan`, which the stage hands to the
target's backend, and :meth:`QuantizeConfig.from_plan` turns a plan back into a configuration for the built-in
backends' algorithms. ``SUPPORTED`` lists the combinations of the built-in backends (torch, onnxruntime, openvino);
a plugin's backend checks its own in ``prepare`` and declares them in its ``Capabilities``. The policy and the
algorithms are described in :mod:`dsvl_adapt.compress.quantize` (PyTorch), :mod:`dsvl_adapt.runtimes.onnxruntime`
and :mod:`dsvl_adapt.runtimes.openvino`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ConfigError
from .runtimes.contract import QuantizationPlan, RuntimeBackend

__all__ = ["ALGORITHMS", "DATA_AWARE_ALGORITHMS", "DEFAULT_SKIP", "SUPPORTED", "QuantizeConfig", "backend_name", "check_plan", "config_for_backend"]

DEFAULT_SKIP: tuple[str, ...] = (r"^model\.vision_model\.", r"^model\.high_res_vision_", r"^model\.aligner\.")

#: backend -> mode -> bits allowed
SUPPORTED: dict[str, dict[str, tuple[int, ...]]] = {
    "torch": {"dynamic": (8,)},
    "onnxruntime": {"dynamic": (8,), "static": (8,), "weight_only": (8, 4)},
    "openvino": {"dynamic": (8, 4), "static": (8,), "weight_only": (8, 4)},
}



def _supported_text(backend: str) -> str:
    return ", ".join(f"bits={b} mode={m!r}" for m, bits in SUPPORTED[backend].items() for b in bits)


#: backend -> int4 weight algorithms it offers (``QuantizeConfig.algorithm``); see docs/precision.md
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "torch": (),
    "onnxruntime": ("rtn", "hqq"),
    "openvino": ("rtn", "awq", "scale_estimation", "awq_scale_estimation", "gptq"),
}
#: data-aware algorithms: they read the calibration batches
DATA_AWARE_ALGORITHMS = frozenset({"awq", "scale_estimation", "awq_scale_estimation", "gptq"})
LayerPrecision = Literal["int4", "int8", "fp32"]


class QuantizeConfig(BaseModel):
    """What to quantize and how. Field order matters: ``mode`` and ``bits`` are checked against ``backend``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    backend: str = Field("torch", pattern=r"^[a-z][a-z0-9_-]*$",
                         description="a registered runtime backend (`dsvl-adapt targets` lists them); mode and bits "
                                     "are checked here for the built-in ones, by the backend itself for others")
    mode: Literal["dynamic", "static", "weight_only"] = "dynamic"
    bits: Literal[8, 4] = 8
    per_channel: bool = Field(True, description="per-output-channel weight scales (int8 modes); int4 is blockwise")
    skip: list[str] = Field(default_factory=lambda: list(DEFAULT_SKIP),
                            description="regexes searched in module paths; matching layers stay full precision")
    calibration_batches: int = Field(8, ge=1, description="batches read for static calibration")
    block_size: int = Field(32, ge=16, description="weight_only: weights per quantization block (power of 2)")
    reduce_range: Literal["auto"] | bool = Field(
        "auto", description="int8 with quantized activations (ONNX Runtime dynamic/static, OpenVINO static): 7-bit "
                            "weights, which ONNX Runtime's documentation advises on x86 CPUs without VNNI, where "
                            "u8s8 kernels saturate (NNCF: overflow_fix=enable). auto = on when this machine lacks "
                            "VNNI/AMX int8 (the choice is recorded in the quantize stage's figures)")
    embedding: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="the token-embedding table of split exports (onnxruntime, openvino), which the caller "
                            "looks input_ids up in: int8 per row, or fp32. auto = int8 on those backends; the torch "
                            "backend quantizes Linear layers only and keeps the embedding fp32")

    precision: Literal["int8", "int4", "mixed"] | None = Field(
        None, description="weight precision of the language model: int8, int4 (weight-only, groups of block_size; "
                          "lm_head at `backup`), or mixed (int4/int8/fp32 chosen per layer by sensitivity to meet "
                          "objectives.min_retention through the deployed runtime). Sets bits and mode; null = as "
                          "bits/mode say")
    symmetric: bool = Field(False, description="int4: symmetric weights (no zero points) instead of asymmetric")
    algorithm: Literal["rtn", "hqq", "awq", "scale_estimation", "awq_scale_estimation", "gptq"] = Field(
        "rtn", description="int4 weight algorithm: rtn (round to nearest); onnxruntime: hqq; openvino (NNCF, "
                           "calibrated on the vertical's rows): awq, scale_estimation, awq_scale_estimation, gptq")
    backup: Literal["int8", "fp32"] = Field(
        "int8", description="int4: precision of the layers kept out of int4 (lm_head; openvino: NNCF's backup "
                            "layers and the share left by ratio)")
    ratio: float = Field(1.0, gt=0, le=1, description="openvino int4: share of the LM's layers in int4 (NNCF picks "
                                                      "by its sensitivity), the rest at `backup`")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="onnxruntime MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (CPU)")
    per_layer: dict[str, LayerPrecision] = Field(
        default_factory=dict, description="module path -> int4 | int8 | fp32 for single layers (a mixed plan "
                                          "writes it); a path matched by `skip` stays fp32 regardless")

    @model_validator(mode="before")
    @classmethod
    def _precision_sets_bits_and_mode(cls, data: Any) -> Any:
        """``precision`` wins over ``bits``/``mode``: int4 and mixed are weight-only (openvino also dynamic)."""
        if not isinstance(data, dict) or data.get("precision") is None:
            return data
        data = dict(data)
        precision, backend = data["precision"], data.get("backend", "torch")
        if precision == "int8":
            data["bits"] = 8
        elif precision in ("int4", "mixed") and backend != "torch":
            data["bits"] = 4
            if not (backend == "openvino" and data.get("mode") == "dynamic"):
                data["mode"] = "weight_only"
        return data

    @field_validator("mode")
    @classmethod
    def _mode_supported(cls, mode: str, info: ValidationInfo) -> str:
        backend = info.data.get("backend")
        if backend in SUPPORTED and mode not in SUPPORTED[backend]:
            raise ValueError(f"mode {mode!r} is not supported by backend {backend!r}; "
                             f"supported: {_supported_text(backend)}")
        return mode

    @field_validator("bits")
    @classmethod
    def _bits_supported(cls, bits: int, info: ValidationInfo) -> int:
        backend, mode = info.data.get("backend"), info.data.get("mode")
        if backend in SUPPORTED and mode is not None and bits not in SUPPORTED[backend][mode]:
            raise ValueError(f"bits={bits} with mode {mode!r} is not supported by backend {backend!r}; "
                             f"supported: {_supported_text(backend)}")
        return bits

    @field_validator("skip")
    @classmethod
    def _skip_compiles(cls, skip: list[str]) -> list[str]:
        for i, pattern in enumerate(skip):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"skip[{i}] {pattern!r} is not a valid regular expression: {e}") from None
        return skip

    @field_validator("block_size")
    @classmethod
    def _block_power_of_two(cls, block_size: int) -> int:
        if block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of 2, got {block_size}")
        return block_size

    @model_validator(mode="after")
    def _low_bit_knobs_fit_the_backend(self) -> QuantizeConfig:
        backend = self.backend
        if self.precision in ("int4", "mixed") and backend == "torch":
            raise ValueError(f"precision={self.precision!r} needs int4 kernels, which the torch backend does not "
                             "have here (torch.ao dynamic quantization is int8 only): use backend onnxruntime "
                             "(MatMulNBits) or openvino (NNCF), e.g. a target with runtime: onnxruntime")
        low_bit = self.bits == 4 or self.precision == "mixed"
        if self.algorithm != "rtn":
            if not low_bit:
                raise ValueError(f"algorithm={self.algorithm!r} applies to int4 weights; this config is int8 "
                                 "(set precision=int4 or mixed, or algorithm=rtn)")
            if self.algorithm not in ALGORITHMS[backend]:
                raise ValueError(f"algorithm {self.algorithm!r} is not offered by backend {backend!r}; "
                                 f"choose one of: {', '.join(ALGORITHMS[backend])}")
        if self.algorithm == "hqq" and self.symmetric:
            raise ValueError("algorithm='hqq' is asymmetric by construction: set symmetric=false or algorithm=rtn")
        if low_bit and not 16 <= self.block_size <= 256:
            raise ValueError(f"block_size (the int4 group size) must be 16..256 and a power of 2, got "
                             f"{self.block_size}: 32, 64 or 128 are the usual choices")
        if self.ratio < 1 and backend != "openvino":
            raise ValueError(f"ratio={self.ratio} is NNCF's int4 share (backend openvino); on {backend!r} use "
                             "precision=mixed, which chooses int4/int8 per layer by measured sensitivity")
        if self.accuracy_level is not None and backend != "onnxruntime":
            raise ValueError(f"accuracy_level is an ONNX Runtime MatMulNBits attribute; backend {backend!r} does "
                             "not have it: remove it")
        for path, precision in self.per_layer.items():
            if precision == "int4" and not low_bit:
                raise ValueError(f"per_layer[{path!r}]='int4' in an int8 config: set precision=int4 or mixed")
        return self

    def layer_precision(self, module_path: str) -> LayerPrecision:
        """The weight precision of one linear layer under this config: skip -> fp32, then ``per_layer``, then
        ``lm_head`` at ``backup`` under int4, else int4 or int8 by ``bits``."""
        if self.skips(module_path):
            return "fp32"
        if module_path in self.per_layer:
            return self.per_layer[module_path]
        if self.bits == 4 and module_path.rsplit(".", 1)[-1] == "lm_head":
            return self.backup
        return "int4" if self.bits == 4 else "int8"

    @property
    def embedding_dtype(self) -> Literal["fp32", "int8"]:
        """The embedding table's dtype on this backend (``auto`` resolved)."""
        if self.embedding == "auto":
            return "fp32" if self.backend == "torch" else "int8"
        return self.embedding

    @property
    def reduce_range_resolved(self) -> bool:
        """``reduce_range`` with ``auto`` resolved against this machine's CPU."""
        if self.reduce_range != "auto":
            return bool(self.reduce_range)
        from .machine import has_int8_dot_product

        return has_int8_dot_product() is False

    def skips(self, module_path: str) -> bool:
        """True when ``module_path`` stays in full precision under this policy."""
        return any(re.search(p, module_path) for p in self.skip)


    # -- the runtime contract's plan ---------------------------------------------------------------------------
    def to_plan(self) -> QuantizationPlan:
        """This configuration as the runtime contract's :class:`QuantizationPlan` (``weights`` = ``int<bits>``,
        every other field in ``options``), which a backend's ``prepare`` receives."""
        options = self.model_dump(mode="json", exclude={"backend", "mode", "bits", "per_layer"})
        return QuantizationPlan(weights=f"int{self.bits}", mode=self.mode, options=options,
                                per_layer=dict(self.per_layer))

    @classmethod
    def from_plan(cls, backend: str, plan: QuantizationPlan) -> QuantizeConfig | None:
        """The configuration a :class:`QuantizationPlan` stands for on ``backend``; None for ``weights="fp32"``
        (nothing to quantize). Raises ``ValueError`` naming what the backend does not support."""
        if plan.weights == "fp32":
            return None
        bits = {"int8": 8, "int4": 4}.get(plan.weights)
        if bits is None:
            raise ValueError(f"backend {backend!r} quantizes to int8 or int4, not {plan.weights!r}")
        fields = {"backend": backend, "bits": bits, **({"mode": plan.mode} if plan.mode else {}), **plan.options,
                  **({"per_layer": dict(plan.per_layer)} if plan.per_layer else {})}
        known = set(cls.model_fields)
        return cls.model_validate({k: v for k, v in fields.items() if k in known})


def backend_name(settings: QuantizeConfig, target_runtime: str | None, registered: Collection[str],
                 follow_target: bool = True) -> str:
    """The runtime backend a run prepares its deployable artifact for: the target's runtime when ``follow_target``
    and a backend of that name is registered, else ``settings.backend`` (a target may name a runtime with no backend
    installed here, e.g. ``tensorrt``: its fit is then estimated)."""
    if follow_target and target_runtime is not None and target_runtime in registered:
        return target_runtime
    return settings.backend


def config_for_backend(settings: QuantizeConfig, backend: RuntimeBackend) -> QuantizeConfig:
    """``settings`` (e.g. the run's ``quantize`` section) for ``backend``, with mode and bits checked against it: the
    built-in backends' combinations (``SUPPORTED``), then what the backend declares in its capabilities. Raises
    :class:`ConfigError` naming the backend, what it offers and the settings to change."""
    fields = {name: getattr(settings, name) for name in QuantizeConfig.model_fields}
    try:
        config = QuantizeConfig.model_validate({**fields, "backend": backend.name})
    except ValidationError as e:
        raise ConfigError(f"quantize (for backend {backend.name!r}): "
                          + "; ".join((f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "") + err["msg"]
                                      for err in e.errors())
                          ) from None
    check_plan(backend, config)
    return config


def check_plan(backend: RuntimeBackend, config: QuantizeConfig) -> None:
    """Refuse a weight format or mode that the backend does not declare in its capabilities."""
    capabilities = backend.capabilities()
    modes = {m.replace("-", "_") for m in capabilities.quantization_modes}
    if f"int{config.bits}" not in capabilities.weight_formats or config.mode not in modes:
        raise ConfigError(f"quantize: backend {backend.name!r} does not offer bits={config.bits} mode={config.mode!r} "
                          f"(its weight formats: {', '.join(capabilities.weight_formats)}; modes: "
                          f"{', '.join(sorted(modes)) or 'none'}); change quantize.bits/quantize.mode or the target")
