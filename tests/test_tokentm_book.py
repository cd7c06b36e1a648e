"""The per-image scores and the evidence of the TokenTM chapter (issue 14): what the verdicts and intervals rest on."""

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit
from conftest import small_vit
from xaikit.errors import InvalidParameterError
from xaikit.experiments import perturbation_tables as pt
from xaikit.experiments.tokentm_evidence import FLOORS, league_table, method_identifier, object_share, shown_league
from xaikit.experiments.tokentm_maps import (
    ALL_BACKGROUND_LABEL,
    segmentation_per_image,
    segmentation_scores,
    segmentation_table,
)
from xaikit.metrics import segmentation_stats

METHODS = {"GAE": ("gae", {}), "Rollout": ("rollout", {"start_layer": 1}), "Random": ("random", {})}


@pytest.fixture(scope="module")
def vit():
    return small_vit("plain")  # 64 x 64 pixels, 4 x 4 tokens


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(3)
    return torch.randn(6, 3, 64, 64)


def square_masks(count, side=64):
    masks = torch.zeros(count, side, side, dtype=torch.long)
    for i in range(count):
        masks[i, 8 + 2 * i : 40, 16 : 48 - i] = 1
    return masks


def test_segmentation_per_image_scores_each_image_on_its_own():
    masks = square_masks(2)
    perfect = masks.float()  # the mask itself: every pixel right
    inverted = 1 - masks.float()  # every pixel wrong
    per_image = segmentation_per_image(segmentation_stats(torch.stack([perfect[0], inverted[1]]), masks))
    assert list(per_image.columns) == ["pixel accuracy", "mAP", "mIoU"]
    assert per_image.loc[0, "pixel accuracy"] == pytest.approx(100) and per_image.loc[0, "mIoU"] == pytest.approx(100)
    assert per_image.loc[1, "pixel accuracy"] == pytest.approx(0) and per_image.loc[1, "mIoU"] == pytest.approx(0)
    with pytest.raises(InvalidParameterError, match="segmentation_stats"):
        segmentation_per_image({"correct": torch.ones(2)})


def test_segmentation_scores_keep_per_image_scores_and_add_the_all_background_floor(vit, images):
    masks = square_masks(len(images))
    scores = segmentation_scores(vit, [(images[:4], masks[:4]), (images[4:], masks[4:])], METHODS, 3, all_background=True)
    assert list(scores.table.index) == [*METHODS, ALL_BACKGROUND_LABEL]
    # the pooled table without the floor is segmentation_table's
    plain = segmentation_table(vit, [(images[:4], masks[:4]), (images[4:], masks[4:])], {"GAE": METHODS["GAE"]}, 3)
    assert scores.table.loc["GAE", "mIoU"] == pytest.approx(plain.loc["GAE", "mIoU"])
    miou = scores.scores("mIoU")
    assert list(miou.columns) == [*METHODS, ALL_BACKGROUND_LABEL] and len(miou) == len(images)
    # the mean of the per-image APs is the pooled mAP; the floor's pixel accuracy is each image's background share
    assert miou.shape == (6, 4)
    assert scores.scores("mAP")["GAE"].mean() == pytest.approx(scores.table.loc["GAE", "mAP"])
    background = 100 * (1 - masks.double().flatten(1).mean(1)).numpy()
    assert scores.scores("pixel accuracy")[ALL_BACKGROUND_LABEL].to_numpy() == pytest.approx(background)
    assert scores.table.loc[ALL_BACKGROUND_LABEL, "mIoU"] == pytest.approx(scores.table.loc[ALL_BACKGROUND_LABEL, "pixel accuracy"] / 2)
    with pytest.raises(InvalidParameterError, match="metric"):
        scores.scores("accuracy")
    with pytest.raises(InvalidParameterError, match="floor"):
        segmentation_scores(vit, [(images, masks)], {ALL_BACKGROUND_LABEL: ("random", {})}, all_background=True)


def test_perturbation_run_gives_each_methods_per_image_scores(vit):
    small = small_vit("plain", img_size=32)
    torch.manual_seed(0)
    batch = torch.randn(5, 3, 32, 32)
    labels = small(batch).argmax(1)
    run = pt.run_perturbation(small, batch, labels, {"GAE": ("gae", {}), "Random": ("random", {})}, orders=("positive",), batch_size=32)
    auc = run.per_image("auc", explained="target", order="positive")
    assert list(auc.columns) == ["GAE", "Random"] and len(auc) == 5
    assert auc["GAE"].to_numpy() == pytest.approx(run.results[("GAE", "target", "positive")].auc_per_image.double().numpy())
    aopc = run.per_image("aopc")
    assert aopc["GAE"].mean() == pytest.approx(run.results[("GAE", "predicted", "positive")].aopc, rel=1e-5)
    with pytest.raises(InvalidParameterError, match="negative"):
        run.per_image("auc", order="negative")
    with pytest.raises(InvalidParameterError, match="score"):
        run.per_image("accuracy")


def test_method_identifier_maps_labels_to_registry_names_and_floors():
    assert method_identifier("GAE", METHODS) == "gae"
    assert method_identifier("Random", METHODS) == "random"
    assert method_identifier("all background", METHODS) == "all_background"
    assert method_identifier("centre prior", {}) == "centre_prior" == FLOORS["centre prior"]
    with pytest.raises(InvalidParameterError, match="neither"):
        method_identifier("GAE ", METHODS)


def test_league_table_ranks_with_intervals_and_identifiers():
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"GAE": 10 + rng.normal(0, 1, 40), "Rollout": 5 + rng.normal(0, 1, 40), "Random": rng.normal(0, 1, 40)})
    league = league_table(scores, higher_is_better=True, methods=METHODS)
    assert list(league["method"]) == ["gae", "rollout", "random"] and list(league["label"]) == list(scores.columns)
    assert list(league["rank"]) == [1, 2, 3] and (league["rank_low"] == league["rank_high"]).all()
    assert (league["mean_low"] < league["mean"]).all() and (league["mean"] < league["mean_high"]).all()
    assert (league["images"] == 40).all()
    lower = league_table(scores, higher_is_better=False, methods=METHODS)
    assert list(lower["rank"]) == [3, 2, 1]
    shown = shown_league(league, "AUC", digits=1)
    assert list(shown.columns) == ["AUC", "rank"] and shown.index.name == "method"
    assert shown.loc["GAE", "rank"] == "1 [1, 1]"
    assert shown.loc["GAE", "AUC"].startswith(f"{scores['GAE'].mean():.1f} [")
    with pytest.raises(InvalidParameterError):
        league_table(pd.DataFrame(), higher_is_better=True, methods=METHODS)


def test_object_share_is_the_maps_mass_on_the_object():
    masks = square_masks(3)
    area = 100 * masks.double().flatten(1).mean(1).numpy()
    maps = torch.stack([masks[0].float(), torch.ones(64, 64), -masks[2].float()])
    share = object_share(maps, masks)
    assert share[0] == pytest.approx(100)  # all of the map on the object
    assert share[1] == pytest.approx(area[1])  # a constant map: the object's area
    assert share[2] == pytest.approx(0)  # min-max puts the (negative) object at 0
    token = object_share(torch.ones(3, 4, 4), masks)  # token maps are upsampled to the masks
    assert token == pytest.approx(area)
    with pytest.raises(InvalidParameterError, match="same images"):
        object_share(torch.ones(2, 4, 4), masks)
