"""Subcommands of the ``wsi-sam`` console script.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
``run(args) -> int``. Modules import torch, Qt or OpenSlide only inside ``run`` so that
``wsi-sam --help`` stays fast.
"""
