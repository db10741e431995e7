"""Helper of screenshot_app.sh: start Xvfb on a free display, run `.venv/bin/wsi-sam gui` in it
with WSI_SAM_SCREENSHOT set (the app saves its own window once the slide is drawn), stop Xvfb."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_display() -> int:
    for number in range(99, 160):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            return number
    raise SystemExit("no free X display number")


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    extra = sys.argv[2:]
    display = free_display()
    xvfb = subprocess.Popen(
        ["Xvfb", f":{display}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while not Path(f"/tmp/.X11-unix/X{display}").exists():
            if xvfb.poll() is not None or time.time() > deadline:
                raise SystemExit("Xvfb did not start")
            time.sleep(0.1)
        env = dict(os.environ, DISPLAY=f":{display}", QT_QPA_PLATFORM="xcb")
        env["WSI_SAM_SCREENSHOT"] = str(out)
        # a private settings/journal folder, so the screenshot never offers a restore dialog
        env.setdefault("WSI_SAM_DATA_DIR", tempfile.mkdtemp(prefix="wsi-sam-shot-"))
        command = [str(ROOT / ".venv" / "bin" / "wsi-sam"), "gui", *extra]
        print("running:", " ".join(command), f"(DISPLAY=:{display})", flush=True)
        result = subprocess.run(command, env=env, cwd=ROOT, timeout=400)
        if result.returncode != 0 or not out.is_file():
            print(f"the app exited with {result.returncode}; no screenshot", file=sys.stderr)
            return result.returncode or 1
        print(f"saved {out}")
        return 0
    finally:
        xvfb.terminate()
        xvfb.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
