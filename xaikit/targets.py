"""Which score an explanation explains.

A target is one of:

* ``None``: the predicted class (argmax of the logits) of each image;
* an ``int``: the same class for every image;
* a sequence / array / tensor of B class indices, one per image;
* a callable mapping the logits (B, C) to one score per image (B,), e.g. a
  softmax probability or a concept similarity (used for Concept CDAM).

Class scores are raw logits, as in the reference code of all three papers.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

from .errors import InvalidParameterError

Target = Union[None, int, Sequence[int], np.ndarray, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def resolve_targets(targets: Target, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (B,) to differentiate, and the explained class per image (None for a callable)."""
    batch, num_classes = logits.shape
    if callable(targets):
        scores = targets(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise InvalidParameterError(
                f"a target callable must map logits {tuple(logits.shape)} to one score per image, "
                f"a tensor of shape ({batch},); it returned {shape}"
            )
        return scores, None

    if targets is None:
        classes = logits.argmax(dim=1)
    elif isinstance(targets, (bool, np.bool_)):
        raise InvalidParameterError("targets must be None, a class index, B class indices or a callable; got a bool")
    elif isinstance(targets, (int, np.integer)):
        classes = torch.full((batch,), int(targets), dtype=torch.long, device=logits.device)
    else:
        classes = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
        if classes.ndim == 0:  # a 0-d array or tensor is one class for every image, like an int
            classes = classes.expand(batch)
        if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.shape != (batch,):
            raise InvalidParameterError(
                f"targets must hold one integer class index per image, shape ({batch},); "
                f"got dtype {classes.dtype} and shape {tuple(classes.shape)}"
            )
        classes = classes.to(device=logits.device, dtype=torch.long)
    bad = (classes < 0) | (classes >= num_classes)
    if bool(bad.any()):
        raise InvalidParameterError(
            f"target class {int(classes[bad][0])} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )
    return logits.gather(1, classes[:, None]).squeeze(1), classes
