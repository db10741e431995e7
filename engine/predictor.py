"""Interactive prediction with SAM: encode an image once, then answer many prompts.

Same interface and meanings as segment-anything's ``SamPredictor``: numpy in and out,
coordinates in the image's own pixels (x, y), labels 1 foreground / 0 background, boxes
x0, y0, x1, y1.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.sam.sam import Sam
from engine.transforms import ResizeLongestSide


class SamPredictor:
    """Computes the image embedding once per :meth:`set_image` and reuses it for every prompt."""

    def __init__(self, sam_model: Sam) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.is_image_set = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image of any size (resized, normalised and padded as SAM).

        ``image_format`` is "RGB" (default) or "BGR" (e.g. from OpenCV).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image must be HxWx3 (RGB), got shape {image.shape}; convert greyscale or RGBA "
                "images to RGB first"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image is empty: shape {image.shape}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(image)
        # a copy: the resized array may be a read-only or negatively strided view of the input
        tensor = torch.from_numpy(np.array(resized)).to(self.device).permute(2, 0, 1)[None]
        self.set_torch_image(tensor.contiguous(), (int(image.shape[0]), int(image.shape[1])))

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Encode a (1, 3, h, w) image already resized with ResizeLongestSide (max(h, w) = 1024).

        ``original_image_size`` is (H, W) before resizing.
        """
        size = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"set_torch_image expects (1, 3, h, w) with max(h, w) == {size}, got {shape}"
            )
        if len(original_image_size) != 2:
            raise ValueError(f"original_image_size must be (H, W), got {original_image_size}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(shape[2]), int(shape[3]))
        image = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        self.features, _ = self.model.encode_preprocessed(image)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, (1, 256, 64, 64)."""
        if not self.is_image_set or self.features is None:
            raise RuntimeError("no image set: call set_image(...) before get_image_embedding()")
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one prompt on the current image.

        Arguments:
          point_coords: (N, 2) points (x, y) in the image's pixels.
          point_labels: (N,) labels, 1 foreground, 0 background.
          box: (4,) box x0, y0, x1, y1 in the image's pixels.
          mask_input: (1, 256, 256) low-res logits from a previous prediction.
          multimask_output: return 3 masks (best for a single ambiguous click) instead of 1.
          return_logits: return mask logits instead of booleans.

        Returns:
          masks (C, H, W) bool (float32 logits with return_logits), IoU predictions (C,)
          float32, low-res logits (C, 256, 256) float32; C = 3 or 1.
        """
        if not self.is_image_set or self.original_size is None:
            raise RuntimeError("no image set: call set_image(...) before predict()")

        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            coords, labels = _check_points(point_coords, point_labels)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int64, device=self.device)[None]
        if box is not None:
            checked_box = _check_box(box)
            box_t = torch.as_tensor(
                self.transform.apply_boxes(checked_box, self.original_size),
                dtype=torch.float32,
                device=self.device,
            )
        if mask_input is not None:
            mask_t = torch.as_tensor(
                _check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size),
                dtype=torch.float32,
                device=self.device,
            )[None]

        masks, iou, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits=return_logits
        )
        return (
            masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the resized frame (ResizeLongestSide).

        Arguments:
          point_coords: (B, N, 2) and point_labels (B, N), or None.
          boxes: (B, 4), or None.
          mask_input: (B, 1, 256, 256) low-res logits, or None.

        Returns:
          masks (B, C, H, W) (bool unless return_logits), IoU predictions (B, C), low-res logits
          (B, C, 256, 256).
        """
        if not self.is_image_set or self.features is None:
            raise RuntimeError("no image set: call set_image(...) before predict_torch()")
        assert self.input_size is not None and self.original_size is not None
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            if point_coords.shape[:-1] != point_labels.shape or point_coords.shape[-1] != 2:
                raise ValueError(
                    f"point_coords (B, N, 2) and point_labels (B, N) disagree: "
                    f"{tuple(point_coords.shape)} vs {tuple(point_labels.shape)}"
                )
            points = (point_coords, point_labels)
        with self.model.decoder_autocast():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=self.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        low_res, iou = low_res.float(), iou.float()
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res


def _check_points(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if point_coords is None or point_labels is None:
        missing = "point_labels" if point_labels is None else "point_coords"
        raise ValueError(f"point_coords and point_labels go together; {missing} is missing")
    coords = np.asarray(point_coords, dtype=np.float64)
    labels = np.asarray(point_labels)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords must be (N, 2) as (x, y), got shape {coords.shape}")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_labels must be (N,) with one label per point: {coords.shape[0]} point(s), "
            f"labels of shape {labels.shape}"
        )
    if coords.shape[0] == 0:
        raise ValueError("point_coords is empty; pass None for no points")
    if not np.all(np.isfinite(coords)):
        raise ValueError("point_coords contains NaN or infinite values")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {labels}")
    return coords, labels.astype(np.int64)


def _check_box(box: np.ndarray) -> np.ndarray:
    arr = np.asarray(box, dtype=np.float64)
    if arr.size != 4 or arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
        raise ValueError(f"box must be 4 numbers x0, y0, x1, y1, got shape {arr.shape}")
    arr = arr.reshape(4)
    if not np.all(np.isfinite(arr)):
        raise ValueError("box contains NaN or infinite values")
    if arr[2] < arr[0] or arr[3] < arr[1]:
        raise ValueError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {arr}")
    return arr


def _check_mask_input(mask_input: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(mask_input, dtype=np.float32)
    if arr.shape == size:
        arr = arr[None]
    if arr.shape != (1, *size):
        raise ValueError(
            f"mask_input must be (1, {size[0]}, {size[1]}) low-res logits (as returned by a "
            f"previous predict), got shape {arr.shape}"
        )
    return arr
