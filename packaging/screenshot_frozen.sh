#!/usr/bin/env bash
# Start the frozen app (dist/wsi-sam/wsi-sam) on the sample slide under a virtual X server and
# take screenshots: out/frozen_app.png (the app grabs its own window once the slide is drawn and
# the model loaded, then quits: WSI_SAM_SCREENSHOT) and out/frozen_screen.png (the whole X screen,
# taken from outside the app while its window is up, when ImageMagick's `import` is installed).
# Prints the time from launch to the window's appearance and to the app's own screenshot.
#
#   packaging/screenshot_frozen.sh [--box x0,y0,x1,y1]   (also run a box prompt before the shot)
#
# Build the bundle first (packaging/build.sh). Needs Xvfb (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
EXE="$ROOT/dist/wsi-sam/wsi-sam"
OUT="$ROOT/out"
box=""
while [ $# -gt 0 ]; do
    case "$1" in
        --box) box=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "packaging/screenshot_frozen.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ ! -x "$EXE" ]; then
    echo "packaging/screenshot_frozen.sh: $EXE is missing; run packaging/build.sh first" >&2
    exit 1
fi
if ! command -v Xvfb >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends xvfb >/dev/null
fi
mkdir -p "$OUT"
rm -f "$OUT/frozen_app.png" "$OUT/frozen_screen.png"

scratch=$(mktemp -d)
# -displayfd: Xvfb picks a free display number and writes it to fd 3 once it accepts clients
Xvfb -displayfd 3 -screen 0 1600x1000x24 -nolisten tcp 3>"$scratch/display" \
    >"$scratch/xvfb.log" 2>&1 &
xvfb_pid=$!
app_pid=""
cleanup() {
    [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
    kill "$xvfb_pid" 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
for _ in $(seq 100); do
    [ -s "$scratch/display" ] && break
    sleep 0.1
done
if [ ! -s "$scratch/display" ]; then
    echo "packaging/screenshot_frozen.sh: Xvfb did not start:" >&2
    cat "$scratch/xvfb.log" >&2
    exit 1
fi
display=:$(head -n1 "$scratch/display")

started=$(date +%s.%N)
env -u PYTHONPATH -u PYTHONHOME -u QT_QPA_PLATFORM DISPLAY="$display" HOME="$scratch" \
    XDG_CONFIG_HOME="$scratch/config" XDG_DATA_HOME="$scratch/data" \
    WSI_SAM_SCREENSHOT="$OUT/frozen_app.png" ${box:+WSI_SAM_SCREENSHOT_BOX="$box"} \
    "$EXE" >"$scratch/app.log" 2>&1 &
app_pid=$!

# The window's appearance, seen from the X server (xwininfo, from x11-utils, when installed).
window_s="?"
if command -v xwininfo >/dev/null 2>&1; then
    while kill -0 "$app_pid" 2>/dev/null; do
        if DISPLAY="$display" xwininfo -root -tree 2>/dev/null | grep -q '"WSI-SAM Studio'; then
            window_s=$(echo "$(date +%s.%N) - $started" | bc)
            break
        fi
        sleep 0.1
    done
    # give it a moment to paint, then photograph the screen from outside the app
    sleep 3
    if command -v import >/dev/null 2>&1 && kill -0 "$app_pid" 2>/dev/null; then
        DISPLAY="$display" import -window root "$OUT/frozen_screen.png" || true
    fi
fi
rc=0
wait "$app_pid" || rc=$?
app_pid=""
total_s=$(echo "$(date +%s.%N) - $started" | bc)
cat "$scratch/app.log"
echo "frozen app: window after ${window_s} s, own screenshot after ${total_s} s (exit $rc)"
ls -l "$OUT"/frozen_*.png 2>/dev/null || true
[ "$rc" = 0 ] && [ -s "$OUT/frozen_app.png" ]
