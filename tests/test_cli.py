from __future__ import annotations

import subprocess
import sys

import pytest

from app import __version__, sample_slide_path
from app.cli import build_parser


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"wsi-sam {__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: wsi-sam" in out.stdout
    assert "gui" in out.stdout


def test_gui_is_default_subcommand() -> None:
    parser = build_parser()
    args = parser.parse_args(["gui", "slide.svs"])
    assert args.command == "gui" and args.path == "slide.svs"
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])


def test_sample_slide_is_bundled() -> None:
    path = sample_slide_path()
    assert path.is_file() and path.stat().st_size > 1_000_000
