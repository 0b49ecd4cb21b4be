"""Per-layer sensitivity to weight quantization, measured on calibration rows.

For each linear layer ``y = x W^T`` the score at a precision is the relative output error on the vertical's own
calibration activations::

    e(W) = || X (W - Q(W))^T ||_F^2 / || X W^T ||_F^2

with ``Q`` the group-wise round-to-nearest quantizer of that precision (int4: groups of ``group_size`` along the
input dimension, as MatMulNBits and NNCF store them; int8: the same at 8 bits).

Why this measure: the numerator is ``tr(dW H dW^T)`` with ``H = X^T X``, the Hessian of the layer's squared output
error - the quantity GPTQ and OBQ minimise - so it is a Hessian proxy that weighs each weight error by how strongly
the vertical's activations use that input channel (the activation outliers that make a layer fragile, which a
weight-only error misses). It needs one forward pass over the calibration rows for all layers together; an
end-to-end alternative (the logit KL with one layer quantized at a time) costs a forward pass per layer per
precision - 2 x 169 passes on DeepSeek-VL-1.3B. Layer-local errors ignore how errors compound through the depth;
the mixed-precision search (:mod:`.mixed`) therefore only uses them to order layers and checks every candidate plan
end to end through the deployed runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dsvl_adapt.models.patch_convs import patch_convs_as_linear

__all__ = ["LayerSensitivity", "fake_quantize", "layer_sensitivity"]


@dataclass
class LayerSensitivity:
    module: str
    in_features: int
    out_features: int
    int4_error: float
    int8_error: float

    @property
    def params(self) -> int:
        return self.in_features * self.out_features

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params": self.params}


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = False) -> torch.Tensor:
    """``weight`` (out, in) quantized round-to-nearest in groups of ``group_size`` input channels and dequantized
    (the last group padded with zeros when ``in`` is not a multiple)."""
    out_features, in_features = weight.shape
    groups = -(-in_features // group_size)
    padded = torch.zeros(out_features, groups * group_size, dtype=torch.float32)
    padded[:, :in_features] = weight.float()
    w = padded.view(out_features, groups, group_size)
    if symmetric:
        levels = 2 ** (bits - 1)
        scale = (w.abs().amax(-1, keepdim=True) / levels).clamp_min(1e-12)
        q = (w / scale).round().clamp(-levels, levels - 1) * scale
    else:
        levels = 2**bits - 1
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((high - low) / levels).clamp_min(1e-12)
        zero = (-low / scale).round()
        q = ((w / scale).round() + zero).clamp(0, levels)
        q = (q - zero) * scale
    return q.view(out_features, -1)[:, :in_features].to(weight.dtype)


def layer_sensitivity(model: torch.nn.Module, batches: Sequence[dict[str, Any]], *,
                      include: Callable[[str], bool], group_size: int = 32, symmetric: bool = False,
                      max_rows: int = 512) -> list[LayerSensitivity]:
    """Sensitivity of every ``nn.Linear`` whose path ``include`` accepts, over ``batches`` (model batches; a
    ``labels`` entry is ignored). At most ``max_rows`` token positions per layer and batch enter the sums
    (evenly spaced), which bounds the cost on large models. Sorted as the model's modules are. Patch convolutions
    count as the linear layers the export makes of them (``<conv path>.linear``, :mod:`dsvl_adapt.models.patch_convs`).
    """
    with patch_convs_as_linear(model):
        return _layer_sensitivity(model, batches, include, group_size, symmetric, max_rows)


def _layer_sensitivity(model, batches, include, group_size, symmetric, max_rows) -> list[LayerSensitivity]:
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and include(name)]
    if not names:
        raise ValueError("no linear layer to measure: the skip policy excludes every nn.Linear")
    modules = dict(model.named_modules())
    sums = {name: [0.0, 0.0, 0.0] for name in names}  # int4 error, int8 error, output energy

    def hook(name: str):
        def measure(module: torch.nn.Linear, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, module.in_features).float()
            if x.shape[0] > max_rows:
                x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
            w = module.weight.detach().float()
            reference = x @ w.T
            sums[name][2] += float(reference.square().sum())
            for slot, bits in ((0, 4), (1, 8)):
                delta = w - fake_quantize(w, bits, group_size, symmetric)
                sums[name][slot] += float((x @ delta.T).square().sum())
        return measure

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = []
    for name in names:
        e4, e8, energy = sums[name]
        energy = max(energy, 1e-30)
        module = modules[name]
        out.append(LayerSensitivity(name, module.in_features, module.out_features, e4 / energy, e8 / energy))
    return out
