"""Turning pictures into model inputs, and token maps into pixel maps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import DataIntegrityError, InvalidParameterError

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


CHANNELS = (1, 3, 4)  # grey, RGB, RGBA (alpha is dropped)


def _as_pil_list(images) -> list[Image.Image]:
    if isinstance(images, (str, os.PathLike)):
        return [_open_image(images)]
    if isinstance(images, Image.Image):
        return [_pil_to_rgb(images)]
    if isinstance(images, torch.Tensor):
        return _arrays_to_pil(_tensor_to_hwc(images))
    if isinstance(images, np.ndarray):
        return _arrays_to_pil(_array_to_hwc(images))
    if isinstance(images, Iterable) and not isinstance(images, (bytes, dict)):
        return [pil for item in images for pil in _as_pil_list(item)]
    raise InvalidParameterError(
        f"cannot preprocess {type(images).__name__}; pass PIL images, image file paths, numpy arrays "
        "(H, W, C) or torch tensors (C, H, W), or a list of them"
    )


def _open_image(path: str | os.PathLike) -> Image.Image:
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise InvalidParameterError(f"image file {path} {what}; check the path (relative to {Path.cwd()})")
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's unreadable/truncated files
        raise DataIntegrityError(
            f"cannot read {path} as an image ({type(err).__name__}: {err}); it is truncated, corrupt or not an "
            "image format PIL reads: open it in an image viewer, re-download or re-export it"
        ) from err


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    # 16- and 32-bit integer modes ("I;16*" from 16-bit PNGs, "I") and float mode "F" would be
    # clipped at 255 by convert("RGB"); scale them to 8 bits first.
    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image)
        if image.mode == "I":
            if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                raise InvalidParameterError(
                    f"a PIL image of mode 'I' holds values {pixels.min()}..{pixels.max()}; xaikit reads mode 'I' "
                    "as 16-bit pixels (0..65535): rescale it to that range or convert it to 8 bits first"
                )
            pixels = pixels.astype(np.uint16)
        return Image.fromarray(_to_uint8(pixels, f"a PIL image of mode {image.mode!r}")).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray, what: str) -> np.ndarray:
    """uint8 (0..255), uint16 (0..65535) or float ([0, 1]) pixels as uint8."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return np.round(pixels / 257.0).astype(np.uint8)  # 65535 / 255 = 257
    if pixels.dtype.kind == "f":
        if pixels.size and not np.isfinite(pixels).all():
            raise InvalidParameterError(f"{what} holds NaN or infinite pixels; fix or drop those images")
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise InvalidParameterError(
                f"{what} of {pixels.dtype} holds values in [{low:g}, {high:g}], but float images must lie in "
                "[0, 1]: divide 0..255 pixels by 255 (or pass them as uint8), and undo any normalisation "
                "(xaikit.preprocess normalises itself)"
            )
        return np.round(pixels * 255).astype(np.uint8)
    raise InvalidParameterError(
        f"{what} is of {pixels.dtype}; preprocess takes uint8 (0..255), uint16 (0..65535) or float pixels "
        "in [0, 1]: convert with .astype(np.uint8) if the values are 0..255"
    )


def _array_to_hwc(images: np.ndarray) -> np.ndarray:
    """A numpy array (channels last, the numpy/PIL convention) as uint8 (B, H, W, C)."""
    if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in CHANNELS):
        images = images[None]
    if images.ndim == 3 and images.shape[0] in (3, 4):
        raise InvalidParameterError(
            f"a numpy array of shape {images.shape} is ambiguous: one channels-first image or {images.shape[0]} "
            "grey images? numpy images are channels last: pass np.moveaxis(images, 0, -1) for one image, "
            "or images[..., None] for grey images"
        )
    if images.ndim == 3:  # a batch of grey images (B, H, W)
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in CHANNELS:
        raise InvalidParameterError(
            f"numpy images must be (H, W), (H, W, C) or (B, H, W, C) with C in 1, 3, 4 (channels last); got "
            f"{images.shape}" + (" (channels first? use np.moveaxis(images, -3, -1))" if images.ndim in (3, 4) and images.shape[-3] in CHANNELS else "")
        )
    return _to_uint8(images, "a numpy array")


def _tensor_to_hwc(images: torch.Tensor) -> np.ndarray:
    """A torch tensor (channels first, as torchvision.io.read_image returns) as uint8 (B, H, W, C)."""
    pixels = images.detach().cpu()
    if pixels.dtype.is_floating_point and pixels.dtype not in (torch.float32, torch.float64):
        pixels = pixels.float()  # bfloat16/float16 have no numpy counterpart
    pixels = pixels.numpy()
    if pixels.ndim == 2:  # one grey image (H, W)
        pixels = pixels[None, None]
    elif pixels.ndim == 3 and pixels.shape[0] in CHANNELS:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1] not in CHANNELS:
        hint = ""
        if pixels.ndim == 3 and pixels.shape[-1] in CHANNELS:
            hint = " (this one looks channels last: pass images.permute(2, 0, 1), or images.numpy())"
        elif pixels.ndim == 3:
            hint = " (a batch of grey images (B, H, W)? add the channel axis: images[:, None])"
        raise InvalidParameterError(
            f"torch images must be (C, H, W) or (B, C, H, W) with C in 1, 3, 4 (channels first, like "
            f"torchvision.io.read_image), or (H, W); got {tuple(images.shape)}{hint}"
        )
    return _to_uint8(pixels.transpose(0, 2, 3, 1), "a torch tensor")


def _arrays_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).convert("RGB") for img in images]


def preprocess(model: nn.Module, images, *, squash: bool = False) -> torch.Tensor:
    """Pictures -> a float batch (B, 3, H, W) normalised for `model`, on its device.

    `images` is one of, or a list of:

    * a PIL image (any mode; 16-bit modes "I;16" and "I" are read as 0..65535,
      mode "F" as [0, 1]);
    * an image file path (str or Path), opened with PIL;
    * a numpy array, channels last (the numpy/PIL convention): (H, W), (H, W, C),
      (B, H, W) grey or (B, H, W, C);
    * a torch tensor, channels first (the torch convention, what
      torchvision.io.read_image returns): (C, H, W), (B, C, H, W) or (H, W).

    C is 1 (grey), 3 (RGB) or 4 (RGBA; alpha is dropped). Pixels are uint8
    (0..255), uint16 (0..65535) or float in [0, 1]; other ranges are refused.
    16-bit and float pixels are rounded to 8 bits (what the models were trained
    on), so every form of the same picture gives the same batch.

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
    pictures = _as_pil_list(images)
    if not pictures:
        raise InvalidParameterError(
            f"preprocess got no images (an empty {type(images).__name__}); pass at least one picture"
        )
    batch = torch.stack([transform(img) for img in pictures])
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
    """Token maps (B, gh, gw) -> pixel maps (B, H, W), interpolated with `mode` (align_corners=False).

    Pixel maps (e.g. full LRP's) already of size `size` are returned unchanged; of another size,
    they are interpolated like token maps.
    """
    if mode not in UPSAMPLE_MODES:
        raise InvalidParameterError(f"unknown upsampling mode {mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if hasattr(maps, "shape") else type(maps).__name__
        raise InvalidParameterError(f"maps must be a tensor (B, gh, gw); got {shape}")
    size = _check_size(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    align = None if mode == "nearest" else False
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=align)[:, 0]


def _check_size(size) -> tuple[int, int]:
    """`upsample`'s size as (H, W): an int or two ints (numpy integers too), all positive."""
    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    if is_int(size):
        pair = (size, size)
    elif (isinstance(size, Sequence) and not isinstance(size, str)) or (isinstance(size, np.ndarray) and size.ndim == 1):
        pair = tuple(size)
    else:
        pair = ()
    if len(pair) != 2 or not all(is_int(s) and s > 0 for s in pair):
        raise InvalidParameterError(
            "size must be a positive int or a pair of positive ints (H, W), e.g. size=224 or "
            f"size=(224, 224); got {size!r}. Convert float sizes with int(...)"
        )
    return int(pair[0]), int(pair[1])
