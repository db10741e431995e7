"""Evaluation summaries and reports (tables in the paper's layout, CSV, plot), and Dice."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.evaluate import (
    EvaluationRun,
    ObjectResult,
    dice,
    parse_models,
    parse_prompts,
    results_markdown,
    summarise,
    write_reports,
)


def _results() -> list[ObjectResult]:
    rng = np.random.default_rng(0)
    out = []
    for model in ("sam", "wsi-sam", "medsam"):
        for prompt in ("box", "3", "5", "10"):
            if model == "medsam" and prompt != "box":
                continue
            for group, n in (("GlaS", 3), ("MoNuSeg", 2)):
                for i in range(n):
                    out.append(
                        ObjectResult(
                            model, prompt, group, group, f"{group}.png", str(i), rng.random()
                        )
                    )
    return out


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_summary_means_per_group_and_overall() -> None:
    results = _results()
    rows = summarise(results)
    lookup = {(r.model, r.prompt, r.group): r for r in rows}
    for (model, prompt, group), row in lookup.items():
        chosen = [
            r.dice
            for r in results
            if r.model == model and r.prompt == prompt and (group == "all" or r.group == group)
        ]
        assert row.n_objects == len(chosen)
        assert row.dice == pytest.approx(100 * np.mean(chosen))
    assert ("medsam", "3", "GlaS") not in lookup
    assert lookup[("sam", "box", "all")].n_objects == 5
    # a single group has no separate "all" row
    single = summarise([r for r in results if r.group == "GlaS"])
    assert {r.group for r in single} == {"GlaS"}


def test_markdown_tables_follow_the_paper_layout() -> None:
    rows = summarise(_results())
    text = results_markdown(rows, notes=["seed 0"])
    assert "## Table 1" in text and "## Table 4" in text and "- seed 0" in text
    table1 = text.split("## Table 1")[1].split("## Table 4")[0]
    assert "| Model | GlaS (n=3) | MoNuSeg (n=2) | all (n=5) |" in table1
    assert table1.count("| SAM |") == 1 and "| MedSAM |" in table1
    table4 = text.split("## Table 4")[1]
    assert "| Model | 3 points | 5 points | 10 points |" in table4
    assert "MedSAM" not in table4  # box prompts only
    sam_glas_box = next(r for r in rows if (r.model, r.prompt, r.group) == ("sam", "box", "GlaS"))
    assert f"| SAM | {sam_glas_box.dice:.2f} |" in table1


def test_write_reports(tmp_path: Path) -> None:
    run = EvaluationRun(results=_results(), n_objects=5)
    paths = write_reports(run, tmp_path / "out", notes=["x"])
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "prompt", "group", "n_objects", "dice"]
    assert len(rows) == len(summarise(run.results))
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().startswith("# Zero-shot evaluation")
    assert len(paths["per_object"].read_text().splitlines()) == len(run.results) + 1


def test_parse_settings() -> None:
    assert parse_prompts("box, 3,5,10,3") == ["box", "3", "5", "10"]
    assert parse_models("SAM,wsi-sam") == ["sam", "wsi-sam"]
    with pytest.raises(ValueError, match="prompt setting"):
        parse_prompts("box,0")
    with pytest.raises(ValueError, match="unknown model"):
        parse_models("sam,unet")
