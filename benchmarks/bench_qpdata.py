"""Reading speed of ``qupath_bridge.read_qpdata`` (QuPath's data.qpdata without Java).

Reads each file several times and prints the median time, objects per second and MB per second.
By default it reads the real data.qpdata files in tests/data/qupath (the largest is the QuPath
0.6.0 demo project's: 10 annotations and 121 cells with 126 measurements each); pass other files
to measure those. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_qpdata.py [FILE ...] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qupath_bridge import read_qpdata  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    files = args.files or sorted(
        (ROOT / "tests" / "data" / "qupath").rglob("*.qpdata"), key=lambda p: -p.stat().st_size
    )
    files += [] if args.files else sorted((ROOT / "tests" / "data" / "qupath").rglob("*.hierarchy"))
    print(f"{'file':<48} {'MB':>7} {'objects':>8} {'median ms':>10} {'objects/s':>10} {'MB/s':>7}")
    for path in files:
        times = []
        count = 0
        for _ in range(args.runs):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                count = len(read_qpdata(path).objects)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        size_mb = path.stat().st_size / 1e6
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        print(
            f"{name[-48:]:<48} {size_mb:7.2f} {count:8d} {median * 1000:10.1f} "
            f"{count / median:10.0f} {size_mb / median:7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
