"""Readers of training / evaluation annotations: label maps, ASAP and ImageScope XML."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.geometry import geometry_to_mask
from engine.train.readers import (
    AnnotationReadError,
    label_map_to_objects,
    read_annotation_xml,
    read_label_map,
)


def _label_map() -> np.ndarray:
    labels = np.zeros((60, 80), dtype=np.uint16)
    labels[5:25, 5:30] = 1
    labels[12:18, 12:20] = 0  # a hole in object 1
    labels[30:40, 40:50] = 7
    labels[45:55, 40:50] = 7  # object 7 in two pieces
    labels[10:20, 60:75] = 300  # a value above 255 (16-bit maps)
    return labels


def test_label_map_objects_are_exact_pixel_sets() -> None:
    labels = _label_map()
    objects = label_map_to_objects(labels, instances="labels")
    assert [o.name for o in objects] == ["1", "7", "300"]
    for obj in objects:
        value = int(obj.name or 0)
        expected = labels == value
        assert obj.geometry.is_valid
        assert obj.geometry.area == expected.sum()
        assert np.array_equal(geometry_to_mask(obj.geometry, labels.shape), expected)
    assert len(objects[0].geometry.interiors) == 1  # the hole is kept
    assert objects[1].geometry.geom_type == "MultiPolygon"


def test_binary_mask_splits_into_4_connected_components(tmp_path: Path) -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[2:10, 2:10] = 255
    mask[10:20, 10:20] = 255  # touches the first only at a corner: a separate object
    mask[25:35, 5:30] = 255
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    objects = read_label_map(path, class_name="gland")
    assert len(objects) == 3
    assert sorted(o.geometry.area for o in objects) == [64, 100, 250]
    assert {o.class_name for o in objects} == {"gland"}
    # forcing labels keeps one object for the single value
    assert len(read_label_map(path, instances="labels")) == 1


def test_tiff_and_png_label_maps_agree(tmp_path: Path) -> None:
    labels = _label_map()
    tifffile.imwrite(tmp_path / "a.tif", labels)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "a.png")
    tif = read_label_map(tmp_path / "a.tif")
    png = read_label_map(tmp_path / "a.png")
    assert [o.geometry.area for o in tif] == [o.geometry.area for o in png]
    assert len(tif) == 3


def test_colour_label_map(tmp_path: Path) -> None:
    rgb = np.zeros((30, 30, 3), dtype=np.uint8)
    rgb[2:12, 2:12] = (255, 0, 0)
    rgb[15:25, 15:28] = (0, 0, 255)
    rgb[2:12, 15:20] = (255, 0, 0)  # same colour again, not connected: instances by colour
    Image.fromarray(rgb).save(tmp_path / "c.png")
    objects = read_label_map(tmp_path / "c.png", instances="labels")
    assert sorted(o.geometry.area for o in objects) == [130, 150]


def test_unreadable_label_map(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(AnnotationReadError, match=r"bad\.png"):
        read_label_map(bad)
    with pytest.raises(AnnotationReadError, match="no such"):
        read_label_map(tmp_path / "missing.png")


def test_asap_xml_groups_exclusions_and_types(test_data: Path) -> None:
    objects = read_annotation_xml(test_data / "train" / "asap_small.xml")
    by_name = {o.name: o for o in objects}
    assert set(by_name) == {"Annotation 0", "Tumor2", "Box"}  # the dot and the _2 region go
    tumour = by_name["Annotation 0"]
    assert tumour.class_name == "Tumor"  # CAMELYON16 group _0
    assert tumour.geometry.area == 400 * 300 - 100 * 100  # the _2 exclusion is a hole
    assert len(tumour.geometry.interiors) == 1
    spline = by_name["Tumor2"]
    assert spline.class_name == "metastasis"
    assert spline.geometry.area == pytest.approx(0.5 * 200 * 200)  # ordered by Order
    assert by_name["Box"].geometry.bounds == (100, 200, 150, 260)


def test_imagescope_xml_layers_negative_regions_ellipses(test_data: Path) -> None:
    objects = read_annotation_xml(test_data / "train" / "imagescope_small.xml")
    classes = [o.class_name for o in objects]
    assert classes == ["Tumour", "Tumour", "Stroma"]  # the ruler is skipped
    square, ellipse, stroma = objects
    assert square.geometry.area == 1000 * 1000 - 200 * 200
    assert ellipse.geometry.area == pytest.approx(np.pi * 100 * 50, rel=0.01)
    # a negative region cuts its own layer only
    assert stroma.geometry.area == 50 * 30


def test_real_imagescope_file_matches_its_own_areas(test_data: Path) -> None:
    path = test_data / "train" / "aperio_TCGA-EJ-5518-01Z-00-DX1.xml"
    objects = read_annotation_xml(path)
    # ImageScope writes each region's area (level-0 px^2) into the file: compare with ours
    written = [float(a) for a in re.findall(r'<Region [^>]*?Area="([0-9.]+)"', path.read_text())]
    assert len(objects) == len(written) == 4
    for obj, area in zip(objects, written, strict=True):
        assert obj.geometry.is_valid
        assert obj.geometry.area == pytest.approx(area, rel=0.02)


def test_unknown_xml(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text("<Foo/>")
    with pytest.raises(AnnotationReadError, match="unknown annotation XML"):
        read_annotation_xml(path)
    path.write_text("<Annotations><broken")
    with pytest.raises(AnnotationReadError, match="not a readable XML"):
        read_annotation_xml(path)
