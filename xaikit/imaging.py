"""Turning pictures into model inputs, and token maps into pixel maps."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import InvalidParameterError

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


def _as_pil_list(images) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InvalidParameterError(
                f"preprocess takes uint8 pixel arrays (0..255) or PIL images; got an array of {images.dtype}"
            )
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            images = images[None]
        if images.ndim == 3:  # a batch of grey images (B, H, W)
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise InvalidParameterError(
                f"uint8 arrays must be (H, W), (H, W, C) or (B, H, W, C) with C in 1, 3, 4; got {images.shape}"
            )
        return [Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).convert("RGB") for img in images]
    if isinstance(images, Iterable):
        return [pil for item in images for pil in _as_pil_list(item)]
    raise InvalidParameterError(f"cannot preprocess {type(images).__name__}; pass PIL images or uint8 arrays")


def preprocess(model: nn.Module, images, *, squash: bool = False) -> torch.Tensor:
    """PIL images or uint8 arrays -> a float batch (B, 3, H, W) normalised for `model`, on its device.

    Uses timm's evaluation transform of the model's data config (resize,
    centre crop, mean/std) at the model's input size. ``squash=True`` resizes
    to the input size without cropping (the protocol of Chefer et al. and CDAM).
    """
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    config = resolve_data_config({}, model=model)
    height, width = model.patch_embed.img_size
    config["input_size"] = (3, height, width)
    if squash:
        transform = transforms.Compose(
            [
                transforms.Resize((height, width), interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.ToTensor(),
                transforms.Normalize(config["mean"], config["std"]),
            ]
        )
    else:
        transform = create_transform(**config, is_training=False)
    batch = torch.stack([transform(img) for img in _as_pil_list(images)])
    param = next(model.parameters())
    return batch.to(device=param.device, dtype=param.dtype)


def mean_std(model: nn.Module, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input normalisation (timm's data config) as (1, 3, 1, 1) tensors."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    return (torch.tensor(config["mean"], device=device).view(1, 3, 1, 1),
            torch.tensor(config["std"], device=device).view(1, 3, 1, 1))


def to_display(model: nn.Module, batch: torch.Tensor) -> np.ndarray:
    """Undo `preprocess`'s normalisation: uint8 (B, H, W, 3) pictures of what the model sees."""
    mean, std = mean_std(model)
    pixels = (batch.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def upsample(maps: torch.Tensor, size: int | Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Token maps (B, gh, gw) -> pixel maps (B, H, W), interpolated with `mode` (align_corners=False)."""
    if mode not in UPSAMPLE_MODES:
        raise InvalidParameterError(f"unknown upsampling mode {mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if hasattr(maps, "shape") else type(maps).__name__
        raise InvalidParameterError(f"maps must be a tensor (B, gh, gw); got {shape}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    align = None if mode == "nearest" else False
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=align)[:, 0]
