"""Whole-slide images and plain images behind one small interface.

``open_slide(path)`` returns a :class:`Slide` for anything OpenSlide reads (Aperio SVS, Hamamatsu
NDPI, MIRAX, DICOM, tiled/pyramidal TIFF, ...) and for plain images (PNG, JPEG, stripped TIFF)
through Pillow / tifffile. Unsupported or corrupt files raise :class:`SlideError`, whose message
names the path and the reason.

Coordinates are level-0 pixels throughout. Reads return (H, W, 3) uint8 RGB; whatever lies outside
the slide (or is transparent) comes back white, like slide glass. ``read_scaled`` serves any
downsample: it reads the best pyramid level and, where the pyramid lacks a coarser level (a
single-level slide, a plain image), builds synthetic levels tile by tile (2x2 area averages) and
keeps them in a memory-bounded cache, so zooming out twice reads the file once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from engine.rwlock import ReadWriteLock

__all__ = [
    "MIN_DOWNSAMPLE",
    "Slide",
    "SlideError",
    "open_slide",
]

RGBImage = NDArray[np.uint8]

# Finest read_scaled may go: 16 output pixels per level-0 pixel.
MIN_DOWNSAMPLE = 1.0 / 16.0
# Resolution tags coarser than this are not a microscope's: they are the 72/96/300 dpi defaults
# that image editors write (352.8 / 264.6 / 84.7 um per pixel), so they are treated as unknown.
MAX_PLAUSIBLE_MPP = 50.0
# Plain images are decoded into memory (RGB, 3 bytes per pixel) up to this many pixels.
MAX_IN_MEMORY_PIXELS = 1 << 30
# Synthetic (cached) pyramid levels are built in tiles of this many pixels a side.
SYNTHETIC_TILE_SIZE = 512
# read_scaled takes a pyramid level whose downsample is within this ratio of the wanted one as
# exact (a 2.0005x level for 2x): its pixels are copied, not resampled
LEVEL_SNAP = 1e-3
DEFAULT_CACHE_BYTES = 256 << 20
# OpenSlide's own reads are cut into pieces of at most this many pixels (bounded temporary memory).
_MAX_READ_PIXELS = 4096 * 4096
# Scanner formats: a file with one of these suffixes that OpenSlide cannot read is damaged, and is
# never read through a plain-image reader (which would lose the scanner's pixel size).
SCANNER_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
# Aperio-style "key = value" fields of a TIFF ImageDescription.
_DESCRIPTION_FIELD = re.compile(r"\|\s*(MPP|AppMag)\s*=\s*([0-9.eE+-]+)")


class SlideError(Exception):
    """A slide cannot be opened or read. ``path`` and ``reason`` are also attributes."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class _Backend(Protocol):
    """What a file reader provides; :class:`Slide` adds validation, scaling and caching."""

    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    mpp: tuple[float, float] | None
    objective_power: float | None

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBImage:
        """(h, w, 3) RGB at ``level``, top-left at level-0 ``location``; white outside."""
        ...

    def associated_images(self) -> dict[str, RGBImage]: ...

    def close(self) -> None: ...


class Slide:
    """An open slide or image. Use :func:`open_slide`; close it (or use ``with``) when done.

    Attributes:
      path: the file.
      vendor: OpenSlide's vendor ("aperio", "hamamatsu", "generic-tiff", "dicom", ...) or "image"
        for plain images read with Pillow / tifffile.
      dimensions: level-0 (width, height).
      level_count, level_dimensions, level_downsamples: the file's own pyramid.
      mpp: microns per pixel (x, y) at level 0, or None when unknown.
      objective_power: the scanner's objective magnification, or None.
      magnification: level-0 magnification: ``10 / mpp_x`` when mpp is known (0.25 um/px is 40x),
        else ``objective_power``, else None.
      scale_source: where the scale came from: "mpp" (the file's pixel size), "objective" (the
        objective power only), "description" (read from the TIFF description of a file whose
        scanner metadata was not recognised), "user" (:meth:`set_scale`), or "unknown" (the
        callers then assume a magnification and must say so: :meth:`scale_note`).
      properties: the file's metadata (OpenSlide property names for slides).
    """

    def __init__(
        self, path: Path, backend: _Backend, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.path = path
        self._backend = backend
        self.vendor = backend.vendor
        self.level_dimensions = tuple((int(w), int(h)) for w, h in backend.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in backend.level_downsamples)
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]
        self.properties: Mapping[str, str] = MappingProxyType(dict(backend.properties))
        self.mpp = backend.mpp
        self.objective_power = backend.objective_power
        self.magnification: float | None
        self.scale_source = "mpp" if self.mpp is not None else "objective"
        if self.mpp is None and self.objective_power is None:
            self.mpp, self.objective_power = _description_scale(self.properties)
            self.scale_source = "description" if self.mpp or self.objective_power else "unknown"
        if self.mpp is not None:
            self.magnification = 10.0 / self.mpp[0]
        else:
            self.magnification = self.objective_power
        self._cache = _TileCache(cache_bytes)
        self._associated: Mapping[str, RGBImage] | None = None
        self._closed = False
        # close() waits for the reads in progress: closing an OpenSlide handle while another
        # thread reads from it aborts the process. Reads share the lock where the back-end
        # allows concurrent reads (OpenSlide is thread-safe, arrays are read-only), so the
        # viewer's tile workers and the engine decode in parallel; others are serialised.
        self._io_lock = ReadWriteLock()
        self.concurrent_reads = bool(getattr(backend, "concurrent_reads", False))

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file. Further reads raise SlideError."""
        with self._io_lock:
            if not self._closed:
                self._closed = True
                self._cache.clear()
                self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mag = f"{self.magnification:.3g}x" if self.magnification else "magnification unknown"
        return f"<Slide {self.path.name!r} {self.vendor} {w}x{h} levels={self.level_count} {mag}>"

    # -- metadata -------------------------------------------------------------------------

    def set_scale(self, mpp: float | None = None, magnification: float | None = None) -> None:
        """Set the level-0 pixel size (um/px) or magnification by hand (QuPath's "Set pixel
        size"): for files that do not record it, or record it wrongly."""
        if mpp is not None:
            if not (math.isfinite(mpp) and 0 < mpp <= MAX_PLAUSIBLE_MPP):
                raise ValueError(f"a pixel size must be between 0 and {MAX_PLAUSIBLE_MPP} um")
            self.mpp = (float(mpp), float(mpp))
            self.magnification = 10.0 / float(mpp)
        elif magnification is not None:
            if not (math.isfinite(magnification) and 0 < magnification <= 1000):
                raise ValueError("a magnification must be between 0 and 1000")
            self.mpp = None
            self.magnification = float(magnification)
        else:
            raise ValueError("give a pixel size or a magnification")
        self.scale_source = "user"

    def scale_note(self, assumed_magnification: float) -> str | None:
        """A sentence for the user when the scale is not the file's own, else None."""
        name = self.path.name
        if self.scale_source == "unknown":
            return (
                f"{name} does not record its pixel size or magnification: level 0 is taken as "
                f"{assumed_magnification:g}x"
            )
        if self.scale_source == "description":
            return (
                f"{name}: the scanner metadata was not recognised; the scale "
                f"({self.magnification:g}x) was read from the TIFF description"
            )
        return None

    @property
    def associated_images(self) -> Mapping[str, RGBImage]:
        """Label, macro, thumbnail images stored beside the slide (RGB), when the file has them."""
        if self._associated is None:
            self._check_open()
            try:
                images = self._backend.associated_images()
            except Exception as exc:
                raise SlideError(self.path, f"cannot read associated images: {exc}") from exc
            self._associated = MappingProxyType(images)
        return self._associated

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (0 if none)."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * (1.0 + 1e-9):
                best = level
        return best

    # -- pixels ---------------------------------------------------------------------------

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBImage:
        """(h, w, 3) uint8 RGB of pyramid ``level``, top-left at level-0 ``location``.

        Negative locations and regions running off the slide are allowed: outside is white.
        """
        if not 0 <= int(level) < self.level_count:
            raise ValueError(f"level {level} out of range: {self.path.name} has {self.level_count}")
        x, y = (round(v) for v in location)
        w, h = _check_size(size)
        if w == 0 or h == 0:
            return _white(w, h)
        return self._read_backend((x, y), int(level), (w, h))

    def read_scaled(
        self, location: tuple[float, float], downsample: float, size: tuple[int, int]
    ) -> RGBImage:
        """(h, w, 3) uint8 RGB at any ``downsample`` (level-0 pixels per output pixel).

        Output pixel (i, j) covers level-0 ``[x + j*d, x + (j+1)*d) x [y + i*d, y + (i+1)*d)``
        with ``(x, y) = location`` and ``d = downsample``. The data come from the coarsest level
        (real, or synthetic and cached) at or below ``d``, resized with an area filter when
        shrinking and bilinear when enlarging; reads aligned to that level's pixel grid are exact
        copies, and so are reads from a level within :data:`LEVEL_SNAP` of ``d`` (a scanner's
        2.0005x level for 2x: placed to the nearest of its pixels). Outside the slide is white.
        """
        d = float(downsample)
        if not (math.isfinite(d) and d >= MIN_DOWNSAMPLE):
            raise ValueError(f"downsample must be a finite number >= {MIN_DOWNSAMPLE}, got {d}")
        x, y = (float(v) for v in location)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"location must be finite, got {location}")
        w, h = _check_size(size)
        if w == 0 or h == 0:
            return _white(w, h)

        # A level within LEVEL_SNAP of the wanted downsample counts as that downsample (scanners
        # round their levels' sizes: Aperio's "2x" level is often 2.0005x)
        level = self.best_level_for_downsample(d * (1.0 + LEVEL_SNAP))
        level_downsample = self.level_downsamples[level]
        factor = 1  # synthetic 2x2 averaging steps on top of the real level
        while level_downsample * factor * 2 <= d * (1.0 + LEVEL_SNAP):
            factor *= 2
        source_downsample = level_downsample * factor
        scale = d / source_downsample  # source pixels per output pixel, < 2
        sx, sy = x / source_downsample, y / source_downsample

        if abs(scale - 1.0) < 1e-9 and _is_whole(sx) and _is_whole(sy):
            return self._read_source(level, factor, round(sx), round(sy), w, h)
        if 1e-9 <= abs(scale - 1.0) <= LEVEL_SNAP:
            # A nearly exact level: copy its pixels (synthetic steps cached) instead of resizing
            # the whole region by a hundredth of a percent; the grids differ by under half a
            # pixel at the nearest source pixel and by under a pixel across 1,000 pixels.
            return self._read_source(level, factor, round(sx), round(sy), w, h)

        from PIL import Image

        margin = 2 + math.ceil(scale)  # filter support beyond the box
        x0, y0 = math.floor(sx) - margin, math.floor(sy) - margin
        x1 = math.ceil(sx + w * scale) + margin
        y1 = math.ceil(sy + h * scale) + margin
        source = self._read_source(level, factor, x0, y0, x1 - x0, y1 - y0)
        box = (sx - x0, sy - y0, sx - x0 + w * scale, sy - y0 + h * scale)
        resample = Image.Resampling.BOX if scale > 1.0 + 1e-9 else Image.Resampling.BILINEAR
        resized = Image.fromarray(source).resize((w, h), resample=resample, box=box)
        return np.asarray(resized, dtype=np.uint8).copy()

    def get_thumbnail(self, max_size: tuple[int, int]) -> RGBImage:
        """The whole slide shrunk, keeping its aspect ratio, to fit ``max_size`` (width, height)."""
        max_w, max_h = _check_size(max_size)
        if max_w == 0 or max_h == 0:
            raise ValueError(f"thumbnail size must be positive, got {max_size}")
        width, height = self.dimensions
        downsample = max(width / max_w, height / max_h, 1.0)  # never enlarges, like OpenSlide
        size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        return self.read_scaled((0.0, 0.0), downsample, size)

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "slide is closed")

    def _read_backend(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> RGBImage:
        lock = self._io_lock.shared() if self.concurrent_reads else self._io_lock.exclusive()
        try:
            with lock:
                self._check_open()
                region = self._backend.read(location, level, size)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                self.path, f"cannot read {size[0]}x{size[1]} at {location} level {level}: {exc}"
            ) from exc
        return region

    def _read_source(self, level: int, factor: int, x: int, y: int, w: int, h: int) -> RGBImage:
        """(h, w, 3) pixels of ``level`` averaged down ``factor`` times; (x, y) in those pixels."""
        if factor == 1:
            level_downsample = self.level_downsamples[level]
            if level_downsample == 1.0:
                location = (x, y)
            else:
                location = (round(x * level_downsample), round(y * level_downsample))
            return self._read_backend(location, level, (w, h))

        out = _white(w, h)
        tile = SYNTHETIC_TILE_SIZE
        level_w, level_h = self.level_dimensions[level]
        cols, rows = math.ceil(level_w / factor / tile), math.ceil(level_h / factor / tile)
        for ty in range(max(0, y // tile), min(rows, (y + h - 1) // tile + 1)):
            for tx in range(max(0, x // tile), min(cols, (x + w - 1) // tile + 1)):
                pixels = self._synthetic_tile(level, factor, tx, ty)
                ox, oy = tx * tile, ty * tile
                ax0, ay0 = max(x, ox), max(y, oy)
                ax1, ay1 = min(x + w, ox + tile), min(y + h, oy + tile)
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = pixels[
                    ay0 - oy : ay1 - oy, ax0 - ox : ax1 - ox
                ]
        return out

    def _synthetic_tile(self, level: int, factor: int, tx: int, ty: int) -> RGBImage:
        """Tile (tx, ty) of ``level`` averaged down ``factor`` (a power of two) times, cached."""
        key = (level, factor, tx, ty)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        tile = SYNTHETIC_TILE_SIZE
        if factor == 2:
            source = self._read_source(level, 1, 2 * tile * tx, 2 * tile * ty, 2 * tile, 2 * tile)
        else:
            source = self._read_source(
                level, factor // 2, 2 * tile * tx, 2 * tile * ty, 2 * tile, 2 * tile
            )
        pixels = _halve(source)
        pixels.flags.writeable = False
        self._cache.put(key, pixels)
        return pixels


def open_slide(path: str | os.PathLike[str]) -> Slide:
    """Open a whole-slide image or a plain image. Raises SlideError (path + reason) on failure."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise SlideError(p, "no such file")
    if p.is_dir():
        raise SlideError(p, "is a folder, not a slide file")
    try:
        with p.open("rb") as fh:
            magic = fh.read(16)
    except OSError as exc:
        raise SlideError(p, f"cannot read the file: {exc.strerror or exc}") from exc
    if not magic:
        raise SlideError(p, "the file is empty")

    reasons: list[str] = []
    vendor = _detect_openslide_vendor(p)
    if vendor is not None:
        try:
            return _checked(p, _OpenSlideBackend(p))
        except SlideError as exc:
            reasons.append(f"OpenSlide ({vendor}): {exc.reason}")
        except Exception as exc:
            reasons.append(f"OpenSlide ({vendor}): {exc}")
        if vendor != "generic-tiff":
            # A scanner format OpenSlide recognises but cannot read is corrupt, not a plain image.
            raise SlideError(p, f"corrupt or unsupported {vendor} slide: " + "; ".join(reasons))
    if p.suffix.lower() in SCANNER_SUFFIXES:
        # A plain-image reader may still decode its first image, without the scanner's pixel
        # size: segmenting that at an assumed magnification would be silently wrong.
        why = "; ".join(reasons) or "OpenSlide does not recognise it as a slide"
        raise SlideError(
            p,
            f"damaged {p.suffix.lower()} slide: {why}. The file may be truncated (an unfinished "
            "copy or download?): copy it again from the scanner or archive",
        )

    readers: list[tuple[str, Callable[[Path], _Backend]]] = []
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        readers.append(("tifffile", _tifffile_backend))
    readers.append(("Pillow", _pillow_backend))
    for name, reader in readers:
        try:
            with _quiet_readers():
                return _checked(p, reader(p))
        except SlideError as exc:
            reasons.append(f"{name}: {exc.reason}")
        except Exception as exc:
            reasons.append(f"{name}: {exc}")
    raise SlideError(p, "not a slide or image this program can read (" + "; ".join(reasons) + ")")


@contextlib.contextmanager
def _quiet_readers() -> Any:
    """Keep the readers' own warnings (tifffile's log, Pillow's UserWarnings) off the user's
    terminal: when a file cannot be read, the one SlideError says why."""
    tiff_logger = logging.getLogger("tifffile")
    level = tiff_logger.level
    tiff_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tiff_logger.setLevel(level)


def _checked(path: Path, backend: _Backend) -> Slide:
    """Wrap a backend after reading one pixel, so that undecodable files fail at open time."""
    try:
        levels = len(backend.level_dimensions)
        if levels == 0 or min(min(d) for d in backend.level_dimensions) <= 0:
            raise SlideError(path, "the image has no pixels")
        backend.read((0, 0), levels - 1, (1, 1))
    except SlideError:
        backend.close()
        raise
    except Exception as exc:
        backend.close()
        raise SlideError(path, f"cannot decode pixels: {exc}") from exc
    return Slide(path, backend)


def _detect_openslide_vendor(path: Path) -> str | None:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None
    return str(vendor) if vendor else None


# -- backends -------------------------------------------------------------------------------


class _OpenSlideBackend:
    """Files OpenSlide reads (the library's own tile cache sits underneath)."""

    #: OpenSlide handles are thread-safe: reads may run in parallel (not with close)
    concurrent_reads = True

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        props = dict(self._osr.properties)
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "openslide"
        self.level_dimensions = tuple(self._osr.level_dimensions)
        self.level_downsamples = tuple(self._osr.level_downsamples)
        self.properties = props
        self.mpp = _plausible_mpp(
            _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X)),
            _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_Y)),
        )
        power = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        self.objective_power = power if power is not None and power > 0 else None

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBImage:
        w, h = size
        if w * h <= _MAX_READ_PIXELS:
            return _rgba_on_white(np.asarray(self._osr.read_region(location, level, size)))
        # Large reads go in horizontal bands: OpenSlide allocates a full RGBA copy per call.
        out = np.empty((h, w, 3), dtype=np.uint8)
        band = max(1, _MAX_READ_PIXELS // w)
        downsample = self.level_downsamples[level]
        for top in range(0, h, band):
            rows = min(band, h - top)
            y = location[1] + round(top * downsample)
            region = self._osr.read_region((location[0], y), level, (w, rows))
            out[top : top + rows] = _rgba_on_white(np.asarray(region))
        return out

    def associated_images(self) -> dict[str, RGBImage]:
        return {
            name: _rgba_on_white(np.asarray(image.convert("RGBA")))
            for name, image in self._osr.associated_images.items()
        }

    def close(self) -> None:
        self._osr.close()


class _ArrayBackend:
    """Plain images held as arrays (decoded in memory, or memory-mapped when uncompressed)."""

    #: reads only slice read-only arrays: they may run in parallel (not with close)
    concurrent_reads = True

    def __init__(
        self,
        levels: list[NDArray[Any]],
        properties: dict[str, str],
        mpp: tuple[float, float] | None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._levels = levels
        self.vendor = "image"
        width, height = levels[0].shape[1], levels[0].shape[0]
        self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in levels)
        self.level_downsamples = tuple(
            (width / a.shape[1] + height / a.shape[0]) / 2.0 for a in levels
        )
        self.properties = properties
        self.mpp = mpp
        self.objective_power: float | None = None
        self._on_close = on_close

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBImage:
        array = self._levels[level]
        downsample = self.level_downsamples[level]
        w, h = size
        x = math.floor(location[0] / downsample + 1e-9)
        y = math.floor(location[1] / downsample + 1e-9)
        out = _white(w, h)
        ah, aw = array.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, aw), min(y + h, ah)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = _to_rgb(array[y0:y1, x0:x1])
        return out

    def associated_images(self) -> dict[str, RGBImage]:
        return {}

    def close(self) -> None:
        self._levels = []
        if self._on_close is not None:
            self._on_close()


def _tifffile_backend(path: Path) -> _Backend:
    """TIFFs OpenSlide does not take (stripped, OME, ImageJ), memory-mapped when uncompressed."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if not tif.series:
            raise SlideError(path, "TIFF without images")
        series = tif.series[0]
        pages = [level.keyframe for level in series.levels]
        page0 = pages[0]
        width, height = int(page0.imagewidth), int(page0.imagelength)
        if page0.samplesperpixel not in (1, 2, 3, 4) or page0.imagedepth > 1:
            raise SlideError(
                path,
                f"unsupported TIFF layout ({page0.samplesperpixel} samples per pixel, "
                f"depth {page0.imagedepth})",
            )
        mpp = _tiff_mpp(page0)
        properties = {
            "image.backend": "tifffile",
            "image.format": "TIFF",
            "image.width": str(width),
            "image.height": str(height),
            "image.photometric": str(getattr(page0.photometric, "name", page0.photometric)),
            "image.compression": str(getattr(page0.compression, "name", page0.compression)),
        }
        if page0.description:
            properties["tiff.ImageDescription"] = page0.description
        levels: list[NDArray[Any]] = []
        for page in pages:
            levels.append(_tiff_page_array(path, page))
    return _ArrayBackend(levels, properties, mpp)


def _tiff_page_array(path: Path, page: Any) -> NDArray[Any]:
    """A page as an (H, W[, S]) array: memory-mapped if stored contiguously uncompressed."""
    pixels = int(page.imagewidth) * int(page.imagelength)
    contiguous = page.is_contiguous and page.compression == 1 and page.planarconfig == 1
    if contiguous and page.dtype is not None and page.fillorder == 1:
        offset = int(page.dataoffsets[0])
        mapped_shape: tuple[int, ...] = (int(page.imagelength), int(page.imagewidth))
        if page.samplesperpixel > 1:
            mapped_shape = (*mapped_shape, int(page.samplesperpixel))
        return np.memmap(path, dtype=page.dtype, mode="r", offset=offset, shape=mapped_shape)
    if pixels > MAX_IN_MEMORY_PIXELS:
        raise SlideError(
            path,
            f"{page.imagewidth}x{page.imagelength} compressed TIFF without tiles is too large to "
            "decode in memory; convert it to a tiled pyramidal TIFF",
        )
    array = page.asarray()
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (separate) samples
    return np.ascontiguousarray(array)


def _pillow_backend(path: Path) -> _Backend:
    """PNG, JPEG, BMP, GIF, WebP and TIFFs tifffile cannot decode: decoded into memory."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before decoding
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IN_MEMORY_PIXELS:
                raise SlideError(
                    path,
                    f"{width}x{height} {image.format} image is too large to decode in memory; "
                    "convert it to a tiled pyramidal TIFF",
                )
            image_format = str(image.format)
            dpi = image.info.get("dpi")
            mode = image.mode
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                array = _rgba_on_white(np.asarray(image.convert("RGBA")))
            elif image.mode in ("RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
                array = np.asarray(image.convert("RGB"))
            else:  # 16-bit and float greyscale
                array = _to_rgb(np.asarray(image))
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    mpp = None
    if dpi is not None:
        try:
            dpi_x, dpi_y = float(dpi[0]), float(dpi[1])
            if dpi_x > 0 and dpi_y > 0:
                mpp = _plausible_mpp(25400.0 / dpi_x, 25400.0 / dpi_y)
        except (TypeError, ValueError, IndexError):
            mpp = None
    properties = {
        "image.backend": "pillow",
        "image.format": image_format,
        "image.mode": mode,
        "image.width": str(width),
        "image.height": str(height),
    }
    if dpi is not None:
        properties["image.dpi"] = f"{dpi[0]},{dpi[1]}"
    return _ArrayBackend([np.ascontiguousarray(array)], properties, mpp)


# -- helpers ------------------------------------------------------------------------------


class _TileCache:
    """LRU of read-only arrays, bounded by their total size in bytes. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[int, ...], RGBImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, ...]) -> RGBImage | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, ...], value: RGBImage) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 0 or h < 0 or w != size[0] or h != size[1]:
        raise ValueError(f"size must be two non-negative integers (width, height), got {size}")
    return w, h


def _is_whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-6


def _white(w: int, h: int) -> RGBImage:
    return np.full((h, w, 3), 255, dtype=np.uint8)


def _halve(pixels: RGBImage) -> RGBImage:
    """2x2 area average of an (2h, 2w, 3) uint8 array, rounded to nearest."""
    p = pixels.astype(np.uint16)
    total = p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def _rgba_on_white(rgba: NDArray[np.uint8]) -> RGBImage:
    """Composite non-premultiplied RGBA onto white (transparent = no tissue = glass)."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _to_rgb(array: NDArray[Any]) -> RGBImage:
    """Any (H, W), (H, W, 2|3|4) integer or float array -> (H, W, 3) uint8 RGB on white."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer):
            bits = 8 * a.dtype.itemsize
            a = (a.astype(np.uint64) >> max(0, bits - 8)).astype(np.uint8)
        else:
            a = np.clip(np.nan_to_num(a.astype(np.float64)) * 255.0, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    channels = a.shape[2]
    if channels == 1:
        return np.repeat(a, 3, axis=2)
    if channels == 2:  # grey + alpha
        return _rgba_on_white(np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], 2))
    if channels == 3:
        return np.ascontiguousarray(a)
    return _rgba_on_white(np.ascontiguousarray(a[..., :4]))


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _plausible_mpp(mpp_x: float | None, mpp_y: float | None) -> tuple[float, float] | None:
    if mpp_x is None or mpp_x <= 0:
        return None
    if mpp_y is None or mpp_y <= 0:
        mpp_y = mpp_x
    if mpp_x > MAX_PLAUSIBLE_MPP or mpp_y > MAX_PLAUSIBLE_MPP:
        return None
    return (mpp_x, mpp_y)


def _description_scale(
    properties: Mapping[str, str],
) -> tuple[tuple[float, float] | None, float | None]:
    """(mpp, objective power) from Aperio-style ``|MPP = 0.499|AppMag = 20`` fields of a TIFF
    description, for files whose scanner metadata the reader did not recognise."""
    text = properties.get("tiff.ImageDescription") or ""
    fields = {key: _float_or_none(value) for key, value in _DESCRIPTION_FIELD.findall(text)}
    mpp_value = fields.get("MPP")
    mpp = _plausible_mpp(mpp_value, mpp_value)
    power = fields.get("AppMag")
    return mpp, power if power is not None and power > 0 else None


def _tiff_mpp(page: Any) -> tuple[float, float] | None:
    """Microns per pixel from a TIFF page's resolution tags (inch or centimetre units)."""
    try:
        unit = int(page.resolutionunit)
        res_x, res_y = (float(v) for v in page.resolution)
    except (TypeError, ValueError, AttributeError):
        return None
    microns_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if microns_per_unit is None or res_x <= 0 or res_y <= 0:
        return None
    return _plausible_mpp(microns_per_unit / res_x, microns_per_unit / res_y)
