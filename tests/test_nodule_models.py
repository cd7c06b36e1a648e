"""The demo models of the synthetic LIDC-like nodules (issue 9, CDAM chapter, demo profile).

``demo-nodules-vit`` classifies malignancy (benign / malignant); ``demo-nodules-biomarkers-vit``
regresses the eight biomarkers, standardised with its training set's mean and std (recorded in
its card). Their cards must tell the truth on held-out nodules (``load_examples("nodules")``),
and gradient explanations must work for every biomarker output. The regression path of
xaikit.train is checked on a toy data set a tiny ViT learns in a few steps.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import xaikit
import xaikit.train as training
from xaikit.data import EXAMPLE_SOURCES, NoduleExamples, load_examples
from xaikit.data.synthetic import CALCIFICATION_ABSENT, LIDC_BIOMARKERS, MALIGNANCY_WEIGHTS, NODULE_CLASSES, make_nodules
from xaikit.demo_models import DEMO_MODELS, WEIGHTS_DIR, model_card
from xaikit.errors import InvalidParameterError, TrainingError
from xaikit.train import (
    RECIPES,
    accuracy,
    build_model,
    initialise,
    mean_baseline_threshold,
    mean_squared_errors,
    predict,
    predict_targets,
    standardise,
    train,
)

from conftest import quiet

CLASSIFIER, REGRESSOR = "demo-nodules-vit", "demo-nodules-biomarkers-vit"
SAMPLE = 400  # held-out nodules re-measured here (the cards measured 2,000 of the same stream)


@pytest.fixture(scope="module")
def held_out() -> NoduleExamples:
    return load_examples("nodules", SAMPLE)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tests share the CPU
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the held-out data


def test_load_examples_gives_held_out_nodules_with_their_ground_truth():
    assert "nodules" in EXAMPLE_SOURCES
    examples = load_examples("nodules", 5)
    assert isinstance(examples, NoduleExamples) and len(examples) == 5
    assert examples.images.shape == (5, 64, 64, 3) and examples.images.dtype == np.uint8
    assert np.array_equal(examples.images[..., 0], examples.images[..., 2])  # grey in all channels
    assert examples.masks.shape == (5, 64, 64) and examples.masks.dtype == bool and examples.masks.any(axis=(1, 2)).all()
    assert examples.biomarkers.shape == (5, 8) and tuple(examples.biomarker_names) == LIDC_BIOMARKERS
    assert tuple(examples.class_names) == NODULE_CLASSES
    assert np.array_equal(examples.labels, (examples.malignancy_score >= 0.5).astype(np.int64))

    # Seed 1 is the recipes' held-out stream (they train on seed 0); `seed` skips images of it.
    reference = make_nodules(5, seed=1, with_importance=False)
    assert np.array_equal(examples.images[..., 1], reference.images)
    assert np.array_equal(examples.biomarkers, reference.biomarkers)
    later = load_examples("nodules", np.int64(3), seed=2)
    assert np.array_equal(later.images, examples.images[2:]) and np.array_equal(later.labels, examples.labels[2:])
    assert np.array_equal(later.biomarkers, examples.biomarkers[2:]) and np.array_equal(later.masks, examples.masks[2:])
    with pytest.raises(InvalidParameterError, match="n to be a non-negative int"):
        load_examples("nodules", -1)


def test_recipes_train_and_test_on_disjoint_nodule_streams():
    for name, target in ((CLASSIFIER, "malignancy"), (REGRESSOR, "biomarkers")):
        train_set = training.DATASETS["nodules"]("train", n_train=3, n_test=2, target=target)
        test_set = training.DATASETS["nodules"]("test", n_train=3, n_test=2, target=target)
        assert train_set.images.shape == (3, 64, 64, 3) and test_set.images.shape == (2, 64, 64, 3)
        assert not np.array_equal(train_set.images[:2], test_set.images)
        assert np.array_equal(test_set.images, load_examples("nodules", 2).images)
        assert RECIPES[name].data_kwargs["target"] == target
    assert train_set.labels.shape == (3, 8) and tuple(train_set.target_names) == LIDC_BIOMARKERS
    with pytest.raises(InvalidParameterError, match="target must be 'malignancy' or 'biomarkers'"):
        training.DATASETS["nodules"]("train", n_train=1, target="diameter")


# --------------------------------------------------------------------------- the shipped models


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_shipped_nodule_models_load_with_complete_cards(name):
    assert name in DEMO_MODELS
    card = model_card(name)
    assert (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size < 5 * 2**20
    # the code's recipe made these weights (fields added to TrainConfig since then are at their defaults)
    assert card["recipe"] == json.loads(training.recipe_identity(RECIPES[name]))
    assert card["data"]["name"] == "nodules" and card["data"]["test_images"] == 2000
    assert card["input"] == {"data_size": [64, 64], "model_size": [64, 64], "resize": "none"}
    assert card["epochs"] == len(card["history"])
    model = xaikit.load_model(name)
    assert not model.training
    outputs = 2 if name == CLASSIFIER else 8
    assert model.num_classes == outputs and model.pretrained_cfg["input_size"] == [3, 64, 64]
    if name == REGRESSOR:
        targets = card["targets"]
        assert targets["names"] == list(LIDC_BIOMARKERS)
        assert len(targets["mean"]) == len(targets["std"]) == 8 and min(targets["std"]) > 0
        # The standardisation is the training set's: its mean diameter is near the log-uniform 3-30 mm mean, 11.7 mm.
        assert targets["mean"][LIDC_BIOMARKERS.index("diameter")] == pytest.approx(27 / np.log(10), rel=0.05)
        assert set(card["test_mse_per_target"]) == set(card["test_r2"]) == set(LIDC_BIOMARKERS)
        assert card["test_mse"] == pytest.approx(np.mean(list(card["test_mse_per_target"].values())))
        assert all(h["monitor_mse"] > 0 for h in card["history"])
        assert "test_accuracy" not in card
    else:
        assert 0 < card["test_accuracy"] <= 1 and "targets" not in card


def bayes_accuracy_knowing(nodules: NoduleExamples, known: tuple[str, ...]) -> float:
    """Accuracy on `nodules` of the best malignancy rule that sees the exact diameter and the `known` biomarkers.

    `known`: some of spiculation, lobulation, margin, calcification (the other terms of the malignancy
    logit). make_nodules draws the biomarkers independently (ratings uniform on 1-5, calcification
    present with probability 0.3), so P(malignant | what is known) sums the unknown terms over their
    combinations; the rule answers malignant when that is >= 1/2.
    """
    w, ratings = MALIGNANCY_WEIGHTS, np.arange(1.0, 6.0)
    col = dict(zip(LIDC_BIOMARKERS, nodules.biomarkers.T))
    terms = {  # name: (the term for each value it can take, their probabilities, the term of each nodule)
        "spiculation": (w["spiculation_minus_3"] * (ratings - 3), np.full(5, 0.2), w["spiculation_minus_3"] * (col["spiculation"] - 3)),
        "lobulation": (w["lobulation_minus_3"] * (ratings - 3), np.full(5, 0.2), w["lobulation_minus_3"] * (col["lobulation"] - 3)),
        "margin": (w["3_minus_margin"] * (3 - ratings), np.full(5, 0.2), w["3_minus_margin"] * (3 - col["margin"])),
        "calcification": (np.array([0.0, w["calcification_present"]]), np.array([0.7, 0.3]),
                          w["calcification_present"] * (col["calcification"] != CALCIFICATION_ABSENT)),
    }
    assert set(known) <= set(terms), known
    logit = w["bias"] + w["log_diameter_over_10mm"] * np.log(col["diameter"] / 10.0)
    unknown, probability = np.zeros(1), np.ones(1)
    for name, (values, probabilities, of_each) in terms.items():
        if name in known:
            logit = logit + of_each
        else:
            unknown = np.add.outer(unknown, values).ravel()
            probability = np.multiply.outer(probability, probabilities).ravel()
    p_malignant = (logit[:, None] + unknown[None, :] >= 0) @ probability
    return float(np.mean((p_malignant >= 0.5) == nodules.labels))


ALL_TERMS = ("spiculation", "lobulation", "margin", "calcification")


@pytest.fixture(scope="module")
def card_test_set() -> NoduleExamples:
    return load_examples("nodules", 2000)  # the 2,000 held-out nodules the cards were measured on


def test_malignancy_labels_carry_no_noise_so_the_bayes_accuracy_is_one(card_test_set):
    # make_nodules labels a nodule malignant when its score is >= 0.5 (label_rule="threshold"); it does not
    # draw the label from the score (that, label_rule="bernoulli", would cap accuracy at E[max(p, 1 - p)],
    # 0.79 here). So the Bayes rule on the score is always right, and so is the rule that knows every term:
    scores = card_test_set.malignancy_score
    assert np.mean((scores > 0.5) == card_test_set.labels) == 1.0
    assert bayes_accuracy_knowing(card_test_set, ALL_TERMS) == 1.0
    # What caps a model is what it reads from the pixels. The exact size alone gives 0.751, with calcification
    # 0.786, with spiculation too 0.841, with the margin too 0.892 (lobulation adds the rest).
    ladder = [bayes_accuracy_knowing(card_test_set, known) for known in
              ((), ("calcification",), ("calcification", "spiculation"), ("calcification", "spiculation", "margin"), ALL_TERMS)]
    assert ladder == sorted(ladder) and 0.7 < ladder[0] < ladder[3] < 0.9, ladder
    assert max(np.mean(card_test_set.labels), 1 - np.mean(card_test_set.labels)) < 0.55  # the classes are balanced


def test_malignancy_model_reads_more_than_the_nodule_size(card_test_set):
    """The card's accuracy beats the best rule that knows each nodule's exact diameter and nothing else."""
    card = model_card(CLASSIFIER)
    size_only = bayes_accuracy_knowing(card_test_set, ())
    standard_error = np.sqrt(size_only * (1 - size_only) / len(card_test_set))
    assert card["test_accuracy"] > size_only + 3 * standard_error, (card["test_accuracy"], size_only)


def test_the_malignancy_model_is_fine_tuned_from_the_biomarker_model():
    # Reading the biomarkers first: the classifier starts from the regressor's weights, a new 2-class head.
    card = model_card(CLASSIFIER)
    assert RECIPES[CLASSIFIER].init == REGRESSOR and card["init"]["weights"] == REGRESSOR
    assert card["init"]["head"] == "dropped (head.bias, head.weight: 8 classes) and re-initialised for 2 classes"
    model = build_model(RECIPES[CLASSIFIER])
    info = initialise(model, REGRESSOR, timm_kwargs=RECIPES[CLASSIFIER].timm_kwargs)  # a demo model, by its name
    assert info["reinitialised"] == ["head.bias", "head.weight"] and info["copied_tensors"] == len(model.state_dict()) - 2
    regressor = xaikit.load_model(REGRESSOR).state_dict()
    torch.testing.assert_close(model.state_dict()["blocks.3.mlp.fc2.weight"], regressor["blocks.3.mlp.fc2.weight"])


def test_malignancy_card_tells_the_truth(held_out, one_thread):
    card = model_card(CLASSIFIER)
    measured = accuracy(xaikit.load_model(CLASSIFIER), held_out.images, held_out.labels)
    # 400 of the card's 2,000 images: within three standard errors of a 400-image accuracy.
    assert abs(measured - card["test_accuracy"]) < 3 * np.sqrt(card["test_accuracy"] * (1 - card["test_accuracy"]) / SAMPLE)
    assert measured > 0.75  # far above always answering "malignant" (about 0.54)


def test_biomarker_card_tells_the_truth(held_out, one_thread):
    card = model_card(REGRESSOR)
    model = xaikit.load_model(REGRESSOR)
    mean, std = (np.asarray(card["targets"][key]) for key in ("mean", "std"))
    standardised = standardise(held_out.biomarkers, mean, std)
    errors = mean_squared_errors(model, held_out.images, standardised)
    for k, name in enumerate(LIDC_BIOMARKERS):
        assert errors[k] == pytest.approx(card["test_mse_per_target"][name], abs=0.12), name
    assert errors.mean() == pytest.approx(card["test_mse"], abs=0.05)
    assert errors.mean() < mean_baseline_threshold(standardised)  # better than predicting the mean
    # predict_targets maps the outputs back to the biomarkers' units with the card's mean and std.
    in_units = predict_targets(model, held_out.images[:8], card)
    np.testing.assert_allclose(in_units, mean + std * predict(model, held_out.images[:8]), rtol=1e-6)
    diameter = LIDC_BIOMARKERS.index("diameter")
    assert card["test_r2"]["diameter"] > 0.8
    assert np.corrcoef(predict_targets(model, held_out.images, card)[:, diameter], held_out.biomarkers[:, diameter])[0, 1] > 0.9
    with pytest.raises(InvalidParameterError, match="only regression recipes"):
        predict_targets(model, held_out.images[:1], model_card(CLASSIFIER))


def test_gradient_maps_explain_each_biomarker_output(held_out, one_thread):
    model = xaikit.load_model(REGRESSOR)
    images = xaikit.preprocess(model, held_out.images[:3])
    methods = ["gae"] + (["cdam"] if "cdam" in xaikit.list_methods() else [])
    for method in methods:
        maps = [xaikit.explain(model, images, method, targets=k) for k in range(len(LIDC_BIOMARKERS))]
        for k, explanation in enumerate(maps):
            assert explanation.shape == (3, 8, 8) and torch.isfinite(explanation).all(), (method, k)
            assert explanation.abs().amax(dim=(1, 2)).min() > 0, (method, LIDC_BIOMARKERS[k])
            # targets=k explains output k: the same map as a callable picking that output.
            chosen = xaikit.explain(model, images, method, targets=lambda outputs, k=k: outputs[:, k])
            torch.testing.assert_close(explanation, chosen, msg=f"{method}, {LIDC_BIOMARKERS[k]}")
        # Each output has its own map: the eight are not one map repeated.
        assert any(not torch.allclose(maps[0], other, atol=1e-6) for other in maps[1:]), method


def test_gradient_maps_of_the_malignancy_classifier(held_out, one_thread):
    model = xaikit.load_model(CLASSIFIER)
    images = xaikit.preprocess(model, held_out.images[:3])
    maps = xaikit.explain(model, images, "gae", targets=1)  # the malignant class
    assert maps.shape == (3, 8, 8) and torch.isfinite(maps).all() and maps.abs().sum() > 0


# --------------------------------------------------------------------------- the regression path of xaikit.train


def glow(split: str, n_train: int = 256, n_test: int = 128, informative: bool = True):
    """Two regression targets a tiny ViT learns fast: the brightness of the red and of the green channel.

    informative=False shows the brightness of shuffled targets, so there is nothing to learn.
    """
    n = n_train if split == "train" else n_test
    rng = np.random.default_rng(0 if split == "train" else 1)
    targets = rng.uniform(0, 100, (n, 2))
    shown = targets if informative else rng.permutation(targets)
    images = np.zeros((n, 32, 32, 3))
    images[..., :2] = shown[:, None, None, :] * 2.55
    images = np.clip(images + rng.normal(0, 8, images.shape), 0, 255).astype(np.uint8)
    return SimpleNamespace(images=images, labels=targets, target_names=("red", "green"), source="glow")


TINY_REGRESSION = dataclasses.replace(
    RECIPES[REGRESSOR],
    name="tiny-glow-vit",
    data="glow",
    timm_kwargs=training._vit_kwargs(32, 1, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), num_classes=2),
    data_kwargs={},
    monitor_size=64,
    epochs=3,
    batch_size=32,
    lr=3e-3,
    random_crop_padding=0,
)  # 8 steps per epoch, 24 in all


@pytest.fixture
def glow_data(tmp_path, monkeypatch):
    monkeypatch.setitem(training.DATASETS, "glow", glow)
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))



def test_a_regression_recipe_writes_standardisation_and_errors_to_its_card(glow_data, tmp_path, one_thread):
    card = train(TINY_REGRESSION, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)

    train_targets = glow("train").labels
    assert card["targets"]["names"] == ["red", "green"]
    np.testing.assert_allclose(card["targets"]["mean"], train_targets.mean(0))
    np.testing.assert_allclose(card["targets"]["std"], train_targets.std(0))
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3] and all("monitor_mse" in h for h in card["history"])
    assert json.loads((tmp_path / "out" / "tiny-glow-vit.json").read_text()) == card

    model = xaikit.load_trained(tmp_path / "out" / "tiny-glow-vit.json")
    test = glow("test")
    standardised = (test.labels - train_targets.mean(0)) / train_targets.std(0)
    mse = np.mean((predict(model, test.images) - standardised) ** 2, axis=0)
    np.testing.assert_allclose([card["test_mse_per_target"][k] for k in ("red", "green")], mse, rtol=1e-5)
    assert card["test_mse"] == pytest.approx(mse.mean())
    np.testing.assert_allclose([card["test_r2"][k] for k in ("red", "green")], 1 - mse / standardised.var(0), rtol=1e-5)
    np.testing.assert_allclose([card["test_rmse_per_target_data_units"][k] for k in ("red", "green")],
                               np.sqrt(mse) * train_targets.std(0), rtol=1e-5)
    assert card["test_mse"] < 0.5  # learned: predicting the mean scores about 1
    assert training.describe_recipe(TINY_REGRESSION)["loss"].startswith("mean squared error")


def test_a_regression_no_better_than_the_mean_writes_nothing(glow_data, tmp_path, one_thread):
    unlearnable = dataclasses.replace(TINY_REGRESSION, data_kwargs={"informative": False})
    with pytest.raises(TrainingError, match=r"test MSE \d\.\d+ .* is no better than predicting the training mean") as info:
        train(unlearnable, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert "no weights or model card were written" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_regression_recipes_are_checked_before_training(glow_data, tmp_path, monkeypatch):
    with pytest.raises(InvalidParameterError, match="task must be one of 'classification', 'regression'"):
        dataclasses.replace(TINY_REGRESSION, task="segmentation")
    three_outputs = dataclasses.replace(
        TINY_REGRESSION, timm_kwargs=training._vit_kwargs(32, 1, 2, (0.5,) * 3, (0.5,) * 3, num_classes=3))
    with pytest.raises(InvalidParameterError, match="model has 3 outputs but the data has 2 regression targets"):
        train(three_outputs, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    with pytest.raises(InvalidParameterError, match=r"column\(s\) \[1\] have the same value"):
        training.target_standardisation(np.array([[1.0, 2.0], [3.0, 2.0]]))
    # Names that do not match the columns would mislabel the card's per-target errors.
    monkeypatch.setitem(training.DATASETS, "glow", lambda split, **kw: SimpleNamespace(
        **{**vars(glow(split, **kw)), "target_names": ("red",)}))
    with pytest.raises(InvalidParameterError, match="names 1 targets .* but has 2 target columns"):
        train(TINY_REGRESSION, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert not (tmp_path / "out").exists()


def test_a_classification_recipe_refuses_a_table_of_numbers(glow_data, tmp_path):
    # Cast to int64, the glow targets would train as truncated class indices.
    as_classes = dataclasses.replace(
        TINY_REGRESSION, task="classification",
        timm_kwargs=training._vit_kwargs(32, 1, 2, (0.5,) * 3, (0.5,) * 3, num_classes=100))
    with pytest.raises(InvalidParameterError, match=r"one integer class index per image.*shape \(256, 2\).*task='regression'"):
        train(as_classes, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert not (tmp_path / "out").exists()


def test_mean_baseline_threshold_is_the_mean_predictor_minus_three_standard_errors():
    z = np.random.default_rng(0).normal(size=(2000, 8))
    per_image = (z ** 2).mean(1)
    assert mean_baseline_threshold(z) == pytest.approx(per_image.mean() - 3 * per_image.std() / np.sqrt(2000))
    assert mean_baseline_threshold(z) == pytest.approx(1 - 3 * np.sqrt(2 / 16000), abs=0.03)
    assert mean_baseline_threshold(np.zeros((10, 2))) == 0.0  # perfect targets: nothing beats the mean
