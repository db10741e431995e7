#!/usr/bin/env bash
# Build the bundle and run the frozen self-test: `dist/wsi-sam/wsi-sam --self-test`.
# The exit code is the self-test's (0: model, sample slide, both modes, GeoJSON and window work),
# or 1 when the self-test did not run the encoder on OpenVINO from the bundle's converted model.
#
#   packaging/smoke_test.sh           build, then test
#   packaging/smoke_test.sh --reuse   skip the build when dist/wsi-sam is newer than every source
#                                     file, the spec and the venv
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
EXE="$ROOT/dist/wsi-sam/wsi-sam"

reuse=0
for arg in "$@"; do
    case "$arg" in
        --reuse) reuse=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "packaging/smoke_test.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

stale() {
    [ ! -x "$EXE" ] && return 0
    # anything the bundle is made of that changed after it was built
    [ -n "$(find app engine qupath_bridge packaging pyproject.toml .venv/.wsi-sam-setup \
        -newer "$EXE" -type f ! -name '*.pyc' ! -name '*.md' -print -quit 2>/dev/null)" ]
}

if [ "$reuse" = 1 ] && ! stale; then
    echo "smoke test: reusing $EXE (newer than its sources)"
else
    packaging/build.sh
fi

# Run it the way a user would: from elsewhere, with nothing of the repository or the venv on the
# path, and a throw-away home so the window's settings do not land in the real one. The cache
# folder starts empty: the frozen app must find the OpenVINO encoder in the bundle, not convert it.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cache="$scratch/wsi-sam-cache"
mkdir -p "$cache"
cd "$scratch"
started=$(date +%s.%N)
set +e
env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV QT_QPA_PLATFORM=offscreen HOME="$scratch" \
    XDG_CONFIG_HOME="$scratch/config" XDG_DATA_HOME="$scratch/data" \
    XDG_CACHE_HOME="$scratch/cache" WSI_SAM_CACHE_DIR="$cache" PATH=/usr/bin:/bin \
    "$EXE" --self-test > "$scratch/self-test.out"
rc=$?
set -e
cat "$scratch/self-test.out"
wall=$(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo "?")
if [ "$rc" != 0 ]; then
    echo "smoke test FAILED: frozen self-test exited $rc" >&2
    exit "$rc"
fi
# The bundle's encoder backend: OpenVINO on the CPU (torch only where OpenVINO cannot run).
if ! grep -q "encoder OpenVINO CPU" "$scratch/self-test.out"; then
    echo "smoke test FAILED: the frozen self-test did not use the OpenVINO encoder" >&2
    exit 1
fi
# ... from the bundle's converted model: nothing converted into the user's cache (OpenVINO's
# compiled-model cache, openvino/compiled/, may be written).
converted=$(find "$scratch" -name encoder.xml -print)
if [ -n "$converted" ]; then
    echo "smoke test FAILED: the frozen app converted the encoder: $converted" >&2
    exit 1
fi
echo "smoke test passed: frozen self-test exited 0 after ${wall} s (process start to exit)," \
    "OpenVINO encoder from the bundle"
