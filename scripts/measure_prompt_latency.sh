#!/usr/bin/env bash
# Release-to-preview latency of a box prompt in the real app under Xvfb, on a settled view (the
# background pre-encode done) and on a cold field; prints median / min / max.
#   scripts/measure_prompt_latency.sh [--reps 5] [--backend auto] [--precision auto] [--mode sam]
# Needs Debian's xvfb and the xcb libraries (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v Xvfb >/dev/null 2>&1; then
    echo "Xvfb is missing: apt-get install xvfb (see .ci/run for the xcb libraries)" >&2
    exit 2
fi
exec .venv/bin/python scripts/measure_prompt_latency.py --xvfb "$@"
