#!/usr/bin/env bash
# Build the one-folder bundle dist/wsi-sam/ (executable dist/wsi-sam/wsi-sam) with PyInstaller.
#
#   packaging/build.sh            build (PyInstaller's work files go to build/pyinstaller/)
#   packaging/build.sh --clean    forget PyInstaller's caches first (after changing the venv)
#
# Uses the repository's .venv (scripts/dev.sh setup creates or updates it; the bundle contains
# whatever torch build that venv has: set WSI_SAM_TORCH before the first setup for another one).
# Converts the image encoder to OpenVINO IR for the bundle first (packaging/convert_models.py).
# Prints the bundle's size and the build time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

clean=()
for arg in "$@"; do
    case "$arg" in
        --clean) clean=(--clean) ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "packaging/build.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

scripts/dev.sh setup
started=$SECONDS
# The image encoder, converted to OpenVINO IR now (about 10 s; kept while its key is current), is
# shipped in the bundle: a frozen app never converts (the spec takes it from build/openvino_models).
env -u PYTHONPATH "$ROOT/.venv/bin/python" "$ROOT/packaging/convert_models.py" \
    "$ROOT/build/openvino_models"
# Nothing at build time may come from the user's config (e.g. a PYTHONPATH pointing elsewhere).
env -u PYTHONPATH "$ROOT/.venv/bin/pyinstaller" --noconfirm --log-level WARN "${clean[@]}" \
    --workpath "$ROOT/build/pyinstaller" --distpath "$ROOT/dist" "$ROOT/packaging/wsi-sam.spec"
elapsed=$((SECONDS - started))

bundle="$ROOT/dist/wsi-sam"
if [ ! -x "$bundle/wsi-sam" ]; then
    echo "packaging/build.sh: PyInstaller finished but $bundle/wsi-sam is missing" >&2
    exit 1
fi
size=$(du -sh "$bundle" | cut -f1)
files=$(find "$bundle" -type f | wc -l)
echo "built $bundle/wsi-sam: bundle $size ($files files) in $((elapsed / 60)) min $((elapsed % 60)) s"
