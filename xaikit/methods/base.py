"""The shared base of all explainers, and the registry that names them.

An explainer is a small class: settings go to ``__init__`` (validated there),
data to ``__call__``. The base runs one forward pass (and one backward pass
when the method needs gradients) per batch inside a `ViTRecorder`, and the
subclass turns the recording into one score per patch token.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from types import MappingProxyType
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import ViTRecorder, check_vit, token_grid
from ..targets import (
    FeatureTarget,
    Target,
    check_target_range,
    check_targets,
    head_classes,
    resolve_targets,
    scoring_features,
)

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
    if isinstance(name, Explainer) or (isinstance(name, type) and issubclass(name, Explainer)):
        cls = name if isinstance(name, type) else type(name)
        kind = "class" if isinstance(name, type) else "instance"
        registered = getattr(cls, "name", None)
        if _REGISTRY.get(registered) is cls:
            settings = ", ".join(f"{n}=..." for n in method_parameters(cls))
            example = f"method={registered!r}" + (f", {settings}" if settings else "")
            advice = f"pass method={registered!r} and its settings as keywords: xaikit.explain(model, images, {example})"
        else:
            advice = "register it under a name (@xaikit.methods.register, with a class attribute name) and pass that name"
        if kind == "instance":
            advice += ", or call the explainer itself: explainer(images, targets)"
        raise InvalidParameterError(
            f"unknown method: got the explainer {kind} {cls.__qualname__}, but a method is named by its registry "
            f"name (one of {', '.join(list_methods())}); {advice}"
        )
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
    #: the method's name in the book's prose and tables ("Methods at a glance", `method_facts`)
    title: ClassVar[str]
    #: the key in book/references.bib of the paper that introduced the method; None only for a floor
    paper: ClassVar[str | None] = None
    #: the row label each reproduced paper's tables give the method, by chapter ("tokentm", "cdam", "vita";
    #: `xaikit.methods.facts.PAPERS`); a method those tables do not have is left out
    paper_names: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: a floor: a map blind to the model (Random, the centre prior), the level every method has to beat
    floor: ClassVar[bool] = False
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
    #: the method propagates relevance, which half precision ruins: float16/bfloat16 models run with
    #: float32 weights (`float32_weights`) and give float32 maps
    relevance_in_float32: ClassVar[bool] = False
    #: the method reads the weights of the blocks' linear layers itself (relevance rules, TokenTM's transformation):
    #: a forward hook that changes a layer's output (`xaikit.astrocytes`) is not seen there
    reads_layer_weights: ClassVar[bool] = False
    #: a call is running (`_prepared_call` prepares the outermost level only)
    _in_call: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:  # every method's own attribute runs prepared (`_prepared_call`)
            cls.attribute = _prepared_call(cls.__dict__["attribute"])

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

    def _warn_of_astrocytes(self) -> None:
        if not self.reads_layer_weights:
            return
        from ..astrocytes import AstrocyteWarning, wrapped_blocks

        blocks = wrapped_blocks(self.model)
        if blocks:
            warnings.warn(AstrocyteWarning(
                f"method {self.name!r} reads the linear layers' weights itself, so its relevance through "
                f"blocks[{blocks[0]}].attn.proj follows the plain layer, not the astrocytic modulation (the forward pass "
                "and the gradients do follow it); compare it with and without astrocytes knowing that, or use a "
                "gradient method (gradcam, gradcam_pp, cdam, input_gradients)"), stacklevel=4)

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Like ``__call__`` but in the model's own dtype (float64 models give float64 maps; a method that
        propagates relevance gives float32 maps of a float16/bfloat16 model, see `float32_weights`).

        The model runs in eval mode (no dropout; DeiT's distilled head averages its two
        outputs); every submodule's ``training`` flag is restored afterwards, also after an
        exception.
        """
        images = self._check_images(images)
        check_targets(targets, images.shape[0])
        self._warn_of_astrocytes()
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
        """Raise `InvalidParameterError` unless `images` and `targets` are valid inputs (nothing is run): class
        indices must be classes of the model's head, also for a method whose maps ignore them."""
        self._validate_images(images)
        check_targets(targets, images.shape[0])
        if not isinstance(targets, FeatureTarget):
            check_target_range(targets, head_classes(self.model))

    def _empty_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The maps of an empty batch: (0, gh, gw), or (0, H, W) for pixel methods, in the model's dtype and device."""
        param = next(self.model.parameters())
        size = tuple(images.shape[-2:])
        shape = size if self.resolution == "pixel" else token_grid(self.model, size)
        return torch.zeros((0, *shape), dtype=param.dtype, device=param.device)

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


def _prepared_call(attribute):
    """Wrap an explainer's `attribute` with what every method's call shares, done once per call by the
    outermost level (a subclass's `attribute` calling ``super().attribute`` runs the inner level as it is):

    * the inputs are checked (`Explainer.check_inputs`), class indices also where the maps ignore them;
    * an empty batch gives empty maps without running the method;
    * a half-precision model runs with float32 weights for a method that propagates relevance
      (`float32_weights`);
    * with a target scoring the features (`xaikit.targets.FeatureTarget`) the model's heads are replaced by
      the identity, so the method's logits are the pre-logits features.
    """

    @functools.wraps(attribute)
    def wrapper(self, images, targets=None):
        if self._in_call:
            return attribute(self, images, targets)
        if isinstance(targets, FeatureTarget) and not self.accepts_feature_targets:
            raise InvalidParameterError(
                f"method {self.name!r} propagates relevance from the classifier head's logits, so it cannot explain "
                f"a score of the features such as {targets!r}; explain it with 'cdam' or another gradient method"
            )
        self.check_inputs(images, targets)
        self._in_call = True
        try:
            with float32_weights(self.model) if self.relevance_in_float32 else nullcontext():
                if images.shape[0] == 0:
                    return self._empty_maps(images)
                with scoring_features(self.model, targets):
                    return attribute(self, images, targets)
        finally:
            self._in_call = False

    return wrapper


Explainer.attribute = _prepared_call(Explainer.attribute)


@contextmanager
def float32_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Run a float16 or bfloat16 `model` with float32 parameters and buffers (relevance rules lose up to all
    significant digits in half precision). On exit every parameter and buffer gets its own tensor back
    (the same storage, dtype and values, and the same ``.grad``), also after an exception; a model with
    no half-precision tensor is left as it is."""
    half = (torch.float16, torch.bfloat16)
    parameters = [(p, p.data, p.grad) for p in model.parameters() if p.dtype in half]
    buffers = [
        (module, name, buffer)
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
        if buffer.dtype in half
    ]
    try:
        for param, data, _ in parameters:
            param.grad = None  # a half-precision .grad cannot sit on a float32 parameter
            param.data = data.float()
        for module, name, buffer in buffers:
            setattr(module, name, buffer.float())
        yield model
    finally:
        for param, data, grad in parameters:
            param.data = data
            param.grad = grad
        for module, name, buffer in buffers:
            setattr(module, name, buffer)


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


def positive_int(name: str, value: object, hint: str = "") -> int:
    """`value` as a Python int (numpy integers accepted), or an error naming `name` for a bool, a
    non-integer or a value below 1; `hint` is added to the error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive int; got {value!r}" + (f". {hint}" if hint else ""))
    return int(value)


def integer_setting(method: str, name: str, value: object) -> object:
    """An int-valued setting as a Python int: numpy integers accepted, bools refused."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} of method {method!r} must be an int; got the bool {value!r}")
    if isinstance(value, np.integer):
        return int(value)
    return value  # the method's own check names the valid range
