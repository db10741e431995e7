"""Step 4 of ``engine/heads/RETRAIN_RULE.md``: check retrained heads against the shipping
conditions, read from the one test evaluation, and ship them if they pass.

    python scripts/ship_heads.py --heads runs/retrain_default_heads/final/heads.pt \
        --glas runs/retrain_default_heads/eval_glas \
        --monuseg runs/retrain_default_heads/eval_monuseg [--ship]

``--glas`` and ``--monuseg`` are ``wsi-sam eval`` output folders (their ``results.csv``). Prints
each condition with its figures. With ``--ship`` and every GlaS condition met, the heads are
copied over the shipped file (write then rename) and its card is written from the same figures,
so nothing is typed by hand. The box Dice to beat is the one on the shipped heads' card; heads
that are already the shipped file are only checked again (their card rewritten).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPTS = ("box", "3", "5", "10")
GLAS_SPLIT = "GlaS test images (5 images, 70 glands, zero-shot)"
GLAS_PROTOCOL = (
    "wsi-sam eval --images Test_Folder/img --masks Test_Folder/labelcol --image-magnification 20 "
    "--dataset GlaS --models sam,wsi-sam,medsam --prompts box,3,5,10 --seed 0"
)
MONUSEG_SPLIT = "MoNuSeg test nuclei (40 nuclei, 40x, adaptive)"
#: RETRAIN_RULE.md step 4
MIN_BOX_GAIN = 2.0
MAX_MONUSEG_LOSS = 1.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def read_results(folder: Path) -> tuple[dict[str, dict[str, float]], int]:
    """``{"SAM"|"WSI-SAM": {prompt: dice}}`` and the object count of ``folder/results.csv``."""
    path = folder / "results.csv"
    if not path.is_file():
        raise SystemExit(f"error: no results.csv in {folder} (run wsi-sam eval --out {folder})")
    from engine.evaluate import read_results_csv

    dice: dict[str, dict[str, float]] = {"SAM": {}, "WSI-SAM": {}}
    groups, counts = set(), set()
    for row in read_results_csv(path):
        label = {"sam": "SAM", "wsi-sam": "WSI-SAM"}.get(row.model)
        if label is None or row.prompt not in PROMPTS:
            continue
        groups.add(row.group)
        counts.add(row.n_objects)
        dice[label][row.prompt] = row.dice
    missing = [f"{m} {p}" for m in dice for p in PROMPTS if p not in dice[m]]
    if missing or len(groups) != 1 or len(counts) != 1:
        raise SystemExit(
            f"error: {path} must hold SAM and WSI-SAM at {', '.join(PROMPTS)} for one data set "
            f"(missing: {', '.join(missing) or 'none'}; groups: {sorted(groups)})"
        )
    return dice, counts.pop()


def shipping_checks(
    glas: dict[str, dict[str, float]], monuseg: dict[str, dict[str, float]], shipped_box: float
) -> tuple[list[Check], bool]:
    """The GlaS conditions (all must pass to ship) and whether MoNuSeg makes them gland heads."""
    gain = {p: glas["WSI-SAM"][p] - glas["SAM"][p] for p in PROMPTS}
    checks = [
        Check(
            f"GlaS box gain >= {MIN_BOX_GAIN:g}",
            gain["box"] >= MIN_BOX_GAIN,
            f"{glas['WSI-SAM']['box']:.2f} - {glas['SAM']['box']:.2f} = {gain['box']:+.2f}",
        )
    ]
    for p in PROMPTS[1:]:
        checks.append(Check(f"GlaS {p} points not worse than SAM", gain[p] >= 0, f"{gain[p]:+.2f}"))
    checks.append(
        Check(
            "GlaS box above the shipped heads'",
            glas["WSI-SAM"]["box"] > shipped_box,
            f"{glas['WSI-SAM']['box']:.2f} vs {shipped_box:.2f}",
        )
    )
    worst = min(monuseg["WSI-SAM"][p] - monuseg["SAM"][p] for p in PROMPTS)
    return checks, worst < -MAX_MONUSEG_LOSS


def evaluation_card(
    glas: dict[str, dict[str, float]], n_glas: int, monuseg: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The ``evaluation`` of the shipped heads' card (what the heads catalogue shows)."""
    return {
        "split": GLAS_SPLIT,
        "n_objects": n_glas,
        "protocol": GLAS_PROTOCOL,
        "dice": {m: {p: round(glas[m][p], 2) for p in PROMPTS} for m in ("WSI-SAM", "SAM")},
        "cross_domain": {
            "split": MONUSEG_SPLIT,
            "dice": {m: {p: round(monuseg[m][p], 2) for p in PROMPTS} for m in ("WSI-SAM", "SAM")},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=Path, required=True, help="the retrained heads (.pt)")
    parser.add_argument("--glas", type=Path, required=True, help="wsi-sam eval folder, GlaS test")
    parser.add_argument("--monuseg", type=Path, required=True, help="wsi-sam eval folder, MoNuSeg")
    parser.add_argument("--ship", action="store_true", help="ship the heads if they pass")
    parser.add_argument(
        "--into", type=Path, default=None, help="the shipped heads file (default: the package's)"
    )
    args = parser.parse_args(argv)

    from engine._files import atomic_write_bytes
    from engine.heads_catalogue import file_sha256, read_card, write_card
    from engine.wsi_sam import default_heads_path

    target = args.into or default_heads_path()
    if not args.heads.is_file():
        raise SystemExit(f"error: no heads file {args.heads}")
    glas, n_glas = read_results(args.glas)
    monuseg, _ = read_results(args.monuseg)
    already = target.is_file() and file_sha256(target) == file_sha256(args.heads)
    shipped = read_card(target, file_sha256(target)) if target.is_file() else {}
    shipped_box = shipped.get("dice", {}).get("WSI-SAM", {}).get("box")
    if shipped_box is None and not already:
        raise SystemExit(f"error: {target} has no card with its figures: nothing to compare with")
    shipped_box = float("nan") if shipped_box is None else float(shipped_box)
    checks, gland_only = shipping_checks(glas, monuseg, shipped_box)
    if already:  # the card's figures are these heads' own: nothing to beat
        checks = [c for c in checks if not c.name.startswith("GlaS box above")]
    for check in checks:
        print(f"{'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    print(
        "MoNuSeg: more than 1 point worse than SAM, so gland heads (plain SAM for nuclei)"
        if gland_only
        else "MoNuSeg: not more than 1 point worse than SAM anywhere"
    )
    ok = all(c.passed for c in checks)
    print(("these are the shipped heads; " if already else "") + ("ship" if ok else "do not ship"))
    if args.ship and ok:
        if not already:
            atomic_write_bytes(target, args.heads.read_bytes())
        notes = [f"figures from {args.glas} and {args.monuseg} (scripts/ship_heads.py)"]
        if gland_only:
            notes.append("gland heads: worse than SAM on MoNuSeg nuclei; use plain SAM for nuclei")
        card = write_card(target, evaluation_card(glas, n_glas, monuseg), notes)
        print(f"shipped {target} with card {card}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
