"""Random maps: the floor every explanation method has to beat."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import token_grid
from ..targets import Target, check_targets
from .base import Explainer, register


@register
class RandomMap(Explainer):
    """Uniform random scores in [0, 1), one per patch token: the floor row of every protocol table.

    Class-independent and blind to the images (no forward pass is run): a method
    that does no better than this on a protocol carries no information about the
    model. `seed` (default 0) seeds one NumPy ``default_rng`` stream per explainer,
    which the images draw from in order. ``xaikit.explain`` creates a fresh explainer
    on each call, so the same seed and number of images give the same maps, also with
    ``batch_size`` (the chunks continue the stream). The numbers do not depend on the
    device or the dtype (drawn in float64 on the CPU, then cast).
    """

    name = "random"
    title = "Random"
    floor = True
    class_specific = False
    needs_class_token = False

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidParameterError(f"seed must be a non-negative int; got {seed!r}")
        self.seed = int(seed)
        self._generator = np.random.default_rng(self.seed)

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        images = self._check_images(images)
        check_targets(targets, images.shape[0])  # ignored, but malformed targets are still an error
        gh, gw = token_grid(self.model, tuple(images.shape[-2:]))
        maps = self._generator.random((images.shape[0], gh, gw))
        return torch.from_numpy(maps).to(device=images.device, dtype=images.dtype)
