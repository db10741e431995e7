"""QuPath projects: read with or without QuPath, write through QuPath (paquo).

Without QuPath
    ``open_project(path)`` (mode ``"r"``) reads ``project.qpproj`` and
    ``classifiers/classes.json``, which are plain JSON: the images (name, entry id, URI, local
    path, whether the file exists) and the classes. The objects QuPath drew are in
    ``data/<entry id>/data.qpdata``, a Java-serialized file that :func:`~.qpdata.read_qpdata`
    reads without Java, so ``read_annotations`` returns them too (annotations, detections, cells
    and TMA cores, with ``parent_id``). Writing into the project needs QuPath (the error says
    how to point paquo at it: ``PAQUO_QUPATH_DIR``). Modes ``"r+"`` and ``"x"`` need QuPath.
    :func:`~.relink.relink_images` updates image URIs in ``project.qpproj`` without QuPath.

The ``wsi-sam`` sidecar: nothing the user makes is lost
    When QuPath is absent the app can still keep its annotations *inside the project folder*
    with :meth:`Project.write_sidecar`: a QuPath GeoJSON file ``<project>/wsi-sam/<entry
    id>.geojson`` per image, written atomically, and the ids of QuPath objects the user deleted
    in ``<entry id>.removed.json``. QuPath ignores that folder, so the project itself is never
    modified, and the GeoJSON file can also be dragged into QuPath by hand. Without QuPath,
    ``read_annotations`` returns the objects of ``data.qpdata`` less the deleted ones, with the
    sidecar on top (a sidecar annotation replaces the QuPath object with the same id, keeping
    its place in the hierarchy). When QuPath is present, ``read_annotations`` returns QuPath's
    objects plus the sidecar annotations not yet in QuPath, and the next ``write_annotations``
    for that image writes them into QuPath too (except ids the caller removes), removes the
    deleted ones, and then moves the sidecar files into that write's backup folder.

Writing with QuPath
    ``write_annotations(image, annotations, replace_ids)`` adds the given annotations, replaces
    QuPath objects with the same ids, removes the objects whose ids are in ``replace_ids`` (the
    app's annotations the user deleted) and leaves every other object untouched. Their classes
    are added to the project's class list when missing. Before each write, ``project.qpproj``,
    ``classes.json`` and the image's data folder are copied into
    ``<project>/wsi-sam/backups/<timestamp>/`` (the newest 10 are kept); if the write fails, they
    are copied back, so the project is never left half-written. Do not write while the same
    project is open in QuPath: QuPath would overwrite the change when it saves.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import BridgeError, GeoJSONError, ProjectError, QuPathNotFoundError
from .files import atomic_write_bytes, is_writable_dir, make_backup, restore_backup
from .geojson import read_geojson, to_geojson_obj, write_geojson
from .model import Annotation, PathClass
from .project_file import (
    PROJECT_FILE,
    ProjectImage,
    find_project_file,
    read_project_info,
    version_warning,
)
from .qpdata import read_qpdata
from .qupath import no_qupath_message, qupath_status

if TYPE_CHECKING:
    from ._paquo_backend import PaquoProject

_log = logging.getLogger(__name__)

Mode = Literal["r", "r+", "x"]
ImageKey = ProjectImage | int | str

#: Folder inside a project where the bridge keeps sidecars and backups (QuPath ignores it).
SIDECAR_FOLDER = "wsi-sam"
BACKUP_FOLDER = "backups"
BACKUPS_KEPT = 10


class Project:
    """A QuPath project folder. Create it with :func:`open_project` or :func:`create_project`.

    Attributes:
        path: the project folder (the one holding ``project.qpproj``).
        images: the image entries, in QuPath's order.
        path_classes: the project's classes with their colours (QuPath's defaults when the
            project has no ``classes.json``).
        qupath_version: the QuPath version that wrote ``project.qpproj``, if recorded.
        read_only: True when opened with mode ``"r"``.
    """

    def __init__(self, project_file: Path, mode: Mode, backend: PaquoProject | None) -> None:
        self._project_file = project_file
        self.path = project_file.parent
        self.mode = mode
        self.read_only = mode == "r"
        self._backend = backend
        self.images: list[ProjectImage] = []
        self.path_classes: list[PathClass] = []
        self.qupath_version: str | None = None
        self.version_warning: str | None = None
        self.reload()

    def __repr__(self) -> str:
        return f"Project(path={str(self.path)!r}, mode={self.mode!r}, images={len(self.images)})"

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the QuPath connection (nothing is pending: every write is saved at once)."""
        self._backend = None

    def reload(self) -> None:
        """Re-read ``project.qpproj`` and ``classes.json`` from disk."""
        info = read_project_info(self._project_file)
        self.images = info.images
        self.path_classes = info.path_classes
        self.qupath_version = info.version
        self.version_warning = version_warning(info.version, self._project_file)
        if self.version_warning:
            _log.warning(self.version_warning)

    # ------------------------------------------------------------------ images

    def image(self, key: ImageKey) -> ProjectImage:
        """Find an image by :class:`ProjectImage`, by index in :attr:`images` (int), or by entry
        id or image name (str)."""
        if isinstance(key, ProjectImage):
            for image in self.images:
                if image.entry_id == key.entry_id:
                    return image
            raise ProjectError(f"the image {key.name!r} (entry {key.entry_id}) is not in {self}")
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise ProjectError(
                f"an image is given as a ProjectImage, an index or a name, not {key!r}"
            )
        if isinstance(key, int):
            if not -len(self.images) <= key < len(self.images):
                raise ProjectError(
                    f"image index {key} is out of range: the project has {len(self.images)} images"
                )
            return self.images[key]
        for image in self.images:
            if image.entry_id == key:
                return image
        named = [image for image in self.images if image.name == key]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            ids = ", ".join(image.entry_id for image in named)
            raise ProjectError(f"{len(named)} images are named {key!r} (entry ids {ids})")
        names = ", ".join(repr(image.name) for image in self.images[:5])
        more = ", ..." if len(self.images) > 5 else ""
        raise ProjectError(f"no image {key!r} in the project {self.path} (images: {names}{more})")

    # ------------------------------------------------------------------ annotations

    def sidecar_path(self, image: ImageKey) -> Path:
        """Where :meth:`write_sidecar` keeps the app's annotations of ``image``."""
        return self.path / SIDECAR_FOLDER / f"{self.image(image).entry_id}.geojson"

    def read_sidecar(self, image: ImageKey) -> list[Annotation]:
        """The annotations saved with :meth:`write_sidecar` ([] when there are none)."""
        path = self.sidecar_path(image)
        return read_geojson(path) if path.is_file() else []

    def read_removed(self, image: ImageKey) -> set[str]:
        """Ids of the image's QuPath objects deleted in the app while QuPath was absent."""
        path = self._removed_path(self.image(image))
        if not path.is_file():
            return set()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProjectError(f"cannot read the deleted-object list {path}: {exc}") from None
        ids = data.get("removed") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProjectError(f"{path} is not a list of deleted object ids")
        return set(ids)

    def read_annotations(self, image: ImageKey) -> list[Annotation]:
        """All objects of ``image``: QuPath's (read through QuPath when it is installed, from
        ``data.qpdata`` without it) with the sidecar's changes on top.

        Raises:
            QpDataError: QuPath is absent and the image's ``data.qpdata`` cannot be read.
        """
        entry = self.image(image)
        sidecar = self.read_sidecar(entry)
        data_file = self.path / "data" / entry.entry_id / "data.qpdata"
        backend = self._get_backend()
        if backend is None:
            removed = self.read_removed(entry)
            objects = read_qpdata(data_file).objects if data_file.is_file() else []
            return _overlay([a for a in objects if a.id not in removed], sidecar)
        objects = read_geojson(backend.read_objects(entry.entry_id)) if data_file.is_file() else []
        known = {annotation.id for annotation in objects}
        return objects + [annotation for annotation in sidecar if annotation.id not in known]

    def write_annotations(
        self,
        image: ImageKey,
        annotations: Iterable[Annotation],
        replace_ids: Iterable[str] | None = None,
    ) -> None:
        """Add ``annotations`` to ``image`` in QuPath, replacing objects with the same ids, and
        remove the objects whose ids are in ``replace_ids``; nothing else changes.

        Raises:
            QuPathNotFoundError: QuPath is absent (use :meth:`write_sidecar` or
                :func:`write_geojson` instead).
            ProjectError: the project is read-only or the write failed (then the project has
                been restored from the backup the message names).
            GeoJSONError: an annotation cannot be written (nothing was changed).
        """
        entry = self.image(image)
        annotations = list(annotations)
        removed = _id_set(replace_ids) | self.read_removed(entry)
        backend = self._writer("Writing annotations into a QuPath project")
        features = to_geojson_obj(annotations)["features"]  # fails before anything is touched
        sidecar_file = self.path / SIDECAR_FOLDER / f"{entry.entry_id}.geojson"
        written = {annotation.id for annotation in annotations}
        pending = [
            annotation
            for annotation in self.read_sidecar(entry)
            if annotation.id not in written and annotation.id not in removed
        ]
        features += to_geojson_obj(pending)["features"]
        all_written = [*annotations, *pending]
        new_classes = self._missing_classes(
            [a.path_class for a in all_written if a.path_class is not None]
        )

        def write() -> None:
            if new_classes:
                backend.add_path_classes(new_classes)
            remove = removed | {annotation.id for annotation in all_written}
            backend.write_objects(entry.entry_id, features, remove)

        backup = self._transaction(write, [entry.entry_id])
        for done in (sidecar_file, self._removed_path(entry)):
            if done.is_file():
                # What it held is in QuPath now; keep the file with the backup.
                os.replace(done, backup / done.name)
        self.reload()

    def write_sidecar(
        self,
        image: ImageKey,
        annotations: Iterable[Annotation],
        replace_ids: Iterable[str] | None = None,
    ) -> Path:
        """Keep the app's annotations of ``image`` in ``<project>/wsi-sam/<entry id>.geojson``
        (works without QuPath and in read-only mode: the QuPath project files are not touched).

        Same meaning as :meth:`write_annotations`: annotations with ids already in the sidecar
        replace them, ids in ``replace_ids`` are removed, the rest is kept. Returns the path.
        """
        entry = self.image(image)
        annotations = list(annotations)
        written = {annotation.id for annotation in annotations}
        deleted = _id_set(replace_ids)
        removed = deleted | written
        folder = self.path / SIDECAR_FOLDER
        if not is_writable_dir(self.path if not folder.exists() else folder):
            raise ProjectError(
                f"cannot save annotations in the project folder {self.path}: it is read-only; "
                "export them as QuPath GeoJSON to another folder instead"
            )
        folder.mkdir(exist_ok=True)
        kept = [a for a in self.read_sidecar(entry) if a.id not in removed]
        path = folder / f"{entry.entry_id}.geojson"
        try:
            write_geojson(path, [*kept, *annotations])
        except GeoJSONError as exc:
            raise ProjectError(f"cannot save the annotations of {entry.name!r}: {exc}") from exc
        tombstones = (self.read_removed(entry) | deleted) - written
        removed_file = self._removed_path(entry)
        if tombstones or removed_file.exists():
            text = json.dumps({"removed": sorted(tombstones)}, indent=1)
            atomic_write_bytes(removed_file, text.encode("utf-8"))
        return path

    def _removed_path(self, entry: ProjectImage) -> Path:
        return self.path / SIDECAR_FOLDER / f"{entry.entry_id}.removed.json"

    # ------------------------------------------------------------------ classes and images

    def add_path_classes(self, classes: Iterable[PathClass]) -> None:
        """Add classes missing from the project (by name; QuPath's existing colours are kept)."""
        new = self._missing_classes(list(classes))
        if not new:
            return
        backend = self._writer("Adding classes to a QuPath project")
        self._transaction(lambda: backend.add_path_classes(new), [])
        self.reload()

    def add_image(self, slide_path: str | os.PathLike[str]) -> ProjectImage:
        """Add a slide to the project (QuPath reads it to pick the image server)."""
        slide = Path(slide_path).expanduser().absolute()
        if not slide.is_file():
            raise ProjectError(f"cannot add {slide} to the project: no such file")
        backend = self._writer("Adding an image to a QuPath project")
        entry_ids: list[str] = []
        self._transaction(lambda: entry_ids.append(backend.add_image(slide)), [])
        self.reload()
        return self.image(entry_ids[0])

    # ------------------------------------------------------------------ internals

    def _missing_classes(self, classes: list[PathClass]) -> list[PathClass]:
        known = {path_class.name for path_class in self.path_classes}
        new: list[PathClass] = []
        for path_class in classes:
            if not isinstance(path_class, PathClass):
                raise ProjectError(f"expected a PathClass, got {path_class!r}")
            if path_class.name not in known:
                known.add(path_class.name)
                new.append(path_class)
        return new

    def _writer(self, action: str) -> PaquoProject:
        """The QuPath connection for a write, after checking QuPath, mode and folder."""
        if not qupath_status().available:
            raise QuPathNotFoundError(no_qupath_message(action))
        if self.read_only:
            raise ProjectError(
                f"{action} is not possible: the project {self.path} was opened read-only; "
                "open it with mode='r+'"
            )
        if not is_writable_dir(self.path):
            raise ProjectError(f"{action} is not possible: the folder {self.path} is read-only")
        backend = self._get_backend()
        assert backend is not None  # QuPath is available
        return backend

    def _get_backend(self) -> PaquoProject | None:
        """The QuPath connection, opened on first use; None without QuPath."""
        if self._backend is None and qupath_status().available:
            from ._paquo_backend import PaquoProject

            self._backend = PaquoProject(self._project_file, "r" if self.read_only else "r+")
        return self._backend

    def _transaction(self, write: Callable[[], object], entry_ids: list[str]) -> Path:
        """Back up, run ``write``, restore the backup if it fails; return the backup folder."""
        backup_root = self.path / SIDECAR_FOLDER / BACKUP_FOLDER
        try:
            backup = make_backup(self.path, backup_root, entry_ids, keep=BACKUPS_KEPT)
        except OSError as exc:
            raise ProjectError(
                f"nothing was written: cannot back up the project into {backup_root} ({exc})"
            ) from exc
        try:
            write()
        except Exception as exc:
            try:
                restore_backup(self.path, backup, entry_ids)
            except OSError as restore_exc:
                raise ProjectError(
                    f"writing to the project failed ({exc}) and restoring it failed too "
                    f"({restore_exc}): copy the backup {backup} back by hand"
                ) from exc
            if isinstance(exc, BridgeError):
                raise type(exc)(f"{exc} (the project was restored from {backup})") from exc
            raise ProjectError(
                f"writing to the project failed ({type(exc).__name__}: {exc}); "
                f"the project was restored from the backup {backup}"
            ) from exc
        return backup


def _overlay(objects: list[Annotation], sidecar: list[Annotation]) -> list[Annotation]:
    """``objects`` with the sidecar's annotations on top: one with the id of an object replaces
    it in place (keeping its parent), the others follow."""
    changed = {annotation.id: annotation for annotation in sidecar}
    result = []
    for obj in objects:
        replacement = changed.pop(obj.id, None)
        if replacement is None:
            result.append(obj)
        else:
            if replacement.parent_id is None:
                replacement.parent_id = obj.parent_id
            result.append(replacement)
    return result + list(changed.values())


def _id_set(ids: Iterable[str] | None) -> set[str]:
    if isinstance(ids, str):
        raise ProjectError(f"replace_ids must be a collection of ids, not the string {ids!r}")
    return {str(i) for i in ids or ()}


def open_project(path: str | os.PathLike[str], mode: Mode = "r") -> Project:
    """Open a QuPath project: its folder or its ``project.qpproj``.

    Args:
        path: the project folder or its ``project.qpproj``.
        mode: ``"r"`` read-only (works without QuPath), ``"r+"`` read and write (needs QuPath),
            ``"x"`` create a new project in an empty or missing folder (needs QuPath).

    Raises:
        ProjectError: ``path`` is not a project (or, for ``"x"``, already is one or is not
            empty), or the folder is read-only for ``"r+"`` / ``"x"``.
        QuPathNotFoundError: mode ``"r+"`` or ``"x"`` without QuPath.
    """
    if mode not in ("r", "r+", "x"):
        raise ProjectError(
            f"unknown mode {mode!r}: use 'r' (read), 'r+' (read/write) or 'x' (create)"
        )
    if mode == "x":
        return _create(Path(path))
    project_file = find_project_file(path)
    backend = None
    if mode == "r+":
        if not is_writable_dir(project_file.parent):
            raise ProjectError(
                f"cannot open {project_file.parent} for writing: the folder is read-only"
            )
        if not qupath_status().available:
            raise QuPathNotFoundError(no_qupath_message("Opening a QuPath project for writing"))
        from ._paquo_backend import PaquoProject

        backend = PaquoProject(project_file, "r+")
    return Project(project_file, mode, backend)


def create_project(path: str | os.PathLike[str]) -> Project:
    """Create a new, empty QuPath project (needs QuPath); same as ``open_project(path, "x")``."""
    return open_project(path, "x")


def _create(path: Path) -> Project:
    folder = path.parent if path.suffix.lower() == ".qpproj" else path
    folder = folder.expanduser().absolute()
    if (folder / PROJECT_FILE).exists():
        raise ProjectError(f"cannot create a project in {folder}: it already holds a project")
    if folder.exists():
        if not folder.is_dir():
            raise ProjectError(f"cannot create a project at {folder}: it is a file")
        if any(folder.iterdir()):
            raise ProjectError(f"cannot create a project in {folder}: the folder is not empty")
        parent = folder
    else:
        parent = folder.parent
        if not parent.is_dir():
            raise ProjectError(f"cannot create a project in {folder}: {parent} does not exist")
    if not is_writable_dir(parent):
        raise ProjectError(f"cannot create a project in {folder}: {parent} is read-only")
    if not qupath_status().available:
        raise QuPathNotFoundError(no_qupath_message("Creating a QuPath project"))
    from ._paquo_backend import PaquoProject

    created_folder = not folder.exists()
    try:
        backend = PaquoProject(folder / PROJECT_FILE, "x")
    except BaseException:
        if created_folder and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Project(folder / PROJECT_FILE, "r+", backend)
