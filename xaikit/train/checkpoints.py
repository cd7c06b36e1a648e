"""Resumable checkpoints: a run's state (`RunState`) saved to ``<work_dir>/<recipe name>.ckpt.pt`` and restored.

A checkpoint holds only tensors, numbers and JSON text (model, optimiser, schedule and random generator
states; step, seconds trained and training curve as JSON; the recipe's identity, `recipe_identity`), so it
is read with ``torch.load(weights_only=True)``; one of another recipe is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.manifests import cache_dir
from ..errors import DataIntegrityError
from ..fileio import atomic_write


def training_dir() -> Path:
    """Default folder of resumable checkpoints: ``$XAIKIT_CACHE_DIR/training``, else ``~/.cache/xaikit/training``."""
    return cache_dir() / "training"


@dataclass
class RunState:
    """What a checkpoint holds: the model, optimiser, schedule and generator of a run, and its `progress`.

    progress: ``{"step", "train_seconds", "history"}`` (the curve, one entry per epoch), plus ``"best"``
    (epoch and validation loss) for recipes with ``keep="best-val-loss"``, whose best weights so far
    (on the CPU) are `best_weights`. `recipe_json` (`recipe_identity`) ties the file at `path` to its recipe.
    """

    path: Path
    recipe_json: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    progress: dict = field(default_factory=lambda: {"step": 0, "train_seconds": 0.0, "history": []})
    best_weights: dict | None = None

    def save(self) -> None:
        """Write the checkpoint to `path`, replacing the previous one."""
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "state": json.dumps(self.progress),
            "config": self.recipe_json,
            **({"best_model": self.best_weights} if self.best_weights is not None else {}),
        }
        with atomic_write(self.path) as handle:  # never leave a half-written checkpoint
            torch.save(payload, handle)

    def restore(self, device: str, *, keep_best: bool) -> None:
        """Load the checkpoint at `path` into the run (`keep_best`: its best weights too); DataIntegrityError if damaged."""
        saved = _read_checkpoint(self.path, device, self.recipe_json)
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["schedule"])
            self.generator.set_state(saved["generator"])
            progress = json.loads(saved["state"])
            if keep_best and "best_model" in saved:
                self.best_weights = {k: v.cpu() for k, v in saved["best_model"].items()}
            if not isinstance(progress, dict) or not {"step", "train_seconds", "history"} <= progress.keys():
                raise ValueError("its training state lacks step, train_seconds or history")
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise DataIntegrityError(
                f"training checkpoint {self.path} is damaged ({type(err).__name__}: {err}); "
                "delete it to start afresh"
            ) from err
        self.progress = progress


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "schedule", "generator", "state", "config"})


def _read_checkpoint(path: Path, device: str, recipe_json: str) -> dict:
    """The saved training state, or a DataIntegrityError saying how to start afresh."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except OSError:  # unreadable (permissions, a folder), not corrupt: torch's message says so
        raise
    except Exception as err:  # truncated zip, garbage bytes, or a pickle a weights-only load refuses
        # `from None`: torch's own message would advise weights_only=False, i.e. running pickled code.
        raise DataIntegrityError(
            f"training checkpoint {path} is truncated, corrupt or not written by xaikit.train "
            f"({type(err).__name__} while reading it); delete it to start afresh"
        ) from None
    if not isinstance(saved, dict) or not _CHECKPOINT_KEYS <= saved.keys():
        raise DataIntegrityError(
            f"training checkpoint {path} does not hold a xaikit.train checkpoint; delete it to start afresh"
        )
    if saved["config"] != recipe_json:
        raise DataIntegrityError(
            f"training checkpoint {path} was written by another recipe; delete it to start afresh "
            "(or pass another work_dir to keep it)"
        )
    return saved
