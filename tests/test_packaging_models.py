"""packaging/convert_models.py: the converted encoder lands where a frozen app looks for it.

The real conversion and the frozen app using it are checked by packaging/smoke_test.sh; here the
conversion is stubbed, and what is checked is the contract between build and run time: the folder
name (the engine's model key), the bundle layout (``sys._MEIPASS/openvino_models/<key>/``), and
that a frozen app then finds the IR without converting.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("openvino")

from engine.backends import openvino_backend, openvino_decoder
from engine.weights import default_checkpoint_path, sha256_of

REPO = Path(__file__).resolve().parents[1]


def _convert_models_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "convert_models", REPO / "packaging" / "convert_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def fake_convert(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """convert_encoder writes two placeholder files instead of converting; calls are recorded."""
    calls: list[Path] = []

    def convert(encoder: object, folder: Path, graph: str = "encoder") -> Path:
        calls.append(folder)
        folder.mkdir(parents=True)
        (folder / openvino_backend.IR_NAME).write_text("<net/>")
        (folder / openvino_backend.IR_NAME).with_suffix(".bin").write_bytes(b"\0")
        return folder / openvino_backend.IR_NAME

    def convert_decoders(model: object, folder: Path) -> None:
        calls.append(folder)
        folder.mkdir(parents=True)
        for name in openvino_decoder.DECODER_GRAPHS:
            (folder / f"{name}.xml").write_text("<net/>")
            (folder / f"{name}.bin").write_bytes(b"\0")

    monkeypatch.setattr(openvino_backend, "convert_encoder", convert)
    monkeypatch.setattr(openvino_decoder, "convert_decoders", convert_decoders)
    return calls


def test_bundle_models_are_found_by_the_frozen_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_convert: list[Path]
) -> None:
    convert_models = _convert_models_module()
    bundle = tmp_path / "_internal"
    out = bundle / "openvino_models"
    (out / "tinyvit-old-ov2020.1-g0").mkdir(parents=True)  # a stale key from an older build
    (out / "stray.txt").write_text("x")

    ir = convert_models.convert_models(out)
    key = openvino_backend.model_key(sha256_of(default_checkpoint_path()))
    stages = openvino_backend.model_key(sha256_of(default_checkpoint_path()), "stages")
    assert ir == out / key / openvino_backend.IR_NAME
    decoders = [p.name for p in out.iterdir() if p.name.startswith("decoders-")]
    assert len(decoders) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([key, stages, decoders[0]])
    assert sorted(fake_convert) == sorted([out / key, out / stages, out / decoders[0]])

    # a second build keeps the IRs that are there
    assert convert_models.convert_models(out) == ir
    assert len(fake_convert) == 3

    # the frozen app, with an empty user cache, takes the bundle's IR and converts nothing
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("WSI_SAM_CACHE_DIR", str(cache))
    assert openvino_backend.bundled_models_dir() == out
    found = openvino_backend.find_or_convert(
        None,  # type: ignore[arg-type]  # never used: nothing is converted
        sha256_of(default_checkpoint_path()),
        allow_convert=False,
    )
    assert found == ir
    assert not cache.exists()


def test_an_incomplete_ir_is_converted_again(tmp_path: Path, fake_convert: list[Path]) -> None:
    convert_models = _convert_models_module()
    key = openvino_backend.model_key(sha256_of(default_checkpoint_path()))
    half_done = tmp_path / key
    half_done.mkdir()
    (half_done / openvino_backend.IR_NAME).write_text("<net/>")  # no .bin
    ir = convert_models.convert_models(tmp_path)
    assert fake_convert[-1] == half_done
    assert ir.with_suffix(".bin").is_file()
