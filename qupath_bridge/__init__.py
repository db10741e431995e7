"""QuPath bridge: QuPath GeoJSON both ways and QuPath projects (through paquo), as plain data.

Geometries are shapely objects in level-0 slide pixels; classes are names with RGB colours.
No Qt, no torch. Reading GeoJSON, a project's image list and classes, and the objects in its
``data.qpdata`` files (:func:`read_qpdata`) work without QuPath; writing a project's objects
needs QuPath (found through paquo, see :func:`qupath_status`). See :mod:`qupath_bridge.project`
for how the app's annotations are kept safely in a project when QuPath is absent.

    >>> from qupath_bridge import read_geojson, write_geojson, open_project
    >>> annotations = read_geojson("export.geojson")
    >>> write_geojson("copy.geojson", annotations)
    >>> project = open_project("my_project")             # folder or project.qpproj
    >>> [image.name for image in project.images]
"""

from .errors import (
    BridgeError,
    DuplicateIdWarning,
    GeoJSONError,
    GeometryRepairedWarning,
    ProjectError,
    QuPathNotFoundError,
)
from .geojson import REPAIRED_METADATA_KEY, read_geojson, to_geojson_obj, write_geojson
from .model import DEFAULT_PATH_CLASSES, OBJECT_TYPES, Annotation, PathClass
from .project import Project, create_project, open_project
from .project_file import ProjectImage, path_from_uri
from .qpdata import QpData, QpDataError, QpDataWarning, read_qpdata
from .qupath import QuPathStatus, qupath_status
from .relink import file_uri, find_images, missing_images, relink_images

__all__ = [
    "DEFAULT_PATH_CLASSES",
    "OBJECT_TYPES",
    "REPAIRED_METADATA_KEY",
    "Annotation",
    "BridgeError",
    "DuplicateIdWarning",
    "GeoJSONError",
    "GeometryRepairedWarning",
    "PathClass",
    "Project",
    "ProjectError",
    "ProjectImage",
    "QpData",
    "QpDataError",
    "QpDataWarning",
    "QuPathNotFoundError",
    "QuPathStatus",
    "create_project",
    "file_uri",
    "find_images",
    "missing_images",
    "open_project",
    "path_from_uri",
    "qupath_status",
    "read_geojson",
    "read_qpdata",
    "relink_images",
    "to_geojson_obj",
    "write_geojson",
]
