"""``wsi-sam gui [SLIDE_OR_PROJECT]``: launch the desktop application."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gui", help="launch the desktop application (the default)")
    parser.add_argument(
        "path",
        nargs="?",
        default=None,
        help="slide, image or QuPath project to open (default: the bundled sample slide)",
    )
    parser.add_argument(
        "--no-sample", action="store_true", help="start empty instead of opening the sample slide"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.main import run_gui

    return run_gui(args.path, open_sample=not args.no_sample)
