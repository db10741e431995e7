"""Exceptions and warnings raised by the QuPath bridge."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class GeoJSONError(BridgeError, ValueError):
    """GeoJSON that cannot be read or written; the message names the feature and the problem."""


class ProjectError(BridgeError):
    """A QuPath project that cannot be opened, read or written."""


class QuPathNotFoundError(ProjectError):
    """The operation needs a QuPath installation (through paquo) and none was found."""


class GeometryRepairedWarning(UserWarning):
    """An invalid geometry (e.g. a self-intersecting polygon) was repaired on reading."""


class DuplicateIdWarning(UserWarning):
    """Features of one GeoJSON shared an id; the later ones were given fresh ids on reading."""
