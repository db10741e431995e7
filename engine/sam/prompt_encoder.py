"""SAM's prompt encoder: points and boxes to sparse tokens, a low-res mask to a dense map."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.sam.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) with fixed random frequencies (buffer
    ``positional_encoding_gaussian_matrix``, shape (2, num_pos_feats), stored in the checkpoint).

    The encoding of a point is [sin(2π·f), cos(2π·f)] with f = (2·xy - 1) @ matrix, so it has
    2 * num_pos_feats channels.
    """

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates normalised to [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid: (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # (h, w, 2) as (x, y)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode (B, N, 2) pixel coordinates (x, y) of an image of ``image_size`` (h, w).

        Returns (B, N, C).
        """
        h, w = image_size
        size_xy = torch.tensor([w, h], dtype=torch.float32, device=coords_input.device)
        return self._pe_encoding(coords_input.to(torch.float32) / size_xy)


class PromptEncoder(nn.Module):
    """Embeds prompts for SAM's mask decoder.

    Points (with labels 1 foreground, 0 background, -1 padding) and box corners become sparse
    tokens (B, N, embed_dim): the positional encoding of the point plus a learned embedding of
    its kind (``point_embeddings[0..3]``: negative, positive, top-left, bottom-right;
    ``not_a_point_embed`` for padding). A low-res mask (B, 1, 4E, 4E) becomes a dense map
    (B, embed_dim, E, E) through ``mask_downscaling``; without one, ``no_mask_embed`` is
    broadcast over the grid.

    Arguments:
      embed_dim: prompt embedding width (256 in SAM).
      image_embedding_size: (E_h, E_w) of the image embedding (64, 64).
      input_image_size: (h, w) of the padded encoder input (1024, 1024).
      mask_in_chans: hidden channels of the mask downscaler (16).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size: tuple[int, int] = (input_image_size[0], input_image_size[1])
        self.image_embedding_size: tuple[int, int] = (
            image_embedding_size[0],
            image_embedding_size[1],
        )
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings = 4  # negative point, positive point, two box corners
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, embed_dim, E_h, E_w)."""
        h, w = self.image_embedding_size
        return self.pe_layer((h, w)).unsqueeze(0)

    def _kind_embedding(self, index: int) -> torch.Tensor:
        """(1, embed_dim) learned embedding of a prompt kind (0 neg, 1 pos, 2/3 box corners)."""
        embedding = self.point_embeddings[index]
        assert isinstance(embedding, nn.Embedding)
        return embedding.weight

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) pixel coords and (B, N) labels -> (B, N (+1 if pad), embed_dim)."""
        points = points.to(torch.float32) + 0.5  # centre of the pixel
        if pad:
            # without a box SAM appends one padding point, as it was trained that way
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros((b, 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), -1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(
            labels == 0, self._kind_embedding(0), embedding.new_zeros(())
        )
        embedding = embedding + torch.where(
            labels == 1, self._kind_embedding(1), embedding.new_zeros(())
        )
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) boxes x0, y0, x1, y1 in pixels -> (B, 2, embed_dim) corner tokens."""
        corners = (boxes.to(torch.float32) + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_kind = torch.cat([self._kind_embedding(2), self._kind_embedding(3)])
        return embedding + corner_kind

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4E_h, 4E_w) mask logits -> (B, embed_dim, E_h, E_w)."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _get_batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return int(points[0].shape[0])
        if boxes is not None:
            return int(boxes.shape[0])
        if masks is not None:
            return int(masks.shape[0])
        return 1

    def _get_device(self) -> torch.device:
        return self._kind_embedding(0).device

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts.

        Arguments:
          points: coordinates (B, N, 2) in encoder-input pixels and labels (B, N), or None.
          boxes: (B, 4) in encoder-input pixels, or None.
          masks: (B, 1, 4E_h, 4E_w) low-res mask logits, or None.

        Returns:
          sparse embeddings (B, N_tokens, embed_dim) and dense embeddings
          (B, embed_dim, E_h, E_w).
        """
        bs = self._get_batch_size(points, boxes, masks)
        parts = [torch.empty((bs, 0, self.embed_dim), device=self._get_device())]
        if points is not None:
            coords, labels = points
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
