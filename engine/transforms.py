"""Resizing images and prompts to SAM's input frame (longest side = encoder input size)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F


class ResizeLongestSide:
    """Resize so that the longest side is ``target_length``; map coordinates and boxes alike.

    Images are resized with PIL's antialiased bilinear filter, which is what SAM's reference
    pipeline does (torchvision's ``resize`` on a PIL image), so embeddings match the original.
    Coordinates are (x, y) in pixels of the original image.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(h, w) after scaling (oldh, oldw) so that the longer side is ``long_side_length``."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, 3) uint8 image; returns (h, w, 3) uint8."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"apply_image expects an HxWx3 uint8 array, got shape {image.shape} "
                f"dtype {image.dtype}"
            )
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        if (h, w) == image.shape[:2]:
            return np.ascontiguousarray(image)
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale (..., 2) (x, y) coordinates from ``original_size`` (H, W); returns float64."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale (B, 4) boxes x0, y0, x1, y1 from ``original_size`` (H, W)."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a (B, C, H, W) float batch (antialiased bilinear; close to, not equal to,
        :meth:`apply_image`)."""
        h, w = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Scale (..., 2) (x, y) coordinates from ``original_size`` (H, W); returns float32."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        out = coords.detach().clone().to(torch.float32)
        out[..., 0] = out[..., 0] * (new_w / old_w)
        out[..., 1] = out[..., 1] * (new_h / old_h)
        return out

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Scale (B, 4) boxes x0, y0, x1, y1 from ``original_size`` (H, W)."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
