"""The bridge's plain-data model of QuPath objects: classes and annotations.

Geometries are shapely objects in level-0 (full-resolution) slide pixels, x to the right and y
down, exactly as QuPath stores them. Nothing here imports Qt, torch or Java.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from shapely.geometry.base import BaseGeometry

RGB = tuple[int, int, int]

#: Characters QuPath refuses in a class name (":" separates the parts of a derived class).
_ILLEGAL_NAME_CHARACTERS = (":", "\n", "\r")

#: Object types QuPath knows, as this bridge names them.
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tma_core", "root")


def rgb_from_packed(value: int) -> RGB:
    """Unpack QuPath's (A)RGB int (Java's signed 32-bit, e.g. -3670016) to (r, g, b)."""
    value = int(value) & 0xFFFFFF
    return ((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)


def packed_from_rgb(rgb: RGB) -> int:
    """Pack (r, g, b) like QuPath's ColorTools.packRGB: opaque ARGB as a signed 32-bit int."""
    r, g, b = rgb
    value = (0xFF << 24) | (r << 16) | (g << 8) | b
    return value - (1 << 32) if value >= (1 << 31) else value


def validate_rgb(color: Any) -> RGB:
    """Return ``color`` as an (r, g, b) tuple of ints in 0-255, or raise ValueError."""
    if isinstance(color, str | bytes) or not hasattr(color, "__len__") or len(color) != 3:
        raise ValueError(f"a colour must be three integers (r, g, b) in 0-255, got {color!r}")
    channels = []
    for channel in color:
        if isinstance(channel, bool) or not isinstance(channel, int | float):
            raise ValueError(f"a colour must be three integers (r, g, b) in 0-255, got {color!r}")
        if channel != int(channel) or not 0 <= channel <= 255:
            raise ValueError(f"a colour must be three integers (r, g, b) in 0-255, got {color!r}")
        channels.append(int(channel))
    return (channels[0], channels[1], channels[2])


@dataclass(frozen=True)
class PathClass:
    """A QuPath classification: one name (``("Tumor",)``) or a derived chain
    (``("Tumor", "Positive")``, shown by QuPath as ``"Tumor: Positive"``), with a display colour.

    Names are stripped of surrounding whitespace; like QuPath, a name may not be blank or contain
    ``:`` or a line break. Equality compares names and colour; use :attr:`name` to compare
    classifications regardless of colour.
    """

    names: tuple[str, ...]
    color: RGB | None = None

    def __post_init__(self) -> None:
        if isinstance(self.names, str):
            raise ValueError(
                f"PathClass.names must be a tuple of names, got the string {self.names!r}; "
                "use PathClass.from_name() for 'Tumor' or 'Tumor: Positive'"
            )
        names = tuple(self.names)
        if not names:
            raise ValueError("a PathClass needs at least one name")
        cleaned = []
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"a class name must be a string, got {name!r}")
            stripped = name.strip()
            if not stripped:
                raise ValueError(f"a class name may not be blank (class {names!r})")
            bad = [c for c in _ILLEGAL_NAME_CHARACTERS if c in stripped]
            if bad:
                raise ValueError(
                    f"the class name {name!r} contains {bad[0]!r}, which QuPath does not allow"
                )
            cleaned.append(stripped)
        object.__setattr__(self, "names", tuple(cleaned))
        if self.color is not None:
            object.__setattr__(self, "color", validate_rgb(self.color))

    @property
    def name(self) -> str:
        """QuPath's display name: the names joined by ``": "`` (``"Tumor: Positive"``)."""
        return ": ".join(self.names)

    @property
    def is_derived(self) -> bool:
        """True for a derived class such as ``Tumor: Positive``."""
        return len(self.names) > 1

    @classmethod
    def from_name(cls, name: str, color: RGB | None = None) -> PathClass:
        """Parse QuPath's display name; ``"Tumor: Positive"`` gives a derived class."""
        if not isinstance(name, str):
            raise ValueError(f"a class name must be a string, got {name!r}")
        return cls(tuple(part.strip() for part in name.split(":")), color)

    def with_color(self, color: RGB | None) -> PathClass:
        """The same class with another colour."""
        return PathClass(self.names, color)

    def __str__(self) -> str:
        return self.name


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Annotation:
    """One QuPath object (annotation, detection, cell, tile, TMA core) as plain data.

    Attributes:
        geometry: shapely geometry in level-0 slide pixels.
        object_type: one of :data:`OBJECT_TYPES`.
        path_class: the classification, or None for unclassified.
        name: the object's name as shown in QuPath, or None.
        id: QuPath's object UUID when the input had one, a fresh UUID4 otherwise.
        locked: QuPath's "locked" flag (the object cannot be edited by hand).
        measurements: measurement name -> value (NaN allowed).
        metadata: QuPath's per-object metadata (annotations only), string -> string.
        nucleus_geometry: the nucleus of a cell, in level-0 pixels; None otherwise.
        extra_properties: GeoJSON ``properties`` this bridge does not interpret (for example the
            object's own ``color``), written back unchanged so a round trip loses nothing.
        parent_id: the id of the object's parent in QuPath's hierarchy, or None for a top-level
            object (known when read from ``data.qpdata``; GeoJSON does not record it).
    """

    geometry: BaseGeometry
    object_type: str = "annotation"
    path_class: PathClass | None = None
    name: str | None = None
    id: str = field(default_factory=_new_id)
    locked: bool = False
    measurements: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    nucleus_geometry: BaseGeometry | None = None
    extra_properties: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None

    @property
    def class_name(self) -> str | None:
        """The classification's display name, or None when unclassified."""
        return None if self.path_class is None else self.path_class.name


def _default(name: str, rgb: RGB) -> PathClass:
    return PathClass((name,), rgb)


#: QuPath's default classes with QuPath's colours (as in a fresh project's classes.json).
DEFAULT_PATH_CLASSES: list[PathClass] = [
    _default("Tumor", (200, 0, 0)),
    _default("Stroma", (150, 200, 150)),
    _default("Immune cells", (160, 90, 160)),
    _default("Necrosis", (50, 50, 50)),
    _default("Other", (255, 200, 0)),
    _default("Region*", (0, 0, 180)),
    _default("Ignore*", (180, 180, 180)),
    _default("Positive", (250, 62, 62)),
    _default("Negative", (112, 112, 225)),
]
