"""xaikit: explaining timm Vision Transformers, and reproducing ViTA, CDAM and TokenTM."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .astrocytes import astrocytes
from .errors import InvalidParameterError, TrainingError, UnsupportedModelError, WeightsUnavailableError, XaikitError
from .concepts import ConceptTarget, concept_target
from .imaging import preprocess, upsample
from .introspection import RECORDABLE, BlockRecord, ViTRecorder
from .methods import Explainer, get_method, list_methods
from .methods.base import positive_int
from .models import load_model
from .targets import FeatureTarget, Target
from .train import load_trained

__version__ = "0.1.0"


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gae",
    targets: Target = None,
    *,
    batch_size: int | None = None,
    **params,
) -> torch.Tensor:
    """Token-level maps (B, gh, gw), float32, on the model's device.

    `images` are normalised float images (B, 3, H, W) (see `preprocess`);
    `targets` is None (predicted class), a class index, B class indices or a
    callable from logits to one score per image; `params` are the method's
    settings (`xaikit.get_method(name)` documents them). With `batch_size`
    the images are explained in chunks of that many; images and targets are
    checked as a whole first. An empty batch (0 images) gives an empty
    (0, gh, gw) result ((0, H, W) for pixel methods), with or without `batch_size`. The model runs in eval
    mode; its own train/eval flags are restored afterwards.
    """
    explainer = get_method(method).create(model, **params)
    if batch_size is None:
        return explainer(images, targets)
    batch_size = positive_int("batch_size", batch_size, "Give None to explain all images at once")
    explainer.check_inputs(images, targets)
    if len(images) <= batch_size:
        return explainer(images, targets)
    scalar = isinstance(targets, (int, np.integer)) or (isinstance(targets, (np.ndarray, torch.Tensor)) and targets.ndim == 0)
    per_image = not (targets is None or scalar or callable(targets))
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk_targets = targets[start : start + batch_size] if per_image else targets
        chunks.append(explainer(images[start : start + batch_size], chunk_targets))
    return torch.cat(chunks)


__all__ = [
    "BlockRecord",
    "ConceptTarget",
    "FeatureTarget",
    "Explainer",
    "InvalidParameterError",
    "RECORDABLE",
    "TrainingError",
    "UnsupportedModelError",
    "ViTRecorder",
    "WeightsUnavailableError",
    "XaikitError",
    "concept_target",
    "explain",
    "get_method",
    "list_methods",
    "load_trained",
    "load_model",
    "preprocess",
    "upsample",
]
