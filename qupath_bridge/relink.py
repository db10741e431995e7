"""Find a project's missing images in a folder and update their URIs, without QuPath.

Projects move between machines: a project made on a Mac lists ``file:/Volumes/...``, one made
on Windows ``file:/C:/...``. Like QuPath's own "Update URIs", :func:`relink_images` rewrites the
image URIs in ``project.qpproj`` (and in each image's ``data/<id>/server.json``, where QuPath
keeps a copy): only those URIs change, every other field is kept. The files are copied into
``<project>/wsi-sam/backups/<timestamp>/`` first and each is replaced atomically.

    >>> project = open_project("moved_project")
    >>> matches = find_images(project.images, "/data/slides")     # {entry id: [paths]}
    >>> relink_images(project, {eid: paths[0] for eid, paths in matches.items() if paths})
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from .errors import ProjectError
from .files import atomic_write_bytes, is_writable_dir, make_backup
from .project import BACKUP_FOLDER, BACKUPS_KEPT, SIDECAR_FOLDER
from .project_file import PROJECT_FILE, ProjectImage, path_from_uri

__all__ = ["file_uri", "find_images", "missing_images", "relink_images"]

_SERVER_FILE = "server.json"


def missing_images(images: Iterable[ProjectImage]) -> list[ProjectImage]:
    """The images whose file is not on this machine (and that name a file at all)."""
    return [image for image in images if not image.exists and _file_name(image) is not None]


def _file_name(image: ProjectImage) -> str | None:
    if image.uri is None:
        return None
    pure: PurePath | None = path_from_uri(image.uri)
    return pure.name if pure is not None and pure.name else None


def find_images(
    images: Iterable[ProjectImage], folder: str | os.PathLike[str]
) -> dict[str, list[Path]]:
    """Search ``folder`` (recursively, once) for the file of each image, by file name (case is
    ignored: a project from Windows or macOS may spell it differently).

    Returns:
        entry id -> the matching files, sorted (empty when none was found).

    Raises:
        ProjectError: ``folder`` is not a folder.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ProjectError(f"cannot search {root}: it is not a folder")
    wanted: dict[str, list[str]] = {}
    entries = list(images)
    for image in entries:
        name = _file_name(image)
        if name is not None:
            wanted.setdefault(name.casefold(), []).append(image.entry_id)
    found: dict[str, list[Path]] = {image.entry_id: [] for image in entries}
    for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda _error: None):
        for filename in filenames:
            for entry_id in wanted.get(filename.casefold(), ()):
                found[entry_id].append(Path(dirpath) / filename)
    return {entry_id: sorted(paths) for entry_id, paths in found.items()}


def file_uri(path: str | os.PathLike[str]) -> str:
    """The URI QuPath writes for a local file: ``file:/home/me/a%20b.svs``, ``file:/C:/x.svs``."""
    uri = Path(path).expanduser().absolute().as_uri()
    return "file:/" + uri[len("file:///") :] if uri.startswith("file:///") else uri


def relink_images(project: Any, new_paths: Mapping[str, str | os.PathLike[str]]) -> Path | None:
    """Point the images ``entry id -> new file`` at their new files, in ``project.qpproj`` and
    the images' ``server.json``; return the backup folder (None when nothing changed).

    ``project`` is a :class:`~.project.Project` (or anything with ``path`` and ``images``); it
    is reloaded afterwards. Every URI of an image's server that names the old file is changed
    (an image built from several files changes only the URIs of the file found).

    Raises:
        ProjectError: an entry id is not in the project, a new file does not exist, or the
            project folder is read-only (nothing was changed then).
    """
    folder = Path(project.path)
    project_file = folder / PROJECT_FILE
    images = {image.entry_id: image for image in project.images}
    replacements: dict[str, str] = {}
    for entry_id, new_path in new_paths.items():
        image = images.get(str(entry_id))
        if image is None:
            raise ProjectError(f"the project {folder} has no image with entry id {entry_id}")
        target = Path(new_path).expanduser().absolute()
        if not target.is_file():
            raise ProjectError(f"cannot relink {image.name!r} to {target}: no such file")
        name = _file_name(image)
        for uri in image.uris or ((image.uri,) if image.uri else ()):
            pure = path_from_uri(uri)
            if pure is not None and (name is None or pure.name == name):
                replacements[uri] = file_uri(target)
    replacements = {old: new for old, new in replacements.items() if old != new}
    if not replacements:
        return None
    if not is_writable_dir(folder):
        raise ProjectError(f"cannot relink images: the project folder {folder} is read-only")

    data = _load(project_file)
    if not _replace_uris(data.get("images"), replacements):
        return None
    servers = []
    for entry_id in new_paths:
        server = folder / "data" / str(entry_id) / _SERVER_FILE
        if server.is_file():
            server_data = _load(server)
            if _replace_uris(server_data, replacements):
                servers.append((server, server_data))

    backup = _backup(folder, [server for server, _ in servers])
    atomic_write_bytes(project_file, _dump(data))
    for server, server_data in servers:
        atomic_write_bytes(server, _dump(server_data))
    if hasattr(project, "reload"):
        project.reload()
    return backup


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(f"cannot relink images: {path} cannot be read ({exc})") from None


def _dump(data: Any) -> bytes:
    # QuPath writes pretty-printed JSON with two-space indents.
    return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")


def _replace_uris(node: Any, replacements: Mapping[str, str]) -> bool:
    """Replace ``"uri"`` values found in ``replacements`` anywhere under ``node``, in place."""
    changed = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uri" and isinstance(value, str) and value in replacements:
                node[key] = replacements[value]
                changed = True
            elif isinstance(value, dict | list):
                changed = _replace_uris(value, replacements) or changed
    elif isinstance(node, list):
        for item in node:
            changed = _replace_uris(item, replacements) or changed
    return changed


def _backup(folder: Path, servers: list[Path]) -> Path:
    backup_root = folder / SIDECAR_FOLDER / BACKUP_FOLDER
    try:
        backup = make_backup(folder, backup_root, [], keep=BACKUPS_KEPT)
        for server in servers:
            saved = backup / server.relative_to(folder)
            saved.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(server, saved)
    except OSError as exc:
        raise ProjectError(
            f"nothing was changed: cannot back up the project into {backup_root} ({exc})"
        ) from exc
    return backup
