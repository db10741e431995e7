"""`wsi-sam eval` / `wsi-sam train` data options: pairing, slides with GeoJSON / XML, limits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import build_parser, main
from app.commands.eval import DataError, default_dataset_name, load_samples


def _image_and_labels(folder: Path, stem: str, n: int, mask_suffix: str = "") -> None:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "labelcol").mkdir(parents=True, exist_ok=True)
    h, w = 300, 400
    image = np.full((h, w, 3), (235, 210, 225), np.uint8)
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        disk = (xx - 60 - 90 * i) ** 2 + (yy - 150) ** 2 < 35**2
        image[disk] = (110, 50, 150)
        labels[disk] = i + 1
    Image.fromarray(image).save(folder / "img" / f"{stem}.png")
    Image.fromarray(labels).save(folder / "labelcol" / f"{stem}{mask_suffix}.png")


def _args(*argv: str) -> object:
    return build_parser().parse_args(["eval", *argv])


def test_images_and_masks_pair_by_stem_and_limit_spreads(tmp_path: Path) -> None:
    data = tmp_path / "GlaS_png__copy" / "Test_Folder"
    _image_and_labels(data, "a", 3)
    _image_and_labels(data, "b", 2, mask_suffix="_mask")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(data / "img" / "c.png")  # no mask
    args = _args(
        "--images",
        str(data / "img"),
        "--masks",
        str(data / "labelcol"),
        "--image-magnification",
        "20",
    )
    samples = load_samples(args)  # type: ignore[arg-type]
    assert len(samples) == 5
    assert {s.dataset for s in samples} == {"GlaS"}
    assert all(s.field.hr_downsample == 2.0 for s in samples)  # 20x image, 10x HR patch
    limited = load_samples(
        _args(
            "--images",
            str(data / "img"),
            "--masks",  # type: ignore[arg-type]
            str(data / "labelcol"),
            "--limit",
            "2",
        )
    )
    assert len(limited) == 2 and {s.source.stem for s in limited} == {"a", "b"}


def test_data_errors_name_the_problem(tmp_path: Path) -> None:
    _image_and_labels(tmp_path, "a", 1)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="same stem"):
        load_samples(_args("--images", str(tmp_path / "img"), "--masks", str(tmp_path / "other")))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="--masks"):
        load_samples(_args("--images", str(tmp_path / "img")))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="folder not found"):
        load_samples(_args("--slides", str(tmp_path / "nowhere")))  # type: ignore[arg-type]
    assert (
        main(
            [
                "eval",
                "--images",
                str(tmp_path / "img"),
                "--masks",
                str(tmp_path / "other"),
                "--models",
                "sam",
            ]
        )
        == 2
    )


def test_slides_with_geojson_and_xml_beside_them(tmp_path: Path, test_data: Path) -> None:
    image = np.full((3000, 3000, 3), 230, np.uint8)
    Image.fromarray(image).save(tmp_path / "s1.png")
    Image.fromarray(image).save(tmp_path / "s2.png")
    Image.fromarray(image).save(tmp_path / "s3.png")  # no annotations: ignored

    def feature(x0: float, cls: str | None, kind: str = "Polygon") -> dict:
        ring = [[x0, 100], [x0 + 200, 100], [x0 + 200, 300], [x0, 300], [x0, 100]]
        props: dict = {"objectType": "annotation"}
        if cls:
            props["classification"] = {"name": cls, "color": [200, 0, 0]}
        geometry = {"type": "Polygon", "coordinates": [ring]}
        if kind == "Point":
            geometry = {"type": "Point", "coordinates": [x0, 100]}
        return {"type": "Feature", "geometry": geometry, "properties": props}

    collection = {
        "type": "FeatureCollection",
        "features": [
            feature(100, "Tumor"),
            feature(600, "Stroma"),
            feature(1000, None),
            feature(1500, "Tumor", "Point"),
        ],
    }
    (tmp_path / "s1.geojson").write_text(json.dumps(collection))
    (tmp_path / "s2.xml").write_text((test_data / "train" / "asap_small.xml").read_text())
    samples = load_samples(_args("--slides", str(tmp_path), "--dataset", "mine"))  # type: ignore[arg-type]
    by_source: dict[str, list] = {}
    for s in samples:
        by_source.setdefault(s.source.name, []).append(s)
    assert sorted(by_source) == ["s1.png", "s2.png"]
    assert sorted(str(s.class_name) for s in by_source["s1.png"]) == ["None", "Stroma", "Tumor"]
    assert {s.dataset for s in samples} == {"mine"}
    tumours = load_samples(_args("--slides", str(tmp_path), "--classes", "Tumor"))  # type: ignore[arg-type]
    assert {s.class_name for s in tumours} == {"Tumor"}
    assert {s.source.name for s in tumours} == {"s1.png", "s2.png"}
    assert {s.group for s in tumours} == {"Tumor"}


def test_default_dataset_name() -> None:
    assert default_dataset_name(Path("/x/GlaS_png__McGregor/Test_Folder/img")) == "GlaS"
    assert default_dataset_name(Path("/x/MoNuSeg__UCTransNet/Train_Folder/img")) == "MoNuSeg"
    assert default_dataset_name(Path("/data/my_slides")) == "my_slides"


@pytest.mark.slow
def test_eval_end_to_end_fresh_heads_equal_sam(tmp_path: Path) -> None:
    _image_and_labels(tmp_path, "a", 2)
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--images",
            str(tmp_path / "img"),
            "--masks",
            str(tmp_path / "labelcol"),
            "--image-magnification",
            "20",
            "--models",
            "sam,wsi-sam,medsam",
            "--prompts",
            "box,3",
            "--heads",
            "none",
            "--limit",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    with open(out / "results.csv", newline="") as f:
        rows = {(r["model"], r["prompt"]): r for r in csv.DictReader(f)}
    assert set(rows) == {
        ("sam", "box"),
        ("sam", "3"),
        ("wsi-sam", "box"),
        ("wsi-sam", "3"),
        ("medsam", "box"),
    }
    for prompt in ("box", "3"):  # fresh heads reproduce SAM, with the very same prompts
        assert rows[("sam", prompt)]["dice"] == rows[("wsi-sam", prompt)]["dice"]
    # an easy purple disk on pink: every model finds it from a box
    assert all(float(rows[(m, "box")]["dice"]) > 70 for m in ("sam", "wsi-sam", "medsam"))
    assert (out / "dice_vs_points.png").is_file() and (out / "results.md").is_file()
