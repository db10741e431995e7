"""Objects by example in the app: the live update of 10,000 objects after each example.

Opens the bundled sample slide in the real main window, puts ``--objects`` detections (small
discs on a grid) in the project's detection layer, gives them synthetic features (two groups, as
if two kinds of object; the encoder is not run, this measures the update, not the features),
shows Classify > Objects by example, and then adds examples one by one, alternating between two
classes. For each example it times:

- *update*: refit the classifier on the examples, predict every other object, recolour the
  preview layer (``ObjectsByExampleController.last_update_ms``);
- *repaint*: the synchronous repaint of the viewer with every object drawn in its new colour
  (fit to window: 10,000 objects on screen);
- *total*: from the click's handler to the repainted view.

Prints median, 95th percentile and maximum per classifier kind. Run it under a real X server to
include the window system::

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \\
        nice -n 15 .venv/bin/python benchmarks/bench_objects_by_example_app.py

or offscreen (the default when no platform is set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Quiet:
    """Answers the window's dialogs (none are expected) without showing them."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--kinds", default="", help="comma-separated; default: every kind")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication
    from shapely.geometry import Point

    import qupath_bridge
    from app import sample_slide_path
    from app.main_window import MainWindow
    from engine.objects.classifier import DEFAULT_KIND, KINDS
    from engine.objects.features import ObjectFeatures

    app = QApplication.instance() or QApplication(sys.argv)
    window = MainWindow(
        predictor_factory=lambda progress: object(), prompter=_Quiet(), start_engine=False
    )
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    assert window.open_path(sample_slide_path())
    width, height = window.slide.dimensions
    side = int(np.ceil(np.sqrt(args.objects)))
    xs = np.linspace(20, width - 20, side)
    ys = np.linspace(20, height - 20, side)
    objects = []
    for i in range(args.objects):
        x, y = xs[i % side], ys[i // side]
        objects.append(
            qupath_bridge.Annotation(
                Point(x, y).buffer(8, quad_segs=4), object_type="detection", name=str(i)
            )
        )
    window.project_objects.set_objects(objects)
    window.view.fit_to_window()
    controller = window.objects_by_example
    controller.dock.show()
    app.processEvents()
    targets = controller.targets()
    rng = np.random.default_rng(0)
    group = np.array([float(obj.geometry.centroid.x) > width / 2 for _k, _s, obj in targets])
    centres = rng.normal(0, 1, (2, 519)).astype(np.float32)
    rows = centres[group.astype(int)] + rng.normal(0, 1.5, (len(targets), 519)).astype(np.float32)
    features = ObjectFeatures(
        rows[:, :256], rows[:, 256:512], np.abs(rows[:, 512:519]).astype(np.float64)
    )
    controller.add_features([k for k, _s, _o in targets], features)
    layer = controller.layer()
    assert layer is not None
    from app.controllers.objects_by_example import _warm_up

    _warm_up()  # the app imports scikit-learn while the features are computed
    kinds = [k for k in args.kinds.split(",") if k] or [DEFAULT_KIND] + [
        k for k in KINDS if k != DEFAULT_KIND
    ]
    platform = QApplication.platformName()
    print(
        f"{len(targets)} objects on the sample slide ({width} x {height}), Qt platform {platform}"
    )
    for kind in kinds:
        controller.kind = kind
        controller.clear_examples()
        left = [k for (k, _s, _o), g in zip(targets, group, strict=True) if not g]
        right = [k for (k, _s, _o), g in zip(targets, group, strict=True) if g]
        updates, repaints, totals = [], [], []
        for n in range(args.examples):
            key = (left if n % 2 == 0 else right)[rng.integers(0, len(left))]
            started = time.perf_counter()
            controller.add_example(key, "Tumor" if n % 2 == 0 else "Ignore*")
            t0 = time.perf_counter()
            window.view.viewport().repaint()
            app.processEvents()
            done = time.perf_counter()
            if n >= 1:  # from the second example on there are two classes: a real update
                updates.append(controller.last_update_ms)
                repaints.append((done - t0) * 1000)
                totals.append((done - started) * 1000)
        correct = np.mean(
            [
                controller.final_class(k)[0] == ("Ignore*" if g else "Tumor")
                for (k, _s, _o), g in zip(targets, group, strict=True)
            ]
        )

        def line(values: list[float]) -> str:
            ordered = sorted(values)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            median = statistics.median(values)
            return f"median {median:.0f} ms, p95 {p95:.0f} ms, max {max(values):.0f} ms"

        tag = " (default)" if kind == DEFAULT_KIND else ""
        print(f"{kind}{tag}, {len(updates)} examples added:")
        print(f"  update (fit, predict {len(targets)}, recolour): {line(updates)}")
        print(f"  repaint of the view: {line(repaints)} (last paint drew {layer.last_paint})")
        print(f"  total per example: {line(totals)}; objects in their group's class: {correct:.3f}")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
