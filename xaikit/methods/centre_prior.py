"""The centre prior: a floor that knows only that objects tend to sit in the middle of the image."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import token_grid
from ..targets import Target, check_targets
from .base import Explainer, register


def centre_gaussian(grid: tuple[int, int], sigma: float) -> np.ndarray:
    """An isotropic Gaussian (gh, gw) in float64, centred on the grid, with peak 1.

    The centre is the middle of the grid, ((gh - 1) / 2, (gw - 1) / 2) in token indices,
    so the map is symmetric under left-right and up-down flips (on an even side the
    centre falls between two tokens, which then share the largest value). The standard
    deviation is ``sigma`` times the grid's shorter side, in tokens, along both axes.
    The map is divided by its largest value, so its peak is exactly 1 on any grid.
    """
    gh, gw = grid
    spread = sigma * min(gh, gw)
    rows = (np.arange(gh) - (gh - 1) / 2) ** 2
    cols = (np.arange(gw) - (gw - 1) / 2) ** 2
    gaussian = np.exp(-(rows[:, None] + cols[None, :]) / (2 * spread**2))
    return gaussian / gaussian.max()


@register
class CentrePrior(Explainer):
    """A centred Gaussian, the same for every image: the floor of "the object is in the middle".

    Class-independent and blind to the images (no forward pass is run), like
    ``random``: a method that does no better than this on a protocol locates objects
    no better than a guess that they are centred. The map is `centre_gaussian` on the
    model's token grid: an isotropic Gaussian centred on the grid, standard deviation
    `sigma` (default 0.25) times the grid's shorter side, scaled to peak 1 (values in
    (0, 1]). The map depends on the grid only, so it is the same for every image, class
    and batch size.
    """

    name = "centre_prior"
    title = "Centre prior"
    floor = True
    class_specific = False
    needs_class_token = False

    def __init__(self, model: nn.Module, sigma: float = 0.25) -> None:
        super().__init__(model)
        if (
            isinstance(sigma, (bool, np.bool_))
            or not isinstance(sigma, (int, float, np.integer, np.floating))
            or not math.isfinite(float(sigma))
            or sigma <= 0
        ):
            raise InvalidParameterError(
                f"sigma of method 'centre_prior' must be a finite float > 0 (the Gaussian's standard deviation as a "
                f"fraction of the token grid's shorter side, e.g. 0.25); got {sigma!r}"
            )
        self.sigma = float(sigma)

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        images = self._check_images(images)
        check_targets(targets, images.shape[0])  # ignored, but malformed targets are still an error
        grid = token_grid(self.model, tuple(images.shape[-2:]))
        prior = torch.from_numpy(centre_gaussian(grid, self.sigma)).to(device=images.device, dtype=images.dtype)
        return prior.expand(images.shape[0], *grid).clone()
