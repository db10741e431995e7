"""The model does not know its runtime: engine.wsi_sam imports no runtime and no heads catalogue;
the loader (engine.build) composes them. Checked in fresh interpreters, so that what other tests
imported before does not count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MODEL = "engine.wsi_sam"
RUNTIMES = ("engine.backends.openvino_decoder", "engine.backends.openvino_backend")
CATALOGUE = "engine.heads_catalogue"
LOADER = "engine.build"


def _modules_after_import(module: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('engine'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_model_imports_no_runtime_and_no_catalogue() -> None:
    loaded = _modules_after_import(MODEL)
    assert MODEL in loaded
    for name in (*RUNTIMES, CATALOGUE, LOADER, "engine.weights"):
        assert name not in loaded, f"importing {MODEL} imported {name}"


@pytest.mark.parametrize("module", [*RUNTIMES, CATALOGUE])
def test_runtimes_and_catalogue_never_import_the_loader(module: str) -> None:
    """No circle: what the loader composes does not import the loader back."""
    loaded = _modules_after_import(module)
    assert LOADER not in loaded


def test_the_model_module_names_no_runtime_in_its_source() -> None:
    """Not even a lazy import inside a function."""
    import inspect

    import engine.wsi_sam

    source = inspect.getsource(engine.wsi_sam)
    for name in (*RUNTIMES, CATALOGUE, LOADER, "engine.weights"):
        assert f"import {name}" not in source and f"from {name} " not in source, name


def test_engine_load_wsi_sam_is_the_loader() -> None:
    import engine
    import engine.build

    assert engine.load_wsi_sam is engine.build.load_wsi_sam
