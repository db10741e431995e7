"""``wsi-sam batch``: jobs, manifest, the Dask executor on a real local cluster, the command.

The cluster tests share one ``LocalCluster`` of two worker processes (each loads the model once,
a few seconds) and run copies of the sample slide with different prompts, in SAM mode (one
encode per field) to stay cheap on a small shared CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point, box

from app import batch_io
from app.cli import main
from engine.batch import EngineSettings, Manifest, SlideOutcome, Work, run_job
from engine.batch.manifest import settings_sha256
from qupath_bridge import Annotation, PathClass, read_geojson, write_geojson

SAMPLE = Path(__file__).parents[1] / "app" / "resources" / "sample" / "cmu_small_region.svs"
UNREADABLE = Path(__file__).parent / "data" / "slides" / "unreadable.svs"
# SAM mode, one engine thread: the same settings in the workers and in this process
SETTINGS = EngineSettings(mode="sam", threads=1)
CLI_ENGINE = ["--mode", "sam", "--engine-threads", "1", "--no-progress"]


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"objectType": "annotation", **properties},
    }


def rect(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


# four slides (copies of the sample), different prompts, each within one field
PROMPTS = {
    "s1": [feature(rect(900, 1200, 1300, 1600), classification={"name": "Tumor"})],
    "s2": [feature({"type": "MultiPoint", "coordinates": [[1500, 800], [1520, 830]]})],
    "s3": [
        feature(rect(400, 400, 800, 800), **{"wsi-sam prompt": "a"}),
        feature(
            {"type": "Point", "coordinates": [420, 420]},
            classification={"name": "Ignore*"},
            **{"wsi-sam prompt": "a"},
        ),
    ],
    "s4": [feature(rect(1000, 2000, 1400, 2400)), feature(rect(1200, 2100, 1500, 2500))],
}


def write_prompts(path: Path, features: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def make_slides(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(SAMPLE, folder / f"{name}.svs")
        write_prompts(folder / f"{name}.geojson", PROMPTS[name])
    return folder


def jobs_for(
    folder: Path, out: Path, work: Work | None = None, io: batch_io.BatchIO | None = None
) -> tuple[list[Any], str]:
    work = work or Work("prompts")
    io = io or batch_io.BatchIO()
    found = batch_io.find_inputs(folder)
    jobs = batch_io.make_jobs(found, out, SETTINGS, work, io)
    return jobs, settings_sha256(batch_io.settings_identity(SETTINGS, work, io))


def comparable(path: Path) -> dict[str, Any]:
    """The GeoJSON without the time of making."""
    data = json.loads(path.read_text())
    for feat in data["features"]:
        feat["properties"].get("metadata", {}).pop("wsi-sam time", None)
    return data


def journal(out: Path) -> list[dict[str, Any]]:
    text = (out / "manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary(out: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(out / "summary.csv", newline="") as handle:
        return {Path(row["slide"]).stem: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def client(mobile_sam: Any) -> Iterator[Any]:
    """Two worker processes. This process first converts the encoder for OpenVINO and compiles
    it as the workers do, into the test run's cache (the first compile of a configuration can
    take a minute on a busy 2-core machine), so the workers only read it."""
    import torch
    from distributed import Client, LocalCluster

    from engine.batch import cached_predictor

    threads = torch.get_num_threads()
    cached_predictor(SETTINGS)  # and the workers' compiled encoder, into OpenVINO's cache
    torch.set_num_threads(threads)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- prompts convention (no model) -------------------------------------------------------------


def parse(features: list[dict[str, Any]], output_class: str | None = None) -> list[Any]:
    annotations = read_geojson({"type": "FeatureCollection", "features": features})
    return batch_io.prompt_specs(annotations, output_class)


def test_polygons_are_boxes_and_points_are_point_sets() -> None:
    specs = parse(
        [
            feature(
                rect(10, 20, 30, 60),
                classification={"name": "Tumor", "color": [200, 0, 0]},
                name="first",
            ),
            feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}),
            feature({"type": "Point", "coordinates": [5, 6]}, **{"wsi-sam label": 0}),
        ],
        output_class="Stroma",
    )
    assert [s.box for s in specs] == [(10, 20, 30, 60), None, None]
    assert specs[0].carry == {"name": "first", "class": "Tumor", "color": (200, 0, 0)}
    assert specs[1].points == ((1, 2), (3, 4)) and specs[1].labels == (1, 1)
    assert specs[1].carry["class"] == "Stroma" and not specs[1].problem
    assert specs[2].labels == (0,) and specs[2].problem == "a prompt of negative points only"


def test_features_with_one_prompt_tag_are_one_prompt() -> None:
    specs = parse(
        [
            feature(
                {"type": "Point", "coordinates": [5, 6]},
                classification={"name": "Ignore*"},
                **{"wsi-sam prompt": 7},
            ),
            feature(rect(0, 0, 10, 10), **{"wsi-sam prompt": 7}),
            feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
            feature(rect(0, 0, 10, 10), **{"wsi-sam prompt": "two"}),
            feature(rect(2, 2, 10, 10), **{"wsi-sam prompt": "two"}),
        ]
    )
    assert len(specs) == 3
    assert specs[0].box == (0, 0, 10, 10) and specs[0].points == ((5, 6),)
    assert specs[0].labels == (0,) and not specs[0].problem
    assert "carry" not in specs[0].carry and "class" not in specs[0].carry  # not Ignore*
    assert specs[1].problem.startswith("a LineString is not a prompt")
    assert specs[2].problem == "a prompt with two boxes"


def test_inputs_folder_list_and_unique_keys(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("b.svs", "a.tiff", "notes.txt", ".hidden.svs", "a.geojson"):
        (folder / name).write_bytes(b"x")
    found = batch_io.find_inputs(folder)
    assert [i.slide.name for i in found.items] == ["a.tiff", "b.svs"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.svs").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# cohort\nslides/a.tiff\n\n{other / 'a.svs'}\n")
    found = batch_io.find_inputs(listing)
    assert [i.slide for i in found.items] == [folder / "a.tiff", other / "a.svs"]
    keys = [
        job.key
        for job in batch_io.make_jobs(found, tmp_path / "out", SETTINGS, Work(), batch_io.BatchIO())
    ]
    assert len(set(keys)) == 2 and all(k.startswith("a-") for k in keys)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no slides in this folder"):
        batch_io.find_inputs(tmp_path / "empty")


# --- manifest ----------------------------------------------------------------------------------


def test_manifest_complete_only_with_same_inputs_settings_and_intact_output(
    tmp_path: Path,
) -> None:
    output = tmp_path / "a.geojson"
    output.write_text("{}")
    from engine.batch import file_sha256

    manifest = Manifest(tmp_path)
    done = SlideOutcome(
        "a",
        "a.svs",
        "done",
        output=str(output),
        output_sha256=file_sha256(output),
        input_sha256="in",
    )
    manifest.record(done, "set")
    manifest.record(SlideOutcome("b", "b.svs", "failed", error="bad"), "set")
    # a kill in the middle of a line: the torn line is ignored, the rest is read
    with open(tmp_path / "manifest.jsonl", "a") as handle:
        handle.write('{"key": "c", "status": "do')
    again = Manifest(tmp_path)
    assert again.torn_lines == 1 and set(again.entries) == {"a", "b"}
    assert again.complete("a", "in", "set")
    assert not again.complete("a", "changed", "set") and not again.complete("a", "in", "other")
    assert not again.complete("b", "", "set") and not again.complete("c", "", "set")
    output.write_text('{"changed": 1}')
    assert not again.complete("a", "in", "set")
    assert len(journal(tmp_path)) == 2  # compacted


# --- on the cluster ----------------------------------------------------------------------------


def test_cluster_gives_the_same_geojson_as_each_slide_alone(
    client: Any, tmp_path: Path, keep_torch_threads: None
) -> None:
    from engine.batch.executor import run_batch

    folder = make_slides(tmp_path / "slides", ["s1", "s2", "s3", "s4"])
    out = tmp_path / "out"
    jobs, settings = jobs_for(folder, out)
    report = run_batch(jobs, client, out, settings, progress=False)
    assert report.done == 4 and not report.failed and not report.skipped
    workers = {o.worker for o in report.outcomes}
    assert len(workers) == 2, workers  # both workers took slides
    rows = summary(out)
    assert {k: (r["status"], r["objects_in"], r["objects_out"]) for k, r in rows.items()} == {
        "s1": ("done", "1", "1"),
        "s2": ("done", "1", "1"),
        "s3": ("done", "1", "1"),
        "s4": ("done", "2", "2"),
    }
    alone = tmp_path / "alone"
    alone.mkdir()
    for job in jobs:
        target = alone / f"{job.key}.geojson"
        single = type(job)(
            **{
                **job.__dict__,
                "target": {"kind": "geojson", "path": str(target)},
                "output": str(target),
            }
        )
        outcome = run_job(single)
        assert outcome.status == "done", outcome.error
        assert comparable(target) == comparable(Path(job.output)), job.key
    s1 = read_geojson(out / "s1.geojson")[0]
    assert s1.class_name == "Tumor" and s1.metadata["wsi-sam prompt kind"] == "box"
    s3 = read_geojson(out / "s3.geojson")[0]
    assert json.loads(s3.metadata["wsi-sam prompt"])["labels"] == [0]


def test_rerun_after_an_interruption_recomputes_only_unfinished_slides(
    client: Any, tmp_path: Path
) -> None:
    from engine.batch.executor import run_batch

    folder = make_slides(tmp_path / "slides", ["s1", "s2", "s3"])
    out = tmp_path / "out"
    jobs, settings = jobs_for(folder, out)
    assert run_batch(jobs, client, out, settings, progress=False).done == 3
    # what a run killed after s1 finished leaves: s1's line, a torn line, no output for s2 and
    # s3 but a temporary file of a write cut short
    lines = {entry["key"]: entry for entry in journal(out)}
    (out / "manifest.jsonl").write_text(json.dumps(lines["s1"]) + "\n" + '{"key": "s2", "st')
    (out / "s2.geojson").unlink()
    (out / "s3.geojson").unlink()
    (out / ".s3.geojson.999999999.x1y2.tmp").write_text('{"type": "FeatureCol')
    kept = (out / "s1.geojson").stat().st_mtime_ns
    jobs, settings = jobs_for(folder, out)
    report = run_batch(jobs, client, out, settings, progress=False)
    assert report.skipped == ["s1"]
    assert sorted(o.key for o in report.outcomes) == ["s2", "s3"] and report.done == 2
    assert (out / "s1.geojson").stat().st_mtime_ns == kept
    assert not (out / ".s3.geojson.999999999.x1y2.tmp").exists()
    assert [r["status"] for r in summary(out).values()] == ["skipped", "done", "done"]
    # a third run has nothing to do; a changed prompt file or --force redo slides
    assert run_batch(jobs, client, out, settings, progress=False).outcomes == []
    write_prompts(folder / "s2.geojson", PROMPTS["s1"])
    jobs, settings = jobs_for(folder, out)
    report = run_batch(jobs, client, out, settings, progress=False)
    assert [o.key for o in report.outcomes] == ["s2"]


def test_a_killed_command_loses_only_slides_in_flight_and_resumes(
    client: Any, tmp_path: Path
) -> None:
    """``kill`` (SIGTERM) of a real ``wsi-sam batch`` with its own local cluster, as soon as the
    first slide is recorded; then the same command again (on the test cluster)."""
    import subprocess
    import sys

    folder = make_slides(tmp_path / "slides", ["s1", "s2", "s3", "s4"])
    out = tmp_path / "out"
    args = ["batch", str(folder), "--out", str(out), "--prompts", "geojson", *CLI_ENGINE]
    process = subprocess.Popen(
        [sys.executable, "-m", "app", *args, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "manifest.jsonl").is_file() and journal(out):
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err
    finished = {e["key"] for e in journal(out)}
    rows = summary(out)
    assert finished and len(finished) < 4
    assert {k for k, r in rows.items() if r["status"] == "done"} == finished
    assert {k for k, r in rows.items() if r["status"] == "pending"} == set(rows) - finished
    for key in ("s1", "s2", "s3", "s4"):  # an output is there complete, or not at all
        output = out / f"{key}.geojson"
        if key in finished:
            assert output.exists()
        if output.exists():
            assert len(read_geojson(output)) == len(PROMPTS[key])
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    rows = summary(out)
    assert {k for k, r in rows.items() if r["status"] == "skipped"} == finished
    assert {k for k, r in rows.items() if r["status"] == "done"} == set(rows) - finished


def test_corrupt_slide_is_reported_and_the_others_finish(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_slides(tmp_path / "slides", ["s1", "s2"])
    shutil.copyfile(UNREADABLE, folder / "broken.svs")
    write_prompts(folder / "broken.geojson", PROMPTS["s1"])
    write_prompts(folder / "s2.geojson", [{"type": "Feature", "geometry": None}])  # bad prompts
    out = tmp_path / "out"
    address = client.scheduler.address
    status = main(
        [
            "batch",
            str(folder),
            "--out",
            str(out),
            "--prompts",
            "geojson",
            "--scheduler",
            address,
            *CLI_ENGINE,
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "2 of 3 slides failed" in err
    rows = summary(out)
    assert rows["s1"]["status"] == "done" and rows["s1"]["objects_out"] == "1"
    assert rows["broken"]["status"] == "failed"
    assert "broken.svs: corrupt or unsupported aperio slide" in rows["broken"]["error"]
    assert rows["s2"]["status"] == "failed" and "'geometry' is null" in rows["s2"]["error"]
    assert not (out / "broken.geojson").exists() and not (out / "s2.geojson").exists()


def test_refine_and_everything_modes(client: Any, tmp_path: Path) -> None:
    from engine.batch.executor import run_batch
    from engine.everything import EverythingSettings

    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copyfile(SAMPLE, folder / "r.svs")
    outline = Annotation(
        geometry=Point(1100, 1400).buffer(180),
        path_class=PathClass.from_name("Tumor"),
        name="rough",
        id="0a0a0a0a-0000-4000-8000-100000000000",
    )
    region = Annotation(
        geometry=box(900, 1200, 1400, 1700), path_class=PathClass.from_name("Region*")
    )
    write_geojson(folder / "r.geojson", [outline, region])
    out = tmp_path / "refine"
    jobs, settings = jobs_for(folder, out, Work("refine"))
    report = run_batch(jobs, client, out, settings, progress=False)
    assert report.done == 1, report.outcomes[0].error
    refined = {a.id: a for a in read_geojson(out / "r.geojson")}
    assert report.outcomes[0].objects_in == 2 and set(refined) == {outline.id, region.id}
    made = refined[outline.id]
    assert made.name == "rough" and made.class_name == "Tumor"
    assert made.metadata["wsi-sam prompt kind"] == "refine"
    assert not made.geometry.equals(outline.geometry)

    out = tmp_path / "everything"
    work = Work("everything", EverythingSettings(points_per_side=4))
    io = batch_io.BatchIO(output_class="Gland", region_class="Region*")
    jobs, settings = jobs_for(folder, out, work, io)
    report = run_batch(jobs, client, out, settings, progress=False)
    outcome = report.outcomes[0]
    assert outcome.status == "done", outcome.error
    found = read_geojson(out / "r.geojson")
    assert outcome.objects_in == 1 and outcome.objects_out == len(found)
    region_area = region.geometry.buffer(1).area
    for obj in found:
        assert obj.class_name == "Gland" and obj.geometry.area < region_area
        assert obj.metadata["wsi-sam prompt kind"] == "everything"


def test_project_without_qupath_goes_to_the_sidecars(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qupath_bridge
    from qupath_bridge import QuPathStatus, file_uri, open_project, qupath_status

    monkeypatch.setattr(
        qupath_bridge.qupath, "_detect", lambda: QuPathStatus(False, None, None, "no QuPath (test)")
    )
    qupath_status(refresh=True)
    slides = make_slides(tmp_path / "slides", ["s1"])
    project = tmp_path / "project"
    project.mkdir()
    entry = {
        "serverBuilder": {
            "builderType": "uri",
            "providerClassName": "x",
            "uri": file_uri(slides / "s1.svs"),
            "args": [],
        },
        "entryID": 1,
        "imageName": "s1.svs",
        "randomizedName": "00000000-0000-0000-0000-000000000001",
    }
    (project / "project.qpproj").write_text(
        json.dumps({"version": "0.5.1", "images": [entry], "lastID": 1})
    )
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_prompts(prompts / "s1.geojson", PROMPTS["s4"])
    args = [
        "batch",
        str(project),
        "--prompts",
        "geojson",
        "--prompts-dir",
        str(prompts),
        "--scheduler",
        client.scheduler.address,
        *CLI_ENGINE,
    ]
    assert main(args) == 0
    sidecar = project / "wsi-sam" / "1.geojson"
    written = read_geojson(sidecar)
    assert len(written) == 2
    with open_project(project) as opened:
        assert {a.id for a in opened.read_annotations("1")} == {a.id for a in written}
    assert summary(project / "wsi-sam" / "batch")["s1"]["status"] == "done"
    assert main(args) == 0  # complete: skipped
    assert summary(project / "wsi-sam" / "batch")["s1"]["status"] == "skipped"
    assert main([*args, "--force"]) == 0  # redone: the same ids replaced, not added
    assert [a.id for a in read_geojson(sidecar)] == [a.id for a in written]
    qupath_status(refresh=True)


def test_a_killed_worker_still_ends_with_every_slide_done_once(client: Any, tmp_path: Path) -> None:
    from engine.batch.executor import run_batch

    folder = make_slides(tmp_path / "slides", ["s1", "s2", "s3", "s4"])
    out = tmp_path / "out"
    jobs, settings = jobs_for(folder, out)
    pids = client.run(os.getpid)
    killed: list[tuple[str, list[Any]]] = []

    def kill_a_busy_worker(job: Any, outcome: SlideOutcome) -> SlideOutcome:
        if not killed:
            for address, keys in client.processing().items():
                if keys and address in pids:
                    os.kill(pids[address], signal.SIGKILL)
                    killed.append((address, list(keys)))
                    break
        return outcome

    report = run_batch(jobs, client, out, settings, progress=False, finish=kill_a_busy_worker)
    assert killed and killed[0][1], "no worker was busy when the first slide finished"
    assert sorted(o.key for o in report.outcomes) == ["s1", "s2", "s3", "s4"]
    assert report.done == 4, [o.error for o in report.failed]
    entries = journal(out)
    assert sorted(e["key"] for e in entries) == ["s1", "s2", "s3", "s4"]  # each once
    for job in jobs:
        assert read_geojson(Path(job.output))
    # the nanny restarts the killed worker: the cluster has two again
    deadline = time.monotonic() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message", "status"),
    [
        (["--everything"], "--everything needs --regions CLASS", 2),
        (["--refine", "--regions", "Tumor"], "--regions goes with --everything", 2),
        (["--refine", "--prompts-dir", "/no/such/dir"], "--prompts-dir /no/such/dir: no such", 1),
        (["--refine", "--workers", "2", "--scheduler", "tcp://x:1"], "an existing cluster", 2),
    ],
)
def test_command_line_errors_end_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
    status: int,
) -> None:
    folder = make_slides(tmp_path / "slides", ["s1"])
    assert main(["batch", str(folder), "--out", str(tmp_path / "out"), *extra]) == status
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_command_line_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", str(tmp_path / "missing"), "--out", str(tmp_path), "--refine"]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), "--out", str(tmp_path), "--refine"]) == 1
    assert "no slides in this folder" in capsys.readouterr().err
    folder = make_slides(tmp_path / "slides", ["s1"])
    assert main(["batch", str(folder), "--refine"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(folder), "--out", str(tmp_path)])  # no work given
    assert exc.value.code == 2
