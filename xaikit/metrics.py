"""Agreement of explanation maps with ground truth: synthetic objects, segmentation masks, perturbation curves."""

from __future__ import annotations

import numpy as np
import torch

from .errors import InvalidParameterError
from .imaging import upsample


def _check(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape:
        raise InvalidParameterError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ: upsample the maps to the mask size first"
        )
    if maps.ndim < 2 or 0 in maps.shape[1:]:
        raise InvalidParameterError(
            f"maps and masks {tuple(maps.shape)} must be batches (B, H, W) with pixels; add a batch axis with maps[None]"
        )


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the positive map mass that falls on the mask (B,)."""
    _check(maps, masks)
    positive = maps.clamp(min=0).flatten(1)
    inside = (positive * masks.flatten(1).to(positive.dtype)).sum(1)
    return inside / positive.sum(1).clamp(min=torch.finfo(positive.dtype).tiny)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, whether the map's maximum lies on the mask (B,) bool."""
    _check(maps, masks)
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1).bool()


# -- ImageNet-Segmentation (Chefer et al., imagenet_seg_eval.py) -----------------------------


def _segmentation_inputs(maps, masks, upsample_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.as_tensor(maps).detach()
    masks = torch.as_tensor(masks).detach()
    if maps.ndim != 3 or masks.ndim != 3:
        raise InvalidParameterError(
            f"maps must be (B, gh, gw) token maps or (B, H, W) pixel maps and masks (B, H, W); "
            f"got maps {tuple(maps.shape)} and masks {tuple(masks.shape)}"
        )
    if maps.shape[0] != masks.shape[0]:
        raise InvalidParameterError(f"{maps.shape[0]} maps but {masks.shape[0]} masks: give one mask per map")
    if maps.shape[0] == 0:
        raise InvalidParameterError(
            "maps and masks are empty batches: there are no images to score; give at least one map and its mask"
        )
    if 0 in maps.shape or 0 in masks.shape:
        raise InvalidParameterError(
            f"maps {tuple(maps.shape)} or masks {tuple(masks.shape)} have no pixels: give maps and masks of at least one pixel"
        )
    if masks.dtype.is_floating_point or masks.dtype.is_complex:
        raise InvalidParameterError(f"masks must be integer or bool (0 = background, 1 = foreground); got {masks.dtype}")
    if bool(((masks != 0) & (masks != 1)).any()):
        raise InvalidParameterError(
            "masks must hold only 0 (background) and 1 (foreground); got values "
            f"{sorted(int(v) for v in torch.unique(masks))[:8]}"
        )
    size = tuple(masks.shape[1:])
    if not maps.dtype.is_floating_point:
        maps = maps.float()
    if tuple(maps.shape[1:]) != size:
        if maps.shape[1] > size[0] or maps.shape[2] > size[1]:
            raise InvalidParameterError(
                f"maps {tuple(maps.shape[1:])} are larger than the masks {size}: give token maps or pixel maps of the mask size"
            )
        maps = upsample(maps, size, mode=upsample_mode)
    return maps, masks.to(device=maps.device, dtype=torch.long)


def segmentation_stats(maps, masks, *, upsample_mode: str = "bilinear") -> dict[str, torch.Tensor]:
    """Per-image statistics of the ImageNet-Segmentation protocol (Chefer et al. 2021).

    `maps` are token maps (B, gh, gw) or pixel maps (B, H, W); `masks` are
    ground-truth masks (B, H, W) with 0 = background and 1 = foreground.
    The post-processing is the reference's (`imagenet_seg_eval.py`, non-full-LRP
    branch): token maps are upsampled to the mask size (bilinear,
    align_corners=False; pixel maps are used as they are), each map is min-max
    normalised, and the foreground prediction is ``map > map.mean()``.

    A map that min-max cannot normalise (constant, or holding NaN or inf) is
    scored as the reference scores it: its NaNs become 0, so it predicts
    background everywhere and its AP is the positive rate of the one-hot
    target, 0.5. Such maps are flagged in ``degenerate``.

    Returns a dict of CPU tensors:

    - ``correct`` (B,) int64: pixels whose predicted class equals the mask;
    - ``labeled`` (B,) int64: labelled pixels (all of them);
    - ``intersection`` (B, 2) int64 and ``union`` (B, 2) int64, columns
      [background, foreground];
    - ``ap`` (B,) float64: sklearn ``average_precision_score`` of the
      concatenated scores [1 - map, map] against the one-hot mask (one AP over
      both channels, as the reference computes it), NaN replaced by 0;
    - ``degenerate`` (B,) bool: maps that min-max turned into NaN.

    `xaikit.protocols.Segmentation` pools these into pixel accuracy, mIoU and mAP.
    """
    from sklearn.metrics import average_precision_score

    maps, masks = _segmentation_inputs(maps, masks, upsample_mode)
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    high = flat.max(1).values[:, None, None]
    scaled = (maps - low) / (high - low)
    # The threshold is each map's own float mean, taken exactly as the reference takes it (one
    # full reduction per map): a batched row-wise mean sums in another order, and a pixel lying
    # within the last-bit difference would flip.
    threshold = torch.stack([image.mean() for image in scaled])[:, None, None]
    foreground = scaled > threshold  # NaN compares False: a degenerate map predicts background
    degenerate = torch.isnan(scaled).flatten(1).any(1)

    predicted = foreground.long()
    correct = (predicted == masks).flatten(1).sum(1)
    labeled = torch.full_like(correct, masks[0].numel())
    inter_fg = (foreground & (masks == 1)).flatten(1).sum(1)
    inter_bg = (~foreground & (masks == 0)).flatten(1).sum(1)
    pred_fg = foreground.flatten(1).sum(1)
    label_fg = masks.flatten(1).sum(1)
    pixels = masks[0].numel()
    intersection = torch.stack([inter_bg, inter_fg], 1)
    area_pred = torch.stack([pixels - pred_fg, pred_fg], 1)
    area_label = torch.stack([pixels - label_fg, label_fg], 1)
    union = area_pred + area_label - intersection

    # The reference zeroes the NaNs of both channels, map and 1 - map, so a constant map has all-tied scores.
    nan = torch.isnan(scaled)
    scores_ap = torch.stack([(1 - scaled).masked_fill(nan, 0.0), scaled.masked_fill(nan, 0.0)], 1)
    onehot = torch.stack([masks == 0, masks == 1], 1)
    ap = []
    for score, truth in zip(scores_ap.flatten(1).cpu().double().numpy(), onehot.flatten(1).cpu().numpy()):
        ap.append(np.nan_to_num(average_precision_score(truth, score)))
    return {
        "correct": correct.cpu(),
        "labeled": labeled.cpu(),
        "intersection": intersection.cpu(),
        "union": union.cpu(),
        "ap": torch.tensor(np.asarray(ap, dtype=np.float64)),
        "degenerate": degenerate.cpu(),
    }


# -- Curves of perturbation tests -----------------------------------------------------------

AUC_CONVENTIONS = ("trapezoid", "trapezoid_start_at_one", "mean")


def perturbation_auc(fractions, curves: torch.Tensor, convention: str = "trapezoid") -> torch.Tensor:
    """Area under perturbation curves, one per row of `curves` (..., S), in percent units.

    `fractions` (S,) are the removed shares of the image, strictly increasing (at least two
    for the trapezoid conventions: the trapezoid over one point is 0).

    - ``"trapezoid"`` (default): ``sklearn.metrics.auc(fractions, curve) * 100``,
      the trapezoidal rule over the fractions; with the default steps
      0, 0.1, ..., 0.9 a curve that stays at 1 scores 90.
    - ``"trapezoid_start_at_one"``: the same with the value at fraction 0 set to
      1 (a variant of public reproductions); needs fraction 0 in the steps.
    - ``"mean"``: the mean of the curve over the steps * 100.
    """
    if convention not in AUC_CONVENTIONS:
        raise InvalidParameterError(f"unknown AUC convention {convention!r}; valid ones are {', '.join(AUC_CONVENTIONS)}")
    x = torch.as_tensor(fractions, dtype=torch.float64)
    y = torch.as_tensor(curves).to(torch.float64)
    if x.ndim != 1:
        raise InvalidParameterError(f"fractions must be a sequence with one share per step; got shape {tuple(x.shape)}")
    if y.shape[-1:] != x.shape:
        raise InvalidParameterError(f"curves {tuple(y.shape)} must end with one value per fraction ({x.shape[0]})")
    if not bool(torch.isfinite(x).all()) or bool((x[1:] <= x[:-1]).any()):
        raise InvalidParameterError(
            f"fractions must be finite and strictly increasing (the x-axis of the curves); got {x.tolist()}: give "
            "them in the order the pixels were removed, with the curves' values in the same order"
        )
    if convention == "mean" and x.numel() == 0:
        raise InvalidParameterError("fractions is empty: give the shares of pixels removed at each step")
    if convention != "mean" and x.numel() < 2:
        # the trapezoid over one point is 0, whatever the curve
        raise InvalidParameterError(
            f"fractions {x.tolist()} make no curve: give at least two steps for the {convention!r} AUC, or use convention 'mean'"
        )
    if convention == "mean":
        return y.mean(-1) * 100
    if convention == "trapezoid_start_at_one":
        if float(x[0]) != 0.0:
            raise InvalidParameterError("the 'trapezoid_start_at_one' convention needs fraction 0 as the first step")
        y = y.clone()
        y[..., 0] = 1.0
    return torch.trapezoid(y, x, dim=-1) * 100


def _check_steps(clean_name: str, clean, perturbed_name: str, perturbed) -> tuple[torch.Tensor, torch.Tensor]:
    """One value per image (B,) and one row of K >= 1 perturbation steps per image (B, K)."""
    clean, perturbed = torch.as_tensor(clean), torch.as_tensor(perturbed)
    if clean.ndim != 1 or perturbed.ndim != 2 or perturbed.shape[0] != clean.shape[0]:
        raise InvalidParameterError(
            f"{clean_name} {tuple(clean.shape)} and {perturbed_name} {tuple(perturbed.shape)} do not match: give one "
            "value per image (B,) and one row per image with one value per perturbation step (B, K)"
        )
    if perturbed.shape[1] == 0:
        raise InvalidParameterError(
            f"{perturbed_name} {tuple(perturbed.shape)} holds no perturbation steps: give at least one step per image"
        )
    return clean, perturbed


def aopc(clean_probability: torch.Tensor, perturbed_probability: torch.Tensor) -> torch.Tensor:
    """Per image, the area over the perturbation curve: mean over steps of p(x) - p(x_k) (B,).

    `clean_probability` (B,) is the unperturbed probability of the originally
    predicted class, `perturbed_probability` (B, K) the same class's probability
    after each perturbation step (steps that remove nothing left out). Higher is better
    for a positive-order test.
    """
    clean_probability, perturbed_probability = _check_steps(
        "clean_probability", clean_probability, "perturbed_probability", perturbed_probability
    )
    return (clean_probability[:, None] - perturbed_probability).mean(1)


def lodds(clean_log_probability: torch.Tensor, perturbed_log_probability: torch.Tensor) -> torch.Tensor:
    """Per image, the mean log-odds log(p(x_k) / p(x)) over the steps (B,); lower is better.

    Takes log-probabilities (log_softmax) so that a probability that underflows to 0 stays finite.
    """
    clean_log_probability, perturbed_log_probability = _check_steps(
        "clean_log_probability", clean_log_probability, "perturbed_log_probability", perturbed_log_probability
    )
    return (perturbed_log_probability - clean_log_probability[:, None]).mean(1)


def compactness(maps, threshold: float = 0.05) -> torch.Tensor:
    """Per image, the fraction of scores with ``|S| < threshold * max(S)`` (B,): CDAM's compactness.

    As the authors' ``get_ratio`` (reference-spec 2.9): raw token scores, strict ``<``, the
    absolute scores against the map's SIGNED maximum (so a map whose scores are all
    negative has no score below a negative bound: compactness 0). `maps` is (B, ...) of
    any shape per image, a tensor or array; higher is more compact.
    """
    maps = torch.as_tensor(maps)
    if maps.ndim < 2 or not maps.dtype.is_floating_point:
        raise InvalidParameterError(f"maps must be float maps (B, ...) with one map per image; got {tuple(maps.shape)} {maps.dtype}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) or not 0 <= threshold <= 1:
        raise InvalidParameterError(f"threshold must be a fraction of the map's maximum in [0, 1]; got {threshold!r}")
    flat = maps.flatten(1)
    if flat.shape[1] == 0:
        raise InvalidParameterError(f"maps {tuple(maps.shape)} hold no scores: give at least one score per image")
    if not bool(torch.isfinite(flat).all()):
        raise InvalidParameterError("maps contain NaN or infinite scores; compactness is undefined for them")
    bound = float(threshold) * flat.amax(dim=1, keepdim=True)
    return (flat.abs() < bound).to(torch.float64).mean(dim=1)
