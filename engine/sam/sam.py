"""The Segment Anything model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engine.sam.mask_decoder import MaskDecoder
from engine.sam.prompt_encoder import PromptEncoder
from engine.sam.tiny_vit import TinyViT
from engine.sam.transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """SAM: predicts object masks from an image and prompts.

    ``pixel_mean`` / ``pixel_std`` are non-persistent buffers (3, 1, 1): they are not in SAM
    checkpoints. Use :class:`engine.predictor.SamPredictor` for interactive use; ``forward``
    mirrors SAM's batched interface.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    #: provenance of the loaded weights (engine.weights.CheckpointInfo), set by load_sam
    checkpoint_info: Any = None
    #: the encoder backend (engine.backends.ImageEncoder); None runs ``image_encoder`` in torch
    encoder_backend: Any = None
    #: precision of the decoders ("f32", or "bf16" / "fp16" under autocast on a GPU)
    decoder_precision: str = "f32"

    def __init__(
        self,
        image_encoder: TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square encoder input (1024 for MobileSAM)."""
        return self.image_encoder.img_size

    @property
    def backend_label(self) -> str:
        """What runs the encoder, e.g. "OpenVINO CPU bf16" or "torch CPU f32"."""
        if self.encoder_backend is not None:
            return str(self.encoder_backend.describe())
        return f"torch {self.device.type.upper()} f32"

    def encode_preprocessed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen image encoder on its backend.

        Args:
          images: (B, 3, img_size, img_size) float32, already through :meth:`preprocess`.
        Returns:
          the embedding (B, 256, 64, 64) and the early feature (B, 160, 64, 64), float32 on the
          model's device.
        """
        if self.encoder_backend is not None:
            embedding, early = self.encoder_backend.encode(images)
            return embedding, early
        with torch.no_grad():
            return self.image_encoder.forward_with_early(images)

    def encode_stages(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen encoder's multi-scale maps (``TinyViT.forward_stages``) on its backend.

        Args:
          images: (B, 3, img_size, img_size) float32, already through :meth:`preprocess`.
        Returns:
          "embedding" (B, 256, 64, 64), "early" (B, 160, 64, 64), "stage1" (B, 128, 128, 128) and
          "stage0" (B, 64, 256, 256), float32 on the model's device.
        """
        if self.encoder_backend is not None:
            return dict(self.encoder_backend.encode_stages(images))
        with torch.no_grad():
            return self.image_encoder.forward_stages(images)

    def decoder_autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context for running the prompt encoder and mask decoder in :attr:`decoder_precision`."""
        from engine.backends import autocast

        return autocast(self.device, self.decoder_precision)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise colours and pad bottom/right to a square encoder input.

        Input (..., 3, h, w) with pixel values 0..255 and max(h, w) <= img_size; output
        (..., 3, img_size, img_size).
        """
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.img_size
        if h > size or w > size:
            raise ValueError(f"image of {h}x{w} is larger than the encoder input {size}x{size}")
        return F.pad(x, (0, size - w, 0, size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Upscale low-res masks to the original image, dropping the padding.

        Arguments:
          masks: (B, C, 256, 256) logits from the mask decoder.
          input_size: (h, w) of the resized image before padding.
          original_size: (H, W) of the image before resizing.

        Returns:
          (B, C, H, W) logits.
        """
        size = self.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(
            masks,
            (int(original_size[0]), int(original_size[1])),
            mode="bilinear",
            align_corners=False,
        )

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """Predict masks end to end for a batch of images, as SAM's ``Sam.forward``.

        Each input dict holds ``image`` (3, h, w) already resized with ResizeLongestSide,
        ``original_size`` (H, W), and optionally ``point_coords`` (B, N, 2) with
        ``point_labels`` (B, N), ``boxes`` (B, 4) and ``mask_inputs`` (B, 1, 256, 256), all in
        the resized frame. Each output dict holds ``masks`` (B, C, H, W) bool,
        ``iou_predictions`` (B, C) and ``low_res_logits`` (B, C, 256, 256).
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings, _ = self.encode_preprocessed(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings, strict=True):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, tuple(record["image"].shape[-2:]), tuple(record["original_size"])
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs


def build_mobile_sam() -> Sam:
    """MobileSAM's architecture (TinyViT-5M encoder at 1024 px), with untrained weights.

    Load ``mobile_sam.pt`` into it with :func:`engine.weights.load_sam`.
    """
    image_size = 1024
    embed_dim = 256
    encoder = TinyViT(
        img_size=image_size,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        out_chans=embed_dim,
    )
    prompt_encoder, mask_decoder = build_prompt_and_mask_decoders(
        encoder.embedding_size, image_size, embed_dim
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)


def build_prompt_and_mask_decoders(
    image_embedding_size: tuple[int, int], input_image_size: int, embed_dim: int = 256
) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder (shared by MobileSAM and LiteMedSAM)."""
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=image_embedding_size,
        input_image_size=(input_image_size, input_image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder
