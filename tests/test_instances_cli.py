"""The instance decoders on the command line: segment --everything --instances, eval-instances,
train-instances, heads list, and the clear errors for a wrong decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_glands import gland_image, write_gland_slide

from app.cli import main
from engine.heads_catalogue import file_sha256
from engine.instances.checkpoint import InstanceModel, write_decoder
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.weights import default_checkpoint_path, sha256_of
from qupath_bridge import read_geojson

GLANDS = [(200.0, 200.0, 90.0, 70.0), (420.0, 330.0, 80.0, 90.0)]


def _everywhere_decoder(path: Path, encoder_sha256: str) -> Path:
    """A decoder whose output is "one object everywhere": foreground logit +6, both distances
    -6 (all seeds), whatever the image; so the CLI's path is tested, not learning."""
    decoder = InstanceDecoder(DecoderConfig(inputs=("embedding", "early")))
    with torch.no_grad():
        decoder.head.weight.zero_()
        decoder.head.bias.copy_(torch.tensor([6.0, -6.0, -6.0]))
    model = InstanceModel(
        decoder=decoder,
        magnification=20.0,
        encoder_sha256=encoder_sha256,
        metadata={"trained_on": "nothing (a test decoder)"},
    )
    return write_decoder(path, model)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = Path(tmp_path_factory.mktemp("instances-cli"))
    slide = folder / "glands.tif"
    write_gland_slide(slide, 640, 520, GLANDS, mpp=0.5)
    decoder = _everywhere_decoder(folder / "everywhere.pt", sha256_of(default_checkpoint_path()))
    images, masks = folder / "img", folder / "labels"
    images.mkdir()
    masks.mkdir()
    for i, glands in enumerate([GLANDS, [(300.0, 260.0, 120.0, 90.0)]]):
        rgb, labels = gland_image(640, 520, glands, seed=i)
        Image.fromarray(rgb).save(images / f"im{i}.png")
        Image.fromarray(labels.astype(np.uint8)).save(masks / f"im{i}.png")
    return {"slide": slide, "decoder": decoder, "images": images, "masks": masks, "dir": folder}


def test_segment_everything_with_a_decoder(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.geojson"
    status = main(
        [
            "segment",
            str(files["slide"]),
            "--everything",
            "--region",
            "0,0,640,520",
            "--instances",
            str(files["decoder"]),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "decoder everywhere at 20x" in captured.out
    objects = read_geojson(out)
    assert len(objects) == 1  # one object covering the whole region, once
    assert objects[0].geometry.area == pytest.approx(640 * 520, rel=0.02)
    meta = objects[0].metadata
    assert meta["wsi-sam prompt kind"] == "instances"
    assert meta["wsi-sam decoder"] == "everywhere.pt" or meta["wsi-sam decoder"] == "everywhere"
    assert meta["wsi-sam decoder sha256"] == file_sha256(files["decoder"])
    assert "WSI-SAM foreground probability" in objects[0].measurements


def test_overlapping_regions_do_not_double_objects(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from shapely.geometry import box

    from qupath_bridge import Annotation, write_geojson

    regions = tmp_path / "regions.geojson"
    write_geojson(regions, [Annotation(geometry=box(0, 0, 640, 520)) for _ in range(2)])
    out = tmp_path / "out.geojson"
    status = main(
        [
            "segment",
            str(files["slide"]),
            "--everything",
            "--region-geojson",
            str(regions),
            "--instances",
            str(files["decoder"]),
            "--out",
            str(out),
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert len(read_geojson(out)) == 1


def test_unknown_or_foreign_decoders_end_in_one_line(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.geojson"
    base = [
        "segment",
        str(files["slide"]),
        "--everything",
        "--region",
        "0,0,100,100",
        "--out",
        str(out),
    ]
    assert main([*base, "--instances", "no-such-decoder"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no instance decoder called 'no-such-decoder'" in err and "\n" not in err
    other = _everywhere_decoder(tmp_path / "other.pt", "0" * 64)
    assert main([*base, "--instances", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "trained on another SAM encoder" in err and "\n" not in err
    assert not out.exists()


def test_eval_instances_scores_decoder_and_writes_reports(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "eval"
    status = main(
        [
            "eval-instances",
            "--images",
            str(files["images"]),
            "--masks",
            str(files["masks"]),
            "--image-magnification",
            "20",
            "--decoder",
            str(files["decoder"]),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    table = (out / "results.md").read_text()
    assert "decoder everywhere" in table and "AJI" in table
    rows = (out / "results.csv").read_text().splitlines()
    assert any(r.startswith("decoder everywhere,im0.png") for r in rows)
    assert len(list((out / "pictures").glob("*.png"))) == 2


def test_train_instances_writes_a_listed_decoder(files, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    heads = tmp_path / "heads"
    monkeypatch.setenv("WSI_SAM_HEADS_DIR", str(heads))
    out = heads / "mine.pt"
    status = main(
        [
            "train-instances",
            "--images",
            str(files["images"]),
            "--masks",
            str(files["masks"]),
            "--image-magnification",
            "20",
            "--magnification",
            "20",
            "--epochs",
            "1",
            "--variants",
            "1",
            "--inputs",
            "embedding,early",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert out.with_name("mine.card.json").is_file()
    assert "validation on 1 image(s)" in captured.out
    assert main(["heads", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = [d["name"] for d in listed["instance_decoders"]]
    assert "mine" in names
    entry = next(d for d in listed["instance_decoders"] if d["name"] == "mine")
    assert entry["magnification"] == 20.0
    # resumable: the state of the finished epoch is there, and --resume has nothing left to do
    assert out.with_name("mine.state.pt").is_file()


def test_refinement_on_request_is_in_the_provenance(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.geojson"
    argv = [
        "segment",
        str(files["slide"]),
        "--everything",
        "--region",
        "0,0,640,520",
        "--instances",
        str(files["decoder"]),
        "--refine-instances",
        "on",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    objects = read_geojson(out)
    assert len(objects) == 1
    assert objects[0].metadata["wsi-sam model"].startswith("instance decoder + WSI-SAM")
