"""Reading weights files (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) into timm models.

Both `xaikit.models` (any timm ViT) and `xaikit.demo_models` (the ViTs shipped in
``xaikit/weights``) read weights through here, so `xaikit.models` imports `xaikit.demo_models`
and not the other way round. ``.pth`` files are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import DataIntegrityError, InvalidParameterError, WeightsUnavailableError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; pickled checkpoints are read with ``weights_only=True``."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        raise InvalidParameterError(
            f"weights= is the folder {path}; pass the weights file itself"
            + (f", e.g. {path / inside[0]} (found: {', '.join(inside[:5])})" if inside else f" ({', '.join(WEIGHT_SUFFIXES)})")
        )
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    redownload = "delete it and download (or re-save) it again"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError on truncated/empty files, OSError, ...
            raise DataIntegrityError(
                f"cannot read {path}: it is truncated, empty or not a safetensors file ({type(err).__name__}: {err}); {redownload}"
            ) from err
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InvalidParameterError(f"weights file {path} has suffix {path.suffix!r}; xaikit reads {', '.join(WEIGHT_SUFFIXES)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # holds objects other than tensors and containers
        raise WeightsUnavailableError(
            f"could not read {path} as a weights-only checkpoint ({err}); convert it to .safetensors "
            "on a trusted machine, or re-save the bare state_dict with torch.save"
        ) from err
    except Exception as err:
        raise DataIntegrityError(
            f"cannot read {path}: it is truncated, corrupt or not a PyTorch checkpoint ({type(err).__name__}: {err}); {redownload}"
        ) from err
    # Training checkpoints nest the weights (DeiT: 'model'; Lightning: 'state_dict').
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    resave = "re-save the weights with torch.save(model.state_dict(), path) or as .safetensors"
    if not isinstance(checkpoint, dict):
        raise DataIntegrityError(
            f"{path} holds a {type(checkpoint).__name__}, not a state_dict (a dict of parameter names to tensors); {resave}"
        )
    not_tensors = [str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise DataIntegrityError(
            f"{path} is not a state_dict: {_few(not_tensors)} are not tensors "
            f"(weights nested under 'model', 'state_dict' or 'model_state_dict' are found); {resave}"
        )
    return {str(k).removeprefix("module."): v for k, v in checkpoint.items()}


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local weights file into `model`, adapting original-format checkpoints via timm."""
    state_dict = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        warn_resampling(state_dict, model, path)
        state_dict = filter_fn(state_dict, model)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # tensors of other shapes (e.g. another num_classes)
        raise WeightsUnavailableError(
            f"{path} does not fit {type(model).__name__}: {err}\nCheck that the file belongs to this model name "
            "(and num_classes, embed_dim, depth)."
        ) from err
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path} does not fit {type(model).__name__}: missing {_few(missing)}, unexpected {_few(unexpected)}. "
            "Check that the file belongs to this model name (and num_classes)."
        )
    return model


def warn_resampling(state_dict: dict[str, torch.Tensor], model: nn.Module, path) -> None:
    """Warn when timm's checkpoint filter will resample the patch embedding or position grid."""
    patch_weight = state_dict.get("patch_embed.proj.weight")
    model_patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    changes = []
    if patch_weight is not None and patch_weight.ndim == 4 and model_patch is not None:
        old_patch = tuple(patch_weight.shape[-2:])
        if old_patch != tuple(model_patch):
            changes.append(f"patch size {_hw(old_patch)} -> {_hw(model_patch)}")
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and getattr(model, "pos_embed", None) is not None and pos_embed.ndim == 3:
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        old_tokens = pos_embed.shape[1] - prefix
        new_grid = tuple(model.patch_embed.grid_size)
        if old_tokens != new_grid[0] * new_grid[1]:
            side = round(old_tokens**0.5)
            old_grid = f"{side}x{side}" if side * side == old_tokens else f"{old_tokens} positions"
            changes.append(
                f"position grid {old_grid} -> {_hw(new_grid)} (input {_hw(model.patch_embed.img_size)} px)"
            )
    if changes:
        warnings.warn(
            f"{path} was trained at another resolution; timm resamples its weights to fit the model: "
            f"{'; '.join(changes)}. The model may behave differently from the checkpoint; create it with the "
            "checkpoint's patch_size/img_size to use the weights as trained.",
            stacklevel=3,
        )


def _hw(size) -> str:
    return "x".join(str(int(s)) for s in size)


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
