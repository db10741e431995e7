"""scripts/ship_heads.py: RETRAIN_RULE.md's shipping conditions, read from wsi-sam eval results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from engine.heads_catalogue import file_sha256, read_card

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_heads.py"
_spec = importlib.util.spec_from_file_location("ship_heads", SCRIPT)
assert _spec is not None and _spec.loader is not None
ship_heads = importlib.util.module_from_spec(_spec)
sys.modules["ship_heads"] = ship_heads  # its dataclass looks its module up there
_spec.loader.exec_module(ship_heads)

GOOD_GLAS = {"SAM": (81.0, 40.0, 62.0, 75.0), "WSI-SAM": (84.0, 60.0, 70.0, 75.5)}
MONUSEG = {"SAM": (82.0, 44.0, 47.0, 54.0), "WSI-SAM": (81.5, 50.0, 50.0, 55.0)}


def write_results(folder: Path, dice: dict[str, tuple[float, ...]], n: int = 70) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["model,prompt,group,n_objects,dice"]
    for model, label in (("sam", "SAM"), ("wsi-sam", "WSI-SAM")):
        for prompt, value in zip(ship_heads.PROMPTS, dice[label], strict=True):
            lines.append(f"{model},{prompt},GlaS,{n},{value:.2f}")
    lines.append(f"medsam,box,GlaS,{n},70.00")
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    return folder


def figures(dice: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {m: dict(zip(ship_heads.PROMPTS, v, strict=True)) for m, v in dice.items()}


@pytest.mark.parametrize(
    ("wsi_sam", "shipped_box", "failing"),
    [
        ((84.0, 60.0, 70.0, 75.5), 82.0, []),
        ((82.9, 60.0, 70.0, 75.5), 82.0, ["GlaS box gain >= 2"]),  # +1.9 only
        ((84.0, 60.0, 70.0, 74.9), 82.0, ["GlaS 10 points not worse than SAM"]),
        ((84.0, 60.0, 70.0, 75.5), 84.5, ["GlaS box above the shipped heads'"]),
    ],
)
def test_each_glas_condition_can_fail(wsi_sam, shipped_box, failing) -> None:
    glas = figures({"SAM": GOOD_GLAS["SAM"], "WSI-SAM": wsi_sam})
    checks, gland_only = ship_heads.shipping_checks(glas, figures(MONUSEG), shipped_box)
    assert [c.name for c in checks if not c.passed] == failing
    assert not gland_only


def test_more_than_a_point_worse_on_nuclei_makes_gland_heads() -> None:
    worse = {"SAM": MONUSEG["SAM"], "WSI-SAM": (80.9, 50.0, 50.0, 55.0)}  # -1.1 with boxes
    _, gland_only = ship_heads.shipping_checks(figures(GOOD_GLAS), figures(worse), 82.0)
    assert gland_only


def test_ship_copies_the_heads_and_writes_their_card_from_the_results(tmp_path: Path) -> None:
    shipped, new = tmp_path / "default.pt", tmp_path / "new.pt"
    shipped.write_bytes(b"old heads")
    (tmp_path / "default.card.json").write_text(
        json.dumps(
            {"sha256": file_sha256(shipped), "evaluation": {"dice": {"WSI-SAM": {"box": 82.0}}}}
        )
    )
    new.write_bytes(b"new heads")
    glas = write_results(tmp_path / "glas", GOOD_GLAS)
    nuclei = write_results(tmp_path / "monuseg", MONUSEG, n=40)
    argv = [
        "--heads",
        str(new),
        "--glas",
        str(glas),
        "--monuseg",
        str(nuclei),
        "--into",
        str(shipped),
    ]
    assert ship_heads.main(argv) == 0  # a check alone changes nothing
    assert shipped.read_bytes() == b"old heads"
    assert ship_heads.main([*argv, "--ship"]) == 0
    assert shipped.read_bytes() == b"new heads"
    card = read_card(shipped, file_sha256(shipped))
    assert (
        card["dice"]["WSI-SAM"]["box"] == 84.0 and card["cross_domain"]["dice"]["SAM"]["3"] == 44.0
    )
    # heads that fail are not shipped
    write_results(glas, {"SAM": GOOD_GLAS["SAM"], "WSI-SAM": (82.5, 60.0, 70.0, 75.5)})
    other = tmp_path / "other.pt"
    other.write_bytes(b"other heads")
    assert ship_heads.main([*argv[:1], str(other), *argv[2:], "--ship"]) == 1
    assert shipped.read_bytes() == b"new heads"


def test_incomplete_results_are_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "glas"
    folder.mkdir()
    (folder / "results.csv").write_text("model,prompt,group,n_objects,dice\nsam,box,GlaS,70,81.0\n")
    with pytest.raises(SystemExit, match="must hold SAM and WSI-SAM"):
        ship_heads.read_results(folder)
