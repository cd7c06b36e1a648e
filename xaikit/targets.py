"""Which score an explanation explains.

A target is one of:

* ``None``: the predicted class (argmax of the logits) of each image;
* an ``int``: the same class for every image;
* a sequence / array / tensor of B class indices, one per image;
* a callable mapping the logits (B, C) to one score per image (B,), e.g. a
  softmax probability;
* a `FeatureTarget`: a callable scoring the pre-logits features (B, D) instead, e.g.
  the concept similarity of Concept CDAM (`xaikit.concept_target`).

Class scores are raw logits, as in the reference code of all three papers.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

from .errors import InvalidParameterError

Target = Union[None, int, Sequence[int], np.ndarray, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


_TARGET_FORMS = (
    "targets must be None (the predicted class), an int class index, a list/array/tensor of one int "
    "class index per image, or a callable mapping the logits (B, C) to one score per image (B,)"
)


def check_targets(targets: Target, batch: int) -> None:
    """Raise `InvalidParameterError` unless `targets` has a valid form for `batch` images.

    Checks the form and length only; class ranges need the number of classes (see `check_target_range`).
    """
    if targets is None or callable(targets):
        return
    if isinstance(targets, (bool, np.bool_)):
        raise InvalidParameterError(f"{_TARGET_FORMS}; got a bool ({targets!r})")
    if isinstance(targets, (int, np.integer)):
        return
    if isinstance(targets, (str, bytes)):
        raise InvalidParameterError(
            f"{_TARGET_FORMS}; got the string {targets!r}. Targets are class indices: look the name up "
            f"first, e.g. targets=class_names.index({targets!r})"
        )
    if isinstance(targets, (Mapping, AbstractSet)):
        raise InvalidParameterError(
            f"{_TARGET_FORMS}; got a {type(targets).__name__}, which has no image order: pass a list of "
            "class indices in the order of the images"
        )
    if isinstance(targets, torch.Tensor):
        dtype, shape = targets.dtype, tuple(targets.shape)
        integral = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    else:
        try:
            array = np.asarray(targets)
        except (TypeError, ValueError) as err:  # ragged nesting
            raise InvalidParameterError(f"{_TARGET_FORMS}; got {type(targets).__name__} ({err})") from None
        if array.size == 0 and array.ndim == 1:  # [] for an empty batch carries no dtype
            array = array.astype(np.int64)
        dtype, shape = array.dtype, array.shape
        integral = array.dtype.kind in "iu"
    if not integral:
        raise InvalidParameterError(
            f"targets must hold one integer class index per image, shape ({batch},); got dtype {dtype} "
            f"and shape {shape} ({type(targets).__name__}). {_TARGET_FORMS}"
        )
    if shape not in ((), (batch,)):
        raise InvalidParameterError(
            f"targets must hold one integer class index per image, shape ({batch},); "
            f"got dtype {dtype} and shape {shape}"
        )


def resolve_targets(targets: Target, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (B,) to differentiate, and the explained class per image (None for a callable)."""
    batch, num_classes = logits.shape
    check_targets(targets, batch)
    if callable(targets):
        scores = targets(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise InvalidParameterError(
                f"a target callable must map logits {tuple(logits.shape)} to one score per image, "
                f"a tensor of shape ({batch},); it returned {shape}"
            )
        if logits.requires_grad and not scores.requires_grad:
            raise InvalidParameterError(
                "the target callable returned scores that do not depend differentiably on the logits "
                "(requires_grad=False), so they have no gradient to explain; argmax, comparisons, "
                ".detach(), .item() or torch.no_grad() inside the callable cut the graph. Return a "
                "differentiable score such as logits[:, k] or logits.softmax(1)[:, k]"
            )
        return scores, None

    if targets is None:
        classes = logits.argmax(dim=1)
    else:
        classes = _class_indices(targets).expand(batch).to(device=logits.device)
        _check_class_range(classes, num_classes)
    return logits.gather(1, classes[:, None]).squeeze(1), classes


def _class_indices(targets: Target) -> torch.Tensor:
    """Class-index targets (an int, or one per image) as a long tensor: 0-d for one class for every image."""
    if isinstance(targets, (int, np.integer)):
        return torch.tensor(int(targets), dtype=torch.long)
    classes = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
    return classes.to(dtype=torch.long)


def _check_class_range(classes: torch.Tensor, num_classes: int) -> None:
    bad = (classes < 0) | (classes >= num_classes)
    if bool(bad.any()):
        raise InvalidParameterError(
            f"target class {int(classes[bad].flatten()[0])} is out of range: the model has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )


def check_target_range(targets: Target, num_classes: int | None) -> None:
    """Raise `InvalidParameterError` unless every class index in `targets` (of a valid form, see
    `check_targets`) lies in 0..num_classes-1; None, callables and an unknown `num_classes` (None) pass.

    Also for methods whose maps ignore the class: a class the model does not have is a mistake there too.
    """
    if num_classes is None or targets is None or callable(targets):
        return
    _check_class_range(_class_indices(targets), num_classes)


def head_classes(model: torch.nn.Module) -> int | None:
    """The number of classes of `model`'s linear classifier head, or None when it has none (e.g. the
    identity of a timm model made with num_classes=0) or a head of another kind."""
    head = getattr(model, "head", None)
    return head.out_features if isinstance(head, torch.nn.Linear) else None


# -- targets that score the features ------------------------------------------------------------
class FeatureTarget:
    """A target scoring the model's pre-logits features (B, D) instead of its logits (B, C).

    Subclass and implement ``score(features) -> (B,)``. While an explainer runs with such a
    target, the model's classifier head (and DeiT's distillation head) is replaced by the
    identity (`scoring_features`), so every method sees the features where it would see the
    logits: for a timm ViT with a class token, the class token after the final LayerNorm
    (``forward_head(..., pre_logits=True)``), what the CDAM authors get with
    ``model.head = nn.Identity()``.
    """

    def score(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features)


_HEADS = ("head", "head_dist")


@contextmanager
def heads_replaced(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` with its classifier head (and DeiT's distillation head) replaced by the identity, so it
    returns its pre-logits features; the heads are restored on exit, also after an exception. Re-entrant."""
    if getattr(model, "_xaikit_scoring_features", False):
        yield
        return
    saved = {name: getattr(model, name) for name in _HEADS if isinstance(getattr(model, name, None), torch.nn.Module)}
    for name in saved:
        setattr(model, name, torch.nn.Identity())
    model._xaikit_scoring_features = True
    try:
        yield
    finally:
        for name, head in saved.items():
            setattr(model, name, head)
        del model._xaikit_scoring_features


@contextmanager
def scoring_features(model: torch.nn.Module, targets: Target) -> Iterator[None]:
    """`heads_replaced` when `targets` is a `FeatureTarget`; with any other target, nothing."""
    if not isinstance(targets, FeatureTarget):
        yield
        return
    with heads_replaced(model):
        yield
