"""``wsi-sam project relink PROJECT --search DIR``: find a moved project's missing images.

Searches DIR (recursively) for the file name of every image whose file is missing, and points
each image found exactly once at its new file, in ``project.qpproj`` (backed up first to
``<project>/wsi-sam/backups/``, written atomically, every other field kept). Images found more
than once are listed and left alone unless ``--first`` is given. Works without QuPath.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "project",
        help="QuPath project tools (relink moved images); no QuPath needed",
        description="Tools for QuPath projects that work without a QuPath installation.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    relink = actions.add_parser(
        "relink",
        help="find missing images in a folder and update their URIs in project.qpproj",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    relink.add_argument("project", help="the project folder or its project.qpproj")
    relink.add_argument(
        "--search", type=Path, required=True, metavar="DIR", help="folder to search (recursively)"
    )
    relink.add_argument(
        "--first",
        action="store_true",
        help="when an image's file name is found more than once, take the first path (sorted)",
    )
    relink.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    relink.set_defaults(func=run_relink)


def run_relink(args: argparse.Namespace) -> int:
    import qupath_bridge

    try:
        project = qupath_bridge.open_project(args.project, mode="r")
        missing = qupath_bridge.missing_images(project.images)
        if not missing:
            print(f"All {len(project.images)} images of {project.path} are found; nothing to do.")
            return 0
        matches = qupath_bridge.find_images(missing, args.search)
        chosen: dict[str, Path] = {}
        for image in missing:
            paths = matches.get(image.entry_id, [])
            if len(paths) == 1 or (paths and args.first):
                chosen[image.entry_id] = paths[0]
                print(f"{image.name}: {paths[0]}")
            elif paths:
                listed = ", ".join(str(p) for p in paths)
                print(
                    f"{image.name}: found {len(paths)} times, not changed ({listed}); "
                    "use --first to take the first"
                )
            else:
                print(f"{image.name}: not found in {args.search}")
        if not chosen:
            print(
                f"wsi-sam project relink: none of the {len(missing)} missing images could be "
                f"relinked from {args.search}",
                file=sys.stderr,
            )
            return 1
        if args.dry_run:
            print(f"would relink {len(chosen)} of {len(missing)} missing images (dry run)")
            return 0
        backup = qupath_bridge.relink_images(project, chosen)
    except qupath_bridge.BridgeError as exc:
        print(f"wsi-sam project relink: {exc}", file=sys.stderr)
        return 1
    where = f" (backup: {backup})" if backup is not None else ""
    print(f"relinked {len(chosen)} of {len(missing)} missing images in {project.path}{where}")
    return 0
