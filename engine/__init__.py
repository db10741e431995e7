"""WSI-SAM engine: SAM / WSI-SAM models, weights, slides and patches. No Qt here.

The public names are imported lazily so that ``import engine`` stays cheap (no torch until a
model is needed, no OpenSlide until a slide is opened).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "select_device": "engine.device",
    "load_sam": "engine.weights",
    "default_checkpoint_path": "engine.weights",
    "WeightsError": "engine.weights",
    "Sam": "engine.sam.sam",
    "SamPredictor": "engine.predictor",
    "open_slide": "engine.slides",
    "Slide": "engine.slides",
    "SlideError": "engine.slides",
    "mask_to_geometry": "engine.geometry",
    "WsiSam": "engine.wsi_sam",
    "load_wsi_sam": "engine.build",
    "WsiSamPredictor": "engine.wsi_predictor",
    "SegmentResult": "engine.wsi_predictor",
    "PromptError": "engine.wsi_predictor",
    "refine": "engine.refine",
    "refine_many": "engine.refine",
    "RefineResult": "engine.refine",
    "RefineCancelledError": "engine.refine",
    "segment_everything": "engine.everything",
    "EverythingSettings": "engine.everything",
    "EverythingResult": "engine.everything",
    "EverythingCancelledError": "engine.everything",
    "CleanupSettings": "engine.cleanup",
    "clean_geometry": "engine.cleanup",
    "Provenance": "engine.provenance",
}

__all__ = [
    "CleanupSettings",
    "EverythingCancelledError",
    "EverythingResult",
    "EverythingSettings",
    "PromptError",
    "Provenance",
    "RefineCancelledError",
    "RefineResult",
    "Sam",
    "SamPredictor",
    "SegmentResult",
    "Slide",
    "SlideError",
    "WeightsError",
    "WsiSam",
    "WsiSamPredictor",
    "__version__",
    "clean_geometry",
    "default_checkpoint_path",
    "load_sam",
    "load_wsi_sam",
    "mask_to_geometry",
    "open_slide",
    "refine",
    "refine_many",
    "segment_everything",
    "select_device",
]

if TYPE_CHECKING:
    from engine.build import load_wsi_sam
    from engine.cleanup import CleanupSettings, clean_geometry
    from engine.device import select_device
    from engine.everything import (
        EverythingCancelledError,
        EverythingResult,
        EverythingSettings,
        segment_everything,
    )
    from engine.geometry import mask_to_geometry
    from engine.predictor import SamPredictor
    from engine.provenance import Provenance
    from engine.refine import RefineCancelledError, RefineResult, refine, refine_many
    from engine.sam.sam import Sam
    from engine.slides import Slide, SlideError, open_slide
    from engine.weights import WeightsError, default_checkpoint_path, load_sam
    from engine.wsi_predictor import PromptError, SegmentResult, WsiSamPredictor
    from engine.wsi_sam import WsiSam


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
