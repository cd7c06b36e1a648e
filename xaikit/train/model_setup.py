"""The model a run starts from: built from its recipe (`build_model`, seeded), loaded with published weights
for fine-tuning (`initialise`), and frozen but for its head for a linear probe (`freeze`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from ..demo_models import DEMO_MODELS
from ..errors import InvalidParameterError, WeightsUnavailableError
from ..models import load_model
from ..weight_files import read_state_dict, warn_resampling
from .recipes import TrainConfig


def build_model(config: TrainConfig) -> nn.Module:
    """The recipe's model with random weights (seeded); `initialise` loads ``config.init``'s weights into it."""
    import timm

    torch.manual_seed(config.seed)
    return timm.create_model(config.architecture, pretrained=False, **config.timm_kwargs)


def classifier_keys(model: nn.Module) -> list[str]:
    """Names of the classifier head's tensors (timm's ``pretrained_cfg['classifier']``, e.g. ``head``)."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return [key for key in model.state_dict() if any(key.startswith(f"{head}.") for head in heads)]


def initialise(model: nn.Module, init: str, *, weights: str | os.PathLike | None = None,
               timm_kwargs: dict | None = None, reset_head: bool = False) -> dict:
    """Load the published weights `init` into `model` for fine-tuning; return what was done (for the card).

    The weights come from the local file `weights` when given, else from
    `xaikit.load_model(init)` (``$XAIKIT_WEIGHTS_DIR``, the Hugging Face cache, or a
    download; offline it raises WeightsUnavailableError naming the file to fetch),
    built with the recipe's `timm_kwargs` except the head and input size
    (``num_classes``, ``img_size``, ``pretrained_cfg_overlay``), e.g. another ``depth``;
    a shipped demo model (`xaikit.demo_models.DEMO_MODELS`) loads as its card builds it.
    Every tensor is copied, resampled by timm's checkpoint filter where the input
    size differs (with a warning), except the classifier head when its shape
    differs from the model's (ImageNet's 1,000 classes for CIFAR's 10): that head
    is dropped and the model keeps the head timm initialised (truncated normal,
    std 0.02, zero bias), seeded by `build_model`. Any other tensor that does not
    fit raises WeightsUnavailableError.
    """
    if weights is not None:
        state = read_state_dict(weights)
        source = str(Path(weights).expanduser())
    else:
        architecture = {k: v for k, v in (timm_kwargs or {}).items()
                        if k not in ("num_classes", "img_size", "pretrained_cfg_overlay")}
        # A shipped demo model takes no settings (its card fixes them); a mismatch is reported below.
        published = load_model(init) if init in DEMO_MODELS else load_model(init, **architecture)
        state, source = published.state_dict(), f"{init} (found by xaikit.load_model)"
        del published
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        warn_resampling(state, model, source)
        state = filter_fn(state, model)
    target = model.state_dict()
    head = set(classifier_keys(model))
    # reset_head (a linear probe): the head is trained afresh even when it has the model's shape.
    replaced = sorted(k for k in head if k in state and (reset_head or tuple(state[k].shape) != tuple(target[k].shape)))
    # Weights published without a head (a feature extractor such as DINO's) keep the fresh one too.
    headless = sorted(k for k in head if k not in state)
    old_classes = int(state[replaced[0]].shape[0]) if replaced else None
    kept = {k: v for k, v in state.items() if k not in replaced}
    fix = f"Check that {source} holds weights of {init!r} (and that the recipe's architecture is that model's)."
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as err:  # tensors of other shapes outside the head
        raise WeightsUnavailableError(f"{source} does not fit {type(model).__name__}: {err}\n{fix}") from err
    missing = [k for k in missing if k not in replaced and k not in headless]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{source} does not fit {type(model).__name__}: missing {', '.join(missing[:5]) or 'none'}, "
            f"unexpected {', '.join(list(unexpected)[:5]) or 'none'}. {fix}"
        )
    new_classes = int(getattr(model, "num_classes", 0) or target[replaced[0]].shape[0]) if replaced else None
    return {
        "weights": init,
        "source": source,
        "copied_tensors": len(kept),
        "reinitialised": replaced + headless,
        "head": (f"dropped ({', '.join(replaced)}: {old_classes} classes) and re-initialised for {new_classes} classes"
                 if replaced else f"not in the weights; initialised for {int(getattr(model, 'num_classes', 0))} classes"
                 if headless else "kept"),
    }


def freeze(model: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    """The parameters the recipe trains; with ``frozen="backbone"`` only the head's (the rest get requires_grad False)."""
    if config.frozen is None:
        return list(model.parameters())
    head = set(classifier_keys(model))
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in head)
        if name in head:
            trained.append(parameter)
    if not trained:
        raise InvalidParameterError(f"recipe {config.name!r}: frozen='backbone' but the model has no classifier head to train")
    return trained
