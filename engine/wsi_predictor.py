"""Prompts in slide coordinates -> WSI-SAM (or SAM) masks and polygons, with an embedding cache.

A prompt picks a *field*: the 1024x1024 HR patch at the working magnification centred on the
prompt, and the concentric 1024x1024 LR patch at half that magnification. Encoding a field is
the slow part (two TinyViT passes), so encoded fields are kept in a memory-bounded LRU cache and
a later prompt that fits inside a cached field reuses it: only the decoders run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry import box as shapely_box

from engine.geometry import mask_to_geometry
from engine.mask_window import MaskWindow, upsample_window
from engine.patches import PATCH_SIZE, Field, choose_field
from engine.slides import Slide
from engine.wsi_sam import PatchFeatures, Prompts, WsiSam

logger = logging.getLogger(__name__)

Mode = Literal["wsi-sam", "sam"]
MODES: tuple[str, ...] = ("wsi-sam", "sam")
# A cached field is reused when the prompt lies at least this many HR pixels inside its HR patch.
REUSE_MARGIN = 96


class PromptError(ValueError):
    """A prompt that cannot be segmented: empty, malformed, or off the slide."""


@dataclass
class Candidate:
    """One of several masks for an ambiguous prompt (a single point)."""

    geometry: Polygon | MultiPolygon | None
    score: float


@dataclass
class SegmentResult:
    """The answer to one prompt.

    Attributes:
        geometry: the mask as a polygon in level-0 pixels (holes kept, simplified to about one
            HR pixel), or None when the mask is empty.
        score: the predicted IoU of the mask.
        mask: (1024, 1024) bool, the mask on the HR patch.
        field: the HR/LR field the mask came from.
        mode: "wsi-sam" or "sam".
        candidates: for a single-point prompt, every candidate (best first); else empty.
        encoded: True when the field had to be encoded (a cache miss).
        timings: seconds spent per stage ("read", "encode", "decode", "polygon", "total").
    """

    geometry: Polygon | MultiPolygon | None
    score: float
    mask: np.ndarray
    field: Field
    mode: str
    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    encoded: bool = False
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass
class _CachedField:
    field: Field
    hr: PatchFeatures | None = None
    lr: PatchFeatures | None = None
    # the HR head's prompt-independent fused features (WsiSam.hr_static_features), and the
    # heads version they were computed with
    hr_static: torch.Tensor | None = None
    hr_static_version: int = -1
    # data derived from this field's embedding (e.g. per-object features), dropped with it;
    # values with an ``nbytes`` count towards the cache's budget
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def nbytes(self) -> int:
        total = sum(f.nbytes() for f in (self.hr, self.lr) if f is not None)
        if self.hr_static is not None:
            total += self.hr_static.numel() * self.hr_static.element_size()
        total += sum(int(getattr(value, "nbytes", 0)) for value in self.extras.values())
        return total


@dataclass
class _Prompt:
    box: np.ndarray | None  # (4,) level-0, clipped to the slide
    points: np.ndarray | None  # (N, 2) level-0
    labels: np.ndarray | None  # (N,)

    def bbox(self) -> tuple[float, float, float, float]:
        xs: list[float] = []
        ys: list[float] = []
        if self.box is not None:
            xs += [float(self.box[0]), float(self.box[2])]
            ys += [float(self.box[1]), float(self.box[3])]
        if self.points is not None:
            xs += self.points[:, 0].tolist()
            ys += self.points[:, 1].tolist()
        return min(xs), min(ys), max(xs), max(ys)


def _validate_prompt(
    slide: Slide,
    box: Sequence[float] | np.ndarray | None,
    points: Sequence[Sequence[float]] | np.ndarray | None,
    labels: Sequence[int] | np.ndarray | None,
) -> _Prompt:
    width, height = slide.dimensions
    size = f"{width} x {height}"
    box_arr: np.ndarray | None = None
    if box is not None:
        box_arr = np.asarray(box, dtype=np.float64).reshape(-1)
        if box_arr.shape != (4,) or not np.all(np.isfinite(box_arr)):
            raise PromptError(f"a box is four finite numbers x0,y0,x1,y1, got {box!r}")
        x0, y0, x1, y1 = box_arr
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"box {tuple(box_arr)} is empty: it needs x1 > x0 and y1 > y0")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise PromptError(f"box {tuple(box_arr)} lies outside the slide ({size} pixels)")
        box_arr = np.array([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])
    pts_arr: np.ndarray | None = None
    lab_arr: np.ndarray | None = None
    if points is not None and len(points) > 0:
        pts_arr = np.asarray(points, dtype=np.float64)
        if pts_arr.ndim != 2 or pts_arr.shape[1] != 2 or not np.all(np.isfinite(pts_arr)):
            raise PromptError("points must be an (N, 2) array of finite x, y")
        if labels is None:
            lab_arr = np.ones(len(pts_arr), dtype=np.int64)
        else:
            lab_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
            if lab_arr.shape != (len(pts_arr),):
                raise PromptError(f"{len(pts_arr)} points but {lab_arr.size} labels")
            if not np.isin(lab_arr, (0, 1)).all():
                raise PromptError("point labels are 1 (positive) or 0 (negative)")
        for x, y in pts_arr:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(
                    f"point ({x:.0f}, {y:.0f}) lies outside the slide ({size} pixels)"
                )
    if box_arr is None and pts_arr is None:
        raise PromptError("a prompt needs a box or at least one point")
    if box_arr is None and lab_arr is not None and not (lab_arr == 1).any():
        raise PromptError("points alone need at least one positive point")
    return _Prompt(box_arr, pts_arr, lab_arr)


class WsiSamPredictor:
    """Segment objects on slides from prompts in level-0 pixels.

    Args:
        model: a loaded :class:`~engine.wsi_sam.WsiSam`.
        magnification: the working (HR) magnification; the LR patch is at half of it.
        adaptive: step the magnification down for objects too large for the HR patch and up for
            tiny ones (never past level 0); False keeps it fixed, as in the paper's protocol.
        default_magnification: level-0 magnification assumed for images without mpp/objective
            power metadata.
        cache_bytes: memory budget of the embedding cache.
    """

    def __init__(
        self,
        model: WsiSam,
        *,
        magnification: float = 10.0,
        adaptive: bool = True,
        default_magnification: float = 40.0,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        self.model = model
        self.magnification = magnification
        self.adaptive = adaptive
        self.default_magnification = default_magnification
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, Any], _CachedField] = OrderedDict()
        self.encoder_calls = 0  # number of patches encoded, for tests and status displays

    # --- cache --------------------------------------------------------------------------------

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_nbytes(self) -> int:
        return sum(entry.nbytes() for entry in self._cache.values())

    @staticmethod
    def _slide_key(slide: Slide) -> str:
        return str(slide.path)

    def _pick_field(self, slide: Slide, prompt: _Prompt) -> Field:
        """The field for a prompt: a cached one when the prompt fits inside it, else a new one."""
        bbox = prompt.bbox()
        boxed = prompt.box is not None
        wanted = choose_field(
            slide,
            bbox,
            magnification=self.magnification,
            adaptive=self.adaptive and boxed,
            default_magnification=self.default_magnification,
        )
        slide_key = self._slide_key(slide)
        for (key_slide, _), entry in reversed(self._cache.items()):
            if key_slide != slide_key:
                continue
            cached = entry.field
            # A box's size decides the magnification; points alone may use any cached field.
            if boxed and not np.isclose(cached.hr_downsample, wanted.hr_downsample):
                continue
            corners = cached.level0_to_hr(np.array([[bbox[0], bbox[1]], [bbox[2], bbox[3]]]))
            lo, hi = REUSE_MARGIN, PATCH_SIZE - REUSE_MARGIN
            if corners.min() >= lo and corners.max() <= hi:
                return cached
        return wanted

    def is_cached(
        self,
        slide: Slide,
        box: Sequence[float] | np.ndarray | None = None,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
    ) -> bool:
        """Whether this prompt would be answered from the cache (no encoder run)."""
        try:
            prompt = _validate_prompt(slide, box, points, labels)
        except PromptError:
            return False
        chosen = self._pick_field(slide, prompt)
        return (self._slide_key(slide), chosen.key) in self._cache

    def field_at(self, slide: Slide, x: float, y: float, extent: float | None = None) -> Field:
        """The field a prompt centred on level-0 (x, y) would use: what to pre-encode there.

        ``extent``: the expected object size in level-0 pixels (e.g. a fraction of the visible
        view), which picks the magnification as a box of that size would; None gives the field
        of a point prompt (the working magnification).
        """
        x, y = float(x), float(y)
        if extent is None or extent <= 0:
            return self._pick_field(
                slide, _Prompt(box=None, points=np.array([[x, y]]), labels=None)
            )
        half = extent / 2
        return self._pick_field(
            slide,
            _Prompt(
                box=np.array([x - half, y - half, x + half, y + half]), points=None, labels=None
            ),
        )

    def neighbour_field(
        self, slide: Slide, chosen: Field, direction: tuple[float, float], step: int = 1
    ) -> Field | None:
        """The field ``step`` fields away from ``chosen`` in ``direction`` (a level-0 vector),
        at the same magnification: where a pan in that direction brings the next prompts.

        Neighbours overlap by the reuse margin, so a prompt anywhere between their centres
        lies inside one of them. None when that field's HR patch would miss the slide.
        """
        dx, dy = (float(v) for v in direction)
        length = float(np.hypot(dx, dy))
        if not np.isfinite(length) or length <= 0:
            return None
        distance = step * (PATCH_SIZE - 2 * REUSE_MARGIN) * chosen.hr_downsample
        x = chosen.centre[0] + dx / length * distance
        y = chosen.centre[1] + dy / length * distance
        width, height = slide.dimensions
        half = PATCH_SIZE / 2 * chosen.hr_downsample
        if x + half <= 0 or y + half <= 0 or x - half >= width or y - half >= height:
            return None
        grid = 2 * chosen.hr_downsample
        if grid >= 1 and abs(grid - round(grid)) < 1e-9:  # on the LR pixel grid, as make_field
            x, y = round(x / grid) * grid, round(y / grid) * grid
        return Field((x, y), chosen.hr_downsample, chosen.hr_magnification)

    def preencode(self, slide: Slide, chosen: Field, part: Literal["hr", "lr"]) -> bool:
        """Encode one patch of a field into the cache ahead of a prompt; True if it ran.

        One patch per call (about one encoder pass), so a caller running this in the background
        can let a real prompt go first between the HR and the LR patch.
        """
        key = (self._slide_key(slide), chosen.key)
        entry = self._cache.get(key) or _CachedField(chosen)
        if getattr(entry, part) is not None:
            return False
        image = _read_patch(slide, chosen, part)
        batch = torch.from_numpy(image[None]).permute(0, 3, 1, 2).float()
        setattr(entry, part, self.model.encode(batch)[0])
        self.encoder_calls += 1
        self._cache[key] = entry
        self._cache.move_to_end(key)
        self._evict()
        return True

    def is_field_cached(self, slide: Slide, chosen: Field, need_lr: bool = True) -> bool:
        """Whether ``chosen`` is fully encoded (both patches unless ``need_lr`` is False)."""
        entry = self._cache.get((self._slide_key(slide), chosen.key))
        return entry is not None and entry.hr is not None and (entry.lr is not None or not need_lr)

    def encoded_field(
        self, slide: Slide, chosen: Field, need_lr: bool = True
    ) -> tuple[PatchFeatures, PatchFeatures | None, dict[str, Any], bool]:
        """A field's encoder outputs, encoded once through the cache.

        Returns:
            the HR and LR :class:`~engine.wsi_sam.PatchFeatures` (batch of one: embedding
            (1, 256, 64, 64), early (1, 160, 64, 64); LR None unless ``need_lr`` or cached), the
            field's *extras* (a dict kept with the cached embedding for data derived from it,
            such as per-object features, and dropped when the field leaves the cache; values
            with an ``nbytes`` attribute count towards the cache's memory budget), and whether
            the field had to be encoded.
        """
        entry, encoded = self._features(slide, chosen, need_lr=need_lr, timings={})
        assert entry.hr is not None
        return entry.hr, entry.lr, entry.extras, encoded

    def _features(
        self, slide: Slide, chosen: Field, need_lr: bool, timings: dict[str, float]
    ) -> tuple[_CachedField, bool]:
        key = (self._slide_key(slide), chosen.key)
        entry = self._cache.get(key)
        if entry is None:
            entry = _CachedField(chosen)
        have_all = entry.hr is not None and (entry.lr is not None or not need_lr)
        if have_all:
            self._cache.move_to_end(key)
            return entry, False
        todo = [part for part in ("hr", "lr") if getattr(entry, part) is None]
        if not need_lr:
            todo = [part for part in todo if part != "lr"]
        # The LR patch is read on another thread while the HR patch is encoded (the slide's
        # reads and the runtime's inference both run outside the GIL), so reading and resampling
        # the second patch overlaps the first encode instead of adding to it.
        read = encode = 0.0
        pending = (
            _read_pool().submit(_read_patch, slide, chosen, todo[1]) if len(todo) > 1 else None
        )
        t0 = time.perf_counter()
        image = _read_patch(slide, chosen, todo[0])
        read += time.perf_counter() - t0
        for index, part in enumerate(todo):
            if index > 0:
                assert pending is not None
                t0 = time.perf_counter()
                image = pending.result()
                read += time.perf_counter() - t0  # only what the encode did not hide
            t0 = time.perf_counter()
            batch = torch.from_numpy(image[None]).permute(0, 3, 1, 2).float()
            setattr(entry, part, self.model.encode(batch)[0])
            self.encoder_calls += 1
            encode += time.perf_counter() - t0
        timings["read"] = read
        timings["encode"] = encode
        self._cache[key] = entry
        self._cache.move_to_end(key)
        self._evict()
        return entry, True

    def _evict(self) -> None:
        while len(self._cache) > 1 and self.cache_nbytes() > self.cache_bytes:
            self._cache.popitem(last=False)

    # --- segmentation -------------------------------------------------------------------------

    @torch.inference_mode()
    def segment(
        self,
        slide: Slide,
        box: Sequence[float] | np.ndarray | None = None,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        mode: Mode | str = "wsi-sam",
        multimask: bool | None = None,
    ) -> SegmentResult:
        """Segment the object a prompt points at.

        Args:
            slide: an open slide.
            box: x0, y0, x1, y1 in level-0 pixels.
            points: (N, 2) x, y in level-0 pixels.
            labels: (N,) 1 for positive points, 0 for negative; all positive when omitted.
            mode: "wsi-sam" (HR + LR heads) or "sam" (MobileSAM on the HR patch only).
            multimask: return three candidates; by default only for a single point without a
                box, where the prompt is ambiguous.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        t_start = time.perf_counter()
        timings: dict[str, float] = {"read": 0.0, "encode": 0.0}
        prompt = _validate_prompt(slide, box, points, labels)
        if multimask is None:
            multimask = prompt.box is None and prompt.points is not None and len(prompt.points) == 1
        chosen = self._pick_field(slide, prompt)
        entry, encoded = self._features(slide, chosen, need_lr=(mode == "wsi-sam"), timings=timings)

        t0 = time.perf_counter()
        prompts = self._patch_prompts(chosen, prompt)
        logits, iou = self._decode(entry, prompts, mode, multimask)
        scores = iou[0].float().cpu().numpy()
        timings["decode"] = time.perf_counter() - t0

        # Each candidate's polygon is traced on its 256x256 logits upsampled only around the
        # object: equal to thresholding the whole 1024x1024 upsampling (engine.mask_window).
        t0 = time.perf_counter()
        order = np.argsort(-scores)
        candidates = []
        best_mask: MaskWindow | None = None
        for rank, index in enumerate(order):
            window = self._inside_slide_window(
                slide, chosen, upsample_window(logits[0, int(index)], PATCH_SIZE)
            )
            if rank == 0:
                best_mask = window
            candidates.append(
                Candidate(self._window_geometry(window, chosen), float(scores[index]))
            )
        timings["polygon"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        return SegmentResult(
            geometry=candidates[0].geometry,
            score=candidates[0].score,
            mask=(
                best_mask.full()
                if best_mask is not None
                else np.zeros((PATCH_SIZE, PATCH_SIZE), dtype=bool)
            ),
            field=chosen,
            mode=mode,
            candidates=candidates if multimask else [],
            encoded=encoded,
            timings=timings,
        )

    @torch.inference_mode()
    def decode_field(
        self,
        slide: Slide,
        chosen: Field,
        prompts: Prompts,
        mode: Mode | str = "wsi-sam",
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Decode a batch of B prompts on one given field (encoded once, through the cache).

        The building block of refinement and segment-everything: the caller picks the field
        and writes the prompts in its HR-patch pixels (``chosen.level0_to_hr``).

        Args:
            slide: an open slide.
            chosen: the field (e.g. from :func:`engine.patches.choose_field` or
                :meth:`field_at`).
            prompts: B prompts in HR-patch pixels; ``masks`` (B, 1, 256, 256) are mask logits.
            mode: "wsi-sam" (HR + LR heads) or "sam" (SAM on the HR patch).
            multimask: SAM's three candidates per prompt (C = 3) instead of one (C = 1).
        Returns:
            low-res mask logits (B, C, 256, 256) float32 on the CPU (threshold 0 after
            :func:`~engine.wsi_sam.postprocess_logits`), predicted IoU (B, C), and whether the
            field had to be encoded.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        timings: dict[str, float] = {}
        entry, encoded = self._features(slide, chosen, need_lr=(mode == "wsi-sam"), timings=timings)
        logits, iou = self._decode(entry, prompts.to(self.model.device), mode, multimask)
        return logits.cpu(), iou.cpu(), encoded

    @torch.inference_mode()
    def decode_points(
        self,
        slide: Slide,
        chosen: Field,
        points: np.ndarray | torch.Tensor,
        mode: Mode | str = "wsi-sam",
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """SAM's three candidates for each of B single positive points on one field.

        What :meth:`decode_field` gives for the same prompts with ``multimask=True``, computed
        by :class:`~engine.field_decoder.FieldDecoder` (the field's shared work done once per
        batch; on the decoder runtime's converted field graphs when it has them): the decoder of
        segment-everything's point grid.

        Args:
            slide: an open slide.
            chosen: the field.
            points: (B, 2) x, y in HR-patch pixels.
            mode: "wsi-sam" or "sam".
        Returns:
            low-res mask logits (B, 3, 256, 256) float32 on the CPU, predicted IoU (B, 3), and
            whether the field had to be encoded.
        """
        from engine.field_decoder import decode_points

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        entry, encoded = self._features(slide, chosen, need_lr=(mode == "wsi-sam"), timings={})
        assert entry.hr is not None
        device = self.model.device
        coords = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 1, 2)
        prompts = Prompts(points=coords, labels=torch.ones(len(coords), 1, dtype=torch.int64))
        hr = entry.hr.to(device)
        lr = entry.lr.to(device) if mode == "wsi-sam" and entry.lr is not None else None
        static = self._hr_static(entry, hr) if lr is not None else None
        logits, iou = decode_points(self.model, hr, lr, static, prompts.to(device))
        return logits.float().cpu(), iou.float().cpu(), encoded

    def _decode(
        self, entry: _CachedField, prompts: Prompts, mode: str, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HR logits (B, C, 256, 256) and IoU predictions (B, C), float32, for a cached field."""
        device = self.model.device
        assert entry.hr is not None
        hr = entry.hr.to(device)
        with self.model.sam.decoder_autocast():
            if mode == "wsi-sam":
                assert entry.lr is not None
                logits, iou = self.model.predict_hr(
                    hr,
                    entry.lr.to(device),
                    prompts,
                    multimask_output=multimask,
                    hr_static=self._hr_static(entry, hr),
                )
            else:
                logits, iou = self.model.sam_forward(hr, prompts, multimask_output=multimask)
        return logits.float(), iou.float()

    def _hr_static(self, entry: _CachedField, hr: PatchFeatures) -> torch.Tensor:
        """The field's cached HR static features, computed on first use for these heads."""
        version = self.model.heads_version
        if entry.hr_static is None or entry.hr_static_version != version:
            entry.hr_static = self.model.hr_static_features(hr)
            entry.hr_static_version = version
            self._evict()
        return entry.hr_static

    @staticmethod
    def _patch_prompts(chosen: Field, prompt: _Prompt) -> Prompts:
        boxes = points = labels = None
        if prompt.box is not None:
            boxes = torch.as_tensor(chosen.box_level0_to_hr(prompt.box), dtype=torch.float32)[None]
        if prompt.points is not None:
            assert prompt.labels is not None
            points = torch.as_tensor(chosen.level0_to_hr(prompt.points), dtype=torch.float32)[None]
            labels = torch.as_tensor(prompt.labels, dtype=torch.int64)[None]
        return Prompts(boxes=boxes, points=points, labels=labels)

    @staticmethod
    def _inside_slide(slide: Slide, chosen: Field) -> np.ndarray:
        """(1024, 1024) bool: HR pixels whose centre lies on the slide (not padding)."""
        width, height = slide.dimensions
        centres = (np.arange(PATCH_SIZE) + 0.5) * chosen.hr_downsample
        xs = chosen.hr_origin[0] + centres
        ys = chosen.hr_origin[1] + centres
        return ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]

    @staticmethod
    def _to_geometry(mask: np.ndarray, chosen: Field) -> Polygon | MultiPolygon | None:
        """The polygon of a whole-patch HR mask in level-0 pixels (as _window_geometry)."""
        return WsiSamPredictor._window_geometry(
            MaskWindow(mask, 0, 0, PATCH_SIZE) if mask.any() else None, chosen
        )

    @staticmethod
    def _inside_slide_window(
        slide: Slide, chosen: Field, window: MaskWindow | None
    ) -> MaskWindow | None:
        """``window`` without its HR pixels whose centre lies off the slide (padding); None
        when nothing is left."""
        if window is None:
            return None
        width, height = slide.dimensions
        h, w = window.mask.shape
        ds = chosen.hr_downsample
        ys = chosen.hr_origin[1] + (np.arange(window.row, window.row + h) + 0.5) * ds
        xs = chosen.hr_origin[0] + (np.arange(window.col, window.col + w) + 0.5) * ds
        rows_in, cols_in = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
        if rows_in.all() and cols_in.all():
            return window if window.mask.any() else None
        mask = window.mask & rows_in[:, None] & cols_in[None, :]
        if not mask.any():
            return None
        return MaskWindow(mask, window.row, window.col, window.size)

    @staticmethod
    def _window_geometry(window: MaskWindow | None, chosen: Field) -> Polygon | MultiPolygon | None:
        """The polygon of a mask window in level-0 pixels (holes kept, simplified to about an
        HR pixel, specks under 4 HR pixels dropped)."""
        if window is None:
            return None
        ds = chosen.hr_downsample
        x0, y0 = chosen.hr_origin
        geometry = mask_to_geometry(
            window.mask,
            scale=ds,
            offset=(x0 + window.col * ds, y0 + window.row * ds),
            simplify_tolerance=1.0,
            min_area=4 * ds**2,
        )
        return geometry


_READ_POOL: ThreadPoolExecutor | None = None


def _read_pool() -> ThreadPoolExecutor:
    """One background thread that reads a field's second patch while the first is encoded."""
    global _READ_POOL
    if _READ_POOL is None:
        _READ_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="field-read")
    return _READ_POOL


def _read_patch(slide: Slide, chosen: Field, part: str) -> np.ndarray:
    """One (1024, 1024, 3) uint8 patch of a field: "hr" or "lr" (outside the slide is white)."""
    size = (PATCH_SIZE, PATCH_SIZE)
    if part == "hr":
        return slide.read_scaled(chosen.hr_origin, chosen.hr_downsample, size)
    return slide.read_scaled(chosen.lr_origin, chosen.lr_downsample, size)


def field_outline(chosen: Field) -> Polygon:
    """The HR patch of a field as a level-0 rectangle (for display)."""
    x0, y0 = chosen.hr_origin
    side = PATCH_SIZE * chosen.hr_downsample
    return shapely_box(x0, y0, x0 + side, y0 + side)
