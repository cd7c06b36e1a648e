"""Model inputs: uint8 image batches normalised with the model's mean and std, augmented, resized to its input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..imaging import mean_std
from .recipes import TrainConfig


def resize_images(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A float batch (B, C, H, W) resized bilinearly to `size` (H, W); returned as is when it has that size.

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``: pixel
    centres at half-pixel offsets, the convention of torchvision's ``Resize`` (and of
    PIL when upsampling).
    """
    size = tuple(int(side) for side in size)
    if tuple(batch.shape[-2:]) == size:
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)


def resize_to_model(batch: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A float batch (B, 3, H, W) resized bilinearly (`resize_images`) to the model's input size."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or batch.shape[-2:]
    return resize_images(batch, size)


def to_inputs(images_uint8: torch.Tensor, model: nn.Module, *, resize: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) with the model's mean/std.

    With `resize` (default) the batch is upsampled to the model's input size (`resize_to_model`).
    """
    mean, std = mean_std(model, images_uint8.device)
    batch = (images_uint8.permute(0, 3, 1, 2).float() / 255 - mean) / std
    return resize_to_model(batch, model) if resize else batch


def augment(batch: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflect padding, and horizontal flips, on a normalised batch (B, 3, H, W)."""
    size, height, width = batch.shape[0], batch.shape[2], batch.shape[3]
    if config.random_crop_padding:
        pad = config.random_crop_padding
        padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (size, 2), generator=generator).to(batch.device)
        channels = batch.shape[1]
        rows = (torch.arange(height, device=batch.device) + offsets[:, :1]).view(size, 1, height, 1)
        batch = padded.gather(2, rows.expand(size, channels, height, width + 2 * pad))
        cols = (torch.arange(width, device=batch.device) + offsets[:, 1:]).view(size, 1, 1, width)
        batch = batch.gather(3, cols.expand(size, channels, height, width))
    if config.horizontal_flip:
        flip = torch.rand(size, generator=generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1).to(batch.device), batch.flip(-1), batch)
    return batch
