"""The ImageNet-Segmentation protocol of Chefer et al. (2021), used by TokenTM.

Per image, `xaikit.metrics.segmentation_stats` applies the reference
post-processing (bilinear upsampling of token maps, min-max, threshold at
the map's mean) and counts pixels; this protocol pools the counts over the
data set exactly as `imagenet_seg_eval.py` does: pixel accuracy and IoU are
ratios of sums over all images (not means of per-image ratios), mAP is the
mean of the per-image APs. Values are fractions; the papers print percent.

Floors: besides ``random`` and ``centre_prior`` (maps, scored like any method's),
`all_background_stats` gives the statistics of predicting background everywhere,
named ``all_background`` (`ALL_BACKGROUND`) in tables. Where objects cover a small
part of the images, it reaches a high pixel accuracy with no information at all, so
a method's pixel accuracy means something only above this floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..imaging import UPSAMPLE_MODES
from ..metrics import segmentation_stats

STAT_KEYS = ("correct", "labeled", "intersection", "union", "ap")
#: the identifier of the "background everywhere" floor in result tables (its `method` column)
ALL_BACKGROUND = "all_background"


@dataclass
class SegmentationResult:
    """Per-image statistics and the pooled scores of the segmentation protocol.

    - ``per_image``: the dict of `segmentation_stats` (``correct``,
      ``labeled``, ``intersection`` (B, 2), ``union`` (B, 2), ``ap``,
      ``degenerate``), plus each image's own ``pixel_accuracy`` (B,) and
      ``iou`` (B, 2) for inspection;
    - ``pixel_accuracy``: sum(correct) / sum(labeled);
    - ``iou``: per class [background, foreground], sum(intersection) / sum(union);
    - ``miou``: the mean of ``iou``;
    - ``mean_ap``: the mean of the per-image AP (mAP).

    The pooled ratios add ``np.spacing(1)`` to the denominators, as the reference does.
    """

    per_image: dict[str, torch.Tensor]
    pixel_accuracy: float
    iou: np.ndarray
    miou: float
    mean_ap: float

    def summary(self, percent: bool = True) -> dict[str, float]:
        """The three headline numbers (in percent by default, as the papers print them)."""
        scale = 100.0 if percent else 1.0
        return {
            "pixel_accuracy": self.pixel_accuracy * scale,
            "miou": self.miou * scale,
            "mean_ap": self.mean_ap * scale,
        }


def pool_segmentation(stats: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]) -> SegmentationResult:
    """Pool per-image statistics (one dict, or a list of dicts from several batches) into the data-set scores."""
    parts = [stats] if isinstance(stats, Mapping) else list(stats)
    if not parts:
        raise InvalidParameterError("nothing to pool: give the statistics of at least one batch")
    for part in parts:
        missing = [k for k in STAT_KEYS if k not in part]
        if missing:
            raise InvalidParameterError(f"statistics lack {', '.join(missing)}; make them with xaikit.metrics.segmentation_stats")
    common = [k for k in parts[0] if all(k in part for part in parts)]
    merged = {k: torch.cat([torch.as_tensor(part[k]).cpu() for part in parts]) for k in common}
    rows = {k: len(merged[k]) for k in STAT_KEYS}
    if len(set(rows.values())) > 1:
        raise InvalidParameterError(
            f"statistics of different numbers of images {rows}: pool the dicts segmentation_stats returns, unedited"
        )
    if not rows["correct"]:
        raise InvalidParameterError("the statistics hold no images: there is nothing to score; score at least one map")
    correct = merged["correct"].numpy().astype(np.int64)
    labeled = merged["labeled"].numpy().astype(np.int64)
    inter = merged["intersection"].numpy().astype(np.int64)
    union = merged["union"].numpy().astype(np.int64)
    ap = merged["ap"].numpy().astype(np.float64)
    eps = np.spacing(1, dtype=np.float64)
    pixel_accuracy = np.float64(1.0) * correct.sum() / (eps + labeled.sum())
    iou = np.float64(1.0) * inter.sum(0) / (eps + union.sum(0))
    per_image = dict(merged)
    per_image["pixel_accuracy"] = torch.from_numpy(correct / (eps + labeled))
    per_image["iou"] = torch.from_numpy(inter / (eps + union))
    return SegmentationResult(
        per_image=per_image,
        pixel_accuracy=float(pixel_accuracy),
        iou=iou,
        miou=float(iou.mean()),
        mean_ap=float(np.mean(ap)),
    )


def all_background_stats(masks) -> dict[str, torch.Tensor]:
    """Per-image statistics of the floor that predicts background everywhere, named ``all_background``.

    `masks` are ground-truth masks (B, H, W) in {0, 1}, as `segmentation_stats` takes them;
    the result has the same keys and types, so it pools with `Segmentation.pool` and sits in a
    table beside the methods' rows. The floor is scored exactly as the reference scores a
    constant map (it cannot be min-max normalised, and the reference then predicts background
    everywhere):

    - ``correct``: each image's background pixels, so the pooled pixel accuracy is the share
      of background pixels in the data set;
    - ``intersection`` and ``union``: [background pixels, 0] and [all pixels, foreground
      pixels]: the background IoU equals the pixel accuracy, the foreground IoU is 0, and the
      mIoU is half the pixel accuracy;
    - ``ap``: 0.5 for every image. The protocol's AP ranks the scores [1 - map, map] of every
      pixel against the one-hot mask [background, foreground]; a constant prediction ranks no
      pixel above another, and the AP of scores that are all tied is the share of positives
      among the ranked entries, which is exactly 1/2 because every pixel has one positive of
      its two entries. (Taking the hard labels, 1 for background and 0 for foreground, as
      scores would give p**2 + (1 - p) / 2 for a background share p: a second reading of the
      class balance that pixel accuracy already reports, not a ranking.)
    - ``degenerate``: False (the floor is not a broken map).
    """
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise InvalidParameterError(
            f"masks must be a batch (B, H, W) of ground-truth masks; got shape {tuple(masks.shape)}"
            + (" (add a batch axis with masks[None])" if masks.ndim == 2 else "")
        )
    constant = torch.zeros(masks.shape[0], 1, 1)
    stats = segmentation_stats(constant, masks)  # the same checks, counts and AP as the reference's constant map
    stats["degenerate"] = torch.zeros_like(stats["degenerate"])
    return stats


class Segmentation:
    """ImageNet-Segmentation scores of explanation maps against ground-truth masks.

    Settings: `upsample_mode` for token maps (``"bilinear"``, the reference).
    Call with maps (B, gh, gw) or (B, H, W) and masks (B, H, W) (0 =
    background, 1 = foreground); returns a `SegmentationResult`. To score a
    data set in batches, keep each batch's ``result.per_image`` and pool them
    with `Segmentation.pool`.
    """

    def __init__(self, *, upsample_mode: str = "bilinear") -> None:
        if upsample_mode not in UPSAMPLE_MODES:
            raise InvalidParameterError(f"unknown upsampling mode {upsample_mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")
        self.upsample_mode = upsample_mode

    def __call__(self, maps, masks) -> SegmentationResult:
        return pool_segmentation(segmentation_stats(maps, masks, upsample_mode=self.upsample_mode))

    pool = staticmethod(pool_segmentation)
