"""Agreement of explanation maps with known ground truth (synthetic objects)."""

from __future__ import annotations

import torch

from .errors import InvalidParameterError


def _check(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape:
        raise InvalidParameterError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ: upsample the maps to the mask size first"
        )


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the positive map mass that falls on the mask (B,)."""
    _check(maps, masks)
    positive = maps.clamp(min=0).flatten(1)
    inside = (positive * masks.flatten(1).to(positive.dtype)).sum(1)
    return inside / positive.sum(1).clamp(min=torch.finfo(positive.dtype).tiny)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, whether the map's maximum lies on the mask (B,) bool."""
    _check(maps, masks)
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1).bool()
