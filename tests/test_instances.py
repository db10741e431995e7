"""Instance decoders end to end on the real frozen encoder: training on synthetic glands separates
touching objects, region segmentation merges objects across field borders once, decoder files
are checked, and empty or glass regions give no objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import box as shapely_box
from synthetic_glands import gland_image, gland_polygon, write_gland_slide

import engine
from engine.everything import EverythingObject
from engine.instances.checkpoint import (
    DecoderError,
    InstanceModel,
    read_decoder,
    write_decoder,
)
from engine.instances.data import TrainingField, field_labels, region_fields
from engine.instances.features import InstanceFeatureCache
from engine.instances.model import DecoderConfig, InstanceDecoder
from engine.instances.segment import segment_instances
from engine.instances.targets import instance_targets
from engine.instances.train import InstanceTrainConfig, prepare_items, train_decoder
from engine.instances.watershed import WatershedSettings
from engine.patches import PATCH_SIZE

MPP = 0.5  # 20x
SMALL = DecoderConfig(inputs=("embedding", "early", "stage1", "stage0"), widths=(48, 32, 16, 8))

# training images: glands, several pairs touching (the gap between centres = the sum of radii)
TRAIN_GLANDS = [
    [(120, 130, 70, 60), (258, 130, 68, 62), (160, 330, 80, 70), (380, 360, 60, 90)],
    [(130, 256, 90, 70), (300, 256, 80, 75), (420, 120, 50, 50)],
    [(256, 120, 100, 60), (256, 240, 90, 60), (120, 420, 60, 60), (380, 420, 70, 55)],
    [(110, 110, 60, 60), (230, 110, 60, 60), (350, 110, 60, 60), (256, 330, 120, 90)],
]
# held out: two touching glands
TEST_GLANDS = [(180, 256, 85, 70), (348, 256, 83, 72)]


def _fields(paths: list[tuple[Path, np.ndarray]]) -> list[TrainingField]:
    out = []
    for path, labels in paths:
        slide = engine.open_slide(path)
        from engine.train.readers import label_map_to_objects

        objects = [o.geometry for o in label_map_to_objects(labels, instances="labels")]
        out.extend(region_fields(slide, path, objects, None, 20.0, image=path.name))
        slide.close()
    return out


def _write_with_glass(path: Path, glands: list, glass: bool) -> np.ndarray:  # type: ignore[type-arg]
    """A synthetic training image; with ``glass``, its right quarter is bare glass (near white,
    no objects), as the edge of a section is."""
    import tifffile

    image, labels = gland_image(512, 512, glands)
    if glass:
        noise = np.random.default_rng(1).normal(0, 3, (512, 128, 3))
        image[:, 384:] = np.clip(244 + noise, 0, 255).astype(np.uint8)
        labels[:, 384:] = 0
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    return labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mobile_sam):  # type: ignore[no-untyped-def]
    """A small decoder trained here on four synthetic images (both mirror symmetries)."""
    folder = tmp_path_factory.mktemp("glands")
    paths = []
    for i, glands in enumerate(TRAIN_GLANDS):
        path = folder / f"train{i}.tif"
        paths.append((path, _write_with_glass(path, glands, glass=i % 2 == 1)))
    fields = _fields(paths)
    cache = InstanceFeatureCache(None, mobile_sam)
    items = prepare_items(fields, cache, SMALL.out_size, variants=(0, 4, 1, 5))
    config = InstanceTrainConfig(decoder=SMALL, epochs=14, batch_size=4, lr=5e-3, seed=0)
    outcome = train_decoder(items, cache, config, state_path=folder / "state.pt")
    model = InstanceModel(
        decoder=outcome.decoder,
        magnification=20.0,
        watershed=WatershedSettings(),
        min_area_um2=100.0,
        encoder_sha256=mobile_sam.checkpoint_info.sha256,
        metadata={"trained_on": "synthetic glands"},
    )
    path = write_decoder(folder / "synthetic.pt", model)
    return read_decoder(path, encoder_sha256=mobile_sam.checkpoint_info.sha256), folder, outcome


@pytest.mark.slow
def test_trained_decoder_separates_two_touching_glands(trained, mobile_sam, tmp_path) -> None:
    model, _, outcome = trained
    losses = [record["loss"] for record in outcome.log]
    assert losses[-1] < losses[0]
    path = tmp_path / "test.tif"
    write_gland_slide(path, 512, 512, TEST_GLANDS, mpp=MPP)
    with engine.open_slide(path) as slide:
        result = segment_instances(mobile_sam, model, slide, (0, 0, 512, 512))
    truths = [gland_polygon(g) for g in TEST_GLANDS]
    found = [o.geometry for o in result.objects]
    assert len(found) == 2, [g.area for g in found]
    for truth in truths:
        best = max(g.intersection(truth).area / g.union(truth).area for g in found)
        assert best > 0.6


@pytest.mark.slow
def test_training_resumes_from_its_state(trained, mobile_sam) -> None:
    _, folder, outcome = trained
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["epoch"] == len(outcome.log)


def _true_logits(truth: np.ndarray, chosen, size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A stand-in for encoder + decoder: logits of the true maps of a field, so that the test
    checks the tiling, watershed, polygons and merge, not the learning."""
    scale = chosen.hr_downsample * PATCH_SIZE / size
    ys = chosen.hr_origin[1] + (np.arange(size) + 0.5) * scale
    xs = chosen.hr_origin[0] + (np.arange(size) + 0.5) * scale
    rows = np.clip(ys.astype(int), 0, truth.shape[0] - 1)
    cols = np.clip(xs.astype(int), 0, truth.shape[1] - 1)
    outside = ((ys < 0) | (ys >= truth.shape[0]))[:, None] | ((xs < 0) | (xs >= truth.shape[1]))[
        None, :
    ]
    labels = np.where(outside, 0, truth[rows][:, cols])
    maps = np.clip(instance_targets(labels), 1e-3, 1 - 1e-3)
    return torch.from_numpy(np.log(maps / (1 - maps)))


def _stub_model() -> InstanceModel:
    return InstanceModel(
        decoder=InstanceDecoder(DecoderConfig(inputs=("embedding",))),
        magnification=20.0,
        watershed=WatershedSettings(sigma=0.0),
        encoder_sha256="",
    )


def test_object_across_a_field_border_comes_back_once_and_whole(monkeypatch, tmp_path) -> None:
    from engine.instances import segment as segment_module

    # a 2048 x 700 image at 20x: two fields side by side; an ellipse straddles their seam
    width, height = 2048, 700
    truth = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width]
    ellipses = [(1020, 350, 160, 90), (300, 300, 80, 80), (1700, 400, 90, 60)]
    for i, (cx, cy, rx, ry) in enumerate(ellipses, start=1):
        truth[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = i
    import tifffile

    path = tmp_path / "wide.tif"
    tifffile.imwrite(
        path,
        np.full((height, width, 3), 200, np.uint8),
        photometric="rgb",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    slide = engine.open_slide(path)
    original_tile = segment_module.tile_fields
    seen: list = []

    def tile(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(original_tile(*args, **kwargs))
        return list(seen)

    def decode(sam, model, hr, lr=None):  # type: ignore[no-untyped-def]
        chosen = seen[decode.calls]
        decode.calls += 1
        return _true_logits(truth, chosen, model.config.out_size)

    decode.calls = 0
    monkeypatch.setattr(segment_module, "tile_fields", tile)
    monkeypatch.setattr(segment_module, "decode_field", decode)
    with slide:
        result = segment_instances(
            None,
            _stub_model(),
            slide,
            (0, 0, width, height),  # type: ignore[arg-type]
        )
    assert len(result.fields) >= 2
    assert len(result.objects) == 3
    for cx, cy, rx, ry in ellipses:
        truth_shape = gland_polygon((cx, cy, rx, ry))
        matches = [o for o in result.objects if o.geometry.intersects(truth_shape)]
        assert len(matches) == 1
        iou = (
            matches[0].geometry.intersection(truth_shape).area
            / matches[0].geometry.union(truth_shape).area
        )
        assert iou > 0.9


@pytest.mark.slow  # uses the decoder trained in the module's fixture
def test_glass_and_empty_regions_give_no_objects(trained, mobile_sam, tmp_path) -> None:
    import tifffile

    model, _, _ = trained
    path = tmp_path / "glass.tif"
    tifffile.imwrite(
        path,
        np.full((600, 600, 3), 245, np.uint8),
        photometric="rgb",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    with engine.open_slide(path) as slide:
        result = segment_instances(mobile_sam, model, slide, shapely_box(0, 0, 600, 600))
        assert result.objects == []
        # a region that holds a corner only
        result = segment_instances(mobile_sam, model, slide, (590, 590, 600, 600))
        assert result.objects == []


def test_foreign_damaged_and_other_encoder_decoders_are_refused(tmp_path) -> None:
    model = _stub_model()
    model.encoder_sha256 = "a" * 64
    good = write_decoder(tmp_path / "good.pt", model)
    assert read_decoder(good, encoder_sha256="a" * 64).magnification == 20.0
    with pytest.raises(DecoderError, match="another SAM encoder"):
        read_decoder(good, encoder_sha256="b" * 64)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DecoderError, match="not a readable instance decoder"):
        read_decoder(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "wsi-sam-heads/1", "state_dict": {}}, foreign)
    with pytest.raises(DecoderError, match="not a WSI-SAM instance decoder"):
        read_decoder(foreign)
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, weights)
    with pytest.raises(DecoderError, match="not a WSI-SAM instance decoder"):
        read_decoder(weights)
    with pytest.raises(DecoderError, match="not found"):
        read_decoder(tmp_path / "missing.pt")
    payload = torch.load(good, weights_only=True)
    payload["state_dict"] = {k: v * float("nan") for k, v in payload["state_dict"].items()}
    nan_file = tmp_path / "nan.pt"
    torch.save(payload, nan_file)
    with pytest.raises(DecoderError, match="NaN"):
        read_decoder(nan_file)


def test_field_labels_ignore_what_is_outside_the_complete_area(tmp_path) -> None:
    path = tmp_path / "img.tif"
    write_gland_slide(path, 512, 512, [(100, 100, 50, 50), (400, 400, 50, 50)], mpp=MPP)
    with engine.open_slide(path) as slide:
        complete = shapely_box(0, 0, 256, 256)
        fields = region_fields(slide, path, [gland_polygon((100, 100, 50, 50))], complete, 20.0)
        assert len(fields) == 1
        labels, valid = field_labels(fields[0], slide.dimensions, size=256)
    assert valid.mean() < 0.1  # the complete area is a quarter of a 512-px image in a 1024 field
    assert labels.max() == 1
    assert not (labels[~valid] > 0).any()


def test_merge_objects_is_order_free_for_cut_copies() -> None:
    from engine.everything import merge_objects
    from engine.patches import Field

    left = Field((512.0, 512.0), 1.0, 20.0)
    right = Field((1280.0, 512.0), 1.0, 20.0)
    whole = gland_polygon((1000, 500, 120, 80))
    a = EverythingObject(
        whole.intersection(shapely_box(0, 0, 1024, 1024)), 0.9, 0.9, (900, 500), left, True
    )
    b = EverythingObject(
        whole.intersection(shapely_box(768, 0, 1792, 1024)), 0.8, 0.8, (1050, 500), right, False
    )
    merged = merge_objects([a], [b], 0.5)
    assert len(merged) == 1 and merged[0].geometry.equals(b.geometry)


def test_refinement_follows_the_decoders_recommendation() -> None:
    from types import SimpleNamespace

    from engine.instances.refine import refinement_wanted

    recommends = SimpleNamespace(metadata={"refine_by_default": True})
    silent = SimpleNamespace(metadata={})
    assert refinement_wanted(recommends) and not refinement_wanted(silent)
    assert refinement_wanted(silent, "on") and not refinement_wanted(recommends, "off")
    with pytest.raises(ValueError, match="refinement must be one of"):
        refinement_wanted(silent, "maybe")


def test_objects_on_bare_glass_are_dropped_and_glands_with_lumens_kept() -> None:
    from engine.instances.segment import drop_glass

    image = np.full((1024, 1024, 3), 243, np.uint8)  # glass
    image[512:, :] = (180, 90, 160)  # stained tissue in the lower half
    image[700:800, 100:200] = 240  # a lumen: a white hole inside a gland's epithelium
    labels = np.zeros((256, 256), np.int32)
    labels[10:60, 10:60] = 1  # on glass
    labels[160:220, 10:70] = 2  # a gland with its lumen
    kept = drop_glass(labels, image)
    assert set(np.unique(kept)) == {0, 2} and (kept == 2).sum() == (labels == 2).sum()
    assert drop_glass(np.zeros_like(labels), image).max() == 0
