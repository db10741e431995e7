"""Classify > Objects by example: a few classified objects teach the class of all the others.

The objects to classify are the annotations of the list and/or the project's detection layer
(data.qpdata). Their features (:func:`engine.objects.object_features`: the SAM embedding at the
working magnification, the context at half of it, the measurements) are computed once in the
background and kept by object. The user clicks objects to make them examples of the current
class (right-click removes one), or takes the classified objects as examples; after each change
a classifier (:class:`engine.objects.ObjectClassifier`) is fitted on the examples and every
other object is drawn in its predicted class's colour (a layer over the slide; nothing is
changed yet). **Apply classes** gives each object its class and the measurement ``Classifier:
probability`` as one undo step; **Keep only objects like these** removes the objects of a class
ending in ``*`` (``Ignore*``), one undo step. A classifier is saved to and loaded from the
project's ``wsi-sam/classifiers/NAME.json`` (beside a plain slide: its folder's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QUndoCommand
from PySide6.QtWidgets import QMenu

from app.commands.classify import class_colors, classified_copy, polygonal
from app.controllers.project_objects import DetectionLayer
from app.dialogs.objects_by_example import ObjectsByExampleDock
from app.session.overlay import Z_PREVIEW

JOB_TAG = "objects-by-example"
CLICK_SLOP_PX = 4
UNKNOWN_COLOR = QColor(160, 160, 160)
# columns of the kept feature rows: HR embedding, LR context, measurement columns
_HR, _LR = slice(0, 256), slice(256, 512)


def classifiers_folder(window: Any) -> Path | None:
    """Where this project's (or, for a plain slide, its folder's) classifiers are kept."""
    if window.project is not None:
        return Path(window.project.path) / "wsi-sam" / "classifiers"
    if window.slide_path is not None:
        return Path(window.slide_path).parent / "wsi-sam" / "classifiers"
    return None


def _columns(x: np.ndarray, feature_set: str) -> np.ndarray:
    """The columns of ``feature_set`` from full rows (HR, LR, measurement columns)."""
    parts = feature_set.split("+")
    blocks = []
    if "hr" in parts:
        blocks.append(x[:, _HR])
    if "lr" in parts:
        blocks.append(x[:, _LR])
    blocks.append(x[:, 512:])
    return np.ascontiguousarray(np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0])


def _warm_up() -> None:
    """Import scikit-learn's models (seconds, once) before the first example needs them."""
    import sklearn.ensemble
    import sklearn.linear_model
    import sklearn.pipeline
    import sklearn.preprocessing  # noqa: F401


class ClassifyObjectsCommand(QUndoCommand):
    """New classes (and measurements) for objects of the list and of the detection layer, and
    objects removed; undo puts everything back. One undo step for any number of objects."""

    def __init__(
        self,
        text: str,
        window: Any,
        changed: dict[str, Any],
        removed: list[str],
        layer_new: list[Any] | None,
        after: Any = None,
    ) -> None:
        super().__init__(text)
        self._window = window
        self._changed = changed  # store id -> the new annotation
        self._removed_ids = removed
        self._layer_old = window.project_objects.objects()
        self._layer_new = layer_new
        self._after = after
        self._old: dict[str, Any] = {}
        self._removed: list[tuple[Any, int]] = []

    def redo(self) -> None:
        store = self._window.store
        self._old = {}
        for annotation_id, new in self._changed.items():
            if annotation_id in store:
                self._old[annotation_id] = store.update(
                    annotation_id, path_class=new.path_class, measurements=new.measurements
                )
        self._removed = [store.remove(i) for i in self._removed_ids if i in store]
        if self._layer_new is not None:
            self._window.project_objects.set_objects(self._layer_new)
        if self._after is not None:
            self._after()

    def undo(self) -> None:
        store = self._window.store
        for annotation, row in reversed(self._removed):
            store.add(annotation, row)
        self._removed = []
        for annotation_id, old in self._old.items():
            if annotation_id in store:
                store.update(
                    annotation_id, path_class=old.path_class, measurements=old.measurements
                )
        if self._layer_new is not None:
            self._window.project_objects.set_objects(self._layer_old)
        if self._after is not None:
            self._after()


class ObjectsByExampleController(QObject):
    """The Classify menu, the dock, the examples, the live preview, Apply, save and load."""

    updated = Signal()  # the predictions were updated (or cleared)

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self._window = window
        self.dock = ObjectsByExampleDock(window)
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        # targets: (key, source "store" or "layer", the object), in drawing order
        self._targets: list[tuple[str, str, Any]] = []
        self._targets_dirty = True
        self._tree: Any = None
        self._layer: DetectionLayer | None = None
        # features: key -> row of ``_x`` (HR, LR, measurement columns)
        self._row: dict[str, int] = {}
        self._x = np.zeros((0, 519), np.float32)
        self._settings: Any = None
        self._job_keys: list[str] | None = None
        # the targets' feature columns (for the feature set named), and which targets have them
        self._target_x: tuple[str, np.ndarray, np.ndarray] | None = None
        self._index: dict[str, int] = {}  # key -> position in the targets
        # per target: its class (example or predicted; "" unknown) and probability
        self._names = np.zeros(0, dtype=object)
        self._probability = np.zeros(0)
        self.examples: dict[str, str] = {}  # key -> class name
        self.loaded: Any = None  # a loaded classifier: its training set comes first
        self.kind: str | None = None  # the model of a new classifier; None: the default
        self.classifier: Any = None
        self.last_update_ms = 0.0
        self._press: Any = None
        self._build_menu()
        self._connect()

    # -- construction ------------------------------------------------------------------------
    def _build_menu(self) -> None:
        window = self._window
        self.menu = QMenu("&Classify", window)
        self.act_open = QAction("Objects by &example…", window)
        self.act_open.setStatusTip(
            "Classify objects from a few examples; keep only the objects like them"
        )
        self.act_open.triggered.connect(lambda _c=False: self.open())
        self.act_apply = QAction("&Apply predicted classes", window)
        self.act_apply.triggered.connect(lambda _c=False: self.apply())
        self.act_keep = QAction("&Keep only objects like these", window)
        self.act_keep.triggered.connect(lambda _c=False: self.keep_only())
        for action in (self.act_open, self.act_apply, self.act_keep):
            self.menu.addAction(action)
        bar = window.menuBar()
        tools = next((a for a in bar.actions() if a.text().replace("&", "") == "Tools"), None)
        if tools is not None:
            bar.insertMenu(tools, self.menu)
        else:
            bar.addMenu(self.menu)

    def _connect(self) -> None:
        window, dock = self._window, self.dock
        window.jobs.finished.connect(self._on_job_finished)
        window.jobs.failed.connect(self._on_job_failed)
        window.jobs.cancelled.connect(self._on_job_failed)
        window.slideOpened.connect(lambda _path: self.reset())
        store = window.store
        for signal in (store.added, store.removed):
            signal.connect(lambda *_args: self._targets_changed())
        store.reset.connect(self._targets_changed)
        dock.sourceChanged.connect(lambda _v: self._targets_changed())
        dock.featuresChanged.connect(lambda _v: self.update_predictions())
        dock.previewToggled.connect(self._show_preview)
        dock.pickToggled.connect(lambda on: window.set_tool("pan") if on else None)
        dock.useClassifiedRequested.connect(self.use_classified)
        dock.clearRequested.connect(self.clear_examples)
        dock.applyRequested.connect(self.apply)
        dock.keepRequested.connect(self.keep_only)
        dock.saveRequested.connect(self.ask_save)
        dock.loadRequested.connect(self.ask_load)
        dock.visibilityChanged.connect(self._on_visibility)
        window.view.viewport().installEventFilter(self)

    # -- the objects ---------------------------------------------------------------------------
    def open(self) -> None:
        """Show the dock, pick examples with clicks (the pan tool), compute what is missing."""
        self.dock.show()
        self.dock.raise_()
        if self.dock.pick_box.isChecked():
            self._window.set_tool("pan")
        self.refresh()

    def reset(self) -> None:
        """A new slide: forget the objects, features, examples and predictions."""
        self._row, self._x = {}, np.zeros((0, 519), np.float32)
        self._settings = None
        self.examples, self.classifier = {}, None
        self._names, self._probability = np.zeros(0, dtype=object), np.zeros(0)
        self._remove_layer()
        self._targets, self._targets_dirty = [], True
        self._target_x = None
        self._job_keys = None
        self.updated.emit()

    def targets(self) -> list[tuple[str, str, Any]]:
        """(key, source, object) of every object to classify."""
        if self._targets_dirty:
            self._collect_targets()
        return self._targets

    def _targets_changed(self) -> None:
        self._targets_dirty = True
        if self.dock.isVisible():
            QTimer.singleShot(0, self.refresh)

    def _collect_targets(self) -> None:
        import shapely

        window = self._window
        source = self.dock.source()
        targets: list[tuple[str, str, Any]] = []
        if source in ("all", "annotations"):
            for obj in window.store:
                if polygonal(obj) and obj.class_name != "Region*":
                    targets.append((f"store:{obj.id}", "store", obj))
        if source in ("all", "detections"):
            for obj in window.project_objects.objects():
                if polygonal(obj):
                    targets.append((f"layer:{obj.id}", "layer", obj))
        self._targets = targets
        self._targets_dirty = False
        self._index = {key: i for i, (key, _s, _o) in enumerate(targets)}
        self._tree = shapely.STRtree([t[2].geometry for t in targets]) if targets else None
        keys = {t[0] for t in targets}
        self.examples = {k: v for k, v in self.examples.items() if k in keys}
        self._target_x = None
        self._make_layer()

    def object_at(self, x: float, y: float) -> str | None:
        """The key of the smallest object at level-0 (x, y), or None."""
        from shapely.geometry import Point

        targets = self.targets()
        if self._tree is None:
            return None
        tolerance = 3.0 * self._window.view.downsample()
        hits = self._tree.query(Point(x, y).buffer(tolerance), predicate="intersects")
        if len(hits) == 0:
            return None
        best = min((targets[int(i)][2].geometry.area, int(i)) for i in hits)
        return targets[best[1]][0]

    # -- features ------------------------------------------------------------------------------
    def feature_settings(self) -> Any:
        from engine.objects.features import FeatureSettings

        if self._settings is None:
            if self.loaded is not None:
                self._settings = self.loaded.settings
            else:
                from app.controllers.engine_jobs import shared_model

                _, predictor = shared_model(self._window)
                magnification = float(getattr(predictor, "magnification", 10.0))
                self._settings = FeatureSettings(magnification=magnification)
        return self._settings

    def missing(self) -> list[str]:
        return [key for key, _s, _o in self.targets() if key not in self._row]

    def refresh(self) -> None:
        """Compute the features that are missing (in the background), then update."""
        if self._window.slide_path is None:
            return
        missing = self.missing()
        if missing and self._job_keys is None and not self._window.jobs.is_running():
            self._start_features(missing)
        self.update_predictions()

    def _start_features(self, keys: list[str]) -> None:
        from engine.objects.features import object_features

        by_key = {key: obj for key, _s, obj in self.targets()}
        geometries = [by_key[k].geometry for k in keys]
        names = [str(by_key[k].name or by_key[k].id) for k in keys]
        settings = self.feature_settings()
        token = object()

        def job(predictor: Any, slide: Any, progress: Any, cancelled: Any) -> Any:
            _warm_up()
            found = object_features(
                predictor,
                slide,
                geometries,
                settings,
                names=names,
                progress=progress,
                cancel=cancelled,
            )
            return (JOB_TAG, token, keys, found)

        self._job_keys = keys
        self._token = token
        count = len(keys)
        if not self._window.jobs.start(f"Measuring {count} object{'s' * (count != 1)}…", job):
            self._job_keys = None

    def _on_job_finished(self, payload: object) -> None:
        if not (isinstance(payload, tuple) and payload and payload[0] == JOB_TAG):
            return
        _tag, token, keys, found = payload
        self._job_keys = None
        if token is not getattr(self, "_token", None):
            return
        self.add_features(keys, found)
        if self.dock.isVisible() and self.missing():
            QTimer.singleShot(0, self.refresh)

    def _on_job_failed(self, *_args: Any) -> None:
        self._job_keys = None

    def add_features(self, keys: list[str], features: Any) -> None:
        """Keep the features of ``keys`` (an :class:`engine.objects.ObjectFeatures`)."""
        from engine.objects.features import measurement_features

        if not keys:
            return
        lr = features.lr if features.lr is not None else np.zeros_like(features.hr)
        rows = np.concatenate(
            [features.hr, lr, measurement_features(features.measurements)], axis=1
        ).astype(np.float32)
        start = len(self._x)
        self._x = np.concatenate([self._x, rows])
        for offset, key in enumerate(keys):
            self._row[key] = start + offset
        self._target_x = None
        self.update_predictions()

    # -- examples --------------------------------------------------------------------------------
    def add_example(self, key: str, class_name: str | None = None) -> bool:
        """Make the object ``key`` an example of ``class_name`` (default: the current class)."""
        if class_name is None:
            entry = self._window.classes.current()
            if entry is None:
                self._window.statusBar().showMessage(
                    "Choose a class first (keys 1-9 or the Classes list)", 6000
                )
                return False
            class_name = entry.name
        self.examples[key] = class_name
        self.update_predictions()
        return True

    def remove_example(self, key: str) -> None:
        if self.examples.pop(key, None) is not None:
            self.update_predictions()

    def clear_examples(self) -> None:
        self.examples = {}
        self.update_predictions()

    def use_classified(self) -> int:
        """Every classified object becomes an example of its class; returns how many."""
        count = 0
        for key, _source, obj in self.targets():
            if obj.class_name:
                self.examples[key] = obj.class_name
                count += 1
        self.update_predictions()
        return count

    # -- the classifier and the live preview -------------------------------------------------------
    def update_predictions(self) -> None:
        """Fit on the examples, predict every other object, recolour the preview."""
        started = time.perf_counter()
        from engine.objects import classifier as classifiers
        from engine.objects.classifier import ClassifierError, ObjectClassifier

        feature_set = self.dock.feature_set()
        if self.loaded is not None and feature_set != self.loaded.feature_set:
            self.dock.set_feature_set(self.loaded.feature_set)
            feature_set = self.loaded.feature_set
        targets = self.targets()
        keys = [k for k, v in self.examples.items() if k in self._row]
        labels = [self.examples[k] for k in keys]
        x = _columns(self._x[[self._row[k] for k in keys]], feature_set)
        if self.loaded is not None:
            x = np.concatenate([self.loaded.x, x])
            labels = self.loaded.labels + labels
        self.classifier = None
        problem = ""
        if len(set(labels)) >= 2:
            from app.controllers.engine_jobs import shared_model

            model, _ = shared_model(self._window)
            info = getattr(getattr(model, "sam", None), "checkpoint_info", None)
            try:
                self.classifier = ObjectClassifier.train(
                    x,
                    labels,
                    feature_set=feature_set,
                    settings=self.feature_settings(),
                    encoder_sha256=str(getattr(info, "sha256", "") or ""),
                    colors=self._class_rgb(set(labels)),
                    kind=self.loaded.kind
                    if self.loaded is not None
                    else (self.kind or classifiers.DEFAULT_KIND),
                    params=self.loaded.params if self.loaded is not None else None,
                )
            except ClassifierError as exc:
                problem = str(exc)
        count = len(targets)
        names = np.full(count, "", dtype=object)
        probability = np.full(count, np.nan)
        if self.classifier is not None:
            if self._target_x is None or self._target_x[0] != feature_set:
                rows = np.array([self._row.get(k, -1) for k, _s, _o in targets], dtype=np.int64)
                have = rows >= 0
                self._target_x = (feature_set, have, _columns(self._x[rows[have]], feature_set))
            _set, have, matrix = self._target_x
            if len(matrix):
                predicted = self.classifier.predict(matrix)
                names[have] = predicted.classes
                probability[have] = predicted.probability
        for key, name in self.examples.items():
            index = self._index.get(key)
            if index is not None:
                names[index], probability[index] = name, 1.0
        self._names, self._probability = names, probability
        self._recolor()
        self.last_update_ms = (time.perf_counter() - started) * 1000.0
        self._say(problem)
        self.updated.emit()

    @property
    def predicted(self) -> dict[str, tuple[str, float]]:
        """key -> (predicted class, probability) of the objects that are not examples."""
        if self.classifier is None:
            return {}
        return {
            key: (str(self._names[i]), float(self._probability[i]))
            for key, i in self._index.items()
            if key not in self.examples and i < len(self._names) and self._names[i]
        }

    def final_class(self, key: str) -> tuple[str | None, float]:
        """(class, probability) an object gets: its example class (probability 1), else the
        predicted one, else (None, nan)."""
        if key in self.examples:
            return self.examples[key], 1.0
        index = self._index.get(key)
        if index is None or index >= len(self._names) or not self._names[index]:
            return None, float("nan")
        return str(self._names[index]), float(self._probability[index])

    def _class_rgb(self, names: set[str]) -> dict[str, tuple[int, int, int]]:
        """Colours of classes: the window's class list, else the objects' own class colours
        or QuPath's defaults."""
        window = self._window
        out: dict[str, tuple[int, int, int]] = {}
        for name in names:
            entry = window.classes.find(name)
            if entry is not None:
                out[name] = tuple(entry.color)
        if len(out) < len(names):
            defaults = class_colors([t[2] for t in self.targets() if t[2].path_class is not None])
            out.update({n: defaults[n] for n in names if n not in out and n in defaults})
        return out

    def _make_layer(self) -> None:
        self._remove_layer()
        if not self._targets:
            return
        scene = self._window.view.scene()
        if scene is None:
            return
        objects = [obj for _k, _s, obj in self._targets]
        layer = DetectionLayer(objects, [UNKNOWN_COLOR] * len(objects))
        layer.pen_width = 2.5
        layer.setZValue(Z_PREVIEW - 1)
        layer.setVisible(self.dock.preview_box.isChecked() and self.dock.isVisible())
        scene.addItem(layer)
        self._layer = layer

    def _remove_layer(self) -> None:
        if self._layer is not None and self._layer.scene() is not None:
            self._layer.scene().removeItem(self._layer)
        self._layer = None

    def layer(self) -> DetectionLayer | None:
        return self._layer

    def _recolor(self) -> None:
        """Each object in its example's or predicted class's colour (grey: not known yet)."""
        if self._layer is None:
            return
        names = self._names if len(self._names) == len(self._targets) else None
        if names is None:
            names = np.full(len(self._targets), "", dtype=object)
        palette_names, color_index = np.unique(names.astype(str), return_inverse=True)
        rgb = self._class_rgb({n for n in palette_names.tolist() if n})
        palette = [QColor(*rgb[n]) if n in rgb else UNKNOWN_COLOR for n in palette_names.tolist()]
        color_index = color_index.reshape(-1).astype(np.int32)
        self._layer.set_color_index(palette, color_index)

    def _show_preview(self, visible: bool) -> None:
        if self._layer is not None:
            self._layer.setVisible(visible and self.dock.isVisible())

    def _on_visibility(self, visible: bool) -> None:
        self._show_preview(visible and self.dock.preview_box.isChecked())
        if visible:
            QTimer.singleShot(0, self.refresh)

    def _say(self, problem: str) -> None:
        counts: dict[str, int] = {}
        for name in self.examples.values():
            counts[name] = counts.get(name, 0) + 1
        if self.loaded is not None:
            for name in self.loaded.labels:
                counts[name] = counts.get(name, 0) + 1
        examples = ", ".join(f"{n} {c}" for n, c in sorted(counts.items())) or "none yet"
        total = len(self._targets)
        measured = total - len(self.missing()) if not self._targets_dirty else 0
        parts = [f"{total} objects ({measured} measured); examples: {examples}."]
        if self.loaded is not None:
            parts.append(
                f"Classifier {self.loaded.name or 'loaded'} ({len(self.loaded.labels)} examples)."
            )
        if problem:
            parts.append(problem)
        elif self.classifier is None:
            parts.append(
                "Give examples of at least two classes (e.g. Ignore* for what is not an object)."
            )
        else:
            ignored = int(sum(str(n).endswith("*") for n in self._names))
            parts.append(f"{ignored} not objects (*); updated in {self.last_update_ms:.0f} ms.")
        self.dock.set_status(" ".join(parts))
        self.dock.set_actions_enabled(self.classifier is not None)

    # -- clicks on the slide -----------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if not (self.dock.isVisible() and self.dock.pick_box.isChecked()):
            return False
        kind = event.type()
        if kind == QEvent.Type.MouseButtonPress:
            self._press = (event.position(), event.button())  # type: ignore[attr-defined]
        elif kind == QEvent.Type.MouseButtonRelease and self._press is not None:
            pos, button = self._press
            self._press = None
            now = event.position()  # type: ignore[attr-defined]
            if (now - pos).manhattanLength() <= CLICK_SLOP_PX:
                scene = self._window.view.mapToScene(now.toPoint())
                key = self.object_at(scene.x(), scene.y())
                if key is not None:
                    if button == Qt.MouseButton.RightButton:
                        self.remove_example(key)
                    else:
                        self.add_example(key)
        return False

    # -- Apply, Keep only ------------------------------------------------------------------
    def apply(self) -> bool:
        """Every object takes its class and probability: one undo step."""
        if self.classifier is None:
            self._window.statusBar().showMessage("No classifier yet: add examples first", 6000)
            return False
        colors = {
            **class_colors([t[2] for t in self._targets]),
            **self._class_rgb(
                {str(n) for n in set(self._names.tolist()) if n} | set(self.examples.values())
            ),
        }
        changed: dict[str, Any] = {}
        layer_new: list[Any] | None = None
        layer_map: dict[str, Any] = {}
        for key, source, obj in self.targets():
            name, probability = self.final_class(key)
            if name is None:
                continue
            new = classified_copy(obj, name, probability, colors)
            if source == "store":
                changed[obj.id] = new
            else:
                layer_map[obj.id] = new
        if layer_map:
            layer_new = [layer_map.get(o.id, o) for o in self._window.project_objects.objects()]
        count = len(changed) + len(layer_map)
        self._push(
            ClassifyObjectsCommand(
                f"Classify {count} objects by example",
                self._window,
                changed,
                [],
                layer_new,
                self._targets_changed,
            )
        )
        self._window.statusBar().showMessage(f"Classified {count} objects", 8000)
        return True

    def keep_only(self) -> bool:
        """Remove the objects of a class ending in ``*`` (predicted or given): one undo step."""
        if self.classifier is None:
            self._window.statusBar().showMessage("No classifier yet: add examples first", 6000)
            return False
        from engine.objects.classifier import is_ignored

        removed: list[str] = []
        dropped_layer: set[str] = set()
        for key, source, obj in self.targets():
            if is_ignored(self.final_class(key)[0]):
                if source == "store":
                    removed.append(obj.id)
                else:
                    dropped_layer.add(obj.id)
        layer_new = None
        if dropped_layer:
            layer_new = [
                o for o in self._window.project_objects.objects() if o.id not in dropped_layer
            ]
        count = len(removed) + len(dropped_layer)
        self._push(
            ClassifyObjectsCommand(
                f"Keep only objects like these: {count} removed",
                self._window,
                {},
                removed,
                layer_new,
                self._targets_changed,
            )
        )
        self._window.statusBar().showMessage(f"Removed {count} objects that are not objects", 8000)
        return True

    def _push(self, command: QUndoCommand) -> None:
        self._window.undo_stack.push(command)

    # -- save and load ----------------------------------------------------------------------
    def ask_save(self) -> bool:
        if self.classifier is None:
            self._window.statusBar().showMessage("No classifier yet: add examples first", 6000)
            return False
        folder = classifiers_folder(self._window)
        if folder is None:
            return False
        name = self._window.prompter.ask_text("Save classifier", "Name:", "objects")
        if not name:
            return False
        import re

        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "objects"
        return self.save(folder / f"{safe}.json")

    def save(self, path: str | Path) -> bool:
        """Write the current classifier (its examples included) as JSON, atomically."""
        from app.errors import plain_error

        if self.classifier is None:
            return False
        self.classifier.name = Path(path).stem
        try:
            self.classifier.save(path)
        except OSError as exc:
            self._window.prompter.error(
                "Cannot save the classifier", f"{path}\n\n{plain_error(exc)}"
            )
            return False
        self._window.statusBar().showMessage(f"Saved the classifier to {path}", 8000)
        return True

    def saved_classifiers(self) -> list[Path]:
        folder = classifiers_folder(self._window)
        return sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []

    def ask_load(self) -> bool:
        saved = self.saved_classifiers()
        if not saved:
            self._window.prompter.error(
                "No saved classifier",
                f"There is no classifier in {classifiers_folder(self._window)} yet.",
            )
            return False
        menu = QMenu(self.dock)
        for path in saved:
            action = menu.addAction(path.stem)
            action.setData(str(path))
        chosen = menu.exec(
            self.dock.load_button.mapToGlobal(self.dock.load_button.rect().bottomLeft())
        )
        return self.load(chosen.data()) if chosen is not None else False

    def load(self, path: str | Path) -> bool:
        """Load a saved classifier: its examples come first, new ones are added to them. A
        foreign, damaged or pickled file is refused with the reason (never unpickled)."""
        from app.controllers.engine_jobs import shared_model
        from engine.objects.classifier import ClassifierError, ObjectClassifier

        try:
            loaded = ObjectClassifier.load(path)
            model, _ = shared_model(self._window)
            info = getattr(getattr(model, "sam", None), "checkpoint_info", None)
            loaded.check_encoder(str(getattr(info, "sha256", "") or ""))
        except ClassifierError as exc:
            self._window.prompter.error("Cannot use this classifier", str(exc))
            return False
        if self._settings is not None and loaded.settings != self._settings:
            self._row, self._x = {}, np.zeros((0, 519), np.float32)  # other features
            self._target_x = None
        self.loaded = loaded
        self._settings = loaded.settings
        self.dock.set_feature_set(loaded.feature_set)
        self.refresh()
        return True
