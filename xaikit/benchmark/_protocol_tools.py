"""Helpers of `xaikit.benchmark.protocols` that are not protocols: what a unit sees (`UnitData`, exported by
`xaikit.benchmark.protocols`), the randomisation cascade, the pointing game's tolerance, and the timing of the cost
protocol."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..methods import get_method, method_parameters
from ..methods.base import positive_int

_ASTROCYTE_SETTINGS = ("k", "tau", "phi", "alpha", "beta", "block")


# -- what a unit sees -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class UnitData:
    """One unit's model, images, ground truth and method (built by `xaikit.benchmark.units` from the spec).

    - `model`: eval mode, on the device; the astrocytic layer is NOT applied to it (`explain` applies it);
    - `images` (n, 3, H, W) normalised for the model; `image_ids` n strings;
    - `labels` (n,) ground-truth classes, `masks` (n, H, W) bool object masks, `human` (n, S, S) human or
      human-like maps, `other_classes` (n,) the second object's class (pairs): each None where the data set has
      none;
    - `method` and `method_settings`: a registered method (`xaikit.list_methods()`) and its settings;
    - `astrocytes`: the settings of `xaikit.astrocytes` (k, tau, phi, alpha, beta, optionally block), or None;
    - `batch_size`: images per run of the method and per forward of the model.
    """

    model: nn.Module
    images: torch.Tensor
    image_ids: list[str]
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    human: torch.Tensor | None = None
    other_classes: torch.Tensor | None = None
    method: str
    method_settings: dict = field(default_factory=dict)
    astrocytes: dict | None = None
    batch_size: int = 64
    _maps: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _predicted: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4 or not self.images.is_floating_point():
            raise InvalidParameterError(
                f"images must be a float tensor (n, 3, H, W) normalised for the model (xaikit.preprocess); got "
                f"{getattr(self.images, 'shape', type(self.images).__name__)}"
            )
        n = len(self.images)
        self.image_ids = [str(i) for i in self.image_ids]
        if len(self.image_ids) != n:
            raise InvalidParameterError(f"{len(self.image_ids)} image ids for {n} images: give one id per image")
        for name in ("labels", "other_classes"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _classes(value, n, name))
        for name, ndim in (("masks", 3), ("human", 3)):
            value = getattr(self, name)
            if value is not None and (torch.as_tensor(value).ndim != ndim or len(value) != n):
                raise InvalidParameterError(
                    f"{name} must be one map per image, (n={n}, H, W); got {tuple(torch.as_tensor(value).shape)}"
                )
        get_method(self.method)  # an unknown method fails here, naming the valid ones
        if not isinstance(self.method_settings, Mapping):
            raise InvalidParameterError(f"method_settings must be a dict of the method's settings; got {self.method_settings!r}")
        self.method_settings = dict(self.method_settings)
        if self.astrocytes is not None:
            unknown = sorted(set(self.astrocytes) - set(_ASTROCYTE_SETTINGS))
            if not isinstance(self.astrocytes, Mapping) or unknown:
                raise InvalidParameterError(
                    f"astrocytes must be None (off) or a dict of xaikit.astrocytes settings among "
                    f"{', '.join(_ASTROCYTE_SETTINGS)}; got {self.astrocytes!r}"
                )
        self.batch_size = positive_int("batch_size", self.batch_size)

    def predicted(self) -> torch.Tensor:
        """The class the unit's model predicts for each image, without astrocytes (n,) long, CPU."""
        if self._predicted is None:
            with torch.no_grad():
                logits = [self.model(chunk) for chunk in self.images.split(self.batch_size)]
            self._predicted = torch.cat(logits).argmax(1).cpu()
        return self._predicted

    def explain(self, targets: torch.Tensor | None = None, model: nn.Module | None = None) -> torch.Tensor:
        """The method's maps (n, h, w) float32 on the CPU: token maps, or pixel maps for pixel methods.

        `targets`: None for the class the unit's model predicts (`predicted`), or one class per image (n,).
        `model`: None for the unit's model, or another model (e.g. a randomised copy). The maps are computed
        in batches of `batch_size`, inside `xaikit.astrocytes(model, **astrocytes)` when the unit sets it, and
        cached per (classes, model): asking again returns the same tensor.
        """
        model = self.model if model is None else model
        classes = self.predicted() if targets is None else _classes(targets, len(self.images), "targets")
        key = (id(model), tuple(classes.tolist()))
        cached = self._maps.get(key)
        if cached is not None and cached[0] is model:  # the cache holds the model, so its id is not reused
            return cached[1]
        maps = self.compute(classes, model)
        self._maps[key] = (model, maps)
        return maps

    def compute(self, classes: torch.Tensor | None, model: nn.Module | None = None, *, draw: int = 0) -> torch.Tensor:
        """`explain` without the cache; `classes` None lets the method take each image's predicted class itself.

        `draw` picks an independent draw of the method's randomness: torch's generator is seeded with `draw`
        (and restored afterwards), and a method with a ``seed`` setting (``random``) runs with its seed + `draw`.
        """
        model = self.model if model is None else model
        method = get_method(self.method)
        settings = dict(self.method_settings)
        if draw and "seed" in method_parameters(method):
            settings["seed"] = settings.get("seed", method_parameters(method)["seed"].default) + draw
        explainer = method.create(model, **settings)
        device = self.images.device
        layer = contextlib.nullcontext() if self.astrocytes is None else _astrocytic_layer(model, self.astrocytes)
        forked = [device.index or 0] if device.type == "cuda" else []
        chunks = []
        with torch.random.fork_rng(devices=forked), layer:
            torch.manual_seed(draw)
            for start in range(0, len(self.images), self.batch_size):
                part = None if classes is None else classes[start:start + self.batch_size].to(device)
                chunks.append(explainer(self.images[start:start + self.batch_size], part).detach().float().cpu())
        return torch.cat(chunks)


def _astrocytic_layer(model: nn.Module, settings: Mapping):
    from ..astrocytes import astrocytes

    return astrocytes(model, **settings)


def _classes(value, n: int, name: str) -> torch.Tensor:
    """One integer class per image (n,) as a CPU long tensor, or an error naming the fix."""
    classes = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.shape != (n,):
        raise InvalidParameterError(
            f"{name} must hold one integer class per image, shape ({n},); got {classes.dtype} {tuple(classes.shape)}"
        )
    return classes.long().cpu()


# -- the randomisation cascade ------------------------------------------------------------------------------
#: the layers `randomised_cascade` re-initialises first: the classifier head (and DeiT's distillation head)
HEADS = ("head", "head_dist")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def cascade_names(model: nn.Module) -> list[str]:
    """The cascade's steps, top down: ``"head"``, then ``"blocks.{L-1}"``, ..., ``"blocks.0"``."""
    return ["head"] + [f"blocks.{index}" for index in reversed(range(len(model.blocks)))]


def reinitialise(module: nn.Module, generator: torch.Generator, std: float) -> None:
    """Re-initialise every parameter of `module` in place, as timm initialises a ViT: weights of linear and
    convolution layers (and any other parameter) drawn from N(0, std^2), biases zero, normalisation layers
    weight 1 and bias 0. Values are drawn on the CPU from `generator`, so they do not depend on the device."""
    with torch.no_grad():
        for layer in module.modules():
            for name, parameter in layer.named_parameters(recurse=False):
                if isinstance(layer, _NORMS):
                    value = torch.ones(parameter.shape) if name == "weight" else torch.zeros(parameter.shape)
                elif name == "bias":
                    value = torch.zeros(parameter.shape)
                else:
                    value = torch.empty(parameter.shape, dtype=torch.float64).normal_(0.0, std, generator=generator)
                parameter.copy_(value.to(parameter.dtype))


def randomised_cascade(model: nn.Module, *, seed: int, std: float) -> Iterator[tuple[str, nn.Module]]:
    """Adebayo et al.'s cascading randomisation on a deep copy of `model` (the given model is never touched):
    yields (step name, the copy) after re-initialising the head, then also the last block, then the block below,
    down to block 0. Each step's draws come from a generator seeded with ``seed + step``."""
    heads = [getattr(model, name) for name in HEADS if isinstance(getattr(model, name, None), nn.Module)]
    if not any(p.numel() for head in heads for p in head.parameters()):
        raise InvalidParameterError(
            "the randomisation test starts from the classifier head, but this model's head has no parameters "
            "(num_classes=0?): give the model with its classifier head"
        )
    randomised = copy.deepcopy(model)
    for step, name in enumerate(cascade_names(model)):
        generator = torch.Generator().manual_seed(seed + step)
        layers = [getattr(randomised, head) for head in HEADS if isinstance(getattr(randomised, head, None), nn.Module)] \
            if name == "head" else [randomised.get_submodule(name)]
        for layer in layers:
            reinitialise(layer, generator, std)
        yield name, randomised


def dilated_masks(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Each mask (B, H, W) grown by every pixel within Euclidean distance `radius` of it (bool, CPU);
    ``radius = 0`` leaves the masks as they are. An empty mask stays empty."""
    from scipy.ndimage import distance_transform_edt

    masks = torch.as_tensor(masks).bool().cpu()
    if radius <= 0:
        return masks
    grown = []
    for mask in masks.numpy():
        grown.append(mask if not mask.any() else distance_transform_edt(~mask) <= radius)
    return torch.from_numpy(np.stack(grown)) if grown else masks


def fastest_seconds(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """The smallest time in seconds of each call over `repeats` rounds, after one untimed warm-up of each;
    every round times every call once, in turn, so load changes on the machine hit them alike
    (`xaikit.bench`'s measurement, with the minimum instead of the median: the least disturbed run)."""
    from ..bench import _timed

    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            seconds[key].append(_timed(call, device))
    return {key: min(times) for key, times in seconds.items()}
