"""Patch convolutions as linear layers (dsvl_adapt.models.patch_convs): same arithmetic, model given back intact."""

from __future__ import annotations

import pytest
import torch

from dsvl_adapt.models.patch_convs import PatchLinear, is_patch_conv, patch_convs_as_linear


@pytest.mark.parametrize("kernel, padding, bias, size", [(16, "valid", True, (34, 30)),  # remainder pixels dropped
                                                         (1, 0, False, (5, 7)),           # SAM's 1x1 neck
                                                         ((4, 2), 0, True, (8, 8))])     # non-square patches
def test_patch_linear_computes_the_convolution(kernel, padding, bias, size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, kernel, stride=kernel, padding=padding, bias=bias)
    pixels = torch.randn(2, 3, *size)
    patch = PatchLinear(conv)
    torch.testing.assert_close(patch(pixels), conv(pixels), atol=1e-5, rtol=1e-5)
    assert patch.linear.weight.data_ptr() == conv.weight.data_ptr()  # a view of the kernel, not a copy


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.Conv2d(3, 8, 4, stride=2),
                                  torch.nn.Conv2d(4, 8, 2, stride=2, groups=2),
                                  torch.nn.Conv2d(3, 8, 2, stride=2, dilation=2)])
def test_other_convolutions_are_left_alone(conv):
    assert not is_patch_conv(conv)
    with pytest.raises(ValueError, match="not a patch convolution"):
        PatchLinear(conv)


def test_swap_is_undone_even_on_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2, stride=2), torch.nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(RuntimeError, match="inside"), patch_convs_as_linear(model) as paths:
        assert paths == ["0"] and isinstance(model[0], PatchLinear) and isinstance(model[1], torch.nn.Conv2d)
        raise RuntimeError("inside")
    assert isinstance(model[0], torch.nn.Conv2d) and not any(isinstance(m, PatchLinear) for m in model.modules())
