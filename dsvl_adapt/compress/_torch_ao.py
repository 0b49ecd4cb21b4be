"""The one place that touches ``torch.ao.quantization`` (deprecated in torch 2.x, still working in 2.13).

Everything the rest of the SDK needs from eager-mode dynamic quantization goes through these few functions,
so swapping the backend (e.g. for torchao) means rewriting this file only:

* :func:`quantize_linear_dynamic` - replace the named ``nn.Linear`` modules with int8 dynamic ones;
* :func:`is_quantized_linear` - recognise such a module;
* :func:`pack_quantized_linear` / :func:`unpack_quantized_linear` - move a quantized Linear to and from plain
  tensors (int8 weight, float64 scales, int64 zero points, fp32 bias) that safetensors can store, bit-exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch


def _ao():
    # Importing torch.ao.quantization warns that it is deprecated; the warning says nothing new to our users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as ao
        from torch.ao.nn.quantized import dynamic as nnqd
    return ao, nnqd


def engine() -> str:
    """The quantized kernel engine torch uses now (``x86``, ``fbgemm``, ``qnnpack`` ...)."""
    return str(torch.backends.quantized.engine)


def quantize_linear_dynamic(model: torch.nn.Module, names: Iterable[str], *, per_channel: bool,
                            inplace: bool) -> torch.nn.Module:
    """int8 dynamic quantization of exactly the ``nn.Linear`` modules called ``names`` (module paths)."""
    ao, _ = _ao()
    qconfig = ao.per_channel_dynamic_qconfig if per_channel else ao.default_dynamic_qconfig
    spec = {name: qconfig for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao.quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=inplace)


def is_quantized_linear(module: torch.nn.Module) -> bool:
    _, nnqd = _ao()
    return isinstance(module, nnqd.Linear)


def pack_quantized_linear(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors that describe a dynamic-quantized Linear exactly (keys are relative to the module)."""
    weight, bias = module._weight_bias()
    out: dict[str, torch.Tensor] = {"weight_int8": weight.int_repr().contiguous()}
    scheme = weight.qscheme()
    if scheme == torch.per_channel_affine:
        out["weight_scales"] = weight.q_per_channel_scales().to(torch.float64).contiguous()
        out["weight_zero_points"] = weight.q_per_channel_zero_points().to(torch.int64).contiguous()
        out["weight_axis"] = torch.tensor([weight.q_per_channel_axis()], dtype=torch.int64)
    elif scheme == torch.per_tensor_affine:
        out["weight_scales"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
        out["weight_zero_points"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
    else:  # pragma: no cover - torch.ao only produces the two schemes above for dynamic Linear
        raise ValueError(f"unsupported quantization scheme {scheme}")
    if bias is not None:
        out["bias"] = bias.detach().contiguous()
    return out


def unpack_quantized_linear(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what :func:`pack_quantized_linear` wrote into an identically quantized module."""
    q = tensors["weight_int8"]
    scales, zero_points = tensors["weight_scales"], tensors["weight_zero_points"]
    if "weight_axis" in tensors:
        weight = torch._make_per_channel_quantized_tensor(q, scales, zero_points, int(tensors["weight_axis"][0]))
    else:
        weight = torch._make_per_tensor_quantized_tensor(q, float(scales[0]), int(zero_points[0]))
    current, _ = module._weight_bias()
    if current.shape != weight.shape or current.qscheme() != weight.qscheme():
        raise ValueError(f"quantized weight {tuple(weight.shape)}/{weight.qscheme()} does not fit the module "
                         f"({tuple(current.shape)}/{current.qscheme()})")
    module.set_weight_bias(weight, tensors.get("bias"))
