"""The CDAM chapter's evidence (issue 14): per-image scores, interval tables, verdicts, the token-pooling
experiment, the golden check on the page; and the multi-label training task of the pairs stand-in model."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit.train as training
from xaikit.errors import InvalidParameterError, TrainingError
from xaikit.experiments import cdam as ex
from xaikit.protocols import ClassDiscriminationResult
from xaikit.report import DOES_NOT_HOLD, HOLDS
from xaikit.train import RECIPES, train
from xaikit.train.evaluation import both_top, both_top_chance_threshold, multi_hot

from conftest import quiet


# --------------------------------------------------------------------------- per-image scores


def fake_fidelity(mif, lif):
    mif, lif = torch.tensor(mif, dtype=torch.float64), torch.tensor(lif, dtype=torch.float64)
    return SimpleNamespace(a_mif_per_image=mif, a_lif_per_image=lif, a_lif_minus_mif_per_image=lif - mif)


def test_correctness_scores_keep_one_score_per_image_and_method():
    run = ex.CorrectnessRun(
        fidelity={"CDAM": fake_fidelity([1, 2, 3], [5, 5, 5]), "Random": fake_fidelity([3, 3, 3], [3, 3, 4])},
        box={"CDAM": SimpleNamespace(a_box_per_image=torch.tensor([0.5, 0.4, 0.6])),
             "Random": SimpleNamespace(a_box_per_image=torch.tensor([0.0, 0.1, -0.1]))},
    )
    scores = ex.correctness_scores(run)
    assert list(scores) == ["A_MIF", "A_LIF", "A_LIF-MIF", "A_box"]
    assert list(scores["A_LIF-MIF"].columns) == ["CDAM", "Random"]
    np.testing.assert_allclose(scores["A_LIF-MIF"]["CDAM"], [4, 3, 2])
    np.testing.assert_allclose(scores["A_box"]["Random"], [0.0, 0.1, -0.1], rtol=1e-6)


def test_discrimination_scores_give_table_2_and_the_correctness_of_class_c():
    def result(delta, box_delta, lif_mif, box):
        fields = {f.name: None for f in dataclasses.fields(ClassDiscriminationResult)}
        fields.update(a_delta_lif_minus_mif_per_image=torch.tensor(delta), a_delta_box_per_image=torch.tensor(box_delta),
                      fidelity=SimpleNamespace(a_lif_minus_mif_per_image=torch.tensor(lif_mif)),
                      box=SimpleNamespace(a_box_per_image=torch.tensor(box)))
        return ClassDiscriminationResult(**fields)

    scores = ex.discrimination_scores({"CDAM": result([1.0, 2.0], [0.1, 0.2], [5.0, 6.0], [0.3, 0.4])})
    assert set(scores) == {"A_Δ(LIF-MIF)", "A_Δbox", "A_LIF-MIF", "A_box"}
    np.testing.assert_allclose(scores["A_Δ(LIF-MIF)"]["CDAM"], [1, 2])
    np.testing.assert_allclose(scores["A_LIF-MIF"]["CDAM"], [5, 6])


def test_compactness_scores_are_the_per_image_shares():
    maps = {"CDAM": torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.01]]])}
    np.testing.assert_allclose(ex.compactness_scores(maps)["compactness"]["CDAM"], [0.75, 0.25])


# --------------------------------------------------------------------------- intervals, ranks, verdicts


def scores_of(rng, means, n=60, spread=1.0):
    return pd.DataFrame({label: mean + spread * rng.standard_normal(n) for label, mean in means.items()})


def test_interval_table_has_registry_names_labels_and_rank_intervals():
    rng = np.random.default_rng(0)
    frame = scores_of(rng, {"CDAM": 10.0, "IntGrad": 5.0, "Random": 0.0})
    table = ex.interval_table({"A_LIF-MIF": frame, "A_MIF": frame}, n_resamples=200)
    assert list(table.columns) == ["metric", "method", "label", "mean", "mean_low", "mean_high", "rank", "rank_low",
                                   "rank_high", "n"]
    lif = table[table.metric == "A_LIF-MIF"].set_index("label")
    assert lif.loc["IntGrad", "method"] == "integrated_gradients" and lif.loc["Random", "method"] == "random"
    assert lif.loc["CDAM", "rank"] == 1 and (lif["n"] == 60).all()
    assert (lif.mean_low < lif["mean"]).all() and (lif["mean"] < lif.mean_high).all()
    # A_MIF is lower-is-better: the same scores rank the other way round
    assert table[table.metric == "A_MIF"].set_index("label").loc["CDAM", "rank"] == 3
    with pytest.raises(InvalidParameterError, match="higher is better"):
        ex.interval_table({"made-up": frame})


def test_shown_table_prints_values_and_ranks_with_intervals_beside_the_paper():
    rng = np.random.default_rng(1)
    frame = scores_of(rng, {"CDAM": 10.0, "GradCAM": 9.9, "Random": 0.0})
    shown = ex.shown_table(ex.interval_table({"A_LIF-MIF": frame}, n_resamples=200), ex.paper_table1())
    assert list(shown.columns) == ["A_LIF-MIF", "A_LIF-MIF rank", "A_LIF-MIF paper", "A_LIF-MIF paper rank"]
    assert shown.loc["CDAM", "A_LIF-MIF"].count("[") == 1
    assert "–" in shown.loc["CDAM", "A_LIF-MIF rank"]  # CDAM and GradCAM are not ranked apart
    assert shown.loc["Random", "A_LIF-MIF rank"] == "3 [3–3]"  # always last: the collapsed interval is shown too
    assert shown.loc["CDAM", "A_LIF-MIF paper"] == "632" and shown.loc["Random", "A_LIF-MIF paper"] == ""
    assert shown.loc["CDAM", "A_LIF-MIF paper rank"] == "2"  # 632 below GradCAM's 643 among the two


def test_registry_names_cover_the_rows_and_floors():
    assert ex.registry_name("Rel. Prop.") == "gae" and ex.registry_name("Centre prior") == "centre_prior"
    assert ex.registry_name("IntGrad (token-pooled)") == "integrated_gradients"
    with pytest.raises(InvalidParameterError, match="not a row"):
        ex.registry_name("cifar10")


def test_claim_verdict_compares_with_the_strongest_baseline_never_a_floor():
    rng = np.random.default_rng(2)
    frame = scores_of(rng, {"Smooth CDAM": 10.0, "CDAM": 20.0, "GradCAM": 6.0, "Random": 0.0, "Centre prior": 50.0})
    verdict = ex.claim_verdict({"A_LIF-MIF": frame}, "A_LIF-MIF", "Smooth CDAM", others=["CDAM"])
    assert verdict.verdict == HOLDS and verdict.baseline == "GradCAM"
    assert "strongest floor, Centre prior" in verdict.evidence
    # without excluding its sibling, CDAM is the strongest baseline and is better
    assert ex.claim_verdict({"A_LIF-MIF": frame}, "A_LIF-MIF", "Smooth CDAM").verdict == DOES_NOT_HOLD
    tie = scores_of(rng, {"CDAM": 1.0, "GradCAM": 1.0, "Random": 0.0}, spread=0.5)
    assert ex.claim_verdict({"compactness": tie}, "compactness", "CDAM").verdict == DOES_NOT_HOLD
    assert ex.claim_verdict({"compactness": tie}, "compactness", "CDAM", allow_tie=True).verdict == HOLDS


def test_pool_to_tokens_averages_each_patch():
    pixels = torch.arange(16.0).reshape(1, 4, 4)
    pooled = ex.pool_to_tokens(pixels, (2, 2))
    torch.testing.assert_close(pooled, torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    tokens = torch.ones(2, 2, 2)
    assert ex.pool_to_tokens(tokens, (2, 2)) is tokens
    with pytest.raises(InvalidParameterError, match="does not split"):
        ex.pool_to_tokens(torch.ones(1, 5, 5), (2, 2))


def test_cdam_equals_the_authors_code_on_the_golden_files():
    errors = ex.golden_cdam_errors(precisions=("float32",))
    assert set(errors.label) == {"CDAM", "Integrated CDAM", "Smooth CDAM", "concept CDAM"}
    assert set(errors.model) == {"reference model A", "reference model B"}
    assert errors["relative error"].max() < 1e-4
    with pytest.raises(InvalidParameterError, match="precisions"):
        ex.golden_cdam_errors(precisions=("float16",))


# --------------------------------------------------------------------------- the multi-label task


def test_multi_hot_and_both_top():
    table = multi_hot(np.array([[0, 2], [1, 0]]), 3)
    np.testing.assert_array_equal(table, [[1, 0, 1], [1, 1, 0]])
    scores = np.array([[5.0, 0.0, 4.0], [3.0, 1.0, 2.0]])
    np.testing.assert_array_equal(both_top(scores, np.array([[2, 0], [0, 1]])), [True, False])
    with pytest.raises(InvalidParameterError, match="lie in 0..2"):
        multi_hot(np.array([[0, 3]]), 3)
    with pytest.raises(InvalidParameterError, match=r"\(N, M\) table"):
        multi_hot(np.array([0, 1]), 3)


def test_both_top_chance_threshold_is_chance_plus_three_standard_errors():
    chance = 1 / 45  # two of ten classes
    assert both_top_chance_threshold(2000, 10) == pytest.approx(chance + 3 * math.sqrt(chance * (1 - chance) / 2000))


def spots(split: str, n_train: int = 256, n_test: int = 128, informative: bool = True):
    """Two of three colour channels lit per image: a multi-label task a tiny ViT learns in a few steps."""
    n = n_train if split == "train" else n_test
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = np.stack([rng.choice(3, 2, replace=False) for _ in range(n)]).astype(np.int64)
    shown = labels if informative else rng.permutation(labels)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i, (a, b) in enumerate(shown):
        images[i, :, :, a] = images[i, :, :, b] = 200
    return SimpleNamespace(images=images, labels=labels, target_names=("red", "green", "blue"), source="spots")


TINY_MULTILABEL = dataclasses.replace(
    RECIPES["demo-pairs-vit"], name="tiny-spots-vit", data="spots", init=None,
    timm_kwargs=training._vit_kwargs(32, 1, 2, (0.5,) * 3, (0.5,) * 3, num_classes=3),
    data_kwargs={}, monitor_size=64, epochs=3, batch_size=32, lr=3e-3, random_crop_padding=0,
)


@pytest.fixture
def spots_data(tmp_path, monkeypatch):
    monkeypatch.setitem(training.DATASETS, "spots", spots)
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))


def test_a_multilabel_recipe_trains_with_binary_cross_entropy_and_cards_its_scores(spots_data, tmp_path):
    card = train(TINY_MULTILABEL, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert card["test_both_top"] > 0.9 and card["test_mean_ap"] > 0.9 and len(card["test_ap_per_class"]) == 3
    assert all("monitor_both_top" in h for h in card["history"]) and "test_accuracy" not in card
    model = training.load_trained(tmp_path / "out" / "tiny-spots-vit.json")
    test = spots("test")
    assert both_top(training.predict(model, test.images), test.labels).mean() == pytest.approx(card["test_both_top"])
    described = training.describe_recipe(TINY_MULTILABEL)
    assert described["loss"].startswith("binary cross-entropy") and "several per image" in described["classes"]


def test_a_multilabel_run_at_chance_writes_nothing(spots_data, tmp_path):
    unlearnable = dataclasses.replace(TINY_MULTILABEL, epochs=1, data_kwargs={"informative": False, "n_test": 2000})
    with pytest.raises(TrainingError, match="at chance level"):
        train(unlearnable, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert not (tmp_path / "out").exists()


def test_the_pairs_data_train_and_test_on_disjoint_streams():
    train_set = training.DATASETS["pairs"]("train", n_train=3, n_test=2)
    test_set = training.DATASETS["pairs"]("test", n_train=3, n_test=2)
    assert train_set.images.shape == (3, 32, 32, 3) and test_set.labels.shape == (2, 2)
    assert not np.array_equal(train_set.images[:2], test_set.images)
    assert (train_set.labels[:, 0] != train_set.labels[:, 1]).all()


def test_mif_pictures_replace_the_most_important_pixels_first():
    from conftest import small_vit

    model = small_vit()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    maps = torch.zeros(2, 4, 4)
    maps[:, 0, 0] = 1.0  # the top-left token (16 x 16 pixels, 1/16 of the image) is the most important
    pictures = ex.mif_pictures(model, images, [0, 1], maps, [0.0, 1 / 16, 1.0])
    assert pictures.shape == (3, 2, 3, 64, 64)
    torch.testing.assert_close(pictures[0], images)
    changed = (pictures[1] != images).any(1)
    assert changed[:, :16, :16].all() and not changed[:, 16:, :].any() and not changed[:, :, 16:].any()
    assert (pictures[2] != images).any(1).float().mean() > 0.99
    with pytest.raises(InvalidParameterError, match="shares"):
        ex.mif_pictures(model, images, [0, 1], maps, [1.5])


def test_ratio_of_means_is_scale_free_with_a_joint_interval():
    rng = np.random.default_rng(3)
    cdam = 10 + rng.standard_normal(200)
    other = 0.5 * cdam + 0.1 * rng.standard_normal(200)
    ratio, low, high = ex.ratio_of_means(other, cdam)
    assert low < ratio < high and ratio == pytest.approx(0.5, abs=0.01) and high - low < 0.02
    assert ex.ratio_of_means(100 * other, 100 * cdam) == pytest.approx((ratio, low, high))  # the logits' scale cancels
    with pytest.raises(InvalidParameterError, match="same images"):
        ex.ratio_of_means([1.0, 2.0], [1.0])


def test_positive_share_inside_counts_only_positive_mass():
    maps = torch.tensor([[[2.0, -5.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True  # the top-left token
    shares = ex.positive_share_inside(maps, masks)
    assert shares[0].item() == pytest.approx(50.0) and math.isnan(shares[1].item())
    with pytest.raises(InvalidParameterError, match="one map and one"):
        ex.positive_share_inside(maps, masks[0])


def test_class_change_is_zero_for_a_class_independent_map():
    maps = torch.tensor([[[1.0, -2.0]], [[4.0, 0.0]]])
    np.testing.assert_allclose(ex.class_change(maps, maps), [0, 0])
    np.testing.assert_allclose(ex.class_change(maps, torch.zeros_like(maps)), [1, 1])
    with pytest.raises(InvalidParameterError, match="differ in shape"):
        ex.class_change(maps, maps[:1])


def test_least_attended_share():
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    scores = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    assert ex.least_attended_share(attention, scores, 0.25).item() == pytest.approx(25.0)
    assert ex.least_attended_share(attention, torch.tensor([[0.0, 1.0, 1.0, 2.0]]), 0.25).item() == pytest.approx(0.0)
    with pytest.raises(InvalidParameterError, match="share"):
        ex.least_attended_share(attention, scores, 1.5)


def test_regression_fit_gives_rmse_and_r2_with_intervals():
    rng = np.random.default_rng(4)
    truth = rng.normal(0, 2, (300, 2))
    estimates = truth + rng.normal(0, [0.5, 2.0], (300, 2))
    fit = ex.regression_fit(estimates, truth, ["good", "poor"])
    assert fit.loc["good", "RMSE"] == pytest.approx(0.5, abs=0.05) and fit.loc["poor", "RMSE"] == pytest.approx(2.0, abs=0.2)
    assert (fit["R² low"] < fit["R²"]).all() and (fit["R²"] < fit["R² high"]).all()
    assert fit.loc["good", "R²"] > 0.9 > fit.loc["poor", "R²"]
    with pytest.raises(InvalidParameterError, match="names"):
        ex.regression_fit(estimates, truth, ["one"])
