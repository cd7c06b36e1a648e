"""ImageNet-Segmentation statistics against the reference outputs (tests/golden/seg_metrics.npz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import golden

from xaikit import upsample
from xaikit.errors import InvalidParameterError
from xaikit.metrics import segmentation_stats
from xaikit.protocols import Segmentation


@pytest.fixture(scope="module")
def seg():
    return golden("seg_metrics")


@pytest.fixture(scope="module")
def stats(seg):
    return segmentation_stats(torch.from_numpy(seg["maps_token"]), torch.from_numpy(seg["masks"]))


def test_per_image_counts_match_the_reference_exactly(seg, stats):
    np.testing.assert_array_equal(stats["correct"].numpy(), seg["pixel_correct"])
    np.testing.assert_array_equal(stats["labeled"].numpy(), seg["pixel_labeled"])
    np.testing.assert_array_equal(stats["intersection"].numpy(), seg["area_inter"])
    np.testing.assert_array_equal(stats["union"].numpy(), seg["area_union"])
    assert stats["intersection"].shape == (8, 2) and stats["union"].shape == (8, 2)


def test_average_precision_matches_the_reference(seg, stats):
    assert stats["ap"].dtype == torch.float64
    np.testing.assert_allclose(stats["ap"].numpy(), seg["ap"], rtol=0, atol=1e-12)


def test_edge_cases_constant_map_and_empty_mask(seg, stats):
    # map 6 is constant: min-max gives NaN, the reference predicts background everywhere and AP is 0.5
    assert stats["degenerate"].tolist() == [False] * 6 + [True, False]
    background = int((seg["masks"][6] == 0).sum())
    assert int(stats["correct"][6]) == background
    assert stats["intersection"][6].tolist() == [background, 0]
    assert float(stats["ap"][6]) == 0.5
    # mask 7 is empty: no foreground intersection, the foreground union is the predicted foreground
    assert int(stats["intersection"][7, 1]) == 0
    assert int(stats["union"][7, 1]) == int(seg["pred_fg"][7].sum())


def test_foreground_prediction_matches_the_reference_binarisation(seg, stats):
    # correct = foreground hits + background hits, rebuilt from the reference's binarised maps
    pred = seg["pred_fg"].astype(bool)
    mask = seg["masks"].astype(bool)
    expected = (pred & mask).sum((1, 2)) + (~pred & ~mask).sum((1, 2))
    np.testing.assert_array_equal(stats["correct"].numpy(), expected)


def test_segmentation_pools_like_the_reference(seg):
    result = Segmentation()(torch.from_numpy(seg["maps_token"]), torch.from_numpy(seg["masks"]))
    assert result.pixel_accuracy == pytest.approx(float(seg["pixAcc_total"]), rel=1e-15)
    np.testing.assert_allclose(result.iou, seg["IoU_total"], rtol=1e-15)
    assert result.miou == pytest.approx(float(seg["mIoU_total"]), rel=1e-15)
    assert result.mean_ap == pytest.approx(float(seg["mAP_total"]), rel=1e-12)
    # IoU is pooled, not a mean of per-image ratios
    per_image_mean = result.per_image["iou"].mean(0).numpy()
    assert np.abs(per_image_mean - result.iou).min() > 1e-3
    assert result.summary()["miou"] == pytest.approx(100 * float(seg["mIoU_total"]))


def test_pooling_batches_equals_pooling_everything(seg):
    maps, masks = torch.from_numpy(seg["maps_token"]), torch.from_numpy(seg["masks"])
    protocol = Segmentation()
    whole = protocol(maps, masks)
    parts = [protocol(maps[:3], masks[:3]).per_image, protocol(maps[3:], masks[3:]).per_image]
    pooled = Segmentation.pool(parts)
    assert pooled.pixel_accuracy == whole.pixel_accuracy
    np.testing.assert_array_equal(pooled.iou, whole.iou)
    assert pooled.mean_ap == whole.mean_ap


def test_pixel_maps_skip_the_upsampling(seg, stats):
    maps = torch.from_numpy(seg["maps_token"])
    pixel_maps = upsample(maps, 224)
    again = segmentation_stats(pixel_maps, torch.from_numpy(seg["masks"]))
    for key in ("correct", "intersection", "union"):
        assert torch.equal(again[key], stats[key])
    np.testing.assert_allclose(again["ap"].numpy(), stats["ap"].numpy(), atol=1e-12)


def test_nan_map_is_scored_as_the_reference_scores_it():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[:, 8:20, 8:20] = 1
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    maps[1, 0, 0] = float("nan")  # one NaN makes the whole min-max NaN, as in the reference
    out = segmentation_stats(maps, masks)
    assert out["degenerate"].tolist() == [False, True]
    assert int(out["correct"][1]) == int((masks[1] == 0).sum())
    assert float(out["ap"][1]) == 0.5


def test_a_perfect_map_scores_perfectly():
    masks = torch.zeros(1, 64, 64, dtype=torch.long)
    masks[0, 16:48, 16:48] = 1
    out = segmentation_stats(masks.float(), masks)
    assert int(out["correct"][0]) == 64 * 64
    assert out["intersection"].tolist() == out["union"].tolist()
    assert float(out["ap"][0]) == 1.0
    inverted = segmentation_stats(1 - masks.float(), masks)
    assert int(inverted["correct"][0]) == 0 and inverted["intersection"].tolist() == [[0, 0]]


@pytest.mark.parametrize(
    "maps, masks, message",
    [
        (torch.rand(2, 4, 4), torch.full((2, 32, 32), 2), "only 0"),
        (torch.rand(2, 4, 4), torch.zeros(2, 32, 32), "integer or bool"),
        (torch.rand(3, 4, 4), torch.zeros(2, 32, 32, dtype=torch.long), "3 maps but 2 masks"),
        (torch.rand(2, 64, 64), torch.zeros(2, 32, 32, dtype=torch.long), "larger than the masks"),
        (torch.rand(2, 1, 4, 4), torch.zeros(2, 32, 32, dtype=torch.long), "token maps"),
    ],
)
def test_bad_input_is_refused(maps, masks, message):
    with pytest.raises(InvalidParameterError, match=message):
        segmentation_stats(maps, masks)


def test_bad_pool_input_is_refused():
    with pytest.raises(InvalidParameterError, match="lack"):
        Segmentation.pool({"correct": torch.ones(1)})
    with pytest.raises(InvalidParameterError, match="upsampling mode"):
        Segmentation(upsample_mode="area")
