"""The ``wsi-sam`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from app import __version__

# subcommand modules under app.commands, in the order --help lists them
COMMANDS = [
    "gui",
    "segment",
    "train",
    "train_instances",
    "eval",
    "eval_instances",
    "classify",
    "project",
    "batch",
    "heads",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-sam",
        description="WSI-SAM Studio: segment whole-slide images with WSI-SAM, keep the "
        "annotations in QuPath. With no subcommand the desktop app starts.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-sam {__version__}")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the installation offscreen (model, sample slide, both modes, GeoJSON, "
        "window), print one line and exit 0, or exit 1 with the reason",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"app.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `wsi-sam` and `wsi-sam SLIDE` both mean `wsi-sam gui [SLIDE]`.
    names = {name.replace("_", "-") for name in COMMANDS}  # train_instances: train-instances
    if not args_list or (args_list[0] not in names and not args_list[0].startswith("-")):
        args_list = ["gui", *args_list]
    from app.errors import join_negative_values, run_reporting

    args = parser.parse_args(join_negative_values(args_list))
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    # user errors end in one line and exit status 1 (2 for usage); a bug keeps its traceback
    result: int = run_reporting(f"wsi-sam {args.command}", lambda: args.func(args))
    return result
