"""Opening and closing what the window shows: a slide, a QuPath project and its images.

Opening a slide reads the project image's annotations (detections go to their layer), offers to
restore the crash journal's unsaved edits, and asks before leaving unsaved changes; a slide or
project that cannot be opened is told in a dialog and the window keeps what it showed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from app.errors import plain_error
from app.session.classes import ClassEntry
from app.session.journal import Journal, JournalRecorder
from app.session.settings import add_recent_file
from app.session.slide_scale import apply_saved_scale

#: What a QuPath project file is called (its folder works too).
PROJECT_SUFFIXES = (".qpproj",)


def is_project_path(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.suffix.lower() in PROJECT_SUFFIXES or (p.is_dir() and (p / "project.qpproj").is_file())


class DocumentController:
    """File > Open slide / project, the project's image list, and closing, for ``window`` (a
    MainWindow, which keeps the state: ``slide``, ``project``, ``journal``...)."""

    def __init__(self, window: Any) -> None:
        self._window = window

    def ask_open_slide(self) -> None:
        w = self._window
        path = w.prompter.ask_open_slide(w._start_dir())
        if path:
            self.open_path(path)

    def ask_open_project(self) -> None:
        w = self._window
        path = w.prompter.ask_open_project(w._start_dir())
        if path:
            self.open_project(path)

    def open_path(self, path: str | os.PathLike[str]) -> bool:
        """Open a slide, or a QuPath project (``.qpproj`` or its folder)."""
        if is_project_path(path):
            return self.open_project(path)
        return self.open_slide(path)

    def open_slide(self, path: str | os.PathLike[str], project_image: Any = None) -> bool:
        """Open a slide; False (after telling the user why) when it cannot be opened."""
        w = self._window
        if not self.settle_unsaved():
            return False
        path = str(Path(path).expanduser())
        try:
            if not Path(path).exists():
                raise FileNotFoundError(2, "No such file", path)
            opener = w._slide_opener
            if opener is None:
                import engine

                opener = engine.open_slide
            slide = opener(path)
        except Exception as exc:
            w.prompter.error("Cannot open slide", f"{path}\n\n{plain_error(exc)}")
            return False
        apply_saved_scale(slide, path)

        self.close_slide()
        if project_image is None and w.project is not None:
            self.close_project()
        w.slide = slide
        w.slide_path = path
        w.project_image = project_image
        w.overlay.detach()
        w.prompts.forget_scene_items()
        w.view.set_slide(slide)
        w.view.fit_to_window()
        w.annotation_dock.mpp = getattr(slide, "mpp", None)

        base = self.read_project_annotations(project_image) if project_image else []
        w._loaded_ids = [a.id for a in base]
        entry_id = getattr(project_image, "entry_id", None) if project_image else None
        journal_target = str(w.project.path) if project_image is not None and w.project else path
        w.journal = Journal.for_slide(journal_target, entry_id if project_image else None)
        annotations = base
        w._unsaved = False
        damaged = w.journal.repair()  # damaged lines set aside, the good ones kept
        if damaged is not None:
            w.prompter.error("Crash journal damaged", damaged)
        if w.journal.has_edits():
            count = len(w.journal.edits())
            if w.prompter.ask_restore(count, Path(path).name):
                try:
                    annotations = w.journal.replay(base)
                    w._unsaved = True
                except Exception as exc:
                    w.prompter.error(
                        "Cannot restore", f"The journal could not be read: {plain_error(exc)}"
                    )
                    w.journal.set_aside()
            else:
                w.journal.set_aside()
        w.classes.merge(
            ClassEntry.from_path_class(a.path_class)
            for a in annotations
            if a.path_class is not None and a.path_class.color is not None
        )
        w.store.set_all(annotations)
        w.undo_stack.clear()
        w._recorder = JournalRecorder(w.store, w.journal)
        w.prompts.set_slide_path(path)
        if project_image is None:
            add_recent_file(path)
        w._update_title()
        w._update_zoom_label()
        w.statusBar().showMessage(w._describe_slide(slide), 10000)
        w.slideOpened.emit(path)
        return True

    def open_project(self, path: str | os.PathLike[str]) -> bool:
        w = self._window
        if not self.settle_unsaved():
            return False
        try:
            import qupath_bridge

            project = qupath_bridge.open_project(path, mode="r")
        except Exception as exc:
            w.prompter.error("Cannot open QuPath project", f"{path}\n\n{plain_error(exc)}")
            return False
        self.close_slide()
        self.close_project()
        w.project = project
        w.project_images = list(project.images)
        w.project_dock.set_images(w.project_images)
        w.project_dock.show()
        w.classes.merge(
            ClassEntry.from_path_class(pc) for pc in getattr(project, "path_classes", [])
        )
        add_recent_file(str(project.path))
        w._update_title()
        note = getattr(project, "version_warning", None)
        if note:
            w.prompter.error("Newer QuPath project", note)
        first = next((i for i, im in enumerate(w.project_images) if im.exists), None)
        if first is not None:
            self.open_project_image(first)
        elif w.project_images:
            w.statusBar().showMessage(
                "None of the project's images can be found on this computer", 10000
            )
            w.project_objects.offer_locate()
        return True

    def open_project_image(self, index: int) -> bool:
        w = self._window
        if w.project is None or not 0 <= index < len(w.project_images):
            return False
        image = w.project_images[index]
        if image is w.project_image:
            return True
        if not image.exists or image.path is None:
            return w.project_objects.offer_locate(index)  # says so, offers Locate...
        ok = self.open_slide(image.path, project_image=image)
        if ok:
            w.project_dock.set_current(index)
        return ok

    def read_project_annotations(self, image: Any) -> list[Any]:
        w = self._window
        try:
            objects = list(w.project.read_annotations(image))
            return w.project_objects.take_layer_objects(objects)  # detections: the layer
        except Exception as exc:
            w.prompter.error(
                "Cannot read the image's annotations",
                f"{plain_error(exc)}\n\nNew annotations can still be made and exported as GeoJSON.",
            )
            return []

    def close_slide(self) -> None:
        w = self._window
        w.prompts.discard()
        if w._recorder is not None:
            w._recorder.detach()
            w._recorder = None
        if w.journal is not None:
            w.journal.close()
        if w.slide_path is not None:
            w.engine.forget_slide(w.slide_path)
        w.overlay.detach()
        w.project_objects.clear()
        w.prompts.forget_scene_items()
        w.store.set_all([])
        w.undo_stack.clear()
        w.view.set_slide(None)
        if w.slide is not None and hasattr(w.slide, "close"):
            w.slide.close()
        w.slide = None
        w.slide_path = None
        w.project_image = None
        w._unsaved = False

    def close_project(self) -> None:
        w = self._window
        if w.project is not None and hasattr(w.project, "close"):
            with contextlib.suppress(Exception):  # closing is best effort
                w.project.close()
        w.project = None
        w.project_images = []
        w.project_dock.set_images([])
        w.project_dock.hide()

    def settle_unsaved(self) -> bool:
        """Before leaving the slide: save, discard or stay. True when it is fine to go on."""
        w = self._window
        if not w._unsaved or w.slide_path is None:
            return True
        answer = w.prompter.ask_unsaved(Path(w.slide_path).name)
        if answer == "save":
            return w.save()
        if answer == "discard":
            if w.journal is not None:
                w.journal.set_aside()
            w._unsaved = False
            return True
        return False
