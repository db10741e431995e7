"""WSI-SAM: frozen MobileSAM plus two small learnable heads, one per resolution.

Each head (:class:`WsiSamHead`) owns a new output token (1x256) that runs through a copy of SAM's
two-way-transformer mask decoder together with SAM's own tokens, an MLP that turns the updated
token into a 32-d mask weight vector, and a fusion module (as in HQ-SAM) that builds 32-channel
features at 256x256 from

- ``compress_vit_feat``: the early TinyViT feature (``layers[1]``, 160 ch at 64x64),
- ``embedding_encoder``: the late feature (the neck output, 256 ch at 64x64),
- ``embedding_maskfeature``: SAM's upscaled mask features (32 ch at 256x256).

The HR head sees the 10x patch, the LR head the concentric 5x patch. Their updated tokens are
merged (``"mean"`` as in the paper, ``"sum"`` as in the authors' code) and the merged token is
applied as a point-wise product to both fused feature maps. SAM's own mask logits are added as a
residual, and the last layer of each token MLP starts at zero, so untrained heads give exactly
SAM's output.
"""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from engine._files import atomic_write_bytes
from engine.sam.common import MLP, LayerNorm2d
from engine.sam.pixelwise import upscale_dot
from engine.sam.sam import Sam
from engine.validation import non_finite_tensors, torch_load_reason

logger = logging.getLogger(__name__)

Aggregation = Literal["mean", "sum"]
AGGREGATIONS: tuple[str, ...] = ("mean", "sum")

PATCH_SIZE = 1024
LOWRES_SIZE = 256
# Format tag of the heads checkpoint: bump when the layout of the saved state changes.
HEADS_FORMAT = "wsi-sam-heads/1"
DEFAULT_HEADS_NAME = "wsi_sam_default.pt"


class HeadsError(RuntimeError):
    """A WSI-SAM heads checkpoint is missing, unreadable or does not fit the model."""


def default_heads_path() -> Path:
    """The heads shipped with the package (trained on GlaS), whether or not the file exists."""
    return Path(str(resources.files("engine") / "heads" / DEFAULT_HEADS_NAME))


@dataclass
class Prompts:
    """Prompts for a batch of 1024x1024 patches, in patch pixels.

    Attributes:
        boxes: (B, 4) x0, y0, x1, y1, or None.
        points: (B, N, 2) x, y, or None.
        labels: (B, N) 1 positive / 0 negative (required with ``points``).
        masks: (B, 1, 256, 256) coarse mask logits (SAM's ``mask_input``), or None.
    """

    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.labels is None):
            raise ValueError("points and labels must be given together")
        if self.boxes is None and self.points is None and self.masks is None:
            raise ValueError("a prompt needs a box, points or a mask")

    @property
    def batch_size(self) -> int:
        for t in (self.boxes, self.points, self.masks):
            if t is not None:
                return int(t.shape[0])
        raise AssertionError("unreachable: __post_init__ requires a prompt")

    def to_lr(self) -> Prompts:
        """Map HR-patch prompts onto the concentric LR patch: p -> p / 2 + 256.

        A coarse mask covers the HR patch, so on the LR patch it is shrunk into the central half
        (the rest stays at a strongly negative logit).
        """
        offset = PATCH_SIZE / 4
        boxes = self.boxes / 2 + offset if self.boxes is not None else None
        points = self.points / 2 + offset if self.points is not None else None
        masks = None
        if self.masks is not None:
            half = F.interpolate(self.masks, scale_factor=0.5, mode="bilinear", align_corners=False)
            masks = torch.full_like(self.masks, -20.0)
            q = LOWRES_SIZE // 4
            masks[:, :, q : q + half.shape[-2], q : q + half.shape[-1]] = half
        return Prompts(boxes=boxes, points=points, labels=self.labels, masks=masks)

    def to(self, device: torch.device | str) -> Prompts:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Prompts(move(self.boxes), move(self.points), move(self.labels), move(self.masks))


@dataclass
class PatchFeatures:
    """Frozen-encoder outputs for a batch of patches.

    Attributes:
        embedding: (B, 256, 64, 64) neck output.
        early: (B, 160, 64, 64) output of TinyViT ``layers[1]``.
    """

    embedding: torch.Tensor
    early: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PatchFeatures:
        return PatchFeatures(
            self.embedding.to(device=device, dtype=dtype), self.early.to(device=device, dtype=dtype)
        )

    def half(self) -> PatchFeatures:
        return PatchFeatures(self.embedding.half(), self.early.half())

    def float(self) -> PatchFeatures:
        return PatchFeatures(self.embedding.float(), self.early.float())

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.embedding, self.early))

    def __getitem__(self, index: int | slice | list[int]) -> PatchFeatures:
        """Rows of the batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return PatchFeatures(self.embedding[index], self.early[index])

    @staticmethod
    def cat(items: list[PatchFeatures]) -> PatchFeatures:
        return PatchFeatures(
            torch.cat([f.embedding for f in items]), torch.cat([f.early for f in items])
        )


@dataclass
class WsiSamOutput:
    """Output of :meth:`WsiSam.forward` (C = 1, or 3 with ``multimask_output``).

    Attributes:
        hr_logits: (B, C, 256, 256) WSI-SAM mask logits on the HR patch (patch / 4).
        lr_logits: (B, C, 256, 256) WSI-SAM mask logits on the LR patch.
        sam_hr_logits: (B, C, 256, 256) SAM's own logits on the HR patch (the residual).
        sam_lr_logits: (B, C, 256, 256) SAM's own logits on the LR patch.
        iou_predictions: (B, C) SAM's predicted IoU on the HR patch.
    """

    hr_logits: torch.Tensor
    lr_logits: torch.Tensor
    sam_hr_logits: torch.Tensor
    sam_lr_logits: torch.Tensor
    iou_predictions: torch.Tensor


@dataclass
class HeadOutput:
    """What one head contributes before token aggregation.

    Attributes:
        token: (B, 32) the head's updated token after its MLP.
        features: (B, 32, 256, 256) the fused features.
        sam_logits: (B, C, 256, 256) SAM's own mask logits (residual).
        iou_predictions: (B, C) SAM's IoU predictions.
    """

    token: torch.Tensor
    features: torch.Tensor
    sam_logits: torch.Tensor
    iou_predictions: torch.Tensor


def _upsample_block(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """Two stride-2 transposed convs: (B, in_ch, H, W) -> (B, out_ch, 4H, 4W)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, mid_ch, kernel_size=2, stride=2),
        LayerNorm2d(mid_ch),
        nn.GELU(),
        nn.ConvTranspose2d(mid_ch, out_ch, kernel_size=2, stride=2),
    )


def _conv_block_dot(block: nn.Sequential, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``einsum("bc,bchw->bhw", vectors, block(x_nchw))`` for a conv / norm / act / conv block.

    x: (B, H, W, C) channels-last; vectors: (B, C_out) -> (B, H, W). The last convolution runs
    with each item's vector folded into its kernel: n items give n x n maps, of which the
    diagonal is kept, in groups of 4 items so that the waste stays small (torch's grouped
    convolution would avoid it but is several times slower on CPUs). Everything stays
    channels-last, gradients included: a channels-first gradient meeting channels-last
    activations makes the backward pass several times slower.
    """
    last = block[3]
    assert isinstance(last, nn.Conv2d) and last.bias is not None and len(block) == 4
    kernels = torch.einsum("cmkl,bc->bmkl", last.weight, vectors)  # (B, C_mid, kh, kw)
    parts = []
    for start in range(0, x.shape[0], 4):
        # sliced while channels-last (B, H, W, C), so that the slice's gradient is too
        group = x[start : start + 4].permute(0, 3, 1, 2)
        hidden = block[2](block[1](block[0](group)))
        maps = F.conv2d(
            hidden,
            kernels[start : start + 4].contiguous(memory_format=torch.channels_last),
            padding=last.padding,
        )  # (n, n, H, W)
        diagonal = torch.diagonal(maps.permute(0, 2, 3, 1), dim1=0, dim2=3)  # (H, W, n)
        parts.append(diagonal.permute(2, 0, 1))
    dots = parts[0] if len(parts) == 1 else torch.cat(parts)
    return dots + (vectors @ last.bias)[:, None, None]


def conv_block_token_dot(
    block: nn.Sequential, x: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``einsum("bc,bchw->bhw", vectors, block(x))`` for a conv / norm / act / 3x3-conv block,
    with each item's vector folded into the last convolution (inference, channels-first).

    The last convolution's kernel dotted with the vector is (B, 3, 3, C_mid): one matrix product
    gives the nine taps of every pixel (B, 9, H, W), and the output is their sum shifted into
    place. Free of shape-dependent Python branches (it converts with a dynamic batch).

    Args:
        x: (B or 1, C_in, H, W); vectors: (B, C_out) -> (B, H, W).
    """
    last = block[3]
    assert isinstance(last, nn.Conv2d) and last.bias is not None and len(block) == 4
    assert last.kernel_size == (3, 3) and last.padding == (1, 1) and last.stride == (1, 1)
    hidden = block[2](block[1](block[0](x)))  # (B, C_mid, H, W)
    batch = vectors.shape[0]
    hidden = hidden.expand(batch, -1, -1, -1)
    height, width = hidden.shape[-2], hidden.shape[-1]
    kernels = torch.einsum("omkl,bo->bklm", last.weight, vectors).reshape(batch, 9, -1)
    taps = torch.matmul(kernels, hidden.flatten(2)).reshape(batch, 9, height, width)
    taps = F.pad(taps, (1, 1, 1, 1))
    out = taps[:, 0, 0:height, 0:width]
    for k in range(1, 9):
        row, col = divmod(k, 3)
        out = out + taps[:, k, row : row + height, col : col + width]
    return out + (vectors @ last.bias)[:, None, None]


class WsiSamHead(nn.Module):
    """The learnable part of one resolution's mask decoder: token, token MLP and fusion module.

    SAM's frozen mask decoder is shared, not copied: the head runs it with its token appended.
    """

    def __init__(
        self, transformer_dim: int = 256, early_dim: int = 160, mask_feature_dim: int = 32
    ) -> None:
        super().__init__()
        self.token = nn.Embedding(1, transformer_dim)
        self.token_mlp = MLP(transformer_dim, transformer_dim, mask_feature_dim, 3)
        self.compress_vit_feat = _upsample_block(early_dim, transformer_dim, mask_feature_dim)
        self.embedding_encoder = _upsample_block(
            transformer_dim, transformer_dim // 4, mask_feature_dim
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(mask_feature_dim, mask_feature_dim * 2, kernel_size=3, padding=1),
            LayerNorm2d(mask_feature_dim * 2),
            nn.GELU(),
            nn.Conv2d(mask_feature_dim * 2, mask_feature_dim, kernel_size=3, padding=1),
        )
        self.reset_output()

    def reset_output(self) -> None:
        """Zero the token MLP's last layer: the head then adds nothing to SAM's logits.

        Only this side of the product starts at zero; the fused features do not, so the first
        gradient step moves the token away from zero.
        """
        last = cast(nn.Linear, self.token_mlp.layers[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def fuse(self, features: PatchFeatures, upscaled: torch.Tensor) -> torch.Tensor:
        """The fused features (B, 32, 256, 256) from the encoder outputs and SAM's upscaled
        mask features (B, 32, 256, 256)."""
        fused: torch.Tensor = (
            self.embedding_maskfeature(upscaled)
            + self.embedding_encoder(features.embedding)
            + self.compress_vit_feat(features.early)
        )
        return fused

    def fused_dot(
        self, features: PatchFeatures, upscaled: torch.Tensor, token: torch.Tensor
    ) -> torch.Tensor:
        """``token · fuse(features, upscaled)`` at every pixel, computed without the fused map.

        The token is applied to the last convolution of each fusion branch first (see
        :func:`engine.sam.pixelwise.upscale_dot`), so those convolutions produce one channel
        instead of 32; the training forward spends most of its time here. Equal to
        ``einsum("bc,bchw->bhw", token, self.fuse(features, upscaled_nchw))`` within float
        rounding.

        Args:
            features: embedding (B, 256, 64, 64) and early (B, 160, 64, 64).
            upscaled: (B, 256, 256, 32) SAM's upscaled mask features, channels-last.
            token: (B, 32) the merged token.
        Returns:
            (B, 256, 256).
        """
        batch = token.shape[0]
        embedding = features.embedding.expand(batch, -1, -1, -1).permute(0, 2, 3, 1)
        early = features.early.expand(batch, -1, -1, -1).permute(0, 2, 3, 1)
        return (
            upscale_dot(self.embedding_encoder, embedding.contiguous(), token)
            + upscale_dot(self.compress_vit_feat, early.contiguous(), token)
            + _conv_block_dot(self.embedding_maskfeature, upscaled, token)
        )

    def forward(
        self,
        sam: Sam,
        features: PatchFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool,
    ) -> HeadOutput:
        """Run SAM's decoder once plainly (residual) and once with this head's token.

        Args:
            sam: the frozen SAM whose mask decoder is run.
            features: encoder outputs, embedding (B,256,64,64) and early (B,160,64,64).
            sparse: (B, N, 256) sparse prompt embeddings.
            dense: (B, 256, 64, 64) dense prompt embeddings.
            multimask_output: SAM's three multimask outputs instead of the single one.
        """
        decoder = sam.mask_decoder
        image_pe = sam.prompt_encoder.get_dense_pe()
        # SAM's own answer, untouched by the new token (so fresh heads reproduce SAM exactly).
        sam_masks, sam_iou, _, _ = decoder.predict_masks(
            features.embedding, image_pe, sparse, dense
        )
        _, _, token_out, upscaled = decoder.predict_masks(
            features.embedding, image_pe, sparse, dense, extra_tokens=self.token.weight
        )
        assert token_out is not None
        token = self.token_mlp(token_out[:, 0, :])
        fused = self.fuse(features, upscaled)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return HeadOutput(token, fused, sam_masks[:, chosen], sam_iou[:, chosen])


class WsiSam(nn.Module):
    """Frozen SAM with HR and LR heads and token aggregation."""

    def __init__(
        self,
        sam: Sam,
        aggregation: Aggregation = "mean",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.sam = sam
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()
        self.hr_head = WsiSamHead()
        self.lr_head = WsiSamHead()
        self.aggregation: Aggregation = aggregation
        self.metadata: dict[str, Any] = dict(metadata or {})
        #: bumped whenever the heads' weights are replaced, so caches of head outputs can tell
        self.heads_version = 0
        #: converted decoders (e.g. engine.backends.openvino_decoder.OpenVinoDecoders), or None
        #: for torch; used at inference only, and only while they match ``heads_version``
        self.decoder_backend: Any = None
        #: makes ``decoder_backend`` for this model's current heads, or None (torch only): set by
        #: the loader that chose the runtime (:mod:`engine.build`)
        self.decoder_factory: Callable[[WsiSam], Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    def train(self, mode: bool = True) -> WsiSam:
        super().train(mode)
        self.sam.eval()  # SAM is frozen, also in training mode
        if mode:
            # Training changes the heads in place: converted decoders and caches of head outputs
            # no longer answer for them.
            self.decoder_backend = None
            self.heads_version += 1
        return self

    def enable_fast_decoders(self) -> None:
        """Decode prompts on a faster runtime too, for the current heads, where there is one.

        The runtime's decoders come from ``decoder_factory``, which the loader
        (:func:`engine.build.load_wsi_sam`) sets from the encoder backend it chose (this module
        imports no runtime); without one the decoders stay in torch. Call again after loading
        other heads. Raises engine.backends.BackendError when the conversion or compilation
        fails.
        """
        factory = self.decoder_factory
        self.decoder_backend = None if factory is None else factory(self)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the two heads; SAM itself is frozen."""
        return [*self.hr_head.parameters(), *self.lr_head.parameters()]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> PatchFeatures:
        """Encode patches with the frozen TinyViT.

        Args:
            images: (B, 3, 1024, 1024) float RGB in 0..255, not normalised.
        Returns:
            PatchFeatures with embedding (B,256,64,64) and early (B,160,64,64).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        x = self.sam.preprocess(images.to(self.device, torch.float32))
        embedding, early = self.sam.encode_preprocessed(x)
        return PatchFeatures(embedding, early)

    def _embed_prompts(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        points = None
        if prompts.points is not None:
            assert prompts.labels is not None
            points = (prompts.points.to(self.device), prompts.labels.to(self.device))
        sparse, dense = self.sam.prompt_encoder(
            points=points,
            boxes=None if prompts.boxes is None else prompts.boxes.to(self.device),
            masks=None if prompts.masks is None else prompts.masks.to(self.device),
        )
        batch = prompts.batch_size
        if dense.shape[0] != batch:  # the no-mask embedding comes with batch 1
            dense = dense.expand(batch, -1, -1, -1)
        return sparse, dense

    def merge_tokens(self, hr_token: torch.Tensor, lr_token: torch.Tensor) -> torch.Tensor:
        """(B, 32), (B, 32) -> (B, 32): the paper averages, the authors' code sums."""
        merged = hr_token + lr_token
        return merged / 2 if self.aggregation == "mean" else merged

    @staticmethod
    def _apply_token(
        token: torch.Tensor, features: torch.Tensor, sam_logits: torch.Tensor
    ) -> torch.Tensor:
        """token (B,32) · features (B,32,H,W) + sam_logits (B,C,H,W) -> (B,C,H,W)."""
        product = torch.einsum("bc,bchw->bhw", token, features)
        return product[:, None] + sam_logits

    def forward(
        self,
        hr: PatchFeatures,
        lr: PatchFeatures,
        prompts: Prompts,
        multimask_output: bool = False,
    ) -> WsiSamOutput:
        """Masks on the HR and LR patches of a batch of fields.

        The training path: both heads get gradients. SAM's plain HR and LR runs (the residuals)
        run without autograd (SAM is frozen and nothing learnable feeds them), and the HR and
        LR token runs share one decoder call, with each batch item carrying its own head's
        token. Equal to running each :class:`WsiSamHead` on its own resolution
        (:meth:`forward_per_head`), in three decoder calls instead of four.

        Args:
            hr: features of the HR (10x) patches, batch B.
            lr: features of the concentric LR (5x) patches, batch B.
            prompts: HR-patch prompts (the LR head gets ``prompts.to_lr()``).
            multimask_output: use SAM's three multimask outputs as residuals (C = 3).
        """
        hr_sparse, hr_dense = self._embed_prompts(prompts)
        lr_sparse, lr_dense = self._embed_prompts(prompts.to_lr())
        batch = hr_sparse.shape[0]
        decoder = self.sam.mask_decoder
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        embeddings = torch.cat(
            [hr.embedding.expand(batch, -1, -1, -1), lr.embedding.expand(batch, -1, -1, -1)]
        )
        sparse = torch.cat([hr_sparse, lr_sparse])
        dense = torch.cat([hr_dense, lr_dense])
        with torch.no_grad():  # SAM's own answers: frozen, no autograd needed
            # one call per resolution, batch B as sam_forward runs them, so that fresh heads
            # give exactly SAM's logits (a batch of 2B picks other kernels: ~1e-5 apart)
            sam_hr_all, sam_iou = self.decode_sam(hr.embedding, hr_sparse, hr_dense)
            sam_lr_all, _ = self.decode_sam(lr.embedding, lr_sparse, lr_dense)
        extra = torch.cat(
            [
                self.hr_head.token.weight.expand(batch, 1, -1),
                self.lr_head.token.weight.expand(batch, 1, -1),
            ]
        )
        tokens, image_features = decoder.run_transformer(
            embeddings, image_pe, sparse, dense, extra_tokens=extra
        )
        head_tokens = tokens[:, 1 + decoder.num_mask_tokens, :]
        # channels-last from the transformer's image tokens on: see engine.sam.pixelwise
        upscaled = decoder.upscale_channels_last(image_features.permute(0, 2, 3, 1))
        hr_token = self.hr_head.token_mlp(head_tokens[:batch])
        lr_token = self.lr_head.token_mlp(head_tokens[batch:])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        sam_hr, sam_lr = sam_hr_all[:, chosen], sam_lr_all[:, chosen]
        token = self.merge_tokens(hr_token, lr_token)
        hr_dot = self.hr_head.fused_dot(hr, upscaled[:batch], token)
        lr_dot = self.lr_head.fused_dot(lr, upscaled[batch:], token)
        return WsiSamOutput(
            hr_logits=hr_dot[:, None] + sam_hr,
            lr_logits=lr_dot[:, None] + sam_lr,
            sam_hr_logits=sam_hr,
            sam_lr_logits=sam_lr,
            iou_predictions=sam_iou[:, chosen],
        )

    def forward_per_head(
        self,
        hr: PatchFeatures,
        lr: PatchFeatures,
        prompts: Prompts,
        multimask_output: bool = False,
    ) -> WsiSamOutput:
        """:meth:`forward` computed head by head (four decoder calls): the reference it equals."""
        hr_sparse, hr_dense = self._embed_prompts(prompts)
        lr_sparse, lr_dense = self._embed_prompts(prompts.to_lr())
        hr_out = self.hr_head(self.sam, hr, hr_sparse, hr_dense, multimask_output)
        lr_out = self.lr_head(self.sam, lr, lr_sparse, lr_dense, multimask_output)
        token = self.merge_tokens(hr_out.token, lr_out.token)
        return WsiSamOutput(
            hr_logits=self._apply_token(token, hr_out.features, hr_out.sam_logits),
            lr_logits=self._apply_token(token, lr_out.features, lr_out.sam_logits),
            sam_hr_logits=hr_out.sam_logits,
            sam_lr_logits=lr_out.sam_logits,
            iou_predictions=hr_out.iou_predictions,
        )

    @torch.no_grad()
    def hr_static_features(self, hr: PatchFeatures, converted: bool = True) -> torch.Tensor:
        """The HR head's fused features that do not depend on the prompt.

        ``embedding_encoder(embedding) + compress_vit_feat(early)``: (B, 32, 256, 256). A
        predictor computes them once per field and passes them to :meth:`predict_hr`.
        ``converted`` as in :meth:`predict_hr`: on the converted decoders' runtime when they
        are enabled for these heads (a new field's cost), else in torch.
        """
        decoders = self.decoder_backend if converted else None
        if (
            decoders is not None
            and decoders.heads_version == self.heads_version
            and hasattr(decoders, "hr_static")
        ):
            converted_static: torch.Tensor = decoders.hr_static(hr.embedding, hr.early)
            return converted_static
        return self.hr_static_torch(hr.embedding, hr.early)

    def hr_static_torch(self, embedding: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
        """:meth:`hr_static_features` in torch, on (B, 256, 64, 64) and (B, 160, 64, 64)."""
        head = self.hr_head
        static: torch.Tensor = head.embedding_encoder(embedding) + head.compress_vit_feat(early)
        return static

    @torch.no_grad()
    def predict_hr(
        self,
        hr: PatchFeatures,
        lr: PatchFeatures,
        prompts: Prompts,
        multimask_output: bool = False,
        hr_static: torch.Tensor | None = None,
        converted: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: the HR mask logits of :meth:`forward`, with only the work they need.

        Equal to ``forward(...).hr_logits`` and ``.iou_predictions``, but (i) the LR head only
        contributes its token (its fused features and SAM's plain LR run feed ``lr_logits``,
        which inference does not use), (ii) the HR and LR token runs share one batched decoder
        call, and (iii) the prompt-independent fused features can come from a cache
        (``hr_static``, from :meth:`hr_static_features`). Three decoder passes in two calls
        instead of four, and one 3x3-conv fusion instead of two.

        Args:
            hr, lr: field features; batch 1 (shared by every prompt) or B.
            prompts: B prompts on the HR patch.
            multimask_output: SAM's three multimask outputs as residuals (C = 3) instead of one.
            hr_static: (1 or B, 32, 256, 256) cached :meth:`hr_static_features`, or None.
            converted: decode on the converted decoders when they are enabled; False always
                decodes in torch (evaluation, comparable with training).
        Returns:
            HR mask logits (B, C, 256, 256) and SAM's IoU predictions (B, C).
        """
        hr_sparse, hr_dense = self._embed_prompts(prompts)
        lr_sparse, lr_dense = self._embed_prompts(prompts.to_lr())
        static = self.hr_static_features(hr, converted) if hr_static is None else hr_static
        decoders = self.decoder_backend if converted else None
        if decoders is not None and decoders.heads_version == self.heads_version:
            logits, iou = decoders.decode_hr(
                hr.embedding, lr.embedding, static, hr_sparse, lr_sparse, hr_dense, lr_dense
            )
        else:
            logits, iou = self.decode_hr(
                hr.embedding, lr.embedding, static, hr_sparse, lr_sparse, hr_dense, lr_dense
            )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, chosen], iou[:, chosen]

    def decode_hr(
        self,
        hr_embedding: torch.Tensor,
        lr_embedding: torch.Tensor,
        hr_static: torch.Tensor,
        hr_sparse: torch.Tensor,
        lr_sparse: torch.Tensor,
        hr_dense: torch.Tensor,
        lr_dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor part of :meth:`predict_hr`, for all four of SAM's mask outputs.

        Free of shape-dependent Python branches, so that it converts to other runtimes with a
        dynamic batch and prompt length.

        Args:
            hr_embedding, lr_embedding: (1 or B, 256, 64, 64).
            hr_static: (1 or B, 32, 256, 256) from :meth:`hr_static_features`.
            hr_sparse, lr_sparse: (B, N, 256) embedded prompts on the HR / LR patch.
            hr_dense, lr_dense: (B, 256, 64, 64) dense prompt embeddings.
        Returns:
            HR logits (B, 4, 256, 256) (single-mask output first, then the three multimask
            ones) and SAM's IoU predictions (B, 4).
        """
        batch = hr_sparse.shape[0]
        decoder = self.sam.mask_decoder
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        hr_image = hr_embedding.expand(batch, -1, -1, -1)
        sam_masks, sam_iou, _, _ = decoder.predict_masks(hr_image, image_pe, hr_sparse, hr_dense)
        # One batch: the HR prompts with the HR token on the HR embedding, then the LR ones.
        extra = torch.cat(
            [
                self.hr_head.token.weight.expand(batch, 1, -1),
                self.lr_head.token.weight.expand(batch, 1, -1),
            ]
        )
        tokens, image_features = decoder.run_transformer(
            torch.cat([hr_image, lr_embedding.expand(batch, -1, -1, -1)]),
            image_pe,
            torch.cat([hr_sparse, lr_sparse]),
            torch.cat([hr_dense, lr_dense]),
            extra_tokens=extra,
        )
        head_tokens = tokens[:, 1 + decoder.num_mask_tokens, :]
        hr_token = self.hr_head.token_mlp(head_tokens[:batch])
        lr_token = self.lr_head.token_mlp(head_tokens[batch:])
        upscaled = decoder.upscale(image_features[:batch])
        token = self.merge_tokens(hr_token, lr_token)
        # token · (embedding_maskfeature(upscaled) + hr_static), with the token folded into the
        # last 3x3 convolution (one output channel instead of 32: a sixth of the work)
        dot = conv_block_token_dot(self.hr_head.embedding_maskfeature, upscaled, token)
        dot = dot + torch.einsum("bc,bchw->bhw", token, hr_static.expand(batch, -1, -1, -1))
        return dot[:, None] + sam_masks, sam_iou

    @torch.no_grad()
    def sam_forward(
        self,
        features: PatchFeatures,
        prompts: Prompts,
        multimask_output: bool = False,
        converted: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain SAM on one resolution: logits (B,C,256,256) and IoU predictions (B,C).

        ``converted`` as in :meth:`predict_hr`."""
        sparse, dense = self._embed_prompts(prompts)
        decoders = self.decoder_backend if converted else None
        if decoders is not None:
            masks, iou = decoders.decode_sam(features.embedding, sparse, dense)
        else:
            masks, iou = self.decode_sam(features.embedding, sparse, dense)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]

    def decode_sam(
        self, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's decoder: (1 or B, 256, 64, 64), (B, N, 256), (B, 256, 64, 64) -> all four mask
        logits (B, 4, 256, 256) and IoU predictions (B, 4)."""
        masks, iou, _, _ = self.sam.mask_decoder.predict_masks(
            embedding.expand(sparse.shape[0], -1, -1, -1),
            self.sam.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
        )
        return masks, iou

    # --- heads checkpoint -------------------------------------------------------------------

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the new parameters: ``hr_head.*`` and ``lr_head.*``."""
        return {
            k: v.detach().cpu()
            for k, v in self.state_dict().items()
            if k.startswith(("hr_head.", "lr_head."))
        }

    def save_heads(self, path: str | Path, **metadata: Any) -> None:
        """Write the heads and their metadata to a small checkpoint, atomically."""
        path = Path(path)
        meta = {**self.metadata, **metadata}
        meta["aggregation"] = self.aggregation
        meta.setdefault("saved", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        payload = {"format": HEADS_FORMAT, "metadata": meta, "state_dict": self.heads_state_dict()}
        bad = non_finite_tensors(self.heads_state_dict())
        if bad:  # a diverged training run: never write heads that cannot segment
            raise HeadsError(f"{path}: not written: the heads hold NaN or infinity ({bad[:4]})")
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        self.metadata = meta

    def load_heads(self, path: str | Path, aggregation: Aggregation | None = None) -> None:
        """Load heads written by :meth:`save_heads`; every key must match."""
        payload = read_heads_checkpoint(path)
        state = payload["state_dict"]
        expected = set(self.heads_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise HeadsError(
                f"{path}: heads checkpoint does not fit this model "
                f"(missing: {missing[:8]}, unexpected: {unexpected[:8]})"
            )
        own = self.state_dict()
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise HeadsError(
                    f"{path}: {key} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(own[key].shape)}"
                )
        self.load_state_dict(state, strict=False)
        self.heads_version += 1
        meta = dict(payload.get("metadata", {}))
        chosen = aggregation or meta.get("aggregation", self.aggregation)
        if chosen not in AGGREGATIONS:
            raise HeadsError(f"{path}: unknown aggregation {chosen!r}")
        self.aggregation = cast(Aggregation, chosen)
        meta["path"] = str(path)
        self.metadata = meta


def read_heads_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a heads checkpoint file; raise :class:`HeadsError` with the reason."""
    path = Path(path)
    if path.is_dir():
        raise HeadsError(f"WSI-SAM heads checkpoint {path} is a folder: give the .pt file in it")
    if not path.is_file():
        raise HeadsError(f"WSI-SAM heads checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise HeadsError(
            f"{path}: not a readable heads checkpoint: {torch_load_reason(exc)}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != HEADS_FORMAT:
        raise HeadsError(
            f"{path}: not a WSI-SAM heads checkpoint (expected format {HEADS_FORMAT!r})"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise HeadsError(f"{path}: not a WSI-SAM heads checkpoint (no state_dict)")
    bad = non_finite_tensors(state)
    if bad:
        raise HeadsError(
            f"{path}: the heads hold NaN or infinity ({', '.join(bad[:4])}): the training run "
            "that wrote them diverged; train again (e.g. with a lower --lr) or use other heads"
        )
    return cast(dict[str, Any], payload)


def postprocess_logits(logits: torch.Tensor, size: int = PATCH_SIZE) -> torch.Tensor:
    """(B, C, 256, 256) low-res logits -> (B, C, size, size), bilinear as SAM does."""
    return F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)


def describe(model: WsiSam) -> dict[str, Any]:
    """Plain-data summary of a model for logs and the UI."""
    return {
        "aggregation": model.aggregation,
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
        "device": str(model.device),
        "metadata": dict(model.metadata),
    }
