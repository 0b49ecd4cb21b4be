"""PyTorch int8 dynamic quantization of DeepSeek-VL models, and the policy every backend follows.

The settings (:class:`~dsvl_adapt.quantization.QuantizeConfig`, re-exported here) live in the neutral module
:mod:`dsvl_adapt.quantization`; ONNX Runtime int8/int4 on exported graphs is :func:`dsvl_adapt.runtimes.onnxruntime.
quantize_export` and OpenVINO int8/int4 (NNCF) on IR converted from those graphs :func:`dsvl_adapt.runtimes.openvino.
quantize_openvino`. The quantize stage reaches all three through the target's runtime backend (the registry's
``runtimes``); this module imports no backend.

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
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..quantization import DEFAULT_SKIP, SUPPORTED, QuantizeConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_SKIP",
    "SUPPORTED",
    "QuantizeConfig",
    "load_quantized",
    "quantize_torch_dynamic",
    "quantized_module_names",
    "save_quantized",
]

RECIPE_FILE = "quantization.json"
WEIGHTS_FILE = "quantized_model.safetensors"
FORMAT = "dsvl-adapt/torch-quantized"
FORMAT_VERSION = 1


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
                         "for onnxruntime export the model and call dsvl_adapt.runtimes.onnxruntime.quantize_export")
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
