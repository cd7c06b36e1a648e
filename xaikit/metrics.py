"""Agreement of explanation maps with ground truth: synthetic objects, segmentation masks, perturbation curves,
human attention maps (ClickMe: Spearman, Dice, SSIM)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

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


# -- Alignment with human maps (ClickMe; Harmonization's metrics, ViTA's SSIM) -----------------------------

#: Harmonization's human Spearman ceiling (``HUMAN_SPEARMAN_CEILING`` of its ``evaluation/click_me.py``), the
#: 0.65753 its normalised alignment score divides by.
HUMAN_SPEARMAN_CEILING = 0.6575315343478081


class ConstantMapWarning(RuntimeWarning):
    """Some maps (or human maps) are constant, so they have no ranking and no Spearman correlation."""


def _alignment_inputs(maps, human) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as tensors (B, H, W) of the same shape, on the maps' device, finite."""
    maps = torch.as_tensor(maps).detach()
    human = torch.as_tensor(human).detach()
    if maps.ndim != 3 or maps.shape != human.shape:
        raise InvalidParameterError(
            f"maps {tuple(maps.shape)} and human maps {tuple(human.shape)} must be batches (B, H, W) of the same "
            "size: resize the explanation maps to the human maps' size (224 x 224 for ClickMe) first"
        )
    if 0 in maps.shape[1:]:
        raise InvalidParameterError(f"maps {tuple(maps.shape)} have no pixels: give maps of at least one pixel")
    for name, values in (("maps", maps), ("human maps", human)):
        if values.dtype == torch.bool or values.is_complex():
            raise InvalidParameterError(f"{name} must be real-valued maps; got {values.dtype}")
        bad = ~torch.isfinite(values.float()).flatten(1).all(1)
        if bool(bad.any()):
            raise InvalidParameterError(
                f"{name} hold NaN or infinite values in {int(bad.sum())} of {len(bad)} images (first: image "
                f"{int(bad.nonzero()[0])}); no alignment is defined for them: fix or leave out those images"
            )
    return maps, human.to(maps.device)


def _average_ranks(rows: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis of (B, N), ties given the average of their ranks (scipy's
    ``rankdata``), float64: one sort, then each run of equal sorted values gets the mean of its first and
    last position."""
    ordered, order = rows.sort(dim=-1)
    count = rows.shape[-1]
    position = torch.arange(count, device=rows.device).expand_as(ordered)
    starts_run = torch.ones_like(ordered, dtype=torch.bool)
    starts_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_run = torch.ones_like(starts_run)
    ends_run[:, :-1] = starts_run[:, 1:]
    run_start = torch.where(starts_run, position, torch.zeros_like(position)).cummax(-1).values
    run_end = torch.where(ends_run, position, torch.full_like(position, count)).flip(-1).cummin(-1).values.flip(-1)
    average = (run_start + run_end + 2).to(torch.float64) / 2
    return torch.empty_like(average).scatter_(-1, order, average)


def constant_maps(maps, human) -> torch.Tensor:
    """Per image, whether the map or the human map is constant (B,) bool: the images without a Spearman.

    ``constant_maps(maps, human).sum()`` is how many NaNs :func:`spearman` returns.
    """
    maps, human = _alignment_inputs(maps, human)

    def constant(values: torch.Tensor) -> torch.Tensor:
        flat = values.flatten(1)
        return flat.amax(1) == flat.amin(1)

    return constant(maps) | constant(human)


def spearman(maps, human) -> torch.Tensor:
    """Per image, the Spearman rank correlation of the map with the human map over the pixels (B,) float64.

    ``scipy.stats.spearmanr(map.flatten(), human.flatten())`` for each image (ties get the average of their
    ranks), batched: the Pearson correlation of the ranks. `maps` and `human` are (B, H, W) tensors or arrays
    of the same size (224 x 224 for ClickMe, as Harmonization scores them); values are ranked in their own dtype.

    A constant map (or human map) has no ranking, so no correlation: its score is NaN, as scipy's, and a
    `ConstantMapWarning` names how many images that is (:func:`constant_maps` says which). NaN scores are kept,
    never dropped or set to 0; ``xaikit.stats.compare_scores(..., nan="omit")`` leaves them out and counts them.
    """
    maps, human = _alignment_inputs(maps, human)
    if maps.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=maps.device)
    rank_maps = _average_ranks(maps.flatten(1))
    rank_human = _average_ranks(human.flatten(1))
    middle = (rank_maps.shape[1] + 1) / 2  # the mean of the ranks 1..N, whatever the ties
    centred_maps, centred_human = rank_maps - middle, rank_human - middle
    covariance = (centred_maps * centred_human).sum(1)
    scale = torch.sqrt((centred_maps**2).sum(1) * (centred_human**2).sum(1))
    undefined = scale == 0
    correlation = (covariance / scale.masked_fill(undefined, 1.0)).clamp(-1.0, 1.0)
    if bool(undefined.any()):
        warnings.warn(
            f"spearman: {int(undefined.sum())} of {len(undefined)} images have a constant map or human map, which "
            "has no ranking; their Spearman is NaN (constant_maps() says which; leave them out of means with "
            "compare_scores(..., nan='omit'), which counts them)",
            ConstantMapWarning,
            stacklevel=2,
        )
    return correlation.masked_fill(undefined, float("nan"))


def alignment_score(maps, human) -> torch.Tensor:
    """Per image, Harmonization's normalised alignment score: ``spearman(maps, human) / HUMAN_SPEARMAN_CEILING``
    (B,) float64. Harmonization reports the mean of the Spearman scores divided by the ceiling, which is the
    mean of these. NaN where :func:`spearman` is NaN."""
    return spearman(maps, human) / HUMAN_SPEARMAN_CEILING


def _top_share_masks(flat: torch.Tensor, top: float) -> torch.Tensor:
    """Rows (B, N) float32 -> the pixels strictly above ``np.percentile(row, 100 * (1 - top))``, bool (B, N).

    The threshold is numpy's 'linear' percentile of a float32 row exactly (virtual index ``(N - 1) * q``,
    its two-sided lerp in float32), so a pixel equal to the threshold falls on the same side as in numpy.
    """
    count = flat.shape[1]
    quantile = (100 * (1 - top)) / 100
    virtual = (count - 1) * quantile
    below = math.floor(virtual)
    above = min(below + 1, count - 1)
    gamma = virtual - below
    ordered = flat.sort(dim=1).values
    low, high = ordered[:, below], ordered[:, above]
    difference = high - low
    if gamma < 0.5:
        threshold = low + difference * torch.tensor(gamma, dtype=flat.dtype)
    else:
        threshold = high - difference * torch.tensor(1 - gamma, dtype=flat.dtype)
    return flat > threshold[:, None]


def dice(maps, human, top: float = 0.1) -> torch.Tensor:
    """Per image, the Dice score of the map's and the human map's top `top` share of pixels (B,) float64.

    Harmonization's ``dice(percentile=10)``: both maps are cast to float32, each binarised strictly above its
    own ``np.percentile(map, 100 * (1 - top))`` (linear interpolation), and the score is
    ``2 * sum(a * b) / (sum(a + b) + 1e-9)``. A constant map has no pixel above its percentile: an empty mask,
    Dice 0 (as in Harmonization).
    """
    if isinstance(top, bool) or not isinstance(top, (int, float, np.integer, np.floating)) or not 0 < top < 1:
        raise InvalidParameterError(
            f"top must be the share of pixels kept, in (0, 1), e.g. 0.1 for the top 10%; got {top!r}"
        )
    maps, human = _alignment_inputs(maps, human)
    if maps.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=maps.device)
    top = float(top)
    a = _top_share_masks(maps.flatten(1).float(), top).to(torch.float64)
    b = _top_share_masks(human.flatten(1).float(), top).to(torch.float64)
    return 2.0 * (a * b).sum(1) / ((a + b).sum(1) + 1e-9)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map (B, ...) scaled to [0, 1] by its own minimum and maximum; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.amin(1)
    span = flat.amax(1) - low
    scaled = (flat - low[:, None]) / span.masked_fill(span == 0, 1.0)[:, None]
    return scaled.reshape(maps.shape)


SSIM_WINDOW = 7


def ssim(maps, human) -> torch.Tensor:
    """Per image, the SSIM of the min-max-normalised map and human map (B,) float64.

    ``skimage.metrics.structural_similarity(min_max(map), min_max(human), data_range=1)`` with its defaults:
    a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (49 / 48), the mean of the SSIM image over
    the pixels at least 3 from the border (skimage crops that strip, so the window never leaves the image and
    the padding mode plays no part). Batched in float64 with a 7 x 7 average pool. A constant map normalises
    to all zeros (as pytorch-grad-cam's own min-max leaves it) and has a defined SSIM. Maps must be at least
    7 x 7.
    """
    maps, human = _alignment_inputs(maps, human)
    if min(maps.shape[1:]) < SSIM_WINDOW:
        raise InvalidParameterError(
            f"maps {tuple(maps.shape[1:])} are smaller than SSIM's {SSIM_WINDOW} x {SSIM_WINDOW} window: "
            "score maps of at least 7 x 7 pixels (resize them to the human maps' size)"
        )
    x = min_max(maps.to(torch.float64))[:, None]
    y = min_max(human.to(torch.float64))[:, None]

    def local_mean(values: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(values, SSIM_WINDOW, stride=1)

    window_pixels = SSIM_WINDOW**2
    covariance_norm = window_pixels / (window_pixels - 1)
    ux, uy = local_mean(x), local_mean(y)
    vx = covariance_norm * (local_mean(x * x) - ux * ux)
    vy = covariance_norm * (local_mean(y * y) - uy * uy)
    vxy = covariance_norm * (local_mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    similarity = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return similarity.flatten(1).mean(1)
