"""The benchmark's protocols: one small class per protocol, each scoring one unit's maps image by image.

A unit of the benchmark (`xaikit.ledger`) is one model, image set, method, protocol and astrocyte setting over a
shard of images. `UnitData` is what a unit sees: the model, the images and whatever ground truth the data set
carries, and the method, which `UnitData.explain` runs in batches (inside ViTA's astrocytic layer when the unit
asks for it) and caches, so that a protocol asking twice for the same maps computes them once.

A protocol (`BenchmarkProtocol`) takes its settings at construction — the defaults are the settings of the paper
it comes from, stated in each class's docstring — and is called with a `UnitData`; it returns, per metric, one
value per image (n,) (the cost protocol, whose value belongs to the whole unit, returns one value: its
``per_image`` is False). ``metrics`` says for each metric whether higher is better, ``needs`` which ground truth
the protocol reads (a `UnitData` without it is refused with the fix). Every protocol runs the project's tested
implementations (`xaikit.protocols`, `xaikit.metrics`, `xaikit.bench`); none is re-implemented here.

Conventions every protocol shares:

- The class explained is the one the unit's model predicts, without astrocytes (``explained_class =
  "predicted"``), or the ground-truth label (``"label"``), as the protocol's paper did. The astrocytic layer is
  for explanation only (ViTA): the model that the perturbation protocols read is the plain model.
- Per-image values: where a paper reports only an aggregate (pixel accuracy and mIoU pooled over a data set),
  the protocol gives each image's own value, said in its docstring; the summary bootstraps over the images.
- Randomness is seeded: before each run of the method torch's generator is seeded (`UnitData.explain`), and the
  protocols' own draws (boxes, re-initialised weights) have a ``seed`` setting.

``get_protocol("segmentation")`` builds a protocol by its registry name (`PROTOCOLS`).
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..methods.base import positive_int
from ..protocols import (
    DEFAULT_BOX_SIZES,
    DEFAULT_FRACTIONS,
    BoxSensitivity,
    ClassDiscrimination,
    Fidelity,
    Perturbation,
    PerturbationEngine,
    pool_segmentation,
)
from ._protocol_tools import UnitData, cascade_names, dilated_masks, fastest_seconds, randomised_cascade

__all__ = ["BenchmarkProtocol", "PROTOCOLS", "UnitData", "get_protocol"]

#: the ground truth a `UnitData` may carry, and so a protocol may need
GROUND_TRUTH = ("labels", "masks", "human", "other_classes")
#: which class a protocol's maps explain: the unit model's prediction, or the ground-truth label
EXPLAINED_CLASSES = ("predicted", "label")


def _numbers(values) -> np.ndarray:
    return torch.as_tensor(values).detach().double().cpu().numpy().reshape(-1)


# -- the protocols' base ----------------------------------------------------------------------------------------
PROTOCOLS: dict[str, type["BenchmarkProtocol"]] = {}


def _register(cls: type["BenchmarkProtocol"]) -> type["BenchmarkProtocol"]:
    PROTOCOLS[cls.name] = cls
    return cls


def get_protocol(name: str, **settings) -> "BenchmarkProtocol":
    """The protocol registered as `name`, with `settings` (the rest at their paper's defaults)."""
    if name not in PROTOCOLS:
        raise InvalidParameterError(f"unknown protocol {name!r}; valid protocols are: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name](**settings)


def _check_upsample_mode(mode) -> None:
    from ..imaging import UPSAMPLE_MODES

    if mode not in UPSAMPLE_MODES:
        raise InvalidParameterError(f"unknown upsample_mode {mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")


def _stub_model(images: torch.Tensor) -> torch.Tensor:
    """A stand-in model for checking an engine protocol's settings before any data is seen."""
    return images


class BenchmarkProtocol:
    """Base of the protocols: subclass, set the class attributes, implement `evaluate`.

    ``defaults`` holds every setting and its default (the paper's); ``__init__`` refuses unknown settings
    naming the valid ones, and `check` validates the values (by default: building the protocol on a stand-in
    model, so the project's own protocol classes check them).
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    metrics: ClassVar[dict[str, bool]]
    needs: tuple[str, ...] = ()
    #: False when `__call__` returns one value for the whole unit (length 1) rather than one per image
    per_image: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings) -> None:
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            listing = ", ".join(f"{key}={value!r}" for key, value in self.defaults.items()) or "none"
            raise InvalidParameterError(
                f"protocol {self.name!r} has no setting {', '.join(map(repr, unknown))}; its settings are: {listing}"
            )
        values = {**self.defaults, **settings}
        self._settings = {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
        try:
            json.dumps(self._settings)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"the settings of protocol {self.name!r} go into the unit's specification, so they must be JSON "
                f"values (numbers, strings, booleans, None, lists); got {self._settings!r}"
            ) from None
        explained = self._settings.get("explained_class")
        if explained is not None and explained not in EXPLAINED_CLASSES:
            raise InvalidParameterError(
                f"explained_class of protocol {self.name!r} must be 'predicted' (the class the model predicts) or "
                f"'label' (the ground-truth class); got {explained!r}"
            )
        if explained == "label" and "labels" not in self.needs:
            self.needs = tuple(self.needs) + ("labels",)
        self.check()

    def check(self) -> None:
        """Raise `InvalidParameterError` for a bad setting value (the project's protocol says which and why)."""
        self.build(_stub_model)

    def build(self, model) -> Any:
        """The `xaikit.protocols` object this protocol runs on `model`, with its settings (None: none)."""
        return None

    def settings(self) -> dict:
        """The settings, JSON-serialisable (they go into the unit's specification)."""
        return json.loads(json.dumps(self._settings))

    def __call__(self, data: UnitData) -> dict[str, np.ndarray]:
        """Per metric of ``metrics``: the values, float64, one per image (n,) (one for the unit when not
        ``per_image``). NaN marks an image whose value is undefined (the protocol's docstring says when)."""
        missing = [name for name in self.needs if getattr(data, name) is None]
        if missing:
            raise InvalidParameterError(
                f"protocol {self.name!r} needs {' and '.join(missing)}, which this unit's data lacks (UnitData."
                f"{missing[0]} is None): run it on a data set that carries them (the synthetic shapes and pairs carry "
                f"masks, human-like maps and two classes), or leave {self.name!r} out of this data set's protocols"
            )
        values = self.evaluate(data)
        length = len(data.image_ids) if self.per_image else 1
        result = {}
        for metric in self.metrics:
            result[metric] = _numbers(values[metric])
            if len(result[metric]) != length:
                raise RuntimeError(f"protocol {self.name!r} gave {len(result[metric])} values of {metric}, not {length}")
        return result

    def evaluate(self, data: UnitData) -> Mapping[str, Any]:
        raise NotImplementedError

    def targets(self, data: UnitData) -> torch.Tensor | None:
        """The classes the maps explain: None (predicted) or the labels, by the ``explained_class`` setting."""
        return data.labels if self._settings.get("explained_class") == "label" else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._settings.items())})"


# -- TokenTM's (Chefer et al.'s) protocols -------------------------------------------------------------------------
@_register
class SegmentationProtocol(BenchmarkProtocol):
    """ImageNet-Segmentation (Chefer et al. 2021, as TokenTM runs it): `xaikit.metrics.segmentation_stats`.

    Maps of the predicted class (``explained_class="predicted"``, the reference's ``index=None``), token maps
    upsampled bilinearly (``upsample_mode="bilinear"``), min-max normalised, foreground = above the map's mean.
    Per image (the papers pool pixel accuracy and IoU over the data set; here each image has its own):
    ``pixel_accuracy`` = correct / labelled pixels; ``miou`` = the mean of the image's background and
    foreground IoU (a class absent from both prediction and mask has IoU 0, the reference's eps convention);
    ``map`` = the image's AP (the papers' mAP is already the mean of these). A constant map predicts background
    everywhere (AP 0.5), as the reference scores it. Needs masks.
    """

    name = "segmentation"
    paper = "TokenTM"
    metrics = {"pixel_accuracy": True, "miou": True, "map": True}
    needs = ("masks",)
    defaults = {"upsample_mode": "bilinear", "explained_class": "predicted"}

    def check(self) -> None:
        _check_upsample_mode(self._settings["upsample_mode"])

    def evaluate(self, data):
        from ..metrics import segmentation_stats

        maps = data.explain(self.targets(data))
        stats = segmentation_stats(maps, torch.as_tensor(data.masks).long(), upsample_mode=self._settings["upsample_mode"])
        per_image = pool_segmentation(stats).per_image
        return {"pixel_accuracy": per_image["pixel_accuracy"], "miou": per_image["iou"].mean(1), "map": per_image["ap"]}


_PERTURBATION_DEFAULTS = {"fractions": list(DEFAULT_FRACTIONS), "replacement": 0.0, "batch_size": 64, "upsample_mode": "bilinear"}


@_register
class PerturbationProtocol(BenchmarkProtocol):
    """Chefer et al.'s perturbation test (TokenTM's Tables 2-4): `xaikit.protocols.Perturbation`.

    The top shares 0, 0.1, ..., 0.9 (``fractions``) of the pixels, ranked by the map (token maps upsampled
    bilinearly), are set to black (``replacement=0.0``, in [0, 1] image space); the per-image area under the
    top-1 correctness curve against the label (trapezoid over the fractions, x 100, the measured step 0:
    ``auc="trapezoid"``). Positive order (most relevant first: lower is better) and negative order (higher is
    better), for maps of the predicted class and of the label: the paper's four columns. Needs labels.
    """

    name = "perturbation"
    paper = "TokenTM"
    metrics = {"positive_auc_predicted": False, "negative_auc_predicted": True,
               "positive_auc_label": False, "negative_auc_label": True}
    needs = ("labels",)
    defaults = {**_PERTURBATION_DEFAULTS, "auc": "trapezoid"}

    def build(self, model, order: str = "positive", engine=None):
        settings = dict(self._settings)
        return Perturbation(model, order=order, fractions=settings["fractions"], replacement=settings["replacement"],
                            auc=settings.get("auc", "trapezoid"), batch_size=settings["batch_size"],
                            upsample_mode=settings["upsample_mode"], engine=engine)

    def evaluate(self, data):
        engine = PerturbationEngine(data.model, batch_size=self._settings["batch_size"], upsample_mode=self._settings["upsample_mode"])
        values = {}
        for explained, targets in (("predicted", None), ("label", data.labels)):
            maps = data.explain(targets).to(data.images.device)
            for order in ("positive", "negative"):
                result = self.build(data.model, order, engine)(data.images, data.labels, maps)
                values[f"{order}_auc_{explained}"] = result.auc_per_image
        return values


@_register
class AopcLoddsProtocol(PerturbationProtocol):
    """TokenTM's AOPC and LOdds (its Table 5): `xaikit.protocols.Perturbation`, positive order, maps of the
    predicted class, the most relevant 10 %, ..., 90 % of the pixels set to black (``fractions`` above 0;
    ``replacement=0.0``). Per image: ``aopc`` = mean over the steps of p(x) - p(x_f) (higher is better),
    ``lodds`` = mean of log(p(x_f) / p(x)) (lower is better), p the probability of the class predicted on the
    clean image. Needs nothing (labels, when present, only feed accuracy curves not reported here)."""

    name = "aopc_lodds"
    metrics = {"aopc": True, "lodds": False}
    needs = ()
    defaults = dict(_PERTURBATION_DEFAULTS)

    def evaluate(self, data):
        labels = data.labels if data.labels is not None else data.predicted()
        maps = data.explain(None).to(data.images.device)
        result = self.build(data.model)(data.images, labels, maps)
        return {"aopc": result.aopc_per_image, "lodds": result.lodds_per_image}


# -- CDAM's protocols --------------------------------------------------------------------------------------------------
_BLUR_DEFAULTS = {"sigma": 14.0, "reference_size": 224, "kernel_size": None, "blur_space": "normalised",
                  "replacement": "blur", "upsample_mode": "nearest", "batch_size": 64}
_FIDELITY_DEFAULTS = {"step": 0.05}
_BOX_DEFAULTS = {"sizes": list(DEFAULT_BOX_SIZES), "n_boxes": 100, "seed": 0, "tolerance": 1e-6}
_STUB_NORMALISATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class _CdamProtocol(BenchmarkProtocol):
    """A CDAM benchmark: settings passed to its `xaikit.protocols` class as they are."""

    paper = "CDAM"
    runner: ClassVar[type]

    def check(self) -> None:
        self.build(_stub_model, **_STUB_NORMALISATION)  # the stand-in has no timm normalisation of its own

    def build(self, model, **extra):
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in self._settings.items() if k != "explained_class"}
        return self.runner(model, **settings, **extra)


@_register
class FidelityProtocol(_CdamProtocol):
    """CDAM's fidelity, MIF and LIF (its Table S1 on X_val): `xaikit.protocols.Fidelity`.

    Maps of the predicted class (X_val; ``explained_class="predicted"``); pixels replaced, most (MIF) or least
    (LIF) important first, by a Gaussian-blurred copy (``sigma=14`` px at ``reference_size=224``, scaled to the
    images; the paper), in steps of 5 % of the pixels (``step=0.05``, the authors' earlier code); token maps
    upsampled by nearest neighbour (the authors' upsampling); the raw logit of the class read. Per image: the
    trapezoidal areas ``a_mif`` (lower is better), ``a_lif`` and ``a_lif_minus_mif`` (higher is better).
    """

    name = "fidelity"
    metrics = {"a_mif": False, "a_lif": True, "a_lif_minus_mif": True}
    defaults = {**_FIDELITY_DEFAULTS, **_BLUR_DEFAULTS, "explained_class": "predicted"}
    runner = Fidelity

    def evaluate(self, data):
        targets = self.targets(data)
        result = self.build(data.model)(data.images, targets, data.explain(targets).to(data.images.device))
        return {"a_mif": result.a_mif_per_image, "a_lif": result.a_lif_per_image,
                "a_lif_minus_mif": result.a_lif_minus_mif_per_image}


@_register
class BoxSensitivityProtocol(_CdamProtocol):
    """CDAM's box sensitivity (its Table S1): `xaikit.protocols.BoxSensitivity`.

    Maps of the predicted class; for each box side 8, 16, ..., 112 px at 224 px (``sizes``, scaled to the
    images; the paper gives none), ``n_boxes=100`` random boxes (the paper; ``seed=0``) blurred one at a time
    (sigma 14 px at 224 px); Pearson's r between the map's sum over a box and the drop of the raw logit, and
    ``a_box`` = its trapezoidal area over the box side in percent of the image side, per image (higher is
    better). An undefined r (a constant map) counts as 0.
    """

    name = "box_sensitivity"
    metrics = {"a_box": True}
    defaults = {**_BOX_DEFAULTS, **_BLUR_DEFAULTS, "explained_class": "predicted"}
    runner = BoxSensitivity

    def evaluate(self, data):
        targets = self.targets(data)
        result = self.build(data.model)(data.images, targets, data.explain(targets).to(data.images.device))
        return {"a_box": result.a_box_per_image}


@_register
class ClassDiscriminationProtocol(_CdamProtocol):
    """CDAM's class discrimination (its Table 2, on X_multi): `xaikit.protocols.ClassDiscrimination`.

    On images holding two classes: maps of the labelled class c and of the other class c' go through fidelity
    and box sensitivity, every curve reading the raw logit of c (settings of `FidelityProtocol` and
    `BoxSensitivityProtocol`, the same defaults). Per image: ``a_delta_lif_minus_mif`` = A_LIF-MIF(c) -
    A_LIF-MIF(c') and ``a_delta_box`` = A_box(c) - A_box(c'), both higher is better (a class-blind map scores
    0). Needs labels and other_classes.
    """

    name = "class_discrimination"
    metrics = {"a_delta_lif_minus_mif": True, "a_delta_box": True}
    needs = ("labels", "other_classes")
    defaults = {**_FIDELITY_DEFAULTS, **_BOX_DEFAULTS, **_BLUR_DEFAULTS}
    runner = ClassDiscrimination

    def evaluate(self, data):
        device = data.images.device
        result = self.build(data.model)(data.images, data.labels, data.other_classes, data.explain(data.labels).to(device),
                                        data.explain(data.other_classes).to(device))
        return {"a_delta_lif_minus_mif": result.a_delta_lif_minus_mif_per_image, "a_delta_box": result.a_delta_box_per_image}


@_register
class CompactnessProtocol(BenchmarkProtocol):
    """CDAM's compactness (its Table 3, on X_multi): `xaikit.metrics.compactness`.

    Per image, the share of the raw map's scores below ``threshold=0.05`` times its maximum (the authors'
    ``get_ratio``: |S| against the signed maximum, strict), higher is more compact. Maps of the labelled class
    (``explained_class="label"``: X_multi's annotated classes), so it needs labels.
    """

    name = "compactness"
    paper = "CDAM"
    metrics = {"compactness": True}
    defaults = {"threshold": 0.05, "explained_class": "label"}

    def check(self) -> None:
        from ..metrics import compactness

        compactness(torch.zeros(1, 1, 1), self._settings["threshold"])

    def evaluate(self, data):
        from ..metrics import compactness

        return {"compactness": compactness(data.explain(self.targets(data)), self._settings["threshold"])}


# -- ViTA's protocol ---------------------------------------------------------------------------------------------------
@_register
class HumanAlignmentProtocol(BenchmarkProtocol):
    """ViTA's alignment with human maps (its Table 2): `xaikit.experiments.vita_book.alignment_scores`.

    Maps of the ground-truth class (``explained_class="label"``, the recorded choice of the ViTA chapter),
    upsampled bilinearly to the human maps' size and kept signed; per image ``spearman`` (scipy's, NaN for a
    constant map), ``dice`` of the top 10 % of pixels (Harmonization's) and ``ssim`` of the min-max-normalised
    maps (skimage's defaults), all higher is better. Needs human maps and labels.
    """

    name = "human_alignment"
    paper = "ViTA"
    metrics = {"spearman": True, "dice": True, "ssim": True}
    needs = ("human",)
    defaults = {"explained_class": "label"}

    def check(self) -> None:
        pass

    def evaluate(self, data):
        from ..experiments.vita_book import alignment_scores
        from ..imaging import upsample

        human = torch.as_tensor(data.human).float()
        return alignment_scores(upsample(data.explain(self.targets(data)), tuple(human.shape[-2:])), human)


# -- checks none of the three papers runs -----------------------------------------------------------------------------
@_register
class RandomisationProtocol(BenchmarkProtocol):
    """The model-parameter randomisation test of Adebayo et al. (2018), cascading from the top.

    On a deep copy of the model (the model itself is never touched), the classifier head is re-initialised,
    then also the last block, then the block below, ... down to block 0 (weights drawn from N(0, ``std``^2)
    with ``std=0.02``, biases 0, LayerNorms weight 1 bias 0: timm's initialisation; seeded with ``seed=0`` +
    step). At each step the method explains the SAME class as on the trained model (its prediction), and the
    per-image Spearman rank correlation of the two maps is taken over the map's tokens (pixels for pixel
    methods), of the maps' absolute values (``absolute=True``: Adebayo et al. report both; a map whose sign
    flips is not counted as changed). Metrics per image: ``rank_correlation_top`` (head and last block
    randomised) and ``rank_correlation_all`` (everything), lower is better; ``randomisation_sensitivity`` =
    1 - the mean of the correlation over the cascade steps, higher is better (maps that change when the model
    is destroyed; a method whose maps barely change is flagged by the summary).

    Each run of the method on a randomised copy is an independent draw of its randomness (`UnitData.compute`
    with ``draw`` = the step + 1): the ``random`` floor draws new maps (correlation about 0, sensitivity about 1,
    as noise passes this test), while the ``centre_prior`` gives the same map (correlation 1, sensitivity 0).
    A constant map (trained or randomised) has no ranking: its correlation is NaN; the sensitivity averages
    the steps where it is defined, and is NaN where none is.
    """

    name = "randomisation"
    paper = "Adebayo et al. 2018"
    metrics = {"rank_correlation_top": False, "rank_correlation_all": False, "randomisation_sensitivity": True}
    defaults = {"seed": 0, "std": 0.02, "absolute": True}

    def check(self) -> None:
        seed, std, absolute = (self._settings[k] for k in ("seed", "std", "absolute"))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidParameterError(f"seed of protocol 'randomisation' must be an int >= 0; got {seed!r}")
        if isinstance(std, bool) or not isinstance(std, numbers.Real) or not (math.isfinite(std) and std > 0):
            raise InvalidParameterError(f"std of protocol 'randomisation' must be a number > 0 (timm's 0.02); got {std!r}")
        if not isinstance(absolute, bool):
            raise InvalidParameterError(f"absolute of protocol 'randomisation' must be True or False; got {absolute!r}")

    def evaluate(self, data):
        from ..metrics import ConstantMapWarning, spearman

        classes = data.predicted()
        trained = self._ranked(data.explain(classes))
        correlations = []
        with warnings.catch_warnings():  # a constant map's NaN is this protocol's stated rule
            warnings.simplefilter("ignore", ConstantMapWarning)
            cascade = randomised_cascade(data.model, seed=self._settings["seed"], std=self._settings["std"])
            for step, (_, randomised) in enumerate(cascade):
                maps = self._ranked(data.compute(classes, randomised, draw=step + 1))
                correlations.append(spearman(trained, maps).numpy())
        rho = np.stack(correlations)  # (steps, n)
        defined = np.isfinite(rho).sum(0)
        mean = np.where(defined > 0, np.nansum(rho, 0) / np.maximum(defined, 1), np.nan)
        top = min(1, len(rho) - 1)  # head + last block
        return {"rank_correlation_top": rho[top], "rank_correlation_all": rho[-1], "randomisation_sensitivity": 1 - mean}

    def _ranked(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.abs() if self._settings["absolute"] else maps

    @staticmethod
    def steps(model: nn.Module) -> list[str]:
        """The cascade's steps for `model`: "head", then "blocks.{L-1}" down to "blocks.0"."""
        return cascade_names(model)


@_register
class PointingGameProtocol(BenchmarkProtocol):
    """The pointing game of Zhang et al. (2018): `xaikit.metrics.pointing_game`.

    Per image, ``hit`` = 1 when the map's maximum (token maps upsampled bilinearly to the mask, so the peak lies
    inside the best token; the first pixel on ties) falls on the object mask, else 0. Zhang et al. explain the
    ground-truth class (``explained_class="label"``) and count a hit within a 15-pixel tolerance of the object;
    `xaikit.metrics.pointing_game` has none, so the masks are grown by ``tolerance=15`` pixels at
    ``reference_size=224``, scaled to the masks' side (about 2 px at 32 px; 0 disables it). Needs masks and labels.
    """

    name = "pointing_game"
    paper = "common"
    metrics = {"hit": True}
    needs = ("masks",)
    defaults = {"tolerance": 15.0, "reference_size": 224, "upsample_mode": "bilinear", "explained_class": "label"}

    def check(self) -> None:
        tolerance, size = self._settings["tolerance"], self._settings["reference_size"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
            raise InvalidParameterError(f"tolerance of protocol 'pointing_game' must be pixels >= 0 (Zhang et al.: 15); got {tolerance!r}")
        positive_int("reference_size of protocol 'pointing_game'", size)
        _check_upsample_mode(self._settings["upsample_mode"])

    def evaluate(self, data):
        from ..imaging import upsample
        from ..metrics import pointing_game

        masks = torch.as_tensor(data.masks)
        radius = self._settings["tolerance"] * min(masks.shape[-2:]) / self._settings["reference_size"]
        maps = upsample(data.explain(self.targets(data)), tuple(masks.shape[-2:]), mode=self._settings["upsample_mode"])
        return {"hit": pointing_game(maps, dilated_masks(masks, radius)).double()}


@_register
class CostProtocol(BenchmarkProtocol):
    """The cost of the method, as ``xaikit bench`` measures it: ``relative_cost`` = seconds per image of the
    method (created and run on the unit's images in batches of `batch_size`, the predicted class, inside the
    astrocytic layer when set) / seconds per image of one plain forward+backward (`xaikit.bench.forward_backward`)
    of the same model and batches; the smallest of ``repeats=3`` timed rounds after one warm-up. Lower is better.
    One value for the whole unit (``per_image`` False: an array of length 1; the ledger's image is "")."""

    name = "cost"
    paper = "common"
    metrics = {"relative_cost": False}
    per_image = False
    defaults = {"repeats": 3}

    def check(self) -> None:
        positive_int("repeats of protocol 'cost'", self._settings["repeats"])

    def evaluate(self, data):
        from ..bench import forward_backward

        batches = data.images.split(data.batch_size)

        def plain() -> None:
            for batch in batches:
                forward_backward(data.model, batch)

        seconds = fastest_seconds({"fwd_bwd": plain, "method": lambda: data.compute(None)}, data.images.device,
                                  self._settings["repeats"])
        return {"relative_cost": [seconds["method"] / seconds["fwd_bwd"]]}
