#!/usr/bin/env bash
# Start the frozen app (dist/wsi-sam/wsi-sam) on the sample slide under a virtual X server and
# take screenshots: out/frozen_app.png (the app grabs its own window once the slide is drawn and
# the model loaded, then quits: WSI_SAM_SCREENSHOT) and out/frozen_screen.png (the whole X screen,
# taken from outside the app while its window is up, when ImageMagick's `import` is installed).
# Prints the time from launch to the window's appearance and to the app's own screenshot; the
# app's output goes to out/frozen_app.log. Succeeds when the window appeared and a screenshot
# was taken; an app that has not quit after --timeout seconds (default 240) is stopped.
#
#   packaging/screenshot_frozen.sh [--box x0,y0,x1,y1] [--timeout S]
#       --box: also run that box prompt (level-0 px) before the app's own shot
#
# Build the bundle first (packaging/build.sh). Needs Xvfb, xwininfo (x11-utils) and ImageMagick's
# `import`; they are installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
EXE="$ROOT/dist/wsi-sam/wsi-sam"
OUT="$ROOT/out"
box=""
timeout_s=240
while [ $# -gt 0 ]; do
    case "$1" in
        --box) box=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "packaging/screenshot_frozen.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ ! -x "$EXE" ]; then
    echo "packaging/screenshot_frozen.sh: $EXE is missing; run packaging/build.sh first" >&2
    exit 1
fi
missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v xwininfo >/dev/null 2>&1 || missing+=(x11-utils)
command -v import >/dev/null 2>&1 || missing+=(imagemagick)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$OUT"
rm -f "$OUT"/frozen_*.png "$OUT/frozen_app.log"

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
started_s=$SECONDS
env -u PYTHONPATH -u PYTHONHOME -u QT_QPA_PLATFORM DISPLAY="$display" HOME="$scratch" \
    XDG_CONFIG_HOME="$scratch/config" XDG_DATA_HOME="$scratch/data" \
    WSI_SAM_SCREENSHOT="$OUT/frozen_app.png" ${box:+WSI_SAM_SCREENSHOT_BOX="$box"} \
    "$EXE" >"$OUT/frozen_app.log" 2>&1 &
app_pid=$!

# The window's appearance, seen from the X server.
elapsed() { printf '%.1f' "$(echo "$(date +%s.%N) - $started" | bc)"; }
window_s=""
while kill -0 "$app_pid" 2>/dev/null; do
    if DISPLAY="$display" xwininfo -root -tree 2>/dev/null | grep -q '"WSI-SAM Studio'; then
        window_s=$(elapsed)
        break
    fi
    [ $((SECONDS - started_s)) -ge "$timeout_s" ] && break
    sleep 0.1
done
if [ -n "$window_s" ]; then
    # give it a moment to paint, then photograph the screen from outside the app
    sleep 3
    DISPLAY="$display" import -window root "$OUT/frozen_screen.png" || true
fi
# wait for the app's own screenshot (it quits after taking it), at most until the timeout
while kill -0 "$app_pid" 2>/dev/null && [ $((SECONDS - started_s)) -lt "$timeout_s" ]; do
    sleep 0.2
done
rc=0
if kill -0 "$app_pid" 2>/dev/null; then
    echo "the app was still running after ${timeout_s} s: stopping it (screen: out/frozen_stuck.png)"
    DISPLAY="$display" import -window root "$OUT/frozen_stuck.png" || true
    kill "$app_pid" 2>/dev/null || true
    wait "$app_pid" 2>/dev/null || true
    rc=124
else
    wait "$app_pid" || rc=$?
fi
app_pid=""
total_s=$(elapsed)
tail -n 20 "$OUT/frozen_app.log"
echo "frozen app: window after ${window_s:-never} s; app exited $rc after ${total_s} s"
for shot in "$OUT/frozen_app.png" "$OUT/frozen_screen.png"; do
    if [ -s "$shot" ]; then echo "screenshot: $shot"; else echo "no screenshot: $shot"; fi
done
[ -n "$window_s" ] && { [ -s "$OUT/frozen_app.png" ] || [ -s "$OUT/frozen_screen.png" ]; }
