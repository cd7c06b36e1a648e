"""Data: synthetic images with ground truth, and loaders for real data sets."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidParameterError

EXAMPLE_SOURCES = ("cifar10", "cifar100", "shapes", "imagenet")


@dataclass(frozen=True)
class Examples:
    """Images to explain: uint8 arrays (B, H, W, 3) or PIL images, their labels and class names."""

    images: np.ndarray | list
    labels: np.ndarray
    class_names: Sequence[str]
    masks: np.ndarray | None = None  # ground-truth object masks, where known

    def __len__(self) -> int:
        return len(self.labels)


def load_examples(source: str, n: int, *, seed: int = 0) -> Examples:
    """`n` evaluation images of `source` (cifar10/cifar100 test, held-out synthetic shapes, ImageNet val).

    `n` and `seed` are non-negative ints (numpy integers too); they are checked here so a
    bad value is reported as given (``n_images=-3`` in a notebook), not as whatever a loader
    computed from it.
    """
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidParameterError(
                f"load_examples needs {name} to be a non-negative int"
                + (" (the number of images; notebooks call it n_images)" if name == "n" else "")
                + f"; got {value!r}"
            )
    n, seed = int(n), int(seed)
    if source == "cifar10":
        from .cifar10 import load_cifar10

        split = load_cifar10("test").take(n, seed=seed)
        return Examples(split.images, split.labels, split.class_names)
    if source == "cifar100":
        from .cifar100 import load_cifar100

        split = load_cifar100("test").take(n, seed=seed)  # fine labels, class-balanced
        return Examples(split.images, split.labels, split.class_names)
    if source == "shapes":
        from .synthetic import make_shapes

        # Seed 1 is the held-out set of the demo-shapes-vit recipe (trained on seed 0).
        shapes = make_shapes(n + seed, seed=1, with_importance=False)
        return Examples(shapes.images[seed:], shapes.labels[seed:], shapes.class_names, shapes.masks[seed:])
    if source == "imagenet":
        from .imagenet import load_imagenet_val

        val = load_imagenet_val(n)
        return Examples(val.images, np.asarray(val.labels), val.class_names)
    raise InvalidParameterError(f"unknown example source {source!r}; valid sources are {', '.join(EXAMPLE_SOURCES)}")
