"""Scoring a model: accuracy, outputs, regression targets and their errors, validation loss, and the
thresholds below which a run learned nothing (`chance_threshold`, `mean_baseline_threshold`)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError
from .inputs import to_inputs


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on uint8 images (N, H, W, 3)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_inputs(torch.from_numpy(images[start : start + batch_size]).to(device), model)
        correct += (model(x).argmax(1).cpu() == torch.from_numpy(labels[start : start + batch_size])).sum().item()
    return correct / len(images)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The model's outputs (N, K) as float32 numpy, for uint8 images (N, H, W, 3) (logits, or standardised targets)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(to_inputs(torch.from_numpy(images[start : start + batch_size]).to(device), model)).float().cpu()
               for start in range(0, len(images), batch_size)]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, int(getattr(model, "num_classes", 0))), np.float32)


def validation_loss(model: nn.Module, val_set, standardised: np.ndarray | None = None) -> float:
    """Mean cross-entropy (no label smoothing) on the validation set; with `standardised` targets the MSE."""
    outputs = torch.from_numpy(predict(model, val_set.images)).double()
    if standardised is not None:
        return float(F.mse_loss(outputs, torch.from_numpy(np.asarray(standardised, np.float64))))
    return float(F.cross_entropy(outputs, torch.from_numpy(np.asarray(val_set.labels, np.int64))))


def chance_threshold(labels: np.ndarray, num_classes: int) -> float:
    """Test accuracy at or below which a model has learned nothing.

    Chance is the larger of ``1 / num_classes`` and the share of the most
    frequent test label (what always answering that class scores); the
    threshold adds three binomial standard errors of an accuracy measured on
    ``len(labels)`` images, ``3 * sqrt(chance * (1 - chance) / n)``. For 10
    balanced classes: 10.9 % on 10,000 test images, 12.0 % on 2,000, 21.3 % on 64.
    """
    labels = np.asarray(labels)
    majority = np.bincount(labels).max() / len(labels)
    chance = max(1.0 / num_classes, float(majority))
    return chance + 3.0 * math.sqrt(chance * (1.0 - chance) / len(labels))


def target_standardisation(targets: np.ndarray, recipe: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) of each column of a regression table (N, K), as float64 arrays.

    A column that does not vary cannot be standardised and raises InvalidParameterError.
    """
    table = np.asarray(targets, np.float64)
    where = f"recipe {recipe!r}: " if recipe else ""
    if table.ndim != 2 or len(table) < 2:
        raise InvalidParameterError(
            f"{where}regression targets must be a table (N, K) with N >= 2 rows, got shape {table.shape}"
        )
    mean, std = table.mean(axis=0), table.std(axis=0)
    if not np.all(std > 0):
        raise InvalidParameterError(
            f"{where}regression target column(s) {np.flatnonzero(~(std > 0)).tolist()} have the same value in every "
            "training row, so they cannot be standardised; drop them or vary them"
        )
    return mean, std


def standardise(targets: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(targets - mean) / std`` per column, as float32 (N, K)."""
    return ((np.asarray(targets, np.float64) - mean) / std).astype(np.float32)


def mean_squared_errors(model: nn.Module, images: np.ndarray, standardised: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Mean squared error per output (K,) of a regression model on uint8 images, against standardised targets (N, K)."""
    errors = predict(model, images, batch_size).astype(np.float64) - np.asarray(standardised, np.float64)
    return np.mean(np.square(errors), axis=0)


def mean_baseline_threshold(standardised: np.ndarray) -> float:
    """Test MSE at or above which a regression model does no better than predicting the mean.

    `standardised`: the test targets (N, K), standardised with the training set's mean and
    std, so that always predicting the training mean (0) scores ``mean(z ** 2)``. The
    threshold subtracts three standard errors of that baseline measured on N images (of the
    per-image losses ``mean_k z_ik ** 2``): about ``1 - 3 * sqrt(2 / (N K))`` for K
    independent normal targets (0.95 for 8 targets on 2,000 images).
    """
    per_image = np.mean(np.square(np.asarray(standardised, np.float64).reshape(len(standardised), -1)), axis=1)
    return float(per_image.mean() - 3.0 * per_image.std() / math.sqrt(len(per_image)))


def predict_targets(model: nn.Module, images: np.ndarray, card: dict, batch_size: int = 500) -> np.ndarray:
    """A regression model's predictions (N, K) in the data's units: ``mean + std * output``, with the card's mean and std."""
    try:
        mean, std = (np.asarray(card["targets"][key], np.float64) for key in ("mean", "std"))
    except (KeyError, TypeError) as err:
        raise InvalidParameterError(
            f"the model card of {card.get('name', 'this model') if isinstance(card, dict) else 'this model'} has no "
            "targets mean/std: only regression recipes (task='regression') record them"
        ) from err
    return mean + std * predict(model, images, batch_size).astype(np.float64)


def _regression_metrics(model: nn.Module, test_set, standardised: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict:
    """The card's regression entries: standardisation, test MSE (overall, per target), RMSE in data units, R^2."""
    given = getattr(test_set, "target_names", None)
    names = [str(name) for name in given] if given is not None else [f"target {k}" for k in range(mean.size)]
    mse = mean_squared_errors(model, test_set.images, standardised)
    # R^2 against the test set's own mean: the same in z and in the data's units (z is affine per column).
    r2 = 1.0 - mse / np.var(np.asarray(standardised, np.float64), axis=0)
    return {
        "targets": {
            "names": names,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "standardisation": "z = (y - mean) / std per target, mean and std (ddof 0) of the training set; the "
                               "model outputs z, so y = mean + std * output (xaikit.train.predict_targets)",
        },
        "test_mse": float(mse.mean()),
        "test_mse_per_target": dict(zip(names, mse.tolist())),
        "test_rmse_per_target_data_units": dict(zip(names, (np.sqrt(mse) * std).tolist())),
        "test_r2": dict(zip(names, r2.tolist())),
    }


def multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """An (N, M) table of class indices (the classes present in each image) as an (N, K) 0/1 float32 table."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise InvalidParameterError(
            f"multi-label targets must be an (N, M) table of integer class indices, got shape {labels.shape} and "
            f"dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InvalidParameterError(f"class indices must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    table = np.zeros((len(labels), num_classes), np.float32)
    np.put_along_axis(table, labels, 1.0, axis=1)
    return table


def both_top(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image (bool, N): whether its M present classes (`labels`, (N, M)) are the M highest of `scores` (N, K)."""
    labels = np.asarray(labels)
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, : labels.shape[1]]
    return (np.sort(top, axis=1) == np.sort(labels, axis=1)).all(axis=1)


def multilabel_metrics(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> dict:
    """The card's multi-label scores on uint8 images with (N, M) present classes.

    test_both_top: the share of images whose M present classes are the model's M highest logits;
    test_mean_ap: the mean over classes of the average precision of the class's logit (sklearn's
    ``average_precision_score``) for "class present"; test_ap_per_class: each class's.
    """
    from sklearn.metrics import average_precision_score

    scores = predict(model, images).astype(np.float64)
    present = multi_hot(labels, scores.shape[1])
    ap = [float(average_precision_score(present[:, k], scores[:, k])) if present[:, k].any() else float("nan")
          for k in range(scores.shape[1])]
    return {"test_both_top": float(both_top(scores, labels).mean()), "test_mean_ap": float(np.nanmean(ap)),
            "test_ap_per_class": ap}


def both_top_chance_threshold(n_images: int, num_classes: int, present: int = 2) -> float:
    """`test_both_top` at or below which a multi-label model learned nothing: the chance that a random order
    ranks the `present` classes first, ``1 / C(K, M)``, plus three binomial standard errors on `n_images`."""
    chance = 1.0 / math.comb(num_classes, present)
    return chance + 3.0 * math.sqrt(chance * (1.0 - chance) / n_images)
