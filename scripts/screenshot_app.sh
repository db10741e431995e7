#!/usr/bin/env bash
# Launch the app the way the README does (`.venv/bin/wsi-sam gui`, bundled sample slide) under a
# real X server (Xvfb), wait until the window shows the slide, and save a PNG under out/.
#   scripts/screenshot_app.sh [OUT.png] [-- extra wsi-sam gui args]
# WSI_SAM_SCREENSHOT_BOX="x0,y0,x1,y1" also runs a box prompt and waits for its mask preview.
# Needs Debian's xvfb and the xcb libraries (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/app_screenshot.png}
shift || true
[ "${1:-}" = "--" ] && shift
mkdir -p "$(dirname "$OUT")"
if ! command -v Xvfb >/dev/null 2>&1; then
    echo "Xvfb is missing: apt-get install xvfb (see .ci/run for the xcb libraries)" >&2
    exit 2
fi
exec .venv/bin/python scripts/screenshot_app.py "$OUT" "$@"
