"""Quantization of DeepSeek-VL models: PyTorch int8 dynamic, ONNX Runtime int8/int4 on exported graphs, and
OpenVINO int8/int4 (NNCF) on IR converted from those graphs.

Policy
------
``QuantizeConfig.skip`` holds regular expressions, searched (``re.search``) in module paths such as
``model.language_model.layers.0.mlp.up_proj``; a matching linear layer stays in full precision. The same paths are
used for ONNX graphs (the exporter records each node's module path), so one policy serves both backends.

Default: the vision side stays fp32 - the SigLIP tower (``model.vision_model``), the SAM tower with its neck and
projection (``model.high_res_vision_*``, hybrid only) and the aligner (``model.aligner``). Everything in the language
model, ``lm_head`` included, is quantized. Why: the vision side is a small share of the weights (SigLIP-L is ~0.3B of
DeepSeek-VL-1.3B, SigLIP-L+SAM-B ~0.4B of 7B), so it buys little size, while its errors reach every image token and
visual detail is what vertical tasks (defects, scans, receipts) live on. Pass ``skip=[]`` to quantize everything.

Supported combinations (anything else is refused with the list):

========== ===== ===========================================================
backend    bits  mode
========== ===== ===========================================================
torch      8     dynamic (``nn.Linear`` -> int8 weights, activations quantized per batch at run time)
onnxruntime 8    dynamic (MatMulInteger), static (QDQ, calibrated on batches), weight_only (MatMulNBits)
onnxruntime 4    weight_only (MatMulNBits, blockwise ``block_size``)
openvino   8     weight_only (``nncf.compress_weights`` INT8_ASYM, activations in the inference precision),
                 dynamic (the same int8 weights + the CPU plugin's per-call activation quantization),
                 static (``nncf.quantize`` post-training quantization, calibrated on batches)
openvino   4     weight_only, dynamic (INT4_ASYM weights in groups of ``block_size``)
========== ===== ===========================================================

Below int8 (``precision``: int4 | mixed, docs/precision.md): int4 weight-only with a group size (``block_size``),
``symmetric``, an ``algorithm`` (:data:`ALGORITHMS` per backend) and a ``backup`` precision for the layers kept out
of int4; ``per_layer`` pins single layers (the mixed search writes it). The algorithms live in
:mod:`dsvl_adapt.quantization`.

Saved form of a torch-quantized model (``save_pretrained`` cannot write quantized modules)::

    directory/
      config.json                   the HF config of the fp32 architecture
      generation_config.json        when the model has one
      quantized_model.safetensors   fp32 tensors as in state_dict + for each quantized Linear ``<path>.weight_int8``
                                    (int8), ``.weight_scales`` (float64), ``.weight_zero_points`` (int64),
                                    ``.weight_axis`` (per-channel only), ``.bias``
      quantization.json             recipe: QuantizeConfig, the quantized module paths, tied-weight aliases, versions

``load_quantized`` rebuilds: config -> fresh model -> the same modules quantized -> tensors loaded; the reloaded
model gives bit-identical logits. The weights file is deliberately not called ``model.safetensors``: ``from_pretrained``
on that directory would otherwise try to read int8 tensors as fp32 weights.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SKIP",
    "SUPPORTED",
    "QuantizeConfig",
    "load_quantized",
    "quantize_onnx",
    "quantize_openvino",
    "quantize_torch_dynamic",
    "quantized_module_names",
    "save_quantized",
]

DEFAULT_SKIP: tuple[str, ...] = (r"^model\.vision_model\.", r"^model\.high_res_vision_", r"^model\.aligner\.")

#: backend -> mode -> bits allowed
SUPPORTED: dict[str, dict[str, tuple[int, ...]]] = {
    "torch": {"dynamic": (8,)},
    "onnxruntime": {"dynamic": (8,), "static": (8,), "weight_only": (8, 4)},
    "openvino": {"dynamic": (8, 4), "static": (8,), "weight_only": (8, 4)},
}

#: backend -> int4 weight algorithms it offers (``QuantizeConfig.algorithm``); see docs/precision.md
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "torch": (),
    "onnxruntime": ("rtn", "hqq"),
    "openvino": ("rtn", "awq", "scale_estimation", "awq_scale_estimation", "gptq"),
}
#: data-aware algorithms: they read the calibration batches
DATA_AWARE_ALGORITHMS = frozenset({"awq", "scale_estimation", "awq_scale_estimation", "gptq"})
LayerPrecision = Literal["int4", "int8", "fp32"]

RECIPE_FILE = "quantization.json"
WEIGHTS_FILE = "quantized_model.safetensors"
FORMAT = "dsvl-adapt/torch-quantized"
FORMAT_VERSION = 1


def _supported_text(backend: str) -> str:
    return ", ".join(f"bits={b} mode={m!r}" for m, bits in SUPPORTED[backend].items() for b in bits)


class QuantizeConfig(BaseModel):
    """What to quantize and how. Field order matters: ``mode`` and ``bits`` are checked against ``backend``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    backend: Literal["torch", "onnxruntime", "openvino"] = "torch"
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
        if backend is not None and mode not in SUPPORTED[backend]:
            raise ValueError(f"mode {mode!r} is not supported by backend {backend!r}; "
                             f"supported: {_supported_text(backend)}")
        return mode

    @field_validator("bits")
    @classmethod
    def _bits_supported(cls, bits: int, info: ValidationInfo) -> int:
        backend, mode = info.data.get("backend"), info.data.get("mode")
        if backend is not None and mode is not None and bits not in SUPPORTED[backend][mode]:
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
        from ..machine import has_int8_dot_product

        return has_int8_dot_product() is False

    def skips(self, module_path: str) -> bool:
        """True when ``module_path`` stays in full precision under this policy."""
        return any(re.search(p, module_path) for p in self.skip)


# --------------------------------------------------------------------------------------------------------------------
# PyTorch


def _linear_names(model: torch.nn.Module, config: QuantizeConfig) -> list[str]:
    import torch

    return [name for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and not config.skips(name)]


def quantize_torch_dynamic(model: torch.nn.Module, config: QuantizeConfig | None = None, *,
                           inplace: bool = False) -> torch.nn.Module:
    """int8 dynamic quantization of every ``nn.Linear`` not matched by ``config.skip``; returns the quantized model.

    ``inplace=False`` (default) leaves ``model`` untouched and works on a copy (twice the memory for a moment).
    The result runs on CPU only; put it in ``eval()`` mode - it cannot be trained.
    """
    from dsvl_adapt.compress import _torch_ao

    config = config or QuantizeConfig()
    if config.backend != "torch":
        raise ValueError(f"quantize_torch_dynamic needs backend='torch', got {config.backend!r}; "
                         "for onnxruntime export the model and call quantize_onnx")
    if config.embedding == "int8":
        raise ValueError("quantize.embedding='int8' applies to the embedding table of split exports (backend "
                         "onnxruntime or openvino); the torch backend quantizes nn.Linear only: use "
                         "embedding='auto' or 'fp32'")
    names = _linear_names(model, config)
    if not names:
        warnings.warn("quantize_torch_dynamic: the skip policy leaves no nn.Linear to quantize", stacklevel=2)
    was_training = model.training
    quantized = _torch_ao.quantize_linear_dynamic(model, names, per_channel=config.per_channel, inplace=inplace)
    quantized.train(was_training)
    return quantized


def quantized_module_names(model: torch.nn.Module) -> list[str]:
    """Paths of the modules that hold int8 dynamic-quantized Linear layers."""
    from dsvl_adapt.compress import _torch_ao

    return [name for name, module in model.named_modules() if _torch_ao.is_quantized_linear(module)]


def _split_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(tensors to save, aliases {dropped key: kept key} for shared storage, quantized module paths)."""
    import torch

    from dsvl_adapt.compress import _torch_ao

    qnames = quantized_module_names(model)
    modules = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    for name in qnames:
        for key, value in _torch_ao.pack_quantized_linear(modules[name]).items():
            tensors[f"{name}.{key}"] = value
    prefixes = tuple(f"{n}." for n in qnames)
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefixes):
            continue
        if not isinstance(value, torch.Tensor):  # pragma: no cover - only quantized modules hold non-tensors
            raise TypeError(f"cannot save state entry {key!r} of type {type(value).__name__}")
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 tuple(value.stride()), value.dtype)
        if value.numel() and ident in seen:  # tied weights (lm_head <-> embed_tokens): store once
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().contiguous()
    return tensors, aliases, qnames


def save_quantized(model: torch.nn.Module, directory: str | Path, config: QuantizeConfig) -> Path:
    """Write a torch-quantized model (see the module docstring for the layout); returns the directory."""
    import safetensors.torch
    import torch
    import transformers

    from dsvl_adapt.compress import _torch_ao

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases, qnames = _split_state(model)
    model.config.save_pretrained(directory)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(directory)
    safetensors.torch.save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "dsvl_adapt": FORMAT})
    recipe = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "model_class": type(model).__name__,
        "weights_file": WEIGHTS_FILE,
        "quantized_modules": qnames,
        "aliases": aliases,
        "engine": _torch_ao.engine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    return directory


def _fresh_model(directory: Path):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    hf_config = AutoConfig.from_pretrained(directory)
    # Every tensor is overwritten by the checkpoint, so random initialisation would be wasted work.
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        model = AutoModelForImageTextToText.from_config(hf_config, dtype=torch.float32)
    else:
        with no_init_weights():
            model = AutoModelForImageTextToText.from_config(hf_config, dtype=torch.float32)
        with torch.no_grad():  # uninitialised memory may hold NaNs that upset the quantization observers
            for p in model.parameters():
                p.zero_()
    return model


def load_quantized(directory: str | Path, *, check_engine: bool = True) -> torch.nn.Module:
    """Rebuild a model written by :func:`save_quantized` (eval mode, CPU).

    A plain fp32 checkpoint directory (no ``quantization.json``) is loaded with ``from_pretrained``.
    """
    import safetensors.torch
    import torch

    from dsvl_adapt.compress import _torch_ao

    directory = Path(directory)
    recipe_path = directory / RECIPE_FILE
    if not recipe_path.exists():
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()

    recipe = json.loads(recipe_path.read_text())
    if recipe.get("format") != FORMAT or recipe.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{recipe_path}: not a {FORMAT} v<={FORMAT_VERSION} recipe "
                         f"(format={recipe.get('format')!r}, version={recipe.get('format_version')!r})")
    config = QuantizeConfig.model_validate(recipe["config"])
    if check_engine and recipe.get("engine") and recipe["engine"] != _torch_ao.engine():
        warnings.warn(f"{directory} was quantized with torch engine {recipe['engine']!r}, running with "
                      f"{_torch_ao.engine()!r}: logits may differ slightly", stacklevel=2)

    model = _fresh_model(directory)
    if type(model).__name__ != recipe["model_class"]:
        raise ValueError(f"{directory}: config builds {type(model).__name__}, recipe says {recipe['model_class']}")
    qnames: list[str] = recipe["quantized_modules"]
    model = _torch_ao.quantize_linear_dynamic(model, qnames, per_channel=config.per_channel, inplace=True)
    model.eval()

    tensors = safetensors.torch.load_file(str(directory / recipe.get("weights_file", WEIGHTS_FILE)))
    packed: dict[str, dict[str, torch.Tensor]] = {n: {} for n in qnames}
    plain: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        if module in packed:
            packed[module][leaf] = value
        else:
            plain[key] = value
    for dropped, kept in recipe.get("aliases", {}).items():
        plain[dropped] = plain[kept]

    # Quantized modules refuse a partial state dict: give them their own (placeholder) entries, load strictly, then
    # set their int8 weights from the packed tensors.
    qprefixes = tuple(f"{n}." for n in qnames)
    state = model.state_dict()  # keeps the per-module version metadata the quantized modules look at
    unexpected = sorted(set(plain) - set(state))
    missing = sorted(k for k in state if k not in plain and not k.startswith(qprefixes))
    state.update(plain)
    try:
        if unexpected or missing:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{directory}: checkpoint does not match the architecture: {e}") from None
    modules = dict(model.named_modules())
    for dropped, kept in recipe.get("aliases", {}).items():  # re-share what was shared (tied lm_head/embeddings)
        owner, _, leaf = dropped.rpartition(".")
        kept_owner, _, kept_leaf = kept.rpartition(".")
        source = getattr(modules[kept_owner], kept_leaf)
        if isinstance(source, torch.nn.Parameter) and leaf in modules[owner]._parameters:
            setattr(modules[owner], leaf, source)
    for name in qnames:
        if not _torch_ao.is_quantized_linear(modules.get(name)):
            raise ValueError(f"{directory}: {name!r} is not a quantized Linear after rebuilding")
        _torch_ao.unpack_quantized_linear(modules[name], packed[name])
    return model


# --------------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def quantize_onnx(source: str | Path, destination: str | Path, config: QuantizeConfig,
                  batches: list[dict[str, Any]] | None = None, **kwargs: Any):
    """Quantize an ONNX export directory (from :func:`dsvl_adapt.export.onnx.export_onnx`) with ONNX Runtime.

    Writes a directory of the same layout (``OnnxRuntimeModel.load`` reads it) and returns an
    ``OnnxQuantizeReport``. ``batches`` feed static calibration (``config.calibration_batches`` of them are read)
    and the accuracy check against the fp32 graphs. See
    :func:`dsvl_adapt.runtimes.onnxruntime.quantize_export` for the details.
    """
    from dsvl_adapt.runtimes.onnxruntime import quantize_export

    return quantize_export(source, destination, config, batches=batches, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# OpenVINO


def quantize_openvino(source: str | Path, destination: str | Path, config: QuantizeConfig,
                      batches: list[dict[str, Any]] | None = None, *, precision: str = "f32", **kwargs: Any):
    """Convert an ONNX export directory to OpenVINO IR and compress it with NNCF (``config.backend='openvino'``).

    Writes IR + ``openvino.json`` (``OpenVinoModel.load`` reads it) and returns the ``OpenVinoReport``.
    ``precision`` (f32 | bf16) is the inference precision pinned at every load. See
    :func:`dsvl_adapt.runtimes.openvino.convert_export` for the details.
    """
    from dsvl_adapt.runtimes.openvino import convert_export

    if config.backend != "openvino":
        raise ValueError(f"quantize_openvino needs backend='openvino', got {config.backend!r}")
    return convert_export(source, destination, precision=precision, quantize=config, batches=batches, **kwargs)
