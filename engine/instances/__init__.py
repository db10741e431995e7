"""Find every object: instance decoders on SAM's frozen encoder.

A small decoder (:mod:`.model`) reads the frozen TinyViT's multi-scale maps of a field
(:mod:`.features`) and predicts, per pixel, foreground and the normalised distances to each
object's centre and boundary (:mod:`.targets`); a seeded watershed turns them into objects
(:mod:`.watershed`). :func:`segment_instances` covers a region of a slide with streamed fields
and merges objects across field borders once (:mod:`.segment`). Decoders train on a CPU from
cached encoder maps (:mod:`.data`, :mod:`.train`), are chosen by cross-validation
(``SELECTION_RULE.md``), tuned (:mod:`.tune`), scored (:mod:`.metrics`, :mod:`.evaluate`) and
stored as checked files (:mod:`.checkpoint`). The shipped ones are in ``decoders/``.
"""

from engine.instances.checkpoint import (
    DecoderError,
    InstanceModel,
    read_decoder,
    shipped_decoders_dir,
    write_decoder,
)
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.instances.segment import InstanceSettings, segment_instances
from engine.instances.watershed import WatershedSettings

__all__ = [
    "DecoderConfig",
    "DecoderError",
    "InstanceDecoder",
    "InstanceModel",
    "InstanceSettings",
    "WatershedSettings",
    "read_decoder",
    "segment_instances",
    "shipped_decoders_dir",
    "write_decoder",
]
