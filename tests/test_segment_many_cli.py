"""``wsi-sam segment --refine`` and ``--everything``: ids and classes kept, provenance written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import box as shapely_box
from synthetic_glands import Gland, gland_polygon, write_gland_slide

from app.cli import main
from qupath_bridge import Annotation, PathClass, read_geojson, write_geojson

GLANDS: list[Gland] = [(300.0, 300.0, 110.0, 80.0), (650.0, 450.0, 80.0, 100.0)]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("cli")) / "glands.tif"
    write_gland_slide(path, 900, 700, GLANDS)
    return path


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    return float(a.intersection(b).area / a.union(b).area)


def test_refine_keeps_ids_classes_names_and_improves_the_outlines(
    slide_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tumor = PathClass.from_name("Tumor", (200, 0, 0))
    inputs = [
        Annotation(
            geometry=gland_polygon(g).buffer(35),
            path_class=tumor,
            name=f"gland {i}",
            measurements={"Hand score": float(i)},
            metadata={"drawn by": "pathologist"},
        )
        for i, g in enumerate(GLANDS)
    ]
    detection = Annotation(geometry=shapely_box(10, 10, 40, 40), object_type="detection")
    write_geojson(tmp_path / "in.geojson", [*inputs, detection])
    out = tmp_path / "out.geojson"
    status = main(
        [
            "segment",
            str(slide_path),
            "--refine",
            str(tmp_path / "in.geojson"),
            "--mode",
            "sam",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "2 of 2 annotations refined" in captured.out
    refined = read_geojson(out)
    assert [a.id for a in refined] == [a.id for a in [*inputs, detection]]
    for before, after, gland in zip(inputs, refined, GLANDS, strict=False):
        assert after.path_class == tumor and after.name == before.name
        assert after.measurements["Hand score"] == before.measurements["Hand score"]
        assert after.metadata["drawn by"] == "pathologist"
        truth = gland_polygon(gland)
        assert _iou(after.geometry, truth) > _iou(before.geometry, truth) + 0.2
        assert after.metadata["wsi-sam prompt kind"] == "refine"
        assert after.metadata["wsi-sam model"] == "SAM"
        assert 0 < after.measurements["WSI-SAM predicted IoU"] <= 1.5
    assert refined[2].geometry.equals(detection.geometry)  # not an annotation: unchanged


def test_everything_in_region_annotations_writes_detections_with_provenance(
    slide_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    region = Annotation(geometry=shapely_box(150, 150, 800, 650), name="region")
    write_geojson(tmp_path / "region.geojson", [region])
    out = tmp_path / "objects.geojson"
    status = main(
        [
            "segment",
            str(slide_path),
            "--everything",
            "--region-geojson",
            str(tmp_path / "region.geojson"),
            "--points-per-side",
            "4",
            "--min-area",
            "1500",
            "--mode",
            "sam",
            "--magnification",
            "20",
            "--detections",
            "--class",
            "Tumor",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    found = read_geojson(out)
    assert found and all(a.object_type == "detection" for a in found)
    assert all(a.geometry.area * 0.25 >= 1500 for a in found)
    assert all(a.class_name == "Tumor" for a in found)
    for gland in GLANDS:
        assert max(_iou(a.geometry, gland_polygon(gland)) for a in found) > 0.85
    feature = json.loads(out.read_text())["features"][0]["properties"]
    assert feature["metadata"]["wsi-sam prompt kind"] == "everything"
    assert "WSI-SAM stability" in feature["measurements"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--everything"], "needs --region"),
        (["--everything", "--refine", "x.geojson"], "not both"),
        (["--everything", "--region", "0,0,10,10", "--box", "0,0,5,5"], "leave them out"),
        (["--everything", "--region", "0,0,10,10", "--min-area", "5", "--max-area", "1"], "max"),
    ],
)
def test_usage_errors_end_in_one_line(
    slide_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    needle: str,
) -> None:
    status = main(["segment", str(slide_path), *extra, "--out", str(tmp_path / "o.geojson")])
    err = capsys.readouterr().err
    assert status == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.geojson").exists()
