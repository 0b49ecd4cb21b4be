"""Patch convolutions as linear layers, for export and for the weight-only quantizers.

A vision tower's patch embedding is a ``Conv2d`` whose kernel equals its stride (SigLIP's 16x16/16, SAM's 16x16/16;
SAM's 1x1 neck convolutions too): each output position reads one disjoint patch, so the convolution is a matrix
product of the flattened patches with the kernel reshaped to ``(out, in_channels * kh * kw)``. Exported as a
``Conv``, the weight-only quantizers leave it in fp32 (ONNX Runtime's ``MatMulNBits`` covers ``MatMul`` only) - at
the reference-small dimensions the 0.79 MB patch kernel was the largest fp32 tensor left in an all-int4 student.
Exported as a ``MatMul`` it is one more linear layer: quantized, measured for sensitivity and given a precision by
the same plan as every other.

:func:`patch_convs_as_linear` swaps such convolutions for :class:`PatchLinear` (same arithmetic, the kernel shared,
not copied) for the duration of a block and restores them after, so the model a caller holds is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PatchLinear", "is_patch_conv", "patch_convs_as_linear"]


class PatchLinear(torch.nn.Module):
    """``conv`` (kernel = stride, no padding) as flatten-patches -> ``linear`` -> back to the convolution's
    ``(batch, out, rows, cols)`` layout. ``linear.weight`` is a view of the convolution's kernel."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        if not is_patch_conv(conv):
            raise ValueError(f"not a patch convolution (kernel = stride, no padding, one group): {conv}")
        self.kernel = tuple(conv.kernel_size)
        out_channels = conv.out_channels
        self.linear = torch.nn.Linear(conv.in_channels * self.kernel[0] * self.kernel[1], out_channels,
                                      bias=conv.bias is not None, device="meta")
        self.linear.weight = torch.nn.Parameter(conv.weight.detach().reshape(out_channels, -1),
                                                requires_grad=False)
        if conv.bias is not None:
            self.linear.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:  # callers read ``patch_embedding.weight.dtype``
        return self.linear.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixels.shape
        kh, kw = self.kernel
        rows, cols = height // kh, width // kw
        # "valid": a convolution drops the pixels past the last whole patch
        patches = pixels[:, :, : rows * kh, : cols * kw].reshape(batch, channels, rows, kh, cols, kw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * kh * kw)
        return self.linear(patches).transpose(1, 2).reshape(batch, -1, rows, cols)


def is_patch_conv(module: torch.nn.Module) -> bool:
    """A ``Conv2d`` whose output positions read disjoint patches: kernel = stride, no padding, no dilation, one
    group, zero padding mode."""
    if not isinstance(module, torch.nn.Conv2d):
        return False
    padding = module.padding
    no_padding = padding == "valid" or (isinstance(padding, tuple) and all(p == 0 for p in padding))
    return (tuple(module.kernel_size) == tuple(module.stride) and no_padding and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros")


@contextlib.contextmanager
def patch_convs_as_linear(model: torch.nn.Module) -> Iterator[list[str]]:
    """Within the block every patch convolution of ``model`` is a :class:`PatchLinear` (its linear layer at
    ``<conv path>.linear``); yields the swapped paths. The convolutions are put back on exit, error or not."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Conv2d]] = []
    paths: list[str] = []
    try:
        for path, module in list(model.named_modules()):
            if is_patch_conv(module) and module.weight.device.type != "meta":
                parent_path, _, attribute = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                setattr(parent, attribute, PatchLinear(module))
                swapped.append((parent, attribute, module))
                paths.append(path)
        yield paths
    finally:
        for parent, attribute, conv in reversed(swapped):
            setattr(parent, attribute, conv)
