"""The QuPath side of ``wsi-sam batch``: which slides, their prompts, where the outputs go.

The Dask machinery and the job runner are in :mod:`engine.batch`, which must not import the
QuPath bridge; this module may import both, so it turns a batch INPUT into
:class:`engine.batch.SlideJob` s and gives each job a :class:`BatchIO`: a small, stateless object
of this module's top-level class (pickled by reference, like a function: a worker imports this
module to run it) that reads the slide's prompts as :class:`engine.batch.PromptSpec` s and writes
the objects the engine made as QuPath GeoJSON.

INPUT
    a folder of slides (its files with a slide suffix, not recursive), a QuPath project (its
    folder or ``project.qpproj``: its images), or a text file listing slide paths (one a line;
    blank lines and ``#`` comments skipped; relative paths are relative to the list's folder).

Prompts (``--prompts geojson``): a QuPath GeoJSON per slide, ``<slide stem>.geojson`` beside the
slide or in ``--prompts-dir`` (for a project image: its name's stem). Each feature is one object:

- a Polygon or MultiPolygon (a rectangle or any outline drawn in QuPath, a detector's box; any
  object type) is a **box prompt** from its bounds;
- a Point or MultiPoint (QuPath's Points annotations are MultiPoints) is a **point set**:
  positive points, or negative ones when the feature is classified ``Ignore*`` or has the
  property (or metadata entry) ``"wsi-sam label": 0``;
- features that share a ``"wsi-sam prompt"`` property (or metadata entry) are **one** prompt:
  at most one box plus any points (e.g. a box with a negative point, or two point sets).

A prompt made only of negative points, or with two boxes, or a line, makes nothing; it is
counted in the summary's note. The object made takes the class and name of the prompt's box
(else of its first positive point set), else ``--class``.

``--refine``: every polygonal annotation of the slide's GeoJSON (for a project: the project's
own annotations, read as the app reads them) is refined; an object keeps its id, class and name.
``--everything --regions CLASS``: everything is segmented inside each annotation of class
CLASS; the objects get ``--class``.

Outputs
    ``--out DIR``: ``DIR/<key>.geojson`` per slide (key: the slide's stem, made unique),
    written atomically by :func:`qupath_bridge.write_geojson`. A project without ``--out``:
    into the project as the app saves it: with QuPath (paquo), into the project's data, one
    image at a time by the command's own process (staged first as a GeoJSON in
    ``<project>/wsi-sam/batch/``); without QuPath, the image's sidecar
    ``<project>/wsi-sam/<entry id>.geojson`` (:meth:`qupath_bridge.Project.write_sidecar`),
    which the app shows and the next save with QuPath moves into the project. The manifest and
    ``summary.csv`` are in ``--out``, or ``<project>/wsi-sam/batch/``.

The manifest's input fingerprint of a slide covers the slide file and its prompts file; for a
project's own annotations it covers the image's ``data.qpdata``, not the ``wsi-sam`` sidecar
(which the batch itself writes, and the app may edit afterwards: a complete image is not redone
because of it).

Object ids are stable: a prompt's object gets a UUID derived from the slide's key and the
prompt's place in its file, a refined object keeps its own, so a rerun replaces what an earlier
run wrote instead of adding copies.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.batch.jobs import (
    EngineSettings,
    MadeObject,
    PromptSpec,
    SlideJob,
    SlideOutcome,
    Work,
)
from engine.batch.manifest import Manifest, file_sha256, slide_fingerprint

__all__ = [
    "PROMPT_CONVENTION",
    "SLIDE_SUFFIXES",
    "BatchIO",
    "BatchInput",
    "QuPathProjectWriter",
    "find_inputs",
    "make_jobs",
    "prompt_specs",
]

#: Suffixes of files a folder INPUT takes as slides.
SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
)
#: The version of the prompt convention above (part of the settings hash).
PROMPT_CONVENTION = 1
GROUP_KEY = "wsi-sam prompt"
LABEL_KEY = "wsi-sam label"
NEGATIVE_CLASS = "Ignore*"
_ID_NAMESPACE = uuid.UUID("0f5bd0a4-3a43-4d57-9f0e-7a1c55b0c6e1")


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInput:
    """One slide of the batch, before its job is made.

    ``entry_id`` is set for a project image; ``name`` is what the key is made from.
    """

    slide: Path
    name: str
    entry_id: str | None = None


@dataclass(frozen=True)
class FoundInputs:
    kind: str  # "folder", "project" or "list"
    items: list[BatchInput]
    project: Path | None = None


def _is_project(path: Path) -> bool:
    return path.suffix == ".qpproj" or (path.is_dir() and (path / "project.qpproj").is_file())


def find_inputs(source: str | os.PathLike[str]) -> FoundInputs:
    """The slides of a batch INPUT (see the module docstring).

    Raises:
        FileNotFoundError: INPUT does not exist.
        ValueError: a folder without slides, an empty list.
        qupath_bridge.ProjectError: a damaged project.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "no such file or folder", str(path))
    if _is_project(path):
        from qupath_bridge import open_project

        with open_project(path) as project:
            items = [
                BatchInput(
                    image.path if image.path is not None else Path(image.uri or image.name),
                    Path(image.name).stem or image.entry_id,
                    image.entry_id,
                )
                for image in project.images
            ]
            folder = project.path
        if not items:
            raise ValueError(f"the QuPath project {folder} has no images")
        return FoundInputs("project", items, folder)
    if path.is_dir():
        slides = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES
        )
        if not slides:
            raise ValueError(
                f"{path}: no slides in this folder (files ending in {', '.join(SLIDE_SUFFIXES)})"
            )
        return FoundInputs("folder", [BatchInput(p, p.stem) for p in slides])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: not a folder, a QuPath project or a text file listing slides"
        ) from None
    items = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        slide = Path(line).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        items.append(BatchInput(slide, slide.stem))
    if not items:
        raise ValueError(f"{path}: the list names no slides")
    return FoundInputs("list", items)


def _unique_keys(items: Sequence[BatchInput]) -> list[str]:
    """File-name-safe keys, unique: a name used twice gets a short hash of its slide's path."""

    def clean(name: str) -> str:
        return re.sub(r"[^\w.\-+ ]", "_", name).strip(" .") or "slide"

    names = [clean(item.name) for item in items]
    counts: dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    keys = []
    for item, name in zip(items, names, strict=True):
        if counts[name.lower()] > 1:
            ident = item.entry_id or str(item.slide.resolve())
            name = f"{name}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"
        keys.append(name)
    return keys


# --- prompts -----------------------------------------------------------------------------------


def _tag(annotation: Any, key: str) -> Any:
    if key in annotation.extra_properties:
        return annotation.extra_properties[key]
    return annotation.metadata.get(key)


def _is_negative(annotation: Any) -> bool:
    if annotation.class_name == NEGATIVE_CLASS:
        return True
    label = _tag(annotation, LABEL_KEY)
    return label is not None and str(label).strip() in ("0", "0.0", "false", "False")


def _carry(annotation: Any, fallback_class: str | None) -> dict[str, Any]:
    path_class = annotation.path_class
    if path_class is not None and path_class.name == NEGATIVE_CLASS:
        path_class = None
    carry: dict[str, Any] = {"name": annotation.name}
    if path_class is not None:
        carry["class"] = path_class.name
        carry["color"] = path_class.color
    elif fallback_class:
        carry["class"] = fallback_class
    return carry


def prompt_specs(annotations: Sequence[Any], output_class: str | None = None) -> list[PromptSpec]:
    """Prompts from QuPath objects by the convention of the module docstring, in file order
    (a group at the place of its first feature)."""
    groups: dict[str, list[Any]] = {}
    order: list[list[Any]] = []
    for annotation in annotations:
        tag = _tag(annotation, GROUP_KEY)
        if tag is None or str(tag) == "":
            order.append([annotation])
            continue
        key = str(tag)
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(annotation)
    specs = []
    for members in order:
        box = None
        points: list[tuple[float, float]] = []
        labels: list[int] = []
        owner = None
        problem = ""
        for annotation in members:
            geometry = annotation.geometry
            kind = geometry.geom_type
            if kind in ("Polygon", "MultiPolygon"):
                if box is not None:
                    problem = "a prompt with two boxes"
                x0, y0, x1, y1 = geometry.bounds
                box = (float(x0), float(y0), float(x1), float(y1))
                owner = annotation
            elif kind in ("Point", "MultiPoint"):
                parts = [geometry] if kind == "Point" else list(geometry.geoms)
                negative = _is_negative(annotation)
                points += [(float(p.x), float(p.y)) for p in parts]
                labels += [0 if negative else 1] * len(parts)
                if not negative and owner is None:
                    owner = annotation
            else:
                problem = problem or f"a {kind} is not a prompt (give boxes or points)"
        if not problem and box is None and 1 not in labels:
            problem = "a prompt of negative points only"
        carry = _carry(owner if owner is not None else members[0], output_class)
        specs.append(PromptSpec(box, tuple(points), tuple(labels), None, carry, problem))
    return specs


def outline_specs(annotations: Sequence[Any]) -> list[PromptSpec]:
    """Refine: one prompt per polygonal annotation (detections and cells are not refined)."""
    specs = []
    for annotation in annotations:
        if annotation.object_type != "annotation":
            continue
        if annotation.geometry.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        carry = _carry(annotation, None)
        carry["id"] = annotation.id
        carry["measurements"] = dict(annotation.measurements)
        carry["metadata"] = dict(annotation.metadata)
        specs.append(PromptSpec(geometry=annotation.geometry, carry=carry))
    return specs


def region_specs(
    annotations: Sequence[Any], region_class: str, output_class: str | None
) -> list[PromptSpec]:
    """Segment everything: one region per polygonal annotation of class ``region_class``."""
    specs = []
    for annotation in annotations:
        if annotation.class_name != region_class:
            continue
        if annotation.geometry.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        carry: dict[str, Any] = {"class": output_class} if output_class else {}
        carry["region"] = annotation.id
        specs.append(PromptSpec(geometry=annotation.geometry, carry=carry))
    return specs


# --- the io object -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchIO:
    """Reads a job's prompts and writes its objects (see the module docstring).

    The job's ``target`` says where: ``{"kind": "geojson", "path": ...}``, ``{"kind": "sidecar",
    "project": ..., "entry_id": ...}`` or ``{"kind": "qupath", "path": <staging file>, ...}``;
    a project image's annotations are read when the job has no prompts file.
    """

    output_class: str | None = None
    region_class: str | None = None

    def _annotations(self, job: SlideJob) -> list[Any]:
        from qupath_bridge import open_project, read_geojson

        if not Path(job.slide).is_file():
            raise FileNotFoundError(
                2,
                "the slide file is missing (a moved project? `wsi-sam project relink`)",
                job.slide,
            )
        if job.prompts is not None:
            return read_geojson(Path(job.prompts))
        with open_project(job.target["project"]) as project:
            return project.read_annotations(job.target["entry_id"])

    def load_prompts(self, job: SlideJob) -> list[PromptSpec]:
        annotations = self._annotations(job)
        if job.work.kind == "prompts":
            return prompt_specs(annotations, self.output_class)
        if job.work.kind == "refine":
            return outline_specs(annotations)
        return region_specs(annotations, self.region_class or "", self.output_class)

    def annotations(self, job: SlideJob, objects: Sequence[MadeObject]) -> list[Any]:
        """The QuPath annotations of the objects made."""
        from qupath_bridge import Annotation, PathClass

        out = []
        for made in objects:
            carry = made.carry
            object_id = carry.get("id") or str(
                uuid.uuid5(_ID_NAMESPACE, f"{job.key}:{made.index[0]}:{made.index[1]}")
            )
            measurements = {**carry.get("measurements", {}), **made.measurements}
            metadata = {
                k: v for k, v in carry.get("metadata", {}).items() if not k.startswith("wsi-sam ")
            }
            metadata.update(made.metadata)
            class_name = carry.get("class")
            path_class = None
            if class_name:
                color = carry.get("color")
                path_class = PathClass.from_name(class_name, tuple(color) if color else None)
            out.append(
                Annotation(
                    geometry=made.geometry,
                    path_class=path_class,
                    name=carry.get("name"),
                    id=object_id,
                    measurements=measurements,
                    metadata=metadata,
                )
            )
        return out

    def write_output(self, job: SlideJob, objects: list[MadeObject]) -> tuple[str, list[str]]:
        from qupath_bridge import open_project, write_geojson

        annotations = self.annotations(job, objects)
        ids = [a.id for a in annotations]
        target = job.target
        if target["kind"] in ("geojson", "qupath"):
            Path(target["path"]).parent.mkdir(parents=True, exist_ok=True)
            write_geojson(Path(target["path"]), annotations)
            return file_sha256(target["path"]), ids
        if target["kind"] == "sidecar":
            stale = [i for i in job.replace_ids if i not in set(ids)]
            with open_project(target["project"]) as project:
                project.write_sidecar(target["entry_id"], annotations, replace_ids=stale)
            return "", ids  # the app may edit the sidecar later: not checked on a rerun
        raise ValueError(f"unknown output target {target['kind']!r}")


class QuPathProjectWriter:
    """Writes each finished image's staged GeoJSON into the QuPath project (needs QuPath).

    Runs in the command's own process, one image at a time (a project is one set of files that
    concurrent writers would corrupt), before the manifest records the image as done.
    """

    def __init__(self, project: Path) -> None:
        from qupath_bridge import open_project

        self.project = open_project(project, mode="r+")

    def __call__(self, job: SlideJob, outcome: SlideOutcome) -> SlideOutcome:
        from qupath_bridge import read_geojson

        if outcome.status != "done":
            return outcome
        try:
            annotations = read_geojson(Path(job.target["path"]))
            stale = [i for i in job.replace_ids if i not in set(outcome.ids)]
            self.project.write_annotations(job.target["entry_id"], annotations, replace_ids=stale)
        except Exception as exc:
            outcome.status = "failed"
            outcome.error = f"writing into the QuPath project: {' '.join(str(exc).split())}"
        return outcome

    def close(self) -> None:
        self.project.close()


# --- jobs --------------------------------------------------------------------------------------


def _prompts_file(item: BatchInput, prompts_dir: Path | None) -> Path:
    if prompts_dir is not None:
        return prompts_dir / f"{item.name}.geojson"
    return item.slide.with_suffix(".geojson")


def _input_sha256(slide: Path, prompts: Path | None, extra: Path | None = None) -> str:
    digest = hashlib.sha256(slide_fingerprint(slide).encode())
    for path in (prompts, extra):
        if path is None:
            continue
        try:
            digest.update(file_sha256(path).encode())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def make_jobs(
    found: FoundInputs,
    out_dir: Path,
    settings: EngineSettings,
    work: Work,
    io: BatchIO,
    *,
    prompts_dir: Path | None = None,
    into_project: bool = False,
    with_qupath: bool = False,
    manifest: Manifest | None = None,
) -> list[SlideJob]:
    """One job per slide of ``found``.

    ``into_project``: a project's outputs go into the project (``with_qupath``: through QuPath,
    else its sidecar); otherwise into ``out_dir``. The project's own annotations are the
    prompts of ``--refine`` / ``--everything`` unless ``prompts_dir`` is given.
    """
    manifest = manifest or Manifest(out_dir)
    keys = _unique_keys(found.items)
    jobs = []
    for item, key in zip(found.items, keys, strict=True):
        use_project = found.kind == "project" and work.kind != "prompts" and prompts_dir is None
        prompts = None if use_project else _prompts_file(item, prompts_dir)
        qpdata = None
        target: dict[str, Any]
        if use_project or into_project:
            assert found.project is not None and item.entry_id is not None
            qpdata = found.project / "data" / item.entry_id / "data.qpdata"
        if into_project:
            assert found.project is not None and item.entry_id is not None
            if with_qupath:
                staged = out_dir / f"{key}.geojson"
                target = {
                    "kind": "qupath",
                    "path": str(staged),
                    "project": str(found.project),
                    "entry_id": item.entry_id,
                }
                output = str(staged)
            else:
                output = str(found.project / "wsi-sam" / f"{item.entry_id}.geojson")
                target = {
                    "kind": "sidecar",
                    "project": str(found.project),
                    "entry_id": item.entry_id,
                    "path": output,
                }
        else:
            output = str(out_dir / f"{key}.geojson")
            target = {"kind": "geojson", "path": output}
            if use_project:
                target.update(project=str(found.project), entry_id=item.entry_id)
        jobs.append(
            SlideJob(
                key=key,
                slide=str(item.slide),
                prompts=None if prompts is None else str(prompts),
                output=output,
                settings=settings,
                work=work,
                io=io,
                target=target,
                input_sha256=_input_sha256(item.slide, prompts, qpdata if use_project else None),
                replace_ids=tuple(manifest.previous_ids(key)),
            )
        )
    return jobs


def settings_identity(settings: EngineSettings, work: Work, io: BatchIO) -> dict[str, Any]:
    """What the manifest's settings hash covers."""
    return {
        "engine": settings.identity(),
        "work": work.identity(),
        "output_class": io.output_class,
        "region_class": io.region_class,
        "prompt_convention": PROMPT_CONVENTION,
    }


Finisher = Callable[[SlideJob, SlideOutcome], SlideOutcome]
