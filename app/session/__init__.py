"""Annotation session: the annotations of one slide, their classes, undo and the crash journal."""

from __future__ import annotations

from app.session.annotations import AnnotationStore
from app.session.classes import ClassEntry, ClassList
from app.session.journal import Journal, data_dir, journal_path_for

__all__ = ["AnnotationStore", "ClassEntry", "ClassList", "Journal", "data_dir", "journal_path_for"]
