"""Shared test set-up: Qt offscreen before anything loads Qt, paths to test data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    from app import sample_slide_path

    return sample_slide_path()
