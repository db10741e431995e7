"""Everything that talks to QuPath's Java classes through paquo.

Imported only when QuPath is available (importing ``paquo.projects`` starts the Java VM).
Objects travel between Python and QuPath as QuPath's own GeoJSON (QuPath's ``GsonTools``), so
the same reader and writer as for GeoJSON files apply and every property QuPath knows survives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ProjectError
from .model import PathClass
from .qupath import load_paquo

# QuPath before 0.4 read the object type from a "type name" id and had no object ids.
_LEGACY_IDS = {
    "annotation": "PathAnnotationObject",
    "detection": "PathDetectionObject",
    "cell": "PathCellObject",
    "tile": "PathTileObject",
    "tmaCore": "TMACoreObject",
}


class PaquoProject:
    """A QuPath project opened through paquo (mode ``"r"``, ``"r+"`` or ``"x"``)."""

    def __init__(self, project_file: Path, mode: str) -> None:
        paquo_projects = load_paquo()
        import paquo.java as java  # already loaded by load_paquo()

        self._java = java
        self._legacy = not java.compatibility.supports_newer_addobject_and_pathclass
        try:
            self._project = paquo_projects.QuPathProject(project_file, mode=mode)
        except Exception as exc:
            raise ProjectError(
                f"QuPath {java.compatibility.version} could not open the project "
                f"{project_file} ({type(exc).__name__}: {exc}); a project saved by a newer "
                "QuPath needs that version or later"
            ) from exc
        if mode == "x":
            self._project.save(images=False)  # write project.qpproj now

    # ------------------------------------------------------------------ helpers

    def _entry(self, entry_id: str) -> Any:
        for entry in self._project.images:
            if str(entry.entry_id) == entry_id:
                return entry
        raise ProjectError(f"QuPath does not know an image with entry id {entry_id}")

    def _gson(self) -> Any:
        return self._java.GsonTools.getInstance()

    @staticmethod
    def _all_objects(hierarchy: Any) -> list[Any]:
        if hasattr(hierarchy, "getAllObjects"):
            return list(hierarchy.getAllObjects(False))
        root = hierarchy.getRootObject()
        return [o for o in hierarchy.getFlattenedObjectList(None) if not o.equals(root)]

    @staticmethod
    def _object_id(java_object: Any) -> str | None:
        if hasattr(java_object, "getID"):
            return str(java_object.getID().toString())
        return None  # QuPath < 0.4 has no object ids

    # ------------------------------------------------------------------ reading

    def read_objects(self, entry_id: str) -> list[Any]:
        """All objects of the image except the root, as QuPath GeoJSON features (dicts)."""
        hierarchy = self._entry(entry_id).hierarchy.java_object
        objects = self._java.ArrayList()
        for java_object in self._all_objects(hierarchy):
            objects.add(java_object)
        features = json.loads(str(self._gson().toJson(objects)))
        return list(features) if isinstance(features, list) else []

    def path_classes(self) -> list[tuple[list[str], tuple[int, int, int] | None]]:
        out = []
        for qp_class in self._project.path_classes:
            names = [str(n).strip() for n in str(qp_class.id).split(":")]
            color = qp_class.color
            out.append((names, None if color is None else tuple(color.to_rgb())))
        return out

    # ------------------------------------------------------------------ writing

    def write_objects(
        self, entry_id: str, features: Sequence[dict[str, Any]], remove_ids: Iterable[str]
    ) -> None:
        """Remove the objects whose ids are in ``remove_ids`` (keeping their children), add
        ``features``, and save the image's data file. Other objects are not touched."""
        entry = self._entry(entry_id)
        # Edit the hierarchy of the very ImageData that is saved below (paquo's entry.hierarchy
        # may fall back to a detached copy when the slide cannot be opened).
        image_data = entry._image_data
        hierarchy = image_data.getHierarchy()
        gson = self._gson()
        path_object_class = self._java.JClass("qupath.lib.objects.PathObject")
        new_objects = self._java.ArrayList()
        for feature in features:
            if self._legacy:
                feature = dict(feature)
                properties = dict(feature["properties"])
                object_type = properties.get("objectType", "annotation")
                feature["id"] = _LEGACY_IDS.get(object_type, "PathAnnotationObject")
                properties["object_type"] = "tma_core" if object_type == "tmaCore" else object_type
                feature["properties"] = properties
            java_object = gson.fromJson(self._java.String(json.dumps(feature)), path_object_class)
            if java_object is None:
                raise ProjectError(f"QuPath could not read the object {feature.get('id')!r}")
            new_objects.add(java_object)

        wanted = set(remove_ids)
        stale = self._java.ArrayList()
        if wanted:
            if self._legacy:
                raise ProjectError(
                    "replacing objects needs QuPath 0.4 or later (older QuPath has no object ids)"
                )
            for java_object in self._all_objects(hierarchy):
                if self._object_id(java_object) in wanted:
                    stale.add(java_object)
        if not stale.isEmpty():
            hierarchy.removeObjects(stale, True)
        if not new_objects.isEmpty():
            if hasattr(hierarchy, "addObjects"):
                hierarchy.addObjects(new_objects)
            else:
                hierarchy.addPathObjects(new_objects)
        # Save even when the slide itself is unreachable (paquo's entry.save() would skip it).
        entry.java_object.saveImageData(image_data)

    def add_path_classes(self, classes: Sequence[PathClass]) -> None:
        from paquo.classes import QuPathPathClass

        current = list(self._project.path_classes)
        for path_class in classes:
            parent = None
            for depth, name in enumerate(path_class.names):
                last = depth == len(path_class.names) - 1
                color = path_class.color if last else None
                parent = QuPathPathClass(name, color=color, parent=parent)
            current.append(parent)
        self._project.path_classes = current
        self._project.save(images=False)

    def add_image(self, slide: Path) -> str:
        try:
            entry = self._project.add_image(str(slide), allow_duplicates=False)
        except FileExistsError:
            raise ProjectError(f"{slide} is already in the project") from None
        except FileNotFoundError:
            raise ProjectError(f"cannot add {slide}: QuPath cannot find the file") from None
        except OSError as exc:
            raise ProjectError(f"QuPath cannot open {slide} ({exc})") from exc
        if isinstance(entry, list):
            entry = entry[0]
        self._project.save(images=False)
        return str(entry.entry_id)
