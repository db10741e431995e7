"""SAM's mask decoder: output tokens + prompt tokens through the two-way transformer, then masks.

``predict_masks`` also accepts extra learned tokens (HQ-SAM / WSI-SAM style), appended after the
mask tokens and before the prompt tokens, and returns their transformer outputs and the upscaled
mask features, so that heads built on top of SAM can reuse the frozen decoder.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.sam.common import MLP, LayerNorm2d
from engine.sam.pixelwise import upscale_channels_last
from engine.sam.transformer import TwoWayTransformer

__all__ = ["MLP", "LayerNorm2d", "MaskDecoder"]


class MaskDecoder(nn.Module):
    """Predicts masks and their quality from an image embedding and prompt embeddings.

    Arguments:
      transformer_dim: token width (256).
      transformer: the two-way transformer.
      num_multimask_outputs: masks predicted for ambiguous prompts (3); one more token gives the
        single-mask output.
      activation: activation of the upscaling path.
      iou_head_depth, iou_head_hidden_dim: the MLP that predicts each mask's IoU.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        # 4x upscaling of the image tokens to the mask resolution, width 256 -> 32
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Arguments:
          image_embeddings: (B_img, 256, 64, 64), B_img = 1 or B.
          image_pe: (1, 256, 64, 64) positional encoding of the embedding grid.
          sparse_prompt_embeddings: (B, N, 256) point and box tokens.
          dense_prompt_embeddings: (B, 256, 64, 64) mask-prompt embedding.
          multimask_output: three masks (for ambiguous prompts) or the single-mask output.

        Returns:
          mask logits (B, C, 256, 256) and predicted IoUs (B, C), C = 3 or 1.
        """
        masks, iou_pred, _, _ = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        extra_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Predict all mask outputs, optionally with extra tokens in the sequence.

        Arguments:
          image_embeddings: (B_img, 256, 64, 64); B_img = 1 is shared by all B prompts.
          image_pe: (1 or B, 256, 64, 64).
          sparse_prompt_embeddings: (B, N, 256).
          dense_prompt_embeddings: (1 or B, 256, 64, 64).
          extra_tokens: (T, 256) learned tokens placed after the mask tokens (or (B, T, 256),
            one set per batch item), or None.

        Returns:
          masks (B, 4, 256, 256) logits for all mask tokens, iou_pred (B, 4), the transformer
          outputs of the extra tokens (B, T, 256) or None, and the upscaled image features
          (B, 32, 256, 256) that the mask tokens are dotted with.
        """
        hs, src = self.run_transformer(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            extra_tokens,
        )
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        extra_out = None
        if extra_tokens is not None:
            start = 1 + self.num_mask_tokens
            extra_out = hs[:, start : start + extra_tokens.shape[-2], :]

        upscaled = self.upscale(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, 4, 32)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred, extra_out, upscaled

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        extra_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer over the output, extra and prompt tokens and the image.

        Arguments as :meth:`predict_masks`; ``extra_tokens`` may also be (B, T, 256), one set of
        extra tokens per batch item (e.g. the HR head's token for some items, the LR head's for
        others, so that both heads run in one batch).

        Returns:
          the updated tokens (B, 1 + 4 + T + N, 256) (iou token, mask tokens, extra tokens,
          prompt tokens) and the updated image features (B, 256, 64, 64).
        """
        batch = sparse_prompt_embeddings.shape[0]
        fixed = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        fixed = fixed.unsqueeze(0).expand(batch, -1, -1)
        if extra_tokens is not None:
            if extra_tokens.shape[-1] != self.transformer_dim or extra_tokens.ndim not in (2, 3):
                raise ValueError(
                    f"extra_tokens must be (T, {self.transformer_dim}) or "
                    f"(B, T, {self.transformer_dim}), got {tuple(extra_tokens.shape)}"
                )
            if extra_tokens.ndim == 2:
                extra = extra_tokens.unsqueeze(0).expand(batch, -1, -1)
            else:
                extra = _expand_batch(extra_tokens, batch, "extra_tokens")
            fixed = torch.cat([fixed, extra.to(fixed.dtype)], dim=1)
        tokens = torch.cat([fixed, sparse_prompt_embeddings.to(fixed.dtype)], dim=1)

        src = _expand_batch(image_embeddings, batch, "image_embeddings")
        src = src + dense_prompt_embeddings
        pos_src = _expand_batch(image_pe, batch, "image_pe")
        b, c, h, w = src.shape
        hs, src_tokens = self.transformer(src, pos_src, tokens)
        return hs, src_tokens.transpose(1, 2).reshape(b, c, h, w)

    def upscale(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) transformer image features -> (B, 32, 256, 256) mask features."""
        upscaled: torch.Tensor = self.output_upscaling(image_features)
        return upscaled

    def upscale_channels_last(self, image_features: torch.Tensor) -> torch.Tensor:
        """:meth:`upscale` on channels-last maps, (B, 64, 64, 256) -> (B, 256, 256, 32).

        The same arithmetic as per-pixel matrix products (faster on CPUs, forward and backward).
        """
        return upscale_channels_last(self.output_upscaling, image_features)


def _expand_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Broadcast a batch-1 tensor to ``batch``; a tensor that already has it passes unchanged."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}, expected 1 or {batch} (the prompt batch)")
