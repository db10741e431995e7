#!/usr/bin/env bash
# Create .venv-bench (git-ignored): a separate environment for benchmarks/bench_sam.py that holds
# both our engine and the original MobileSAM implementation (PyPI `mobilesam-mirror`, module
# `mobile_sam`). The reference needs timm and torchvision, which the project's .venv must not
# have (the CPU torch 2.13.0 wheel cannot import them), hence a second venv with torch 2.14.1.
#
#   benchmarks/setup_reference_env.sh          # then:
#   .venv-bench/bin/python benchmarks/bench_sam.py
#   .venv-bench/bin/python benchmarks/bench_segment.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-bench

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 timm
# The reference implementation; its declared dependencies are not needed (torch/timm are above).
"$VENV/bin/pip" install --quiet --no-deps mobilesam-mirror
# What the benchmarks and our engine import (no Qt: the benchmarks do not start the app).
"$VENV/bin/pip" install --quiet numpy pillow openvino openslide-python openslide-bin shapely \
    scipy tifffile tqdm
"$VENV/bin/pip" install --quiet -e . --no-deps
# The checkpoint: the official mobile_sam.pt shipped inside this registry package.
"$VENV/bin/pip" install --quiet --no-deps -r requirements/weights.txt
"$VENV/bin/python" -W ignore - <<'PY'
import mobile_sam, torch, timm, torchvision  # noqa: F401
import engine.weights
print("reference env ready: torch", torch.__version__, "| checkpoint", engine.weights.default_checkpoint_path())
PY
