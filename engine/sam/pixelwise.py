"""SAM's 4x upscaling blocks computed pixel by pixel, on channels-last maps.

A block of two stride-2, kernel-2 transposed convolutions (with a LayerNorm2d and an activation
between them) never mixes neighbouring pixels: each input pixel alone decides the 4x4 output
pixels above it. So the block is a per-pixel MLP, ``C_in -> 4·mid -> 16·C_out``, followed by a
rearrangement of the 16 sub-pixels into place. As matrix products over channels-last rows it is
the same arithmetic as the convolutions (equal within float rounding), but a CPU runs it faster:
the LayerNorm's axis is contiguous, and nothing is converted between memory layouts. Training
the heads spends most of its time in these blocks, forward and backward.

Both functions take the block as ``nn.Sequential(ConvTranspose2d(k=2, s=2), LayerNorm2d,
activation, ConvTranspose2d(k=2, s=2)[, activation])``, the layout of SAM's ``output_upscaling``
and of WSI-SAM's fusion branches, and use its own parameters (gradients reach them as usual).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.sam.common import LayerNorm2d


def _check_block(block: nn.Sequential) -> tuple[nn.ConvTranspose2d, nn.ConvTranspose2d]:
    first, second = block[0], block[3]
    for conv in (first, second):
        if (
            not isinstance(conv, nn.ConvTranspose2d)
            or conv.kernel_size != (2, 2)
            or conv.stride != (2, 2)
            or conv.padding != (0, 0)
            or conv.bias is None
        ):
            raise TypeError("expected a block of kernel-2, stride-2 transposed convolutions")
    assert isinstance(first, nn.ConvTranspose2d) and isinstance(second, nn.ConvTranspose2d)
    return first, second


def _hidden(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The first transposed conv, the norm and the activation.

    x: (B, H, W, C_in) -> (B·H·W·4, mid), rows ordered (b, h, w, i, j): the hidden vector of
    sub-pixel (2h + i, 2w + j).
    """
    first, _ = _check_block(block)
    norm = block[1]
    assert isinstance(norm, LayerNorm2d)
    c_in, mid = first.in_channels, first.out_channels
    # ConvTranspose2d weight (C_in, mid, i, j) -> (C_in, i·j·mid)
    weight = first.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * mid)
    assert first.bias is not None
    rows = torch.addmm(first.bias.repeat(4), x.reshape(-1, c_in), weight).view(-1, mid)
    normed = torch.nn.functional.layer_norm(rows, (mid,), norm.weight, norm.bias, norm.eps)
    hidden: torch.Tensor = block[2](normed)
    return hidden


def _place_subpixels(z: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(b·h·w·4, 4·C) with rows (b, h, w, i, j) and columns (k, l, c) -> (b, 4h, 4w, C).

    Output row 4h + 2i + k, column 4w + 2j + l.
    """
    c = z.shape[-1] // 4
    z = z.view(b, h, w, 2, 2, 2, 2, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return z.reshape(b, 4 * h, 4 * w, c)


def upscale_channels_last(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``block`` applied to a channels-last map.

    Args:
        block: the upscaling block (4 or 5 modules: a trailing activation is applied).
        x: (B, H, W, C_in).
    Returns:
        (B, 4H, 4W, C_out), contiguous: ``block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)``.
    """
    _, second = _check_block(block)
    b, h, w, _ = x.shape
    mid, c_out = second.in_channels, second.out_channels
    weight = second.weight.permute(0, 2, 3, 1).reshape(mid, 4 * c_out)  # (mid, k·l·C_out)
    assert second.bias is not None
    z = torch.addmm(second.bias.repeat(4), _hidden(block, x), weight)
    out = _place_subpixels(z, b, h, w)
    if len(block) > 4:
        out = block[4](out)
    return out


def upscale_dot(block: nn.Sequential, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Each output pixel of ``block`` dotted with its batch item's vector, without the full map.

    Equal to ``einsum("bc,bchw->bhw", vectors, block(x_nchw))`` for a 4-module block, but the
    vector is applied to the last convolution's weights first, so that convolution yields one
    channel instead of C_out.

    Args:
        block: the upscaling block (exactly 4 modules: nothing after the last convolution).
        x: (B, H, W, C_in) channels-last map.
        vectors: (B, C_out), e.g. WSI-SAM's merged token.
    Returns:
        (B, 4H, 4W).
    """
    _, second = _check_block(block)
    if len(block) != 4:
        raise TypeError("upscale_dot needs a block that ends with its second convolution")
    b, h, w, _ = x.shape
    mid = second.in_channels
    assert second.bias is not None
    # (mid, C_out, k, l) · (B, C_out) -> (B, mid, k·l)
    weight = torch.einsum("mckl,bc->bmkl", second.weight, vectors).reshape(b, mid, 4)
    z = torch.bmm(_hidden(block, x).view(b, -1, mid), weight)  # (B, h·w·4, k·l)
    out = _place_subpixels(z.reshape(-1, 4), b, h, w)[..., 0]
    return out + (vectors @ second.bias)[:, None, None]
