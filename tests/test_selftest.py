"""``wsi-sam --self-test``: its checks, its failures, and one real run as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from app.selftest import MODE_KEY, MODES, SAMPLE_BOX, check_annotations, run_self_test
from qupath_bridge import Annotation

REPO = Path(__file__).resolve().parents[1]
SLIDE_SIZE = (2220, 2967)


def annotation(geometry: object, mode: str) -> Annotation:
    return Annotation(geometry=geometry, metadata={MODE_KEY: mode})  # type: ignore[arg-type]


def inside_box(shrink: float = 20.0) -> Polygon:
    x0, y0, x1, y1 = SAMPLE_BOX
    return box(x0 + shrink, y0 + shrink, x1 - shrink, y1 - shrink)


def test_good_annotations_pass() -> None:
    annotations = [annotation(inside_box(), "sam"), annotation(inside_box(30), "wsi-sam")]
    assert check_annotations(annotations, SLIDE_SIZE, SAMPLE_BOX) == []


def test_multipolygon_is_accepted() -> None:
    x0, y0, x1, y1 = SAMPLE_BOX
    parts = MultiPolygon([box(x0, y0, x0 + 60, y1), box(x1 - 60, y0, x1, y1)])
    annotations = [annotation(parts, "sam"), annotation(inside_box(), "wsi-sam")]
    assert check_annotations(annotations, SLIDE_SIZE, SAMPLE_BOX) == []


def test_missing_and_duplicate_modes_are_reported() -> None:
    problems = check_annotations(
        [annotation(inside_box(), "sam"), annotation(inside_box(), "sam")], SLIDE_SIZE, SAMPLE_BOX
    )
    assert any("one 'sam' annotation, found 2" in p for p in problems)
    assert any("one 'wsi-sam' annotation, found 0" in p for p in problems)


def test_unknown_mode_is_reported() -> None:
    annotations = [annotation(inside_box(), m) for m in (*MODES, "medsam")]
    assert any(
        "unexpected" in p and "medsam" in p
        for p in check_annotations(annotations, SLIDE_SIZE, SAMPLE_BOX)
    )


def test_polygon_outside_the_slide_is_reported() -> None:
    outside = box(2100, 2900, 2300, 3100)  # crosses the bottom-right corner of a 2220x2967 slide
    problems = check_annotations(
        [annotation(outside, "sam"), annotation(inside_box(), "wsi-sam")],
        SLIDE_SIZE,
        (2100, 2900, 2300, 3100),
    )
    assert any("'sam' annotation reaches outside the slide" in p for p in problems)


def test_polygon_away_from_the_box_is_reported() -> None:
    far = box(10, 10, 200, 200)
    problems = check_annotations(
        [annotation(far, "sam"), annotation(inside_box(), "wsi-sam")], SLIDE_SIZE, SAMPLE_BOX
    )
    assert len(problems) == 1 and "'sam' annotation hardly overlaps the box" in problems[0]


def test_invalid_and_non_polygon_geometries_are_reported() -> None:
    x0, y0, x1, y1 = SAMPLE_BOX
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    problems = check_annotations(
        [annotation(bowtie, "sam"), annotation(Polygon(), "wsi-sam")], SLIDE_SIZE, SAMPLE_BOX
    )
    assert any("'sam' annotation is not a valid polygon" in p for p in problems)
    assert any("'wsi-sam' annotation has an empty geometry" in p for p in problems)


def test_missing_slide_fails_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.svs"
    assert run_self_test(missing, window=False) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "FAILED" in captured.err and str(missing) in captured.err


def test_unreadable_slide_fails_at_the_open_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"this is not a slide\n" * 10)
    assert run_self_test(junk, window=False) == 1
    err = capsys.readouterr().err
    assert "FAILED: open slide:" in err and "junk.svs" in err


@pytest.mark.slow
def test_self_test_command_passes(tmp_path: Path) -> None:
    """The real thing, as a user runs it: model, sample slide, both modes, GeoJSON, window."""
    env = dict(os.environ)
    # keep the window's settings and journal out of the user's home
    env.update(
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        QT_QPA_PLATFORM="offscreen",
        PYTHONPATH=str(REPO),
    )
    done = subprocess.run(
        [sys.executable, "-m", "app", "--self-test"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    line = lines[0]
    assert line.startswith("wsi-sam self-test ok:")
    for mode in MODES:
        assert f"{mode} " in line
    assert "GeoJSON 2 annotations ok" in line and "window ok" in line
    # the encoder's backend and precision are named
    assert re.search(r"; encoder (OpenVINO CPU|torch [A-Z]+) (f32|bf16|fp16);", line), line
