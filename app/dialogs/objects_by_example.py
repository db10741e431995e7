# ruff: noqa: N815  (Qt names its signals in camelCase)
"""The Objects by example dock: what to classify, the examples, the live preview, Apply."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

#: what can be classified: (value, label)
SOURCES = (
    ("all", "Annotations and detections"),
    ("annotations", "Annotations (the list)"),
    ("detections", "Detections (the project's layer)"),
)
#: the feature sets, as the user reads them: (value, label)
FEATURE_CHOICES = (
    ("hr+lr+measurements", "Embedding + context + measurements"),
    ("hr+measurements", "Embedding + measurements"),
    ("measurements", "Measurements only"),
)
HELP = (
    "Click objects to make them examples of the current class (keys 1-9 or the Classes "
    "list choose it); right-click removes an example. Every other object takes its predicted "
    "class and colour as you go. A class ending in * (Ignore*) means 'not an object'."
)


class ObjectsByExampleDock(QDockWidget):
    """Controls only; :class:`app.controllers.objects_by_example.ObjectsByExampleController`
    does the work."""

    sourceChanged = Signal(str)
    featuresChanged = Signal(str)
    pickToggled = Signal(bool)
    previewToggled = Signal(bool)
    useClassifiedRequested = Signal()
    clearRequested = Signal()
    applyRequested = Signal()
    keepRequested = Signal()
    saveRequested = Signal()
    loadRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Objects by example", parent)
        self.setObjectName("objectsByExampleDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)
        help_label = QLabel(HELP)
        help_label.setWordWrap(True)
        layout.addWidget(help_label)

        grid = QGridLayout()
        self.source_combo = QComboBox()
        self.source_combo.setObjectName("objectsSource")
        for value, label in SOURCES:
            self.source_combo.addItem(label, value)
        self.features_combo = QComboBox()
        self.features_combo.setObjectName("objectsFeatures")
        self.features_combo.setToolTip(
            "What the classifier learns from: the SAM embedding of the object at the working "
            "magnification, its surroundings at half of it (context), and its measurements"
        )
        for value, label in FEATURE_CHOICES:
            self.features_combo.addItem(label, value)
        grid.addWidget(QLabel("Objects:"), 0, 0)
        grid.addWidget(self.source_combo, 0, 1)
        grid.addWidget(QLabel("Learn from:"), 1, 0)
        grid.addWidget(self.features_combo, 1, 1)
        layout.addLayout(grid)

        row = QHBoxLayout()
        self.pick_box = QCheckBox("Pick examples by clicking")
        self.pick_box.setChecked(True)
        self.preview_box = QCheckBox("Show predictions")
        self.preview_box.setChecked(True)
        row.addWidget(self.pick_box)
        row.addWidget(self.preview_box)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.use_button = QPushButton("Use classified objects")
        self.use_button.setToolTip("Make every classified object an example of its class")
        self.clear_button = QPushButton("Clear examples")
        row.addWidget(self.use_button)
        row.addWidget(self.clear_button)
        layout.addLayout(row)

        self.status_label = QLabel("")
        self.status_label.setObjectName("objectsStatus")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        row = QHBoxLayout()
        self.apply_button = QPushButton("Apply classes")
        self.apply_button.setToolTip(
            "Give every object its predicted class and probability (one undo step)"
        )
        self.keep_button = QPushButton("Keep only objects like these")
        self.keep_button.setToolTip(
            "Remove the objects predicted as a class ending in * (Ignore*), one undo step"
        )
        row.addWidget(self.apply_button)
        row.addWidget(self.keep_button)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.save_button = QPushButton("Save classifier…")
        self.load_button = QPushButton("Load classifier…")
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        layout.addLayout(row)
        layout.addStretch(1)
        self.setWidget(body)

        self.source_combo.currentIndexChanged.connect(
            lambda _i: self.sourceChanged.emit(str(self.source_combo.currentData()))
        )
        self.features_combo.currentIndexChanged.connect(
            lambda _i: self.featuresChanged.emit(str(self.features_combo.currentData()))
        )
        self.pick_box.toggled.connect(self.pickToggled.emit)
        self.preview_box.toggled.connect(self.previewToggled.emit)
        self.use_button.clicked.connect(lambda _c=False: self.useClassifiedRequested.emit())
        self.clear_button.clicked.connect(lambda _c=False: self.clearRequested.emit())
        self.apply_button.clicked.connect(lambda _c=False: self.applyRequested.emit())
        self.keep_button.clicked.connect(lambda _c=False: self.keepRequested.emit())
        self.save_button.clicked.connect(lambda _c=False: self.saveRequested.emit())
        self.load_button.clicked.connect(lambda _c=False: self.loadRequested.emit())
        self.setAllowedAreas(
            Qt.DockWidgetArea.LeftDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea
        )

    def source(self) -> str:
        return str(self.source_combo.currentData())

    def feature_set(self) -> str:
        return str(self.features_combo.currentData())

    def set_feature_set(self, value: str) -> None:
        index = self.features_combo.findData(value)
        if index >= 0:
            self.features_combo.setCurrentIndex(index)

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def set_actions_enabled(self, enabled: bool) -> None:
        for button in (self.apply_button, self.keep_button, self.save_button):
            button.setEnabled(enabled)
