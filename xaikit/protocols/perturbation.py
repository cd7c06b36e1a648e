"""The perturbation test of Chefer et al. (2021), with TokenTM's AOPC and LOdds.

Pixels are ranked by the explanation map (per pixel, after upsampling token
maps; ties in raster order) and the top share ``f`` of them is set to the
replacement (black, 0 in [0, 1] image space, by default) for every
``f`` in `fractions` (default 0, 0.1, ..., 0.9). ``order="positive"``
removes the most relevant pixels first (a good map makes accuracy fall
fast: lower AUC is better), ``"negative"`` the least relevant first (higher
AUC is better). Both orders are explicit settings: the reference script's
``--neg`` flag cannot be turned off.

Read at every step: top-1 correctness against the ground-truth label
(whatever class the maps explain, as in the reference), and the softmax
probability of the class the model predicts on the clean image (for AOPC
and LOdds).

AUC convention (default ``auc="trapezoid"``): the trapezoidal area under
the accuracy curve over x = the fractions, times 100, i.e.
``sklearn.metrics.auc(fractions, accuracy) * 100`` with the measured
accuracy at fraction 0 (0..90 with the default steps). Alternatives:
``"trapezoid_start_at_one"`` (accuracy 1 at fraction 0) and ``"mean"``
(mean accuracy over the steps * 100).

AOPC = mean over the steps with f > 0 of p(x) - p(x_f) (higher is better);
LOdds = mean over the same steps of log(p(x_f) / p(x)) (lower is better),
both for the originally predicted class, per image and averaged over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import InvalidParameterError
from ..metrics import AUC_CONVENTIONS, aopc, lodds, perturbation_auc
from .engine import DEFAULT_FRACTIONS, FractionSchedule, PerturbationEngine, Replacement, check_fractions, check_order

EXPLAINED_CLASSES = ("predicted", "target")


@dataclass
class PerturbationResult:
    """Per-image curves and scores of one perturbation test (CPU tensors).

    - ``fractions`` (S,): the removed shares; ``order``, ``explained_class``,
      ``auc_convention``: the settings;
    - ``labels`` (B,): ground truth; ``predicted`` (B,): top-1 class on the clean
      image; ``explained`` (B,): the class the maps explain when the protocol
      computed them (else None);
    - ``correct`` (B, S) bool: top-1 prediction equals the label at each step;
    - ``probability`` (B, S): probability of the ``predicted`` class at each
      step; ``clean_probability`` (B,);
    - ``accuracy`` (S,): the mean of ``correct`` over images (the curve);
    - ``auc_per_image`` (B,), ``auc``: area under the accuracy curve (the
      aggregate equals the area under the mean curve);
    - ``aopc_per_image`` (B,), ``aopc``, ``lodds_per_image`` (B,), ``lodds``.
    """

    fractions: torch.Tensor
    order: str
    explained_class: str
    auc_convention: str
    labels: torch.Tensor
    predicted: torch.Tensor
    explained: torch.Tensor | None
    correct: torch.Tensor
    probability: torch.Tensor
    clean_probability: torch.Tensor
    accuracy: torch.Tensor
    auc_per_image: torch.Tensor
    auc: float
    aopc_per_image: torch.Tensor
    aopc: float
    lodds_per_image: torch.Tensor
    lodds: float

    def summary(self) -> dict[str, float]:
        """The aggregate scores: AUC (percent units), AOPC, LOdds and the clean accuracy."""
        return {
            "auc": self.auc,
            "aopc": self.aopc,
            "lodds": self.lodds,
            "clean_accuracy": float((self.predicted == self.labels).double().mean()),
        }


class Perturbation:
    """Accuracy perturbation test with AOPC and LOdds.

    Settings: `model` (any callable from normalised images to logits; a timm
    model gives its own mean/std, another model needs `mean` and `std`),
    `order` (``"positive"`` or ``"negative"``), `fractions` (increasing, in
    [0, 1]), `replacement` (a value in [0, 1] image space, one per channel,
    normalised replacement images, or a callable such as
    `xaikit.protocols.gaussian_blur`), `explained_class` (``"predicted"`` or
    ``"target"``: the class the maps explain when `maps` is a callable), `auc`
    (the AUC convention), `batch_size` (perturbed copies per forward),
    `upsample_mode` for token maps, and `engine` to share another protocol's
    engine and its cache (the engine's model, batch size, mean/std and
    upsampling then apply).

    Call with images (B, C, H, W) normalised, labels (B,) ground-truth classes
    and maps: token maps (B, gh, gw), pixel maps (B, H, W), or a callable
    ``maps(images, classes) -> maps`` such as an `xaikit.Explainer`, called with
    the classes `explained_class` names. Returns a `PerturbationResult`.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        order: str = "positive",
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        replacement: Replacement = 0.0,
        explained_class: str = "predicted",
        auc: str = "trapezoid",
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        upsample_mode: str = "bilinear",
        engine: PerturbationEngine | None = None,
    ) -> None:
        self.order = check_order(order)
        self.fractions = check_fractions(fractions)
        if not any(f > 0 for f in self.fractions):
            raise InvalidParameterError(f"fractions {self.fractions} perturb nothing: include at least one share above 0")
        if explained_class not in EXPLAINED_CLASSES:
            raise InvalidParameterError(
                f"explained_class must be 'predicted' (the top-1 class) or 'target' (the ground-truth label); got {explained_class!r}"
            )
        if auc not in AUC_CONVENTIONS:
            raise InvalidParameterError(f"unknown AUC convention {auc!r}; valid ones are {', '.join(AUC_CONVENTIONS)}")
        if auc == "trapezoid_start_at_one" and self.fractions[0] != 0.0:
            raise InvalidParameterError("the 'trapezoid_start_at_one' convention needs fraction 0 as the first step")
        if auc != "mean" and len(self.fractions) < 2:
            raise InvalidParameterError(
                f"fractions {self.fractions} make no curve: give at least two steps for the {auc!r} AUC, or use auc='mean'"
            )
        if engine is None:
            engine = PerturbationEngine(model, batch_size=batch_size, mean=mean, std=std, upsample_mode=upsample_mode)
        elif engine.model is not model:
            raise InvalidParameterError("the shared engine runs another model: give the engine's own model")
        self.model = model
        self.engine = engine
        self.replacement = replacement
        self.explained_class = explained_class
        self.auc = auc
        self.schedule = FractionSchedule(self.fractions, self.order)

    def __call__(self, images: torch.Tensor, labels, maps) -> PerturbationResult:
        images = self.engine._check_images(images)
        labels = self._check_labels(labels, images.shape[0])
        explained = None
        if callable(maps) and not isinstance(maps, torch.Tensor):
            if self.explained_class == "predicted":
                explained = self.engine.clean_logits(images).argmax(1)
            else:
                explained = labels.to(images.device)
            maps = maps(images, explained)
        run = self.engine.run(
            images,
            maps,
            self.schedule,
            replacement=self.replacement,
            readouts={"correct": ("correct", labels), "log_probability": ("log_probability", "predicted")},
        )
        predicted = run.clean_logits.argmax(1)
        clean_log_probability = run.clean_logits.log_softmax(1).gather(1, predicted[:, None]).squeeze(1)
        correct = run["correct"].cpu()
        log_probability = run["log_probability"].double().cpu()
        clean_log_probability = clean_log_probability.double().cpu()
        perturbed = torch.tensor([f > 0 for f in self.fractions])
        aopc_per_image = aopc(clean_log_probability.exp(), log_probability[:, perturbed].exp())
        lodds_per_image = lodds(clean_log_probability, log_probability[:, perturbed])
        auc_per_image = perturbation_auc(self.fractions, correct.double(), self.auc)
        return PerturbationResult(
            fractions=torch.tensor(self.fractions, dtype=torch.float64),
            order=self.order,
            explained_class=self.explained_class,
            auc_convention=self.auc,
            labels=labels.cpu(),
            predicted=predicted.cpu(),
            explained=None if explained is None else explained.cpu(),
            correct=correct,
            probability=log_probability.exp(),
            clean_probability=clean_log_probability.exp(),
            accuracy=correct.double().mean(0),
            auc_per_image=auc_per_image,
            auc=float(auc_per_image.mean()),
            aopc_per_image=aopc_per_image,
            aopc=float(aopc_per_image.mean()),
            lodds_per_image=lodds_per_image,
            lodds=float(lodds_per_image.mean()),
        )

    @staticmethod
    def _check_labels(labels, batch: int) -> torch.Tensor:
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(f"labels must be {batch} integer class indices; got {type(labels).__name__}") from None
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (batch,):
            raise InvalidParameterError(
                f"labels must hold one integer ground-truth class per image, shape ({batch},); "
                f"got dtype {labels.dtype} and shape {tuple(labels.shape)}"
            )
        return labels.long()
