"""Encoder backends: the choice of backend and precision, the OpenVINO model cache, agreement."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends import (
    BackendError,
    autocast,
    cpu_supports_bf16,
    openvino_available,
    resolve_backend,
)
from engine.backends import openvino_backend as ovb
from engine.sam.sam import Sam
from engine.weights import load_sam

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


def test_auto_picks_openvino_on_a_cpu_and_bf16_where_the_cpu_has_it() -> None:
    choice = resolve_backend("auto", "auto", "cpu")
    if openvino_available():
        assert choice.backend == "openvino"
        assert choice.precision == ("bf16" if cpu_supports_bf16() else "f32")
        assert choice.label == f"OpenVINO CPU {choice.precision}"
    else:
        assert (choice.backend, choice.precision) == ("torch", "f32")
    torch_choice = resolve_backend("torch", "auto", "cpu")
    assert (torch_choice.backend, torch_choice.precision) == ("torch", "f32")
    assert torch_choice.label == "torch CPU f32"


@pytest.mark.parametrize(
    ("backend", "precision", "device", "message"),
    [
        ("tensorrt", "auto", "cpu", "backend must be one of"),
        ("torch", "fp8", "cpu", "precision must be one of"),
        ("torch", "fp16", "cpu", "no fast fp16 on a CPU"),
        ("openvino", "auto", "meta", "runs on the CPU"),
    ],
)
def test_impossible_choices_are_refused_with_a_reason(
    backend: str, precision: str, device: str, message: str
) -> None:
    with pytest.raises(BackendError, match=message):
        resolve_backend(backend, precision, device)


def test_openvino_missing_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    assert not openvino_available()
    assert resolve_backend("auto", "auto", "cpu").backend == "torch"
    with pytest.raises(BackendError, match="pip install openvino"):
        resolve_backend("openvino", "auto", "cpu")


def test_a_gpu_that_is_not_there_is_a_backend_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="no CUDA GPU"):
        resolve_backend("auto", "auto", "cuda")


def test_autocast_is_a_no_op_in_f32() -> None:
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), "f32"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def torch_sam() -> Sam:
    return load_sam(device="cpu", backend="torch")


@needs_openvino
def test_openvino_model_is_converted_once_into_the_cache_keyed_by_checkpoint(
    torch_sam: Sam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSI_SAM_CACHE_DIR", str(tmp_path))
    conversions: list[Path] = []
    original = ovb.convert_encoder

    def counting(encoder, folder, *graph):  # type: ignore[no-untyped-def]
        conversions.append(folder)
        return original(encoder, folder, *graph)

    monkeypatch.setattr(ovb, "convert_encoder", counting)
    sha = torch_sam.checkpoint_info.sha256
    first = ovb.OpenVinoImageEncoder(torch_sam.image_encoder, sha, "f32")
    second = ovb.OpenVinoImageEncoder(torch_sam.image_encoder, sha, "f32")
    assert len(conversions) == 1
    assert (
        first.ir_path
        == second.ir_path
        == tmp_path / "openvino" / ovb.model_key(sha) / "encoder.xml"
    )
    assert ovb.model_key(sha).startswith(f"tinyvit-{sha[:16]}-ov")
    assert first.ir_path.with_suffix(".bin").stat().st_size > 20e6  # float32 weights, not fp16
    # no temporary folders are left beside the model
    assert sorted(p.name for p in first.ir_path.parent.parent.iterdir()) == sorted(
        {ovb.model_key(sha), "compiled"}
    )
    # another checkpoint gets its own entry
    assert ovb.model_key("0" * 64) != ovb.model_key(sha)

    x = torch_sam.preprocess(torch.rand(1, 3, 1024, 1024) * 255)
    ref_embedding, ref_early = torch_sam.encode_preprocessed(x)
    embedding, early = second.encode(x)
    assert embedding.shape == (1, 256, 64, 64) and early.shape == (1, 160, 64, 64)
    for ours, ref in ((embedding, ref_embedding), (early, ref_early)):
        cosine = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0)
        assert float(cosine) > 0.99999


@needs_openvino
def test_a_frozen_bundle_uses_its_shipped_model_and_never_converts(
    torch_sam: Sam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = torch_sam.checkpoint_info.sha256
    bundle = tmp_path / "bundle"
    ovb.convert_encoder(torch_sam.image_encoder, bundle / "openvino_models" / ovb.model_key(sha))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    monkeypatch.setenv("WSI_SAM_CACHE_DIR", str(tmp_path / "user-cache"))

    def no_conversion(*_args: object) -> Path:
        raise AssertionError("a frozen app must not convert")

    monkeypatch.setattr(ovb, "convert_encoder", no_conversion)
    found = ovb.find_or_convert(torch_sam.image_encoder, sha)
    assert found == bundle / "openvino_models" / ovb.model_key(sha) / "encoder.xml"
    assert not (tmp_path / "user-cache" / "openvino" / ovb.model_key(sha)).exists()


@needs_openvino
def test_an_unwritable_cache_is_a_clear_backend_error(
    torch_sam: Sam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("WSI_SAM_CACHE_DIR", str(blocker))
    with pytest.raises(BackendError, match="WSI_SAM_CACHE_DIR"):
        ovb.find_or_convert(torch_sam.image_encoder, "1" * 64)


@needs_openvino
def test_feature_cache_keeps_half_precision_features_apart(torch_sam: Sam) -> None:
    from engine.train.features import encoder_fingerprint
    from engine.wsi_sam import WsiSam

    f32 = load_sam(device="cpu", backend="openvino", precision="f32")
    assert encoder_fingerprint(WsiSam(torch_sam)) == encoder_fingerprint(WsiSam(f32))
    if cpu_supports_bf16():
        bf16 = load_sam(device="cpu", backend="openvino", precision="bf16")
        assert encoder_fingerprint(WsiSam(bf16)) != encoder_fingerprint(WsiSam(f32))


@needs_openvino
def test_wsi_sam_masks_agree_across_backends(sample_slide: Path) -> None:
    """The same box on the sample slide: OpenVINO f32 = torch; bf16 within the bf16 tolerance."""
    import engine

    def box_mask(backend: str, precision: str) -> np.ndarray:
        model = engine.load_wsi_sam(device="cpu", backend=backend, precision=precision)
        with engine.open_slide(sample_slide) as slide:
            result = engine.WsiSamPredictor(model).segment(slide, box=(900, 1300, 1150, 1520))
        assert result.mask.any()
        return result.mask

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    reference = box_mask("torch", "f32")
    assert iou(box_mask("openvino", "f32"), reference) >= 0.98
    if cpu_supports_bf16():
        assert iou(box_mask("openvino", "bf16"), reference) >= 0.97


@pytest.fixture(scope="module")
def ov_wsi_sam():  # type: ignore[no-untyped-def]
    """WSI-SAM with the shipped heads, encoder and decoders on OpenVINO f32."""
    import engine

    if not openvino_available():
        pytest.skip("openvino not installed")
    return engine.load_wsi_sam(device="cpu", backend="openvino", precision="f32")


@pytest.fixture(scope="module")
def real_field(ov_wsi_sam, sample_slide: Path):  # type: ignore[no-untyped-def]
    from engine.patches import choose_field, read_field
    from engine.slides import open_slide

    with open_slide(sample_slide) as slide:
        field = choose_field(slide, (900, 1300, 1150, 1520))
        hr, lr = read_field(slide, field)
    features = ov_wsi_sam.encode(torch.from_numpy(np.stack([hr, lr])).permute(0, 3, 1, 2).float())
    return features[0], features[1]


def _prompts():  # type: ignore[no-untyped-def]
    from engine.wsi_sam import Prompts

    return Prompts(
        boxes=torch.tensor([[400.0, 400, 600, 620], [300, 300, 700, 700], [480, 470, 560, 560]]),
        points=torch.tensor([[[500.0, 500]], [[450, 460]], [[520, 515]]]),
        labels=torch.tensor([[1], [1], [0]]),
    )


def test_openvino_decoders_equal_torch_in_f32_and_agree_in_bf16(ov_wsi_sam, real_field) -> None:  # type: ignore[no-untyped-def]
    from engine.backends.openvino_decoder import OpenVinoDecoders

    hr, lr = real_field
    model = ov_wsi_sam
    decoders = model.decoder_backend
    assert isinstance(decoders, OpenVinoDecoders) and decoders.heads_version == model.heads_version
    prompts = _prompts()
    with torch.inference_mode():
        static = model.hr_static_features(hr)
        fast, fast_iou = model.predict_hr(hr, lr, prompts, multimask_output=True, hr_static=static)
        fast_sam, _ = model.sam_forward(hr, prompts)
        model.decoder_backend = None
        try:
            ref, ref_iou = model.predict_hr(
                hr, lr, prompts, multimask_output=True, hr_static=static
            )
            ref_sam, _ = model.sam_forward(hr, prompts)
        finally:
            model.decoder_backend = decoders
    assert fast.shape == ref.shape == (3, 3, 256, 256)
    torch.testing.assert_close(fast, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fast_iou, ref_iou, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_sam, ref_sam, rtol=1e-3, atol=1e-3)
    if cpu_supports_bf16():
        model.decoder_backend = OpenVinoDecoders(model, "bf16")
        try:
            with torch.inference_mode():
                half, _ = model.predict_hr(hr, lr, prompts, multimask_output=True, hr_static=static)
        finally:
            model.decoder_backend = decoders
        a, b = half > 0, ref > 0
        assert float((a & b).sum() / (a | b).sum()) >= 0.97


def test_converted_decoders_never_answer_for_other_heads(ov_wsi_sam) -> None:  # type: ignore[no-untyped-def]
    import copy

    model = ov_wsi_sam
    assert model.decoder_backend is not None
    clone = copy.deepcopy(model)
    assert clone.decoder_backend is None  # a copy may be trained: it decodes in torch
    clone.train()
    assert clone.decoder_backend is None
    version = clone.heads_version
    clone.enable_fast_decoders()
    assert clone.decoder_backend is not None and clone.decoder_backend.heads_version == version
    clone.train()  # training changes the heads in place
    assert clone.decoder_backend is None and clone.heads_version == version + 1
    torch_only = __import__("engine").load_wsi_sam(device="cpu", backend="torch")
    assert torch_only.decoder_backend is None


def test_fresh_heads_load_the_same_every_time_so_converted_decoders_are_reused() -> None:
    from engine.backends.openvino_decoder import heads_digest
    from engine.build import load_wsi_sam

    torch.manual_seed(123)
    first = load_wsi_sam(heads="none", device="cpu", backend="torch")
    torch.manual_seed(456)
    second = load_wsi_sam(heads="none", device="cpu", backend="torch")
    assert heads_digest(first) == heads_digest(second)


def test_openvino_hr_static_features_equal_torch(ov_wsi_sam, real_field) -> None:  # type: ignore[no-untyped-def]
    """A new field's prompt-independent HR features run on the converted graphs too."""
    hr, _ = real_field
    model = ov_wsi_sam
    assert model.decoder_backend is not None
    with torch.inference_mode():
        converted = model.hr_static_features(hr)
        reference = model.hr_static_features(hr, converted=False)
        torch.testing.assert_close(reference, model.hr_static_torch(hr.embedding, hr.early))
    assert converted.shape == (1, 32, 256, 256)
    torch.testing.assert_close(converted, reference, rtol=1e-3, atol=1e-3)


def test_openvino_decoders_compile_the_prompt_shapes_statically(ov_wsi_sam, real_field) -> None:  # type: ignore[no-untyped-def]
    """The first prompts' shapes are compiled statically when the decoders are made (in the
    loading thread, with the process's locale kept); other shapes answer on the dynamic graph,
    with the same answer, and start no compilation behind it."""
    import locale
    import threading

    from engine.backends.openvino_decoder import OpenVinoDecoders
    from engine.wsi_sam import Prompts

    model = ov_wsi_sam
    before = locale.setlocale(locale.LC_ALL)
    threads = threading.active_count()
    prepared = OpenVinoDecoders(model, "f32", prepare=True)
    assert locale.setlocale(locale.LC_ALL) == before and threading.active_count() == threads
    lazy = OpenVinoDecoders(model, "f32", prepare=False)
    hr, _ = real_field
    with torch.inference_mode():
        sparse, dense = model._embed_prompts(Prompts(boxes=torch.tensor([[400.0, 400, 600, 620]])))
        inputs = (hr.embedding, sparse, dense.contiguous())
        shapes = tuple(tuple(t.shape) for t in inputs)
        assert ("decode_sam", shapes) in prepared.static_shapes()
        assert lazy.static_shapes() == []
        static, static_iou = prepared.decode_sam(*inputs)
        dynamic, dynamic_iou = lazy.decode_sam(*inputs)
        assert lazy.static_shapes() == [] and threading.active_count() == threads
    torch.testing.assert_close(static, dynamic, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(static_iou, dynamic_iou, rtol=1e-4, atol=1e-4)
