"""Reading a QuPath project's plain-JSON files without QuPath.

``project.qpproj`` lists the images (entry id, name, the image server's URI or URIs) and the
version of QuPath that wrote it; ``classifiers/classes.json`` lists the classes. The objects
themselves are in ``data/<entry id>/data.qpdata``, which is Java serialization and is not read
here (only QuPath can read it reliably).
"""

from __future__ import annotations

import json
import logging
import ntpath
import os
import posixpath
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ProjectError
from .model import DEFAULT_PATH_CLASSES, PathClass, rgb_from_packed, validate_rgb

_log = logging.getLogger(__name__)

PROJECT_FILE = "project.qpproj"
CLASSES_FILE = Path("classifiers") / "classes.json"


@dataclass(frozen=True)
class ProjectImage:
    """One image entry of a QuPath project.

    Attributes:
        name: the image name shown in QuPath.
        entry_id: QuPath's entry id (its data lives in ``data/<entry_id>/``).
        uri: the image server's (first) URI as QuPath stored it, e.g. ``file:/C:/slides/a.svs``.
        path: the image file on this machine: the URI decoded, or, when the project was moved
            together with its slides, the same file relative to the project (as QuPath finds
            it); None when the URI is not a local file path here.
        exists: whether ``path`` is an existing file.
        uris: every URI the image server uses (e.g. several for a channel-concatenated image).
        description: the entry's description, if any.
        width: level-0 width in pixels when the project records it (QuPath 0.3+), else None.
        height: level-0 height in pixels when recorded, else None.
    """

    name: str
    entry_id: str
    uri: str | None
    path: Path | None
    exists: bool
    uris: tuple[str, ...] = ()
    description: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ProjectInfo:
    """What ``project.qpproj`` and ``classes.json`` say about a project."""

    folder: Path
    version: str | None
    images: list[ProjectImage]
    path_classes: list[PathClass]
    classes_file_found: bool


def find_project_file(path: str | os.PathLike[str]) -> Path:
    """Return the ``project.qpproj`` for a project folder or the file itself, or raise
    ProjectError saying why ``path`` is not a QuPath project."""
    given = Path(path).expanduser()
    if given.is_dir():
        candidate = given / PROJECT_FILE
        if not candidate.is_file():
            raise ProjectError(f"{given} is not a QuPath project: it has no {PROJECT_FILE}")
        return candidate.absolute()
    if given.is_file():
        if given.suffix.lower() != ".qpproj":
            raise ProjectError(
                f"{given} is not a QuPath project: expected a project folder or its "
                f"{PROJECT_FILE}, got a {given.suffix or 'plain'} file"
            )
        return given.absolute()
    if given.suffix.lower() == ".qpproj":
        raise ProjectError(f"no QuPath project at {given}: the file does not exist")
    raise ProjectError(f"no QuPath project at {given}: the folder does not exist")


def _load_json(path: Path, what: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ProjectError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProjectError(f"{path} is not a QuPath {what}: it is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProjectError(
            f"{path} is not a valid QuPath {what}: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None


#: The newest QuPath (major, minor) whose project files this bridge was checked against.
NEWEST_KNOWN_QUPATH = (0, 7)


def version_warning(version: str | None, where: object = "the project") -> str | None:
    """A warning when ``version`` (a project's ``"version"``) is newer than any QuPath this bridge
    knows: the project is opened, but its files may hold what this version does not read."""
    if not version:
        return None
    found = re.match(r"v?(\d+)\.(\d+)", str(version).strip())
    if found is None:
        return f"{where} was written by QuPath {version!r}, a version this program does not know"
    major_minor = (int(found.group(1)), int(found.group(2)))
    if major_minor <= NEWEST_KNOWN_QUPATH:
        return None
    newest = ".".join(map(str, NEWEST_KNOWN_QUPATH))
    return (
        f"{where} was written by QuPath {version}, newer than the versions this program knows "
        f"(up to {newest}); it is opened, but check what you read and save"
    )


def read_project_info(project_file: Path) -> ProjectInfo:
    """Read the images and classes of the project whose ``project.qpproj`` is ``project_file``."""
    data = _load_json(project_file, "project file")
    if not isinstance(data, Mapping):
        raise ProjectError(f"{project_file} is not a QuPath project file: expected a JSON object")
    entries = data.get("images", [])
    if not isinstance(entries, list):
        raise ProjectError(f"{project_file} is not a QuPath project file: 'images' is not a list")
    folder = project_file.parent
    version = data.get("version")
    old_folder = _old_project_folder(data.get("uri"))
    images = [
        _parse_entry(entry, index, folder, old_folder, project_file)
        for index, entry in enumerate(entries)
    ]
    classes_path = folder / CLASSES_FILE
    found = classes_path.is_file()
    classes = read_classes(classes_path) if found else list(DEFAULT_PATH_CLASSES)
    return ProjectInfo(
        folder=folder,
        version=str(version) if version is not None else None,
        images=images,
        path_classes=classes,
        classes_file_found=found,
    )


def read_classes(classes_path: Path) -> list[PathClass]:
    """Read ``classifiers/classes.json``. A damaged file gives a warning and QuPath's defaults
    (as QuPath does) rather than a project that cannot be opened."""
    try:
        data = _load_json(classes_path, "class list")
        entries = data["pathClasses"] if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise ProjectError(f"{classes_path} has no 'pathClasses' list")
    except (ProjectError, KeyError) as exc:
        message = f"{exc}; using QuPath's default classes instead"
        _log.warning(message)
        warnings.warn(message, stacklevel=3)
        return list(DEFAULT_PATH_CLASSES)
    classes: list[PathClass] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        try:
            path_class = _parse_class_entry(entry)
        except ValueError as exc:
            _log.warning("%s: skipping class %d: %s", classes_path, index, exc)
            continue
        if path_class.name not in seen:
            seen.add(path_class.name)
            classes.append(path_class)
    return classes


def _parse_class_entry(entry: Any) -> PathClass:
    if not isinstance(entry, Mapping):
        raise ValueError(f"expected an object, got {entry!r}")
    color_value = entry.get("color", entry.get("colorRGB"))
    color = None
    if isinstance(color_value, int) and not isinstance(color_value, bool):
        color = rgb_from_packed(color_value)
    elif color_value is not None:
        color = validate_rgb(color_value)
    names = entry.get("names")
    if isinstance(names, list):
        return PathClass(tuple(names), color)
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError(f"no class name in {entry!r}")
    return PathClass.from_name(name, color)


def _parse_entry(
    entry: Any, index: int, folder: Path, old_folder: PurePath | None, project_file: Path
) -> ProjectImage:
    if not isinstance(entry, Mapping):
        raise ProjectError(f"{project_file}: image {index} is not a JSON object")
    raw_id = entry.get("entryID", index + 1)
    entry_id = str(raw_id)
    uris = tuple(dict.fromkeys(_collect_uris(entry.get("serverBuilder"))))
    if not uris:
        # QuPath 0.1 entries stored a plain "path" instead of a server builder.
        legacy = entry.get("path") or entry.get("serverPath")
        if isinstance(legacy, str):
            uris = (legacy,)
    uri = uris[0] if uris else None
    local = _local_path(uri) if uri else None
    exists = _is_file(local)
    if local is not None and not exists and old_folder is not None:
        moved = _relocated(path_from_uri(uri) if uri else None, old_folder, folder)
        if moved is not None:
            local, exists = moved, True
    name = entry.get("imageName") or entry.get("randomizedName")
    if not isinstance(name, str) or not name:
        name = local.name if local is not None else f"image {entry_id}"
    description = entry.get("description")
    width, height = _image_size(entry.get("serverBuilder"))
    return ProjectImage(
        name=name,
        entry_id=entry_id,
        uri=uri,
        path=local,
        exists=exists,
        uris=uris,
        description=description if isinstance(description, str) else None,
        width=width,
        height=height,
    )


def _collect_uris(builder: Any) -> Iterator[str]:
    """Every ``uri`` in a server builder, depth first. QuPath nests builders for rotated,
    sparse, channel-concatenated, colour-transformed and pyramidized images
    (``builder``, ``builders``, ``regions[].builder``); they all end in ``uri`` builders."""
    if isinstance(builder, Mapping):
        uri = builder.get("uri")
        if isinstance(uri, str):
            yield uri
        for key, value in builder.items():
            if key not in ("uri", "metadata"):
                yield from _collect_uris(value)
    elif isinstance(builder, list):
        for item in builder:
            yield from _collect_uris(item)


def _image_size(builder: Any) -> tuple[int | None, int | None]:
    while isinstance(builder, Mapping):
        metadata = builder.get("metadata")
        if isinstance(metadata, Mapping):
            width, height = metadata.get("width"), metadata.get("height")
            if isinstance(width, int) and isinstance(height, int):
                return width, height
        builder = builder.get("builder")
    return None, None


_WINDOWS_DRIVE = re.compile(r"^/?[A-Za-z]:[/\\]")


def path_from_uri(uri: str) -> PurePath | None:
    """Decode a ``file:`` URI to a path of the OS that wrote it (QuPath writes ``file:/C:/x``
    on Windows, ``file:/Volumes/x`` on macOS, ``file:/home/x`` on Linux, percent-encoded)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        if not parts.scheme or len(parts.scheme) == 1:  # a bare path, or C:\ read as a scheme
            return PureWindowsPath(uri) if _WINDOWS_DRIVE.match(uri) else PurePosixPath(uri)
        return None
    path = unquote(parts.path)
    if parts.netloc and parts.netloc.lower() != "localhost":
        return PureWindowsPath(f"//{parts.netloc}{path}")  # file://server/share/x
    if path.startswith("//"):
        return PureWindowsPath(path)  # file:////server/share/x (Java's UNC form)
    if _WINDOWS_DRIVE.match(path):
        return PureWindowsPath(path.lstrip("/"))
    return PurePosixPath(path)


def _local_path(uri: str) -> Path | None:
    """The URI as a path on this machine, or None when it is not a local path here."""
    pure = path_from_uri(uri)
    if pure is None:
        return None
    here_is_windows = os.name == "nt"
    if isinstance(pure, PureWindowsPath) != here_is_windows:
        return None
    return Path(pure)


def _old_project_folder(uri: Any) -> PurePath | None:
    if not isinstance(uri, str):
        return None
    pure = path_from_uri(uri)
    return pure.parent if pure is not None else None


def _relocated(image: PurePath | None, old_folder: PurePath, folder: Path) -> Path | None:
    """Where the image is if the project was moved together with its slides (QuPath's own
    fallback): the image's path relative to the old project folder, applied to the new one."""
    if image is None or type(image) is not type(old_folder):
        return None
    flavour = ntpath if isinstance(image, PureWindowsPath) else posixpath
    try:
        relative = flavour.relpath(str(image), str(old_folder))
    except ValueError:  # another drive
        return None
    parts = type(image)(relative).parts
    candidate = Path(os.path.normpath(folder.joinpath(*parts)))
    return candidate if _is_file(candidate) else None


def _is_file(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        return path.is_file()
    except OSError:
        return False
