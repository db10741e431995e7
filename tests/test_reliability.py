"""Hostile but realistic inputs and faults: every one ends in a clear answer and loses nothing.

Each case asserts the exit status (1 for a user error, 2 for a usage error), the message (one
line that names the file or argument), and that no input and no earlier output changed and no
stray file was left (every file under the test's folder is hashed before and after).

Classes (issue 17): arguments, outputs and faults of the file system, slides, heads and weights,
label maps and data, training, GeoJSON and projects, the app's journal and import, and the error
path itself (a bug keeps its traceback, no traceback reaches a user).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_app_support import data_dir  # noqa: F401 (fixture)

from app.cli import main
from app.errors import join_negative_values, run_reporting, user_message

REPO = Path(__file__).resolve().parents[1]
SLIDES = Path(__file__).parent / "data" / "slides"
SAMPLE = REPO / "app" / "resources" / "sample" / "cmu_small_region.svs"


# -- helpers ---------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (names relative to it)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``wsi-sam ARGV`` in this process: (exit status, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    return status, err


def assert_clear(status: int, err: str, expected_status: int, *needles: str) -> None:
    assert status == expected_status, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    for needle in needles:
        assert needle.lower() in last.lower(), err
    if expected_status == 1:  # a user error is one line (usage errors come after the usage)
        assert len(err.strip().splitlines()) == 1, err


def run_engine_call(capsys: pytest.CaptureFixture[str], func: Callable[[], Any]) -> tuple[int, str]:
    """An engine or bridge call through the CLI's one error path."""
    status = run_reporting("wsi-sam", lambda: (func(), 0)[1])
    return status, capsys.readouterr().err


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with an earlier output in it; its files must come out unchanged."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "earlier.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    return folder


def _label_dirs(work: Path, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    images, masks = work / "img", work / "labels"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(image).save(images / "a.png")
    Image.fromarray(mask).save(masks / "a.png")
    return images, masks


# -- arguments (validated when parsed) -------------------------------------------------------

SEGMENT = ["segment", str(SAMPLE)]

ARGUMENT_CASES = [
    (
        "magnification-zero",
        [*SEGMENT, "--box", "0,0,9,9", "--magnification", "0"],
        2,
        "--magnification: must be greater than 0",
    ),
    (
        "magnification-negative",
        [*SEGMENT, "--box", "0,0,9,9", "--magnification=-10"],
        2,
        "must be greater than 0",
    ),
    ("magnification-nan", [*SEGMENT, "--box", "0,0,9,9", "--magnification", "nan"], 2, "finite"),
    (
        "level0-magnification-zero",
        [*SEGMENT, "--box", "0,0,9,9", "--level0-magnification", "0"],
        2,
        "greater than 0",
    ),
    ("box-1e300", [*SEGMENT, "--box", "0,0,1e300,100"], 2, "outside the sane range"),
    ("box-infinite", [*SEGMENT, "--box", "0,0,inf,100"], 2, "not a finite number"),
    ("box-three-numbers", [*SEGMENT, "--box", "1,2,3"], 2, "needs 4 numbers"),
    ("box-words", [*SEGMENT, "--box", "a,b,c,d"], 2, "numbers separated by commas"),
    ("point-label-2", [*SEGMENT, "--point", "10,10,2"], 2, "label is 1"),
    ("point-negative-1e9", [*SEGMENT, "--point", "-1e9,5"], 2, "outside the sane range"),
    ("no-prompt", [*SEGMENT, "--out", "x.geojson"], 2, "give --box or at least one --point"),
    ("eval-prompts-100000", ["eval", "--images", ".", "--prompts", "100000"], 2, "give 1 to 64"),
    (
        "eval-prompts-word",
        ["eval", "--images", ".", "--prompts", "box,lots"],
        2,
        "neither 'box' nor a number",
    ),
    ("eval-limit-zero", ["eval", "--images", ".", "--limit", "0"], 2, "must be 1 or more"),
    (
        "eval-image-magnification-zero",
        ["eval", "--images", ".", "--image-magnification", "0"],
        2,
        "greater than 0",
    ),
    (
        "train-epochs-zero",
        ["train", "--images", ".", "--out", "h.pt", "--epochs", "0"],
        2,
        "must be 1 or more",
    ),
    ("train-lr-nan", ["train", "--images", ".", "--out", "h.pt", "--lr", "nan"], 2, "finite"),
    (
        "train-batch-negative",
        ["train", "--images", ".", "--out", "h.pt", "--batch-size", "-1"],
        2,
        "must be 1 or more",
    ),
]


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [pytest.param(a, s, n, id=i) for i, a, s, n in ARGUMENT_CASES],
)
def test_bad_arguments_are_refused_when_parsed(
    capsys: pytest.CaptureFixture[str],
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    status: int,
    needle: str,
) -> None:
    monkeypatch.chdir(work)
    if argv[0] == "segment" and "--out" not in argv:
        argv = [*argv, "--out", str(work / "earlier.geojson")]
    before = snapshot(work)
    assert_clear(*cli(capsys, *argv), status, needle)
    assert snapshot(work) == before


def test_too_many_points_are_refused(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    points = [arg for i in range(65) for arg in ("--point", f"{10 + i},10")]
    before = snapshot(work)
    status, err = cli(capsys, *SEGMENT, *points, "--out", str(work / "o.geojson"))
    assert_clear(status, err, 2, "65 points; at most 64")
    assert snapshot(work) == before


def test_negative_box_corners_parse_as_values() -> None:
    from app.cli import build_parser

    joined = join_negative_values(["segment", "s.svs", "--box", "-100,-100,400,400"])
    assert joined == ["segment", "s.svs", "--box=-100,-100,400,400"]
    args = build_parser().parse_args([*joined, "--out", "o.geojson"])
    assert args.box == [-100.0, -100.0, 400.0, 400.0]
    # flags and paths are left alone
    assert join_negative_values(["--quiet", "-v", "--out", "-x"]) == [
        "--quiet",
        "-v",
        "--out",
        "-x",
    ]


def test_negative_box_corners_segment(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    """A box running off the slide's top-left corner is clipped and segmented (exit 0)."""
    out = work / "tl.geojson"
    status = main(
        [
            *SEGMENT,
            "--box",
            "-100,-100,400,400",
            "--mode",
            "sam",
            "--backend",
            "torch",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert json.loads(out.read_text())["features"], captured.out


# -- outputs and faults of the file system ---------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("segment-out-is-folder", 1, "is a folder"),
        ("segment-out-folder-missing", 1, "does not exist"),
        ("segment-out-under-a-file", 1, "is a file, not a folder"),
        ("eval-out-is-a-file", 1, "is a file, not a folder"),
        ("eval-out-under-a-file", 1, "is a file"),
        ("train-out-is-folder", 1, "is a folder"),
    ],
)
def test_unwritable_outputs_are_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, status: int, needle: str
) -> None:
    (work / "sub").mkdir()
    (work / "file.txt").write_text("not a folder")
    images, masks = _label_dirs(work, np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    data = ["--images", str(images), "--masks", str(masks)]
    argv = {
        "segment-out-is-folder": [*SEGMENT, "--box", "0,0,99,99", "--out", str(work / "sub")],
        "segment-out-folder-missing": [
            *SEGMENT,
            "--box",
            "0,0,99,99",
            "--out",
            str(work / "nope" / "o.geojson"),
        ],
        "segment-out-under-a-file": [
            *SEGMENT,
            "--box",
            "0,0,99,99",
            "--out",
            str(work / "file.txt" / "o.geojson"),
        ],
        "eval-out-is-a-file": ["eval", *data, "--out", str(work / "file.txt")],
        "eval-out-under-a-file": ["eval", *data, "--out", str(work / "file.txt" / "r")],
        "train-out-is-folder": ["train", *data, "--out", str(work / "sub")],
    }[case]
    before = snapshot(work)
    started = time.perf_counter()
    assert_clear(*cli(capsys, *argv), status, needle)
    assert snapshot(work) == before
    del started  # (no timing assertion: the check runs before any model is loaded)


def test_full_disk_keeps_the_earlier_output_and_leaves_no_temporary(
    capsys: pytest.CaptureFixture[str], work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shapely.geometry import box

    import qupath_bridge
    import qupath_bridge.files

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qupath_bridge.files.os, "fsync", no_space)
    before = snapshot(work)
    target = work / "earlier.geojson"
    status, err = run_engine_call(
        capsys,
        lambda: qupath_bridge.write_geojson(target, [qupath_bridge.Annotation(box(0, 0, 5, 5))]),
    )
    assert_clear(status, err, 1, "earlier.geojson", "no space left")
    assert snapshot(work) == before


def test_full_disk_in_an_engine_writer_is_one_line(
    capsys: pytest.CaptureFixture[str], work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine._files

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "results.csv"))

    monkeypatch.setattr(engine._files.os, "fsync", no_space)
    before = snapshot(work)
    status, err = run_engine_call(
        capsys, lambda: engine._files.atomic_write_bytes(work / "earlier.geojson", b"new")
    )
    assert_clear(status, err, 1, "the disk is full")
    assert snapshot(work) == before


def test_killed_writes_leave_no_temporary_the_next_write_keeps(work: Path) -> None:
    from shapely.geometry import box

    import qupath_bridge
    from engine._files import atomic_write_bytes

    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = [
        work / f".earlier.geojson.{dead}.k1ll3d.tmp",
        work / ".earlier.geojson.0ld5tyl3.tmp",  # an id-less name, older than an hour
        work / f".heads.pt.{dead}.abcdef.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half written")
    old = time.time() - 7200
    os.utime(stale[1], (old, old))
    alive = work / f".earlier.geojson.{os.getppid()}.w0rk1n.tmp"  # a live writer's: kept
    alive.write_bytes(b"being written")
    qupath_bridge.write_geojson(
        work / "earlier.geojson", [qupath_bridge.Annotation(box(0, 0, 1, 1))]
    )
    atomic_write_bytes(work / "heads.pt", b"heads")
    assert not any(p.exists() for p in stale)
    assert alive.exists()


# -- slides ----------------------------------------------------------------------------------


def _damaged_slide(work: Path, case: str) -> Path:
    data = SAMPLE.read_bytes()
    if case == "svs-truncated-90":
        path = work / "cut.svs"
        path.write_bytes(data[: int(len(data) * 0.9)])
    elif case == "svs-truncated-50":
        path = work / "half.svs"
        path.write_bytes(data[: len(data) // 2])
    elif case == "svs-unreadable-tiles":
        path = work / "unreadable.svs"
        shutil.copy(SLIDES / "unreadable.svs", path)
    elif case == "empty-file":
        path = work / "empty.svs"
        path.write_bytes(b"")
    elif case == "folder":
        path = work / "slide.svs"
        path.mkdir()
    elif case == "missing":
        path = work / "missing.svs"
    elif case == "tiff-unknown-compression":
        path = work / "unopenable.tiff"
        shutil.copy(SLIDES / "unopenable.tiff", path)
    elif case == "text-named-png":
        path = work / "notes.png"
        path.write_text("not an image")
    elif case == "tiff-truncated":
        path = work / "cut.tiff"
        path.write_bytes((SLIDES / "small_HE_levels.tiff").read_bytes()[:600])
    else:
        raise AssertionError(case)
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("svs-truncated-90", "damaged .svs slide"),
        ("svs-truncated-50", "damaged .svs slide"),
        ("svs-unreadable-tiles", "corrupt or unsupported aperio slide"),
        ("empty-file", "the file is empty"),
        ("folder", "is a folder"),
        ("missing", "no such file"),
        ("tiff-unknown-compression", "not a slide or image"),
        ("text-named-png", "not a slide or image"),
        ("tiff-truncated", "cut.tiff"),
    ],
)
def test_bad_slides_end_in_one_line(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, needle: str
) -> None:
    slide = _damaged_slide(work, case)
    before = snapshot(work)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a reader's warning would reach the user
        status, err = cli(
            capsys,
            "segment",
            str(slide),
            "--box",
            "0,0,100,100",
            "--out",
            str(work / "earlier.geojson"),
        )
    assert_clear(status, err, 1, needle)
    assert "UserWarning" not in err and "invalid offset" not in err
    assert snapshot(work) == before


def test_unrecognised_scanner_metadata_is_read_from_the_description(work: Path) -> None:
    """A damaged vendor string (OpenSlide then reads a generic TIFF) loses no scale."""
    import engine

    path = work / "vendorless.svs"
    path.write_bytes(SAMPLE.read_bytes().replace(b"Aperio", b"Apxrio", 1))
    with engine.open_slide(path) as slide:
        assert slide.scale_source == "description"
        assert slide.magnification == pytest.approx(20.04, abs=0.01)
        assert "read from the TIFF description" in (slide.scale_note(40) or "")


def test_unknown_scale_is_said_and_can_be_set(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    import engine

    with engine.open_slide(SLIDES / "small_HE_levels.tiff") as slide:
        assert slide.scale_source == "unknown"
        assert "level 0 is taken as 40x" in (slide.scale_note(40) or "")
        slide.set_scale(mpp=0.5)
        assert slide.magnification == 20 and slide.scale_source == "user"
        assert slide.scale_note(40) is None
        with pytest.raises(ValueError, match="pixel size"):
            slide.set_scale(mpp=float("nan"))
    with engine.open_slide(SAMPLE) as slide:
        assert slide.scale_source == "mpp" and slide.scale_note(40) is None


# -- heads and weights -----------------------------------------------------------------------


def _heads_file(work: Path, case: str) -> Path:
    import torch

    from engine.wsi_sam import HEADS_FORMAT

    path = work / "heads.pt"
    if case == "folder":
        path.mkdir()
    elif case == "missing":
        pass
    elif case in ("nan", "inf"):
        value = float("nan") if case == "nan" else float("inf")
        state = {"hr_head.token.weight": torch.full((1, 256), value)}
        torch.save({"format": HEADS_FORMAT, "metadata": {}, "state_dict": state}, path)
    elif case == "pickled-object":
        torch.save({"format": HEADS_FORMAT, "state_dict": {}, "x": _Unsafe()}, path)
    elif case == "truncated":
        torch.save({"format": HEADS_FORMAT, "state_dict": {"a": torch.zeros(100)}}, path)
        path.write_bytes(path.read_bytes()[:60])
    elif case == "text":
        path.write_text("<html>404 not found</html>")
    elif case == "other-format":
        torch.save({"format": "something-else", "state_dict": {}}, path)
    else:
        raise AssertionError(case)
    return path


class _Unsafe:
    """Stands for whatever a pickle may carry."""


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("folder", "is a folder"),
        ("missing", "not found"),
        ("nan", "NaN or infinity"),
        ("inf", "NaN or infinity"),
        ("pickled-object", "Python objects"),
        ("truncated", "truncated or damaged"),
        ("text", "not a torch file"),
        ("other-format", "not a WSI-SAM heads checkpoint"),
    ],
)
def test_bad_heads_are_refused(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, needle: str
) -> None:
    from engine.wsi_sam import read_heads_checkpoint

    path = _heads_file(work, case)
    before = snapshot(work)
    status, err = run_engine_call(capsys, lambda: read_heads_checkpoint(path))
    assert_clear(status, err, 1, needle)
    assert "weights_only" not in err and "re-run" not in err.lower()
    assert snapshot(work) == before


def test_heads_folder_through_the_cli(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    heads = work / "my_heads"
    heads.mkdir()
    before = snapshot(work)
    status, err = cli(
        capsys,
        *SEGMENT,
        "--box",
        "0,0,200,200",
        "--heads",
        str(heads),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--out",
        str(work / "earlier.geojson"),
    )
    assert_clear(status, err, 1, "my_heads is a folder")
    assert snapshot(work) == before


def test_pickled_mobilesam_checkpoint_is_refused_without_torch_advice(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    import torch

    from engine.weights import read_state_dict

    path = work / "mobile_sam.pt"
    torch.save({"model": _Unsafe()}, path)
    before = snapshot(work)
    status, err = run_engine_call(capsys, lambda: read_state_dict(path))
    assert_clear(status, err, 1, "mobile_sam.pt", "Python objects")
    assert "weights_only" not in err
    assert snapshot(work) == before


def test_non_finite_heads_are_never_written(fresh_wsi_sam: Any, work: Path) -> None:
    import torch

    from engine.wsi_sam import HeadsError

    model = fresh_wsi_sam
    name, parameter = next((n, p) for n, p in model.named_parameters() if n.startswith("hr_head."))
    saved = parameter.detach().clone()
    before = snapshot(work)
    try:
        with torch.no_grad():
            parameter.view(-1)[0] = float("nan")
        with pytest.raises(HeadsError, match="NaN or infinity"):
            model.save_heads(work / "earlier.geojson")
    finally:
        with torch.no_grad():
            parameter.copy_(saved)
    assert snapshot(work) == before, name


# -- label maps and data ---------------------------------------------------------------------


def _photo(h: int = 96, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("rgb-photo-as-labels", "not a label map"),
        ("mask-smaller-than-image", "must have its image's size"),
        ("mask-transposed", "must have its image's size"),
        ("float-labels-nan", "NaN or infinite"),
        ("float-labels-fractional", "non-integer"),
        ("masks-folder-missing", "folder not found"),
        ("no-pairs", "has a mask of the same stem"),
        ("only-background", "no usable objects"),
    ],
)
def test_bad_label_maps_are_refused(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, needle: str
) -> None:
    import tifffile

    image = _photo()
    mask = np.zeros((96, 96), np.uint8)
    mask[20:60, 20:60] = 1
    if case == "rgb-photo-as-labels":
        images, masks = _label_dirs(work, image, image)
    elif case == "mask-smaller-than-image":
        images, masks = _label_dirs(work, image, mask[:90])
    elif case == "mask-transposed":
        images, masks = _label_dirs(work, _photo(96, 128), np.zeros((128, 96), np.uint8))
    elif case in ("float-labels-nan", "float-labels-fractional"):
        images, masks = _label_dirs(work, image, mask)
        (masks / "a.png").unlink()
        values = mask.astype(np.float32)
        values[0, 0] = np.nan if case == "float-labels-nan" else 0.5
        tifffile.imwrite(masks / "a.tif", values)
    elif case == "masks-folder-missing":
        images, masks = _label_dirs(work, image, mask)
        masks = work / "nowhere"
    elif case == "no-pairs":
        images, masks = _label_dirs(work, image, mask)
        (masks / "a.png").rename(masks / "b.png")
    elif case == "only-background":
        images, masks = _label_dirs(work, image, np.zeros((96, 96), np.uint8))
    else:
        raise AssertionError(case)
    before = snapshot(work)
    status, err = cli(
        capsys,
        "eval",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--out",
        str(work / "results"),
        "--quiet",
    )
    assert_clear(status, err, 2, needle)
    assert snapshot(work) == before
    assert not (work / "results").exists()


def test_real_label_maps_still_pass() -> None:
    """The check that refuses photographs accepts instance maps with many small objects."""
    from engine.train.readers import read_label_image
    from engine.validation import check_label_values

    labels = np.zeros((1000, 1000), np.int64)
    for i in range(900):  # 900 nuclei of 10x10 pixels
        y, x = divmod(i, 30)
        labels[y * 33 : y * 33 + 10, x * 33 : x * 33 + 10] = i + 1
    check_label_values(labels, "nuclei.png", colour=False)
    assert read_label_image is not None


# -- training ----------------------------------------------------------------------------------


def test_a_diverging_training_stops_and_writes_no_heads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch
    from test_train_trainer import FakeWsiSam, _synthetic_samples

    from engine.train.features import FeatureCache
    from engine.train.trainer import TrainConfig, train_heads

    samples = _synthetic_samples(tmp_path)
    model = FakeWsiSam()
    model.sam.encoder_backend = None  # (what the feature cache asks of a real model)
    with torch.no_grad():
        model.hr_head.bias.fill_(float("nan"))
    cache = FeatureCache(tmp_path / "cache", model)  # type: ignore[arg-type]
    out = tmp_path / "heads.pt"
    config = TrainConfig(epochs=2, batch_size=2, augment_variants=0, prompt_kinds=("box",))
    status, err = run_engine_call(
        capsys,
        lambda: train_heads(
            model,
            samples,
            config,
            cache=cache,
            out=out,
            progress=False,  # type: ignore[arg-type]
        ),
    )
    assert_clear(status, err, 1, "the training loss became nan", "no heads were written")
    assert not out.exists()


# -- GeoJSON and projects --------------------------------------------------------------------

FEATURE = {
    "type": "Feature",
    "id": "same-id",
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
    "properties": {"objectType": "annotation"},
}


def test_repeated_geojson_ids_get_fresh_ids_and_nothing_is_lost(work: Path) -> None:
    import qupath_bridge

    second = json.loads(json.dumps(FEATURE))
    second["geometry"]["coordinates"] = [[[20, 20], [30, 20], [30, 30], [20, 20]]]
    path = work / "dup.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [FEATURE, second]}))
    before = snapshot(work)
    with pytest.warns(qupath_bridge.DuplicateIdWarning, match="dup.geojson: 1 feature"):
        annotations = qupath_bridge.read_geojson(path)
    assert snapshot(work) == before  # reading changes nothing
    assert len({a.id for a in annotations}) == 2 and annotations[0].id == "same-id"
    copy = work / "copy.geojson"
    qupath_bridge.write_geojson(copy, annotations)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = qupath_bridge.read_geojson(copy)
    assert [a.geometry.area for a in again] == [50, 50]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("bad-feature", "bad.geojson: feature 1"),
        ("not-json", "bad.geojson is not valid JSON"),
        ("not-utf8", "not UTF-8"),
        ("folder", "is a folder"),
        ("empty", "is empty"),
    ],
)
def test_bad_geojson_names_the_file(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, needle: str
) -> None:
    import qupath_bridge

    path = work / "bad.geojson"
    if case == "bad-feature":
        broken = {**FEATURE, "id": "b", "geometry": {"type": "Polygon", "coordinates": "x"}}
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [FEATURE, broken]}))
    elif case == "not-json":
        path.write_text('{"type": "FeatureCollection", "features": [')
    elif case == "not-utf8":
        path.write_bytes(b'{"type": "\xff\xfe"}')
    elif case == "folder":
        path.mkdir()
    else:
        path.write_text("")
    before = snapshot(work)
    status, err = run_engine_call(capsys, lambda: qupath_bridge.read_geojson(path))
    assert_clear(status, err, 1, needle)
    assert snapshot(work) == before


def test_eval_names_the_bad_geojson_beside_a_slide(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    slides = work / "slides"
    slides.mkdir()
    shutil.copy(SLIDES / "small.svs", slides / "s1.svs")
    (slides / "s1.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": 3}]}')
    before = snapshot(work)
    status, err = cli(capsys, "eval", "--slides", str(slides), "--out", str(work / "r"))
    assert_clear(status, err, 2, "s1.geojson", "feature 0")
    assert snapshot(work) == before


def _project(work: Path, version: str) -> Path:
    folder = work / "project"
    folder.mkdir()
    data = {"version": version, "createTimestamp": 0, "images": []}
    (folder / "project.qpproj").write_text(json.dumps(data))
    return folder


def test_newer_qupath_project_opens_with_a_warning(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, work: Path
) -> None:
    import qupath_bridge

    folder = _project(work, "0.9.1")
    before = snapshot(work)
    project = qupath_bridge.open_project(folder, mode="r")
    assert project.version_warning is not None and "newer" in project.version_warning
    assert "0.9.1" in project.version_warning
    caplog.clear()
    status, err = cli(capsys, "project", "relink", str(folder), "--search", str(work))
    assert status == 0 and "Traceback" not in err, err
    assert "newer than the versions" in caplog.text  # (stderr through logging, outside pytest)
    assert snapshot(work) == before
    other = work / "other"
    other.mkdir()
    known = _project(other, "0.6.0-rc3")
    assert qupath_bridge.open_project(known, mode="r").version_warning is None


@pytest.mark.parametrize(
    ("case", "needle"),
    [("not-json", "is not a valid QuPath project file"), ("missing", "no QuPath project")],
)
def test_invalid_projects_end_in_one_line(
    capsys: pytest.CaptureFixture[str], work: Path, case: str, needle: str
) -> None:
    folder = work / "project"
    if case == "not-json":
        folder.mkdir()
        (folder / "project.qpproj").write_text("{ not json")
    before = snapshot(work)
    status, err = cli(capsys, "project", "relink", str(folder), "--search", str(work))
    assert_clear(status, err, 1, needle)
    assert snapshot(work) == before


# -- the app: journal, import, save, scale ---------------------------------------------------


def _journal_with_damage(damage: bytes) -> tuple[Any, list[str]]:
    from shapely.geometry import box

    import qupath_bridge
    from app.session.journal import Journal

    journal = Journal.for_slide(str(SAMPLE))
    ids = []
    for i in range(3):
        annotation = qupath_bridge.Annotation(box(10 * i, 0, 10 * i + 5, 5), name=f"a{i}")
        journal.record_add(annotation, i)
        ids.append(annotation.id)
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(damage)
    return journal, ids


@pytest.mark.parametrize(
    ("case", "damage", "reported"),
    [
        ("torn-last-line", b'{"op": "add", "row": 3, "feature": {"type": "Fea', False),
        ("binary-garbage", b"\x00\xff\xfe garbage \xc3\x28\n", True),
        ("unreadable-feature", b'{"op": "add", "row": 3, "feature": {"type": "Feature"}}\n', True),
        ("bad-row", b'{"op": "add", "row": "x", "feature": {}}\n', True),
        ("garbage-then-good", b"}}}{{{\n", True),
    ],
)
@pytest.mark.usefixtures("data_dir")
def test_damaged_journal_keeps_its_good_lines(
    qapp: Any, case: str, damage: bytes, reported: bool
) -> None:
    journal, ids = _journal_with_damage(damage)
    original = journal.path.read_bytes()
    message = journal.repair()
    assert (message is not None) == reported, message
    assert [a.id for a in journal.replay()] == ids
    aside = list(journal.path.parent.glob("*.damaged-*.jsonl"))
    if reported:
        assert "set aside" in (message or "") and len(aside) == 1
        assert aside[0].read_bytes() == original  # nothing is lost, not even the damage
    else:
        assert not aside
    assert journal.repair() is None  # repaired once and for all


@pytest.mark.usefixtures("data_dir")
def test_window_opens_a_slide_whose_journal_is_damaged(qtbot: Any) -> None:
    from test_app_support import make_window

    _journal, ids = _journal_with_damage(b"\xff\xfe\x00 torn garbage\n")
    window = make_window(qtbot)
    assert window.open_path(SAMPLE), window.prompter.errors
    assert window.store.ids() == ids  # restored
    titles = [title for title, _ in window.prompter.errors]
    assert titles == ["Crash journal damaged"], window.prompter.errors
    window._unsaved = False


@pytest.mark.usefixtures("data_dir")
def test_app_import_of_repeated_ids_keeps_both_and_undo_works(qtbot: Any, work: Path) -> None:
    from test_app_support import make_window

    second = json.loads(json.dumps(FEATURE))
    second["geometry"]["coordinates"] = [[[20, 20], [30, 20], [30, 30], [20, 20]]]
    path = work / "dup.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [FEATURE, second]}))
    window = make_window(qtbot)
    assert window.open_path(SAMPLE), window.prompter.errors
    assert window.import_geojson(path) == 2
    assert len(window.store) == 2
    assert any("Repeated ids" in title for title, _ in window.prompter.errors)
    window.undo_stack.undo()
    assert len(window.store) == 0
    window.undo_stack.redo()
    assert len(window.store) == 2
    assert window.import_geojson(path) == 1  # the file's first id is in the list already
    window._unsaved = False
    window.undo_stack.clear()


@pytest.mark.usefixtures("data_dir")
def test_save_into_a_read_only_project_offers_geojson(
    qtbot: Any, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_app_support import make_window

    import qupath_bridge

    window = make_window(qtbot)
    assert window.open_path(SAMPLE)

    class _Image:
        entry_id = "1"
        name = "sample"

    window.project = type("P", (), {"path": str(work / "project.qpproj")})()
    window.project_image = _Image()

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise qupath_bridge.ProjectError(f"cannot write {work}: it is read-only")

    monkeypatch.setattr(qupath_bridge, "open_project", refuse)
    window.prompter.geojson_instead_answer = True
    window.prompter.save_path = str(work / "exported.geojson")
    assert window.save()
    assert any("read-only" in asked for asked in window.prompter.asked)
    assert (work / "exported.geojson").is_file()
    window.project = window.project_image = None


@pytest.mark.usefixtures("data_dir")
def test_app_slide_scale_is_set_and_remembered(qtbot: Any) -> None:
    from test_app_support import make_window

    from app.session.slide_scale import parse_scale, saved_scale

    assert parse_scale("0.25") == ("mpp", 0.25)
    assert parse_scale("20x") == ("magnification", 20.0)
    assert parse_scale("40") == ("magnification", 40.0)
    for bad in ("0", "-1", "abc", "5000x", "nan"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    tiff = SLIDES / "small_HE_levels.tiff"
    window = make_window(qtbot)
    assert window.open_path(tiff), window.prompter.errors
    assert "level 0 is taken as 40x" in window._describe_slide(window.slide)
    window.prompter.texts = ["0.5"]
    window.ask_slide_scale()
    assert window.slide.magnification == 20 and saved_scale(tiff) == ("mpp", 0.5)
    window.prompter.texts = ["banana"]
    window.ask_slide_scale()
    assert window.prompter.errors[-1][0] == "Set pixel size"
    window.open_path(SAMPLE)
    assert window.open_path(tiff)
    assert window.slide.magnification == 20  # remembered for the file


# -- the error path itself -------------------------------------------------------------------


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.commands.segment as segment

    def buggy(_args: Any) -> int:
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(segment, "run", buggy)
    with pytest.raises(ZeroDivisionError):
        main([*SEGMENT, "--box", "0,0,9,9", "--out", "x.geojson"])
    assert user_message(ValueError("x")) is None and user_message(RuntimeError("x")) is None


def test_user_error_classes_are_mapped() -> None:
    import engine
    import qupath_bridge
    from engine.backends import BackendError
    from engine.wsi_sam import HeadsError

    for exc in (
        engine.WeightsError("w"),
        engine.SlideError("s.svs", "bad"),
        engine.PromptError("p"),
        HeadsError("h"),
        BackendError("b"),
        qupath_bridge.ProjectError("p"),
        qupath_bridge.GeoJSONError("g"),
        OSError(errno.EACCES, "Permission denied", "/x"),
    ):
        found = user_message(exc)
        assert found is not None and found[1] == 1, exc


def test_no_traceback_reaches_the_user_of_a_real_process(tmp_path: Path) -> None:
    """A real ``wsi-sam`` process: a truncated slide and a negative box, one line on stderr."""
    slide = tmp_path / "cut.svs"
    slide.write_bytes(SAMPLE.read_bytes()[:1_500_000])
    out = tmp_path / "o.geojson"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "segment",
            str(slide),
            "--box",
            "-100,-100,400,400",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged .svs slide" in lines[0], run.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.svs"]
