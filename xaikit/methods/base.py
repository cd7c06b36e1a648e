"""The shared base of all explainers, and the registry that names them.

An explainer is a small class: settings go to ``__init__`` (validated there),
data to ``__call__``. The base runs one forward pass (and one backward pass
when the method needs gradients) per batch inside a `ViTRecorder`, and the
subclass turns the recording into one score per patch token.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import ViTRecorder, check_vit
from ..targets import FeatureTarget, Target, check_targets, resolve_targets, scoring_features

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
    #: "token": maps (B, gh, gw), one value per patch; "pixel": maps (B, H, W) at the input size
    #: (token_scores then returns them whole, e.g. full LRP)
    resolution: ClassVar[str] = "token"
    #: the method can explain a score of the pre-logits features (`xaikit.targets.FeatureTarget`)
    accepts_feature_targets: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:  # every method's own attribute runs with feature targets handled
            cls.attribute = _with_target_outputs(cls.__dict__["attribute"])

    def __init__(self, model: nn.Module) -> None:
        check_vit(model)
        if self.needs_class_token and getattr(model, "cls_token", None) is None:
            raise InvalidParameterError(
                f"method {self.name!r} reads the class token, but this model has none (class_token=False)"
            )
        pool = getattr(model, "global_pool", "token")
        if self.needs_class_token and pool != "token":
            # The class token's row only explains the prediction when the head reads that token.
            raise InvalidParameterError(
                f"method {self.name!r} reads the class token, but this model's head pools "
                f"global_pool={pool!r}, not the class token, so the class token's row says nothing about "
                "its prediction. Explain a model whose head reads the class token (timm's default "
                "global_pool='token': create the model without global_pool=...)"
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
        for name, value in params.items():
            default = valid[name].default
            if isinstance(default, int) and not isinstance(default, bool):
                params[name] = integer_setting(cls.name, name, value)
        return cls(model, **params)

    # -- running ---------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Maps, float32, on the model's device: (B, gh, gw) per token, or (B, H, W) for pixel methods."""
        return self.attribute(images, targets).float()

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Like ``__call__`` but in the model's own dtype (float64 models give float64 maps).

        The model runs in eval mode (no dropout; DeiT's distilled head averages its two
        outputs); every submodule's ``training`` flag is restored afterwards, also after an
        exception.
        """
        images = self._check_images(images)
        check_targets(targets, images.shape[0])
        needs_backward = self.class_specific and bool(self.grads)
        if needs_backward:
            refuse_inference_mode(self.name)
        if images.is_inference():  # made under inference_mode: a normal copy can require grad
            images = images.clone()
        with eval_mode(self.model), ViTRecorder(self.model, record=self.records, grads=self.grads) as recorder:
            with torch.enable_grad() if needs_backward else torch.no_grad():
                inputs = images.detach().requires_grad_(needs_backward)
                logits = self.model(inputs)
                classes = None
                if needs_backward:
                    scores, classes = self.target_scores(targets, logits)
                    # Images are independent in eval mode, so the gradient of the sum gives
                    # every image the gradient of its own score; only the recorded tensors'
                    # gradients are computed (never the parameters').
                    recorder.backprop(scores.sum())
            with torch.no_grad():
                tokens = self.token_scores(recorder, logits.detach(), classes)
            gh, gw = recorder.grid
        if self.resolution == "pixel":
            return tokens
        return tokens.reshape(images.shape[0], gh, gw)

    def target_scores(self, targets: Target, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scores (B,) whose gradients the method reads, and the explained class per image
        (None for a callable target): the targets' logits (`resolve_targets`) unless overridden."""
        return resolve_targets(targets, logits)

    def token_scores(self, recorder: ViTRecorder, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """One score per patch token, (B, gh*gw), from the recorded pass."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------
    def check_inputs(self, images: torch.Tensor, targets: Target = None) -> None:
        """Raise `InvalidParameterError` unless `images` and `targets` are valid inputs (nothing is run)."""
        self._validate_images(images)
        check_targets(targets, images.shape[0])

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        self._validate_images(images)
        param = next(self.model.parameters())
        return images.to(device=param.device, dtype=param.dtype)

    def _validate_images(self, images: torch.Tensor) -> None:
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
        finite = torch.isfinite(images.detach()).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            listing = ", ".join(map(str, bad[:10])) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
            raise InvalidParameterError(
                f"images {listing} contain NaN or infinite pixels, which make every map NaN; fix or drop "
                "those images (e.g. keep images[torch.isfinite(images).flatten(1).all(1)])"
            )


def _with_target_outputs(attribute):
    """Run `attribute` with the model's heads replaced by the identity when the target scores features
    (`xaikit.targets.FeatureTarget`), so the method's logits are the pre-logits features."""

    @functools.wraps(attribute)
    def wrapper(self, images, targets=None):
        if isinstance(targets, FeatureTarget) and not self.accepts_feature_targets:
            raise InvalidParameterError(
                f"method {self.name!r} propagates relevance from the classifier head's logits, so it cannot explain "
                f"a score of the features such as {targets!r}; explain it with 'cdam' or another gradient method"
            )
        with scoring_features(self.model, targets):
            return attribute(self, images, targets)

    return wrapper


Explainer.attribute = _with_target_outputs(Explainer.attribute)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode, then give every submodule back its own ``training`` flag."""
    saved = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training


def refuse_inference_mode(method: str) -> None:
    """A method that needs gradients cannot run under ``torch.inference_mode()``: say so and how to fix it."""
    if torch.is_inference_mode_enabled():
        raise InvalidParameterError(
            f"method {method!r} needs gradients, which torch.inference_mode() disables (torch.enable_grad() "
            "cannot override it); call xaikit.explain outside the torch.inference_mode() block "
            "(under torch.no_grad() it works: explainers turn gradients on themselves)"
        )


def integer_setting(method: str, name: str, value: object) -> object:
    """An int-valued setting as a Python int: numpy integers accepted, bools refused."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} of method {method!r} must be an int; got the bool {value!r}")
    if isinstance(value, np.integer):
        return int(value)
    return value  # the method's own check names the valid range
