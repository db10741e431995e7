"""LayerNorm2d (torch's fused layer_norm over the channel axis) against the mean/variance formula
it replaced, forward and backward."""

from __future__ import annotations

import torch

from engine.sam.common import LayerNorm2d


def test_layer_norm_2d_equals_the_per_pixel_formula() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 16, 9, 7) * 3 + 1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)

    mean = x_ref.mean(1, keepdim=True)
    var = (x_ref - mean).pow(2).mean(1, keepdim=True)
    expected = norm.weight[:, None, None] * (x_ref - mean) / torch.sqrt(var + norm.eps)
    expected = expected + norm.bias[:, None, None]

    got = norm(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
