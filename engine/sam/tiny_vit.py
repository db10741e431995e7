"""TinyViT image encoder as MobileSAM uses it.

TinyViT (Wu et al., 2022) is a hierarchical vision transformer: a convolutional stem, one stage of
MBConv blocks, then three stages of windowed self-attention blocks, with patch merging between
stages. MobileSAM distilled SAM's ViT-H encoder into a TinyViT-5M and changed it so that its output
matches SAM's image embedding: a 1024-px input, a stride-1 final patch merging (so the last two
stages both run at 1/16 of the input), and SAM's neck (1x1 conv to 256, LayerNorm2d, 3x3 conv,
LayerNorm2d) in place of the classifier.

Parameter and buffer names follow the MobileSAM checkpoint (``image_encoder.*`` in
``mobile_sam.pt``), so its state dict loads directly. The checkpoint also carries the classifier
head (``head``, ``norm_head``), which this encoder does not have: ``engine.weights`` drops those
keys by name.

The layout is configurable (input size, widths, depths, heads, windows, patch-embedding kernel)
so that other TinyViT-based SAMs, e.g. LiteMedSAM with its 256-px input, can be built from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from engine.sam.common import LayerNorm2d


class ConvBN(nn.Sequential):
    """A bias-free Conv2d followed by BatchNorm2d (submodules ``c`` and ``bn``).

    Input (B, in_chans, H, W), output (B, out_chans, H', W'). In eval mode the normalisation is
    folded into the convolution's weight and bias (one pass over the feature map instead of two);
    the stored parameters are untouched.
    """

    c: nn.Conv2d
    bn: nn.BatchNorm2d

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.c, self.bn
        mean, var = bn.running_mean, bn.running_var
        if self.training or mean is None or var is None:
            return super().forward(x)
        scale = bn.weight / torch.sqrt(var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Convolutional stem: two ConvBN layers with a GELU between (``seq.0``, ``seq.2``).

    With the default 3x3 stride-2 kernels the output is 1/4 of the input size; LiteMedSAM uses
    1x1 stride-1 kernels instead (output at the input size). Input (B, in_chans, H, W), output
    (B, embed_dim, H / stride**2, W / stride**2).
    """

    def __init__(
        self, in_chans: int, embed_dim: int, kernel_size: int = 3, stride: int = 2
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel_size, stride, padding),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel_size, stride, padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted-residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU.

    Input and output (B, C, H, W).
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, 1)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.conv1(x))
        out = self.act2(self.conv2(out))
        out = self.conv3(out)
        return self.act3(out + x)


class PatchMerging(nn.Module):
    """Change width (and usually halve resolution) between stages.

    1x1 ConvBN to ``out_dim``, GELU, 3x3 depthwise ConvBN with ``stride``, GELU, 1x1 ConvBN.
    Input: (B, C, H, W) or tokens (B, H*W, C) at ``input_resolution``; output: tokens
    (B, H'*W', out_dim) with H' = ceil(H / stride).
    """

    def __init__(
        self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int = 2
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.stride = stride
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    @property
    def output_resolution(self) -> tuple[int, int]:
        h, w = self.input_resolution
        s = self.stride
        return ((h - 1) // s + 1, (w - 1) // s + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class _Stage(nn.Module):
    """A stage: its blocks in order, then the optional patch merging to the next stage."""

    blocks: nn.ModuleList
    downsample: PatchMerging | None
    input_resolution: tuple[int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class ConvStage(_Stage):
    """TinyViT's first stage: MBConv blocks on (B, C, H, W), then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        expand_ratio: float,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample


def relative_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) index into a table of learned biases, one per |dy|, |dx| offset; N = window_size**2.

    The table is ordered by first appearance when scanning query-key pairs in row-major order,
    which for a square window is simply ``|dy| * window_size + |dx|``.
    """
    coords = torch.arange(window_size)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window_size + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per relative offset.

    Pre-norm (``norm``), fused ``qkv`` projection, ``proj`` back to ``dim``.
    ``attention_biases`` (num_heads, window_size**2) is indexed by the non-persistent buffer
    ``attention_bias_idxs`` (N, N). Input and output: (B_windows, N, dim), N = window_size**2.
    """

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            "attention_bias_idxs", relative_offset_index(window_size), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        # per head the fused projection is laid out as [q | k | v]
        qkv = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out)


class TokenMlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear. Input and output (B, L, dim)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), 3x3 depthwise ``local_conv``, MLP (residual).

    Input and output: tokens (B, H*W, dim) at ``input_resolution``.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, _, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        grid = x.view(b, h, w, c)
        pad_b = (ws - h % ws) % ws
        pad_r = (ws - w % ws) % ws
        if pad_b or pad_r:
            # zero padding; the padded tokens take part in attention as in the original
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            grid = grid[:, :h, :w]
        return grid.reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"expected {h}x{w}={h * w} tokens, got {n}")
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class AttentionStage(_Stage):
    """A TinyViT stage of attention blocks on tokens, then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = downsample


class TinyViT(nn.Module):
    """TinyViT backbone with SAM's neck: (B, in_chans, img_size, img_size) -> (B, 256, E, E).

    E = img_size / 16 with the default stem (64 for MobileSAM's 1024-px input).

    Arguments:
      img_size: side of the (square, padded) input image.
      in_chans: input channels.
      embed_dims, depths, num_heads, window_sizes: per stage; stage 0 is convolutional (its
        heads and window are unused).
      mlp_ratio: hidden width of the attention blocks' MLP, relative to the stage width.
      mbconv_expand_ratio: hidden width of the MBConv blocks, relative to the stage width.
      local_conv_size: kernel of the depthwise conv between attention and MLP.
      patch_embed_kernel, patch_embed_stride: stem convs (3, 2 for MobileSAM; 1, 1 for LiteMedSAM).
      final_merge_stride: stride of the patch merging into the last stage (1 in MobileSAM, so the
        last two stages share a resolution).
      out_chans: width of the neck's output (SAM's embedding dimension).
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        patch_embed_kernel: int = 3,
        patch_embed_stride: int = 2,
        final_merge_stride: int = 1,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n_stages = len(embed_dims)
        if not (len(depths) == len(num_heads) == len(window_sizes) == n_stages) or n_stages < 2:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage "
                f"(at least 2), got {len(embed_dims)}, {len(depths)}, {len(num_heads)}, "
                f"{len(window_sizes)}"
            )
        self.img_size = img_size
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.out_chans = out_chans

        self.patch_embed = PatchEmbed(
            in_chans, embed_dims[0], patch_embed_kernel, patch_embed_stride
        )
        resolution = (img_size // patch_embed_stride**2,) * 2

        self.layers = nn.ModuleList()
        # resolution after layers[1], where the early (intermediate) feature is taken
        early_size = resolution
        for i in range(n_stages):
            downsample = None
            if i < n_stages - 1:
                stride = final_merge_stride if i == n_stages - 2 else 2
                downsample = PatchMerging(resolution, embed_dims[i], embed_dims[i + 1], stride)
            stage: nn.Module
            if i == 0:
                stage = ConvStage(
                    embed_dims[0], resolution, depths[0], mbconv_expand_ratio, downsample
                )
            else:
                stage = AttentionStage(
                    embed_dims[i],
                    resolution,
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    downsample,
                )
            self.layers.append(stage)
            if downsample is not None:
                resolution = downsample.output_resolution
            if i == 1:
                early_size = resolution
        self.embedding_size: tuple[int, int] = resolution
        self.early_size: tuple[int, int] = early_size

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _tokens_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, H*W, C) -> (B, C, H, W)."""
        b, _, c = x.shape
        return x.transpose(1, 2).reshape(b, c, size[0], size[1])

    def forward_with_early(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embedding and the early feature that HQ-SAM style heads fuse.

        Input (B, in_chans, img_size, img_size). Returns the embedding (B, out_chans, E, E) and
        the output of ``layers[1]`` as a channels-first map (B, embed_dims[2], E, E), i.e.
        (B, 256, 64, 64) and (B, 160, 64, 64) for MobileSAM.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2:] != (self.img_size,) * 2:
            raise ValueError(
                f"TinyViT expects (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        x = self.layers[0](x)
        x = self.layers[1](x)
        early = self._tokens_to_map(x, self.early_size)
        for layer in self.layers[2:]:
            x = layer(x)
        embedding = self.neck(self._tokens_to_map(x, self.embedding_size))
        return embedding, early

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every feature an instance decoder may use, channels first, in one pass.

        Input (B, in_chans, img_size, img_size). Returns, for MobileSAM's 1024-px input:

        - ``"stage0"``: the MBConv blocks of ``layers[0]`` before their patch merging,
          (B, embed_dims[0], 256, 256): the finest feature, 4 input pixels per cell;
        - ``"stage1"``: the attention blocks of ``layers[1]`` before their patch merging,
          (B, embed_dims[1], 128, 128);
        - ``"early"``: the output of ``layers[1]``, (B, embed_dims[2], 64, 64) (as
          :meth:`forward_with_early`);
        - ``"embedding"``: the neck's output, (B, out_chans, 64, 64).
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2:] != (self.img_size,) * 2:
            raise ValueError(
                f"TinyViT expects (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        first, second = self.layers[0], self.layers[1]
        assert isinstance(first, _Stage) and isinstance(second, _Stage)
        for block in first.blocks:
            x = block(x)
        stage0 = x
        if first.downsample is not None:
            x = first.downsample(x)
        for block in second.blocks:
            x = block(x)
        stage1 = self._tokens_to_map(x, second.input_resolution)
        if second.downsample is not None:
            x = second.downsample(x)
        early = self._tokens_to_map(x, self.early_size)
        for layer in self.layers[2:]:
            x = layer(x)
        embedding = self.neck(self._tokens_to_map(x, self.embedding_size))
        return {"stage0": stage0, "stage1": stage1, "early": early, "embedding": embedding}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, img_size, img_size) -> image embedding (B, out_chans, E, E)."""
        return self.forward_with_early(x)[0]
