"""The command ``python -m xaikit.train RECIPE``: train (or resume) a recipe of `RECIPES` (see `main`)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import torch

from ..demo_models import WEIGHTS_DIR
from ..errors import XaikitError
from .cards import trained_dir
from .checkpoints import training_dir
from .loop import train
from .recipes import RECIPES


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xaikit.train",
        description="Train (or resume training) a recipe: a demo ViT, or a fine-tuning of published weights. "
        f"The weights and model card go into {trained_dir()} (fine-tuned recipes: $XAIKIT_WEIGHTS_DIR), or "
        "--out-dir; load them with xaikit.train.load_trained(NAME or card path).",
    )
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where the weights and model card go (default: {trained_dir()})")
    parser.add_argument("--replace-shipped", action="store_true",
                        help=f"write into {WEIGHTS_DIR}, replacing the demo model shipped with xaikit")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help=f"where the resumable checkpoint goes (default: {training_dir()})")
    parser.add_argument("--epochs", type=_epochs, default=None, help="override the recipe's epochs (>= 1)")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="fine-tuned recipes: a local file with the starting weights (default: found by "
                        "xaikit.load_model, $XAIKIT_WEIGHTS_DIR first)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch")
    args = parser.parse_args(argv)
    config = RECIPES[args.recipe]
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    torch.set_num_threads(args.threads)
    extra = {"init_weights": args.init_weights} if args.init_weights is not None else {}
    try:
        train(config, out_dir=args.out_dir, work_dir=args.work_dir, replace_shipped=args.replace_shipped, **extra)
    except XaikitError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
