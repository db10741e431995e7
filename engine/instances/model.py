"""The instance decoder: a small U-Net-like head on the frozen TinyViT's multi-scale maps.

It predicts three maps per pixel of a field (see :mod:`engine.instances.targets`): foreground
(a logit), the normalised distance to the object centre and to the object boundary (each a logit
whose sigmoid is the distance). The encoder stays frozen; only this module trains.

Inputs (``DecoderConfig.inputs``, any subset that includes a 64x64 map):

=============  =======================  ===============================================
name           shape                    what
=============  =======================  ===============================================
``embedding``  (B, 256, 64, 64)         the neck output (SAM's image embedding)
``early``      (B, 160, 64, 64)         TinyViT ``layers[1]``' output (HQ-SAM's "early")
``lr``         (B, 256, 64, 64)         the LR field's embedding over the HR field
                                        (its centre 32x32, upsampled 2x)
``stage1``     (B, 128, 128, 128)       ``layers[1]``' attention blocks, before merging
``stage0``     (B, 64, 256, 256)        ``layers[0]``' MBConv blocks, before merging
``rgb``        (B, 3, out, out)         the normalised HR image at the output size
=============  =======================  ===============================================

The path: the 64x64 maps are concatenated, projected (1x1) and refined (3x3, then dilated
residual 3x3 blocks that see whole glands) at 64x64, then
each 2x transposed-conv step doubles the resolution and adds the finer map of that scale when it
is used (stage1 at 128, stage0 at 256, the image at the output size), up to ``out_size``
(256 or 512). The module imports no runtime and no catalogue: loading is
:mod:`engine.instances.checkpoint`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CHANNELS",
    "INPUTS",
    "DecoderConfig",
    "InstanceDecoder",
    "lr_centre",
]

#: Channels of each input the decoder may use.
CHANNELS: dict[str, int] = {
    "embedding": 256,
    "early": 160,
    "lr": 256,
    "stage1": 128,
    "stage0": 64,
    "rgb": 3,
}
INPUTS: tuple[str, ...] = tuple(CHANNELS)
_COARSE = ("embedding", "early", "lr")
OUTPUTS: tuple[str, ...] = ("foreground", "centre", "boundary")


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder's layout.

    Attributes:
        inputs: which maps it reads (see the module doc); at least one of embedding, early, lr.
        widths: channels at 64, 128, 256 and 512 px.
        out_size: side of the output maps per 1024-px field (256 or 512).
        context: dilations of the residual 3x3 blocks at 64x64 after the first one: they widen
            the receptive field to whole glands (dilations 2, 4, 8: about 30 cells, 480 px of
            the field), which the distance-to-centre map needs.
    """

    inputs: tuple[str, ...] = ("embedding", "early", "stage1", "stage0")
    widths: tuple[int, int, int, int] = (96, 64, 32, 16)
    out_size: int = 256
    context: tuple[int, ...] = (2, 4, 8)

    def __post_init__(self) -> None:
        unknown = [name for name in self.inputs if name not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown decoder inputs {unknown}; choose from {list(INPUTS)}")
        if not any(name in self.inputs for name in _COARSE):
            raise ValueError("the decoder needs at least one of embedding, early, lr")
        if self.out_size not in (256, 512):
            raise ValueError(f"out_size must be 256 or 512, got {self.out_size}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths are four positive channel counts, got {self.widths}")
        if any(d < 1 or d > 16 for d in self.context):
            raise ValueError(f"context dilations must be 1-16, got {self.context}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "widths": list(self.widths),
            "out_size": self.out_size,
            "context": list(self.context),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> DecoderConfig:
        return DecoderConfig(
            inputs=tuple(str(v) for v in data["inputs"]),
            widths=tuple(int(v) for v in data["widths"]),  # type: ignore[arg-type]
            out_size=int(data["out_size"]),
            context=tuple(int(v) for v in data.get("context", ())),
        )

    @property
    def needs_lr(self) -> bool:
        return "lr" in self.inputs

    @property
    def encoder_maps(self) -> tuple[str, ...]:
        """The HR encoder maps it reads (for caches: what to keep)."""
        return tuple(n for n in self.inputs if n in ("embedding", "early", "stage1", "stage0"))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ConvBlock(nn.Sequential):
    """3x3 conv, GroupNorm, GELU: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.GELU(),
        )


class _DilatedResidual(nn.Module):
    """x + GELU(GroupNorm(3x3 conv with ``dilation``)): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.norm = _norm(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class _Projection(nn.Sequential):
    """1x1 conv and GroupNorm: brings an encoder map of any scale to the decoder's width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels))


class _Up(nn.Sequential):
    """2x transposed conv, GroupNorm, GELU: (B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
            _norm(out_channels),
            nn.GELU(),
        )


def lr_centre(lr_embedding: torch.Tensor) -> torch.Tensor:
    """The part of an LR embedding (B, C, 64, 64) over its HR field, upsampled: (B, C, 64, 64).

    The HR patch covers LR pixels [256:768], i.e. embedding cells [16:48].
    """
    side = lr_embedding.shape[-1]
    lo, hi = side // 4, side - side // 4
    return F.interpolate(lr_embedding[..., lo:hi, lo:hi], size=(side, side), mode="bilinear")


class InstanceDecoder(nn.Module):
    """Frozen-encoder maps of a field -> (B, 3, out, out) logits: foreground, centre, boundary.

    ``forward`` takes a mapping with the maps of :attr:`config.inputs` (float, batch B);
    ``rgb`` is the normalised image at ``out_size``. Apply a sigmoid to all three channels.
    """

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or DecoderConfig()
        c64, c128, c256, c512 = self.config.widths
        inputs = self.config.inputs
        coarse = sum(CHANNELS[n] for n in _COARSE if n in inputs)
        self.project64 = _Projection(coarse, c64)
        self.block64 = _ConvBlock(c64, c64)
        self.context64 = nn.Sequential(*(_DilatedResidual(c64, d) for d in self.config.context))
        self.up128 = _Up(c64, c128)
        self.skip128 = _Projection(CHANNELS["stage1"], c128) if "stage1" in inputs else None
        self.block128 = _ConvBlock(c128, c128)
        self.up256 = _Up(c128, c256)
        self.skip256 = _Projection(CHANNELS["stage0"], c256) if "stage0" in inputs else None
        rgb_channels = 16
        use_rgb = "rgb" in inputs
        at256 = use_rgb and self.config.out_size == 256
        self.rgb256 = self._rgb_stem(rgb_channels) if at256 else None
        self.block256 = _ConvBlock(c256 + (rgb_channels if at256 else 0), c256)
        last = c256
        self.up512: nn.Module | None = None
        self.rgb512: nn.Module | None = None
        self.block512: nn.Module | None = None
        if self.config.out_size == 512:
            at512 = use_rgb
            self.up512 = _Up(c256, c512)
            self.rgb512 = self._rgb_stem(rgb_channels) if at512 else None
            self.block512 = _ConvBlock(c512 + (rgb_channels if at512 else 0), c512)
            last = c512
        self.head = nn.Conv2d(last, len(OUTPUTS), 1)

    @staticmethod
    def _rgb_stem(channels: int) -> nn.Sequential:
        return nn.Sequential(_ConvBlock(3, channels), _ConvBlock(channels, channels))

    def forward(self, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Maps of one batch of fields -> (B, 3, out_size, out_size) logits."""
        missing = [n for n in self.config.inputs if n not in maps]
        if missing:
            raise KeyError(f"the instance decoder needs the maps {missing}")
        dtype = self.head.weight.dtype
        coarse = [
            lr_centre(maps[n].to(dtype)) if n == "lr" else maps[n].to(dtype)
            for n in _COARSE
            if n in self.config.inputs
        ]
        x = self.block64(self.project64(torch.cat(coarse, 1) if len(coarse) > 1 else coarse[0]))
        x = self.context64(x)
        x = self.up128(x)
        if self.skip128 is not None:
            x = x + self.skip128(maps["stage1"].to(dtype))
        x = self.block128(x)
        x = self.up256(x)
        if self.skip256 is not None:
            x = x + self.skip256(maps["stage0"].to(dtype))
        if self.rgb256 is not None:
            x = torch.cat([x, self.rgb256(self._rgb(maps, 256, dtype))], 1)
        x = self.block256(x)
        if self.up512 is not None and self.block512 is not None:
            x = self.up512(x)
            if self.rgb512 is not None:
                x = torch.cat([x, self.rgb512(self._rgb(maps, 512, dtype))], 1)
            x = self.block512(x)
        return self.head(x)

    @staticmethod
    def _rgb(maps: Mapping[str, torch.Tensor], size: int, dtype: torch.dtype) -> torch.Tensor:
        rgb = maps["rgb"].to(dtype)
        if rgb.shape[-1] != size:
            rgb = F.interpolate(rgb, size=(size, size), mode="area")
        return rgb

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def describe_config(config: DecoderConfig) -> dict[str, Any]:
    """Plain data for cards and logs."""
    data = asdict(config)
    data["inputs"] = list(config.inputs)
    data["widths"] = list(config.widths)
    return data


def stack_maps(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch per-field maps (each (C, H, W)) into (B, C, H, W) per name."""
    names = items[0].keys()
    return {name: torch.stack([item[name] for item in items]) for name in names}
