"""The pixel-wise upscaling blocks equal the convolutions they replace, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.sam.common import LayerNorm2d
from engine.sam.pixelwise import upscale_channels_last, upscale_dot
from engine.wsi_sam import WsiSamHead, _conv_block_dot


def _block(c_in: int, mid: int, c_out: int, trailing: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(c_in, mid, kernel_size=2, stride=2),
        LayerNorm2d(mid),
        nn.GELU(),
        nn.ConvTranspose2d(mid, c_out, kernel_size=2, stride=2),
    ]
    if trailing:
        layers.append(nn.GELU())
    block = nn.Sequential(*layers)
    for p in block.parameters():  # LayerNorm2d starts at 1 / 0: make every parameter count
        p.data.normal_(0, 0.3)
    return block


def _grads(out: torch.Tensor, wrt: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad((out * weights).sum(), wrt))


@pytest.mark.parametrize("trailing", [False, True])
def test_upscale_channels_last_equals_the_block(trailing: bool) -> None:
    block = _block(24, 16, 8, trailing)
    x = torch.randn(3, 5, 7, 24, requires_grad=True)  # (B, H, W, C): not square, odd sizes
    want = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    got = upscale_channels_last(block, x)
    assert got.shape == (3, 20, 28, 8) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [x, *block.parameters()]
    for g, w in zip(_grads(got, params, 1), _grads(want, params, 1), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_upscale_dot_equals_the_token_applied_to_the_block() -> None:
    block = _block(24, 16, 8, trailing=False)
    x = torch.randn(3, 5, 7, 24, requires_grad=True)
    vectors = torch.randn(3, 8, requires_grad=True)
    want = torch.einsum("bc,bchw->bhw", vectors, block(x.permute(0, 3, 1, 2)))
    got = upscale_dot(block, x, vectors)
    assert got.shape == (3, 20, 28)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [x, vectors, *block.parameters()]
    for g, w in zip(_grads(got, params, 2), _grads(want, params, 2), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [3, 6])  # 6: two groups of the diagonal trick
def test_conv_block_dot_equals_the_token_applied_to_the_block(batch: int) -> None:
    torch.manual_seed(0)
    block = WsiSamHead(mask_feature_dim=8).embedding_maskfeature
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(batch, 12, 10, 8, requires_grad=True)  # (B, H, W, C)
    vectors = torch.randn(batch, 8, requires_grad=True)
    want = torch.einsum("bc,bchw->bhw", vectors, block(x.permute(0, 3, 1, 2)))
    got = _conv_block_dot(block, x, vectors)
    assert got.shape == (batch, 12, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [x, vectors, *block.parameters()]
    for g, w in zip(_grads(got, params, 3), _grads(want, params, 3), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_other_blocks_are_refused() -> None:
    conv = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1), LayerNorm2d(4), nn.GELU(), nn.Conv2d(4, 4, 1)
    )
    with pytest.raises(TypeError, match="transposed"):
        upscale_channels_last(conv, torch.randn(1, 2, 2, 4))
    with pytest.raises(TypeError, match="ends with"):
        upscale_dot(_block(4, 4, 4, trailing=True), torch.randn(1, 2, 2, 4), torch.randn(1, 4))
