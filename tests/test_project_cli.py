"""``wsi-sam project relink`` and ``--project`` training data, without QuPath."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.commands.eval import DataError, load_samples
from qupath_bridge import file_uri, open_project, relink_images

DEMO = (
    Path(__file__).parent / "data" / "qupath" / "CosciaLab__Qupath_to_LMD" / "demo_Qupath_project"
)
IMAGE_NAME = "TD_01_verysmall_mIF.ome.tif"


@pytest.fixture
def moved(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    shutil.copytree(DEMO, project)
    slide = tmp_path / "slides" / "a" / IMAGE_NAME
    slide.parent.mkdir(parents=True)
    slide.write_bytes(b"stands in for the slide")
    return project, slide


def test_relink_from_the_command_line(
    moved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project, slide = moved
    before = json.loads((project / "project.qpproj").read_text())
    assert main(["project", "relink", str(project), "--search", str(slide.parents[1])]) == 0
    out = capsys.readouterr().out
    assert f"{IMAGE_NAME}: {slide}" in out and "relinked 1 of 1" in out and "backup" in out
    after = json.loads((project / "project.qpproj").read_text())
    assert after["images"][0]["serverBuilder"]["uri"] == file_uri(slide)
    after["images"][0]["serverBuilder"]["uri"] = before["images"][0]["serverBuilder"]["uri"]
    assert after == before
    assert open_project(project).images[0].exists
    # Nothing left to do the second time.
    assert main(["project", "relink", str(project), "--search", str(slide.parents[1])]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_relink_dry_run_and_ambiguous(
    moved: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project, slide = moved
    original = (project / "project.qpproj").read_bytes()
    twin = slide.parents[1] / "b" / IMAGE_NAME
    twin.parent.mkdir()
    twin.write_bytes(b"x")
    search = str(slide.parents[1])
    assert main(["project", "relink", str(project), "--search", search]) == 1
    captured = capsys.readouterr()
    assert "found 2 times" in captured.out
    assert captured.err.count("\n") == 1 and "none of the 1 missing images" in captured.err
    assert (
        main(["project", "relink", str(project), "--search", search, "--first", "--dry-run"]) == 0
    )
    assert "would relink 1 of 1" in capsys.readouterr().out
    assert (project / "project.qpproj").read_bytes() == original


@pytest.mark.parametrize("bad", ["project", "search"])
def test_relink_user_errors_are_one_line(
    tmp_path: Path, moved: tuple[Path, Path], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project, slide = moved
    argv = ["project", "relink", str(project), "--search", str(slide.parent)]
    argv[2 if bad == "project" else 4] = str(tmp_path / "nowhere")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsi-sam project relink: ") and err.count("\n") == 1


def test_project_training_data_come_from_data_qpdata(
    moved: tuple[Path, Path], sample_slide: Path
) -> None:
    """``--project`` without QuPath: the objects of the image's data.qpdata are the samples."""
    project, _slide = moved
    relink_images(open_project(project), {"1": sample_slide})
    args = build_parser().parse_args(
        ["eval", "--project", str(project), "--image-magnification", "20", "--classes", "circles"]
    )
    samples = load_samples(args)
    assert len(samples) == 4  # the four "circles" annotations of data.qpdata
    assert {s.source for s in samples} == {sample_slide}
    cells = load_samples(
        build_parser().parse_args(
            [
                "eval",
                "--project",
                str(project),
                "--image-magnification",
                "20",
                "--classes",
                "single_cells_demo",
            ]
        )
    )
    assert len(cells) > 100  # the cells, less any too small at the working magnification


def test_project_with_a_damaged_data_file_is_a_data_error(moved: tuple[Path, Path]) -> None:
    project, slide = moved
    relink_images(open_project(project), {"1": slide})
    qpdata = project / "data" / "1" / "data.qpdata"
    qpdata.write_bytes(qpdata.read_bytes()[:1000])
    args = build_parser().parse_args(
        ["eval", "--project", str(project), "--image-magnification", "20"]
    )
    with pytest.raises(DataError, match="truncated"):
        load_samples(args)
