"""Shared test set-up: Qt offscreen before anything loads Qt, paths to test data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Converted OpenVINO models go to a cache of the test run's own (inherited by the subprocesses the
# CLI tests start, so the encoder is converted once per run), never into the user's cache.
if "WSI_SAM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["WSI_SAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="wsi-sam-test-cache-")

import pytest

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    from app import sample_slide_path

    return sample_slide_path()


@pytest.fixture(scope="session")
def mobile_sam():  # type: ignore[no-untyped-def]
    """The real MobileSAM on the CPU, loaded once per test session (about a second)."""
    from engine import load_sam

    return load_sam(device="cpu")


@pytest.fixture(scope="session")
def fresh_wsi_sam(mobile_sam):  # type: ignore[no-untyped-def]
    """WSI-SAM with freshly initialised heads on the session's MobileSAM."""
    import torch

    from engine.wsi_sam import WsiSam

    torch.manual_seed(0)
    return WsiSam(mobile_sam).eval()
