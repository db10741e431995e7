"""``wsi-sam heads list``: the WSI-SAM heads there are to choose from (``--heads NAME``).

Lists the shipped heads and instance decoders, those in the user's heads folder
(``WSI_SAM_HEADS_DIR`` overrides it) and, with ``--project``, those in the project's
``wsi-sam/heads/`` folder: name, place, what they were trained on, their evaluation figures,
sha256. Files that are neither heads nor decoders are reported with the reason and skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heads",
        help="list the WSI-SAM heads to choose from (--heads NAME)",
        description="The heads catalogue: shipped heads, the user's heads folder and a QuPath "
        "project's wsi-sam/heads/ folder. A name listed here works as --heads NAME.",
    )
    actions = parser.add_subparsers(dest="heads_command", metavar="ACTION")
    listing = actions.add_parser("list", help="print the catalogue")
    listing.add_argument("--project", type=Path, help="also a QuPath project's wsi-sam/heads/")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _entry_json(e: Any) -> dict[str, Any]:
    return {
        "name": e.name,
        "place": e.place,
        "path": str(e.path),
        "sha256": e.sha256,
        "size": e.size,
        "trained_on": e.trained_on,
        "figures": e.figures,
    }


def catalogue_json(catalogue: Any) -> dict[str, Any]:
    return {
        "heads": [_entry_json(e) for e in catalogue.entries],
        "instance_decoders": [
            {**_entry_json(e), "magnification": e.metadata.get("magnification")}
            for e in catalogue.decoders
        ],
        "skipped": [
            {"path": str(s.path), "place": s.place, "reason": s.reason} for s in catalogue.skipped
        ],
    }


def run_list(args: argparse.Namespace) -> int:
    from engine.heads_catalogue import build_catalogue, user_heads_dir

    catalogue = build_catalogue(project=args.project)
    if args.json:
        print(json.dumps(catalogue_json(catalogue), indent=1))
        return 0
    print(f"user heads folder: {user_heads_dir()}")
    if not catalogue.entries:
        print("no heads found (plain SAM only)")
    for entry in catalogue.entries:
        print()
        print(entry.describe())
    print()
    print("instance decoders (segment --everything --instances NAME):")
    if not catalogue.decoders:
        print("none")
    for entry in catalogue.decoders:
        print()
        print(entry.describe())
    for skipped in catalogue.skipped:
        print(f"\nskipped {skipped.path} ({skipped.place}): {skipped.reason}")
    return 0
