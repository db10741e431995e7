"""WSI-SAM Studio desktop application (PySide6). The only package that imports Qt."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__version__ = "0.1.0"


def sample_slide_path() -> Path:
    """The small real slide bundled with the app (CMU-1-Small-Region.svs, CC0)."""
    return Path(str(resources.files("app") / "resources" / "sample" / "cmu_small_region.svs"))
