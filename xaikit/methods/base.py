"""The shared base of all explainers, and the registry that names them.

An explainer is a small class: settings go to ``__init__`` (validated there),
data to ``__call__``. The base runs one forward pass (and one backward pass
when the method needs gradients) per batch inside a `ViTRecorder`, and the
subclass turns the recording into one score per patch token.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import ViTRecorder, check_vit
from ..targets import Target, resolve_targets

_REGISTRY: dict[str, type["Explainer"]] = {}


def register(cls: type["Explainer"]) -> type["Explainer"]:
    """Class decorator adding an explainer to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"two explainers are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names accepted by ``xaikit.explain(..., method=NAME)``."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type["Explainer"]:
    """The explainer class registered as `name`."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(
            f"unknown method {name!r}; valid methods are: {', '.join(list_methods())}"
        ) from None


def method_parameters(cls: type["Explainer"]) -> dict[str, inspect.Parameter]:
    """The settings an explainer takes (its ``__init__`` keywords besides the model)."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name not in ("self", "model")}


class Explainer:
    """Base class: subclass, set the class attributes, implement `token_scores`."""

    name: ClassVar[str]
    #: the maps can be negative
    signed: ClassVar[bool] = False
    #: the maps depend on the target class (else targets are ignored)
    class_specific: ClassVar[bool] = True
    #: tensors the recorder must keep, and those whose gradients it must keep
    records: ClassVar[tuple[str, ...]] = ()
    grads: ClassVar[tuple[str, ...]] = ()
    #: the method reads the class token's row or output
    needs_class_token: ClassVar[bool] = True

    def __init__(self, model: nn.Module) -> None:
        check_vit(model)
        if self.needs_class_token and getattr(model, "cls_token", None) is None:
            raise InvalidParameterError(
                f"method {self.name!r} reads the class token, but this model has none (class_token=False)"
            )
        self.model = model

    @classmethod
    def create(cls, model: nn.Module, **params) -> "Explainer":
        """Instantiate with a clear error for unknown settings."""
        valid = method_parameters(cls)
        unknown = sorted(set(params) - set(valid))
        if unknown:
            listing = ", ".join(f"{n}={p.default!r}" for n, p in valid.items()) or "none"
            raise InvalidParameterError(
                f"method {cls.name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters are: {listing}"
            )
        return cls(model, **params)

    # -- running ---------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Token-level maps, float32 (B, gh, gw) on the model's device."""
        return self.attribute(images, targets).float()

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Like ``__call__`` but in the model's own dtype (float64 models give float64 maps)."""
        images = self._check_images(images)
        needs_backward = self.class_specific and bool(self.grads)
        with ViTRecorder(self.model, record=self.records, grads=self.grads) as recorder:
            with torch.enable_grad() if needs_backward else torch.no_grad():
                inputs = images.detach().requires_grad_(needs_backward)
                logits = self.model(inputs)
                classes = None
                if needs_backward:
                    scores, classes = resolve_targets(targets, logits)
                    # Images are independent in eval mode, so the gradient of the sum gives
                    # every image the gradient of its own score; only the recorded tensors'
                    # gradients are computed (never the parameters').
                    recorder.backprop(scores.sum())
            with torch.no_grad():
                tokens = self.token_scores(recorder, logits.detach(), classes)
            gh, gw = recorder.grid
        return tokens.reshape(images.shape[0], gh, gw)

    def token_scores(self, recorder: ViTRecorder, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """One score per patch token, (B, gh*gw), from the recorded pass."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise InvalidParameterError(
                f"images must be a float tensor (B, 3, H, W); got {type(images).__name__}. "
                "Use xaikit.preprocess(model, images) to turn PIL images or uint8 arrays into one."
            )
        if not images.dtype.is_floating_point:
            raise InvalidParameterError(
                f"images are {images.dtype}; explainers take float images normalised with the model's "
                "mean/std: call xaikit.preprocess(model, images) first"
            )
        in_chans = self.model.patch_embed.proj.in_channels
        if images.ndim != 4 or images.shape[1] != in_chans:
            raise InvalidParameterError(
                f"images must have shape (B, {in_chans}, H, W); got {tuple(images.shape)}"
                + (" (add a batch axis with images[None])" if images.ndim == 3 else "")
            )
        expected = tuple(self.model.patch_embed.img_size)
        if not getattr(self.model, "dynamic_img_size", False) and tuple(images.shape[-2:]) != expected:
            raise InvalidParameterError(
                f"images are {tuple(images.shape[-2:])} pixels but the model takes {expected}; resize them "
                "with xaikit.preprocess(model, images) or create the model with dynamic_img_size=True"
            )
        param = next(self.model.parameters())
        return images.to(device=param.device, dtype=param.dtype)
