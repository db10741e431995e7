"""Low-res mask logits -> the high-res mask, upsampled only where the object can be.

SAM's decoders answer at 256x256; the mask is the bilinear upsampling of those logits to the
1024x1024 patch, thresholded at 0 (:func:`engine.wsi_sam.postprocess_logits`). Bilinear
interpolation is a convex combination of the 2x2 nearest low-res logits, so a high-res pixel can
only be inside when one of those is positive: the mask lies within the low-res positives' bounding
box grown by one low-res pixel. :func:`upsample_window` upsamples just that window (with the same
operation, on a crop with a margin, so its pixels equal the full upsampling's) and returns it with
its place in the patch; :func:`mask_to_geometry` then traces far fewer pixels than the whole field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

__all__ = ["MaskWindow", "upsample_window"]

# low-res pixels of context kept around the positives before upsampling; the outer one is cut
# off again afterwards (interpolation clamps there)
_MARGIN = 2


@dataclass(frozen=True)
class MaskWindow:
    """A window of the thresholded high-res mask.

    Attributes:
        mask: (h, w) bool, the high-res mask inside the window (False everywhere outside it).
        row, col: the window's top-left pixel in the high-res patch.
        size: the high-res patch's side (1024).
    """

    mask: NDArray[np.bool_]
    row: int
    col: int
    size: int

    def full(self) -> NDArray[np.bool_]:
        """The (size, size) mask of the whole patch."""
        out = np.zeros((self.size, self.size), dtype=bool)
        h, w = self.mask.shape
        out[self.row : self.row + h, self.col : self.col + w] = self.mask
        return out


def upsample_window(logits: torch.Tensor, size: int = 1024) -> MaskWindow | None:
    """Threshold the bilinear upsampling of (H, W) low-res logits to (size, size), windowed.

    Equal to ``F.interpolate(logits, (size, size), mode="bilinear", align_corners=False) > 0``
    (the pixels outside the window are all False there). None when no logit is positive (the
    upsampled mask is then empty). ``size`` must be a whole multiple of the logits' side.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected (H, W) logits, got shape {tuple(logits.shape)}")
    height, width = (int(v) for v in logits.shape)
    if height != width or size % height:
        raise ValueError(f"size {size} is not a whole multiple of the logits' side {height}")
    scale = size // height
    positive = logits > 0
    rows = torch.nonzero(positive.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(positive.any(dim=0)).flatten()
    r0 = max(int(rows[0]) - _MARGIN, 0)
    r1 = min(int(rows[-1]) + _MARGIN + 1, height)
    c0 = max(int(cols[0]) - _MARGIN, 0)
    c1 = min(int(cols[-1]) + _MARGIN + 1, width)
    crop = logits[r0:r1, c0:c1].float()
    up = F.interpolate(crop[None, None], scale_factor=scale, mode="bilinear", align_corners=False)
    up = up[0, 0]
    # the first and last low-res pixel of a crop that does not touch the patch's edge are
    # clamped by the interpolation: cut them off (the positives stay inside, see above)
    top = 0 if r0 == 0 else scale
    left = 0 if c0 == 0 else scale
    bottom = up.shape[0] if r1 == height else up.shape[0] - scale
    right = up.shape[1] if c1 == width else up.shape[1] - scale
    window = (up[top:bottom, left:right] > 0).cpu().numpy()
    return MaskWindow(window, r0 * scale + top, c0 * scale + left, size)
