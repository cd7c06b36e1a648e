"""The demo models' cards in words (Foundations 2 and CDAM 4 read every shipped card through them)."""

from __future__ import annotations

import pytest

from xaikit.demo_models import DEMO_MODELS, model_card
from xaikit.errors import InvalidParameterError
from xaikit.train import RECIPES
from xaikit.train.held_out import held_out_score
from xaikit.train.recipes import describe_card, held_out_result


def card(**result):
    return {"name": "toy", "timm_kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3,
                                           "num_classes": 10},
            "data": {"name": "pairs", "train_images": 20, "test_images": 5}, "recipe": {"init": "demo-shapes-vit"},
            "parameters": 123, "epochs": 4, "seed": 0, "hardware": "CPU", "train_seconds": 90.0, **result}


@pytest.mark.parametrize("result, text", [
    ({"test_accuracy": 0.974}, "top-1 97.4 %"),
    ({"test_both_top": 0.2625, "test_mean_ap": 0.6312}, "both objects top-2 on 26.2 %, mean AP 0.63"),
    ({"test_mse": 0.5303}, "MSE 0.53 (standardised targets)"),
])
def test_a_cards_held_out_result_is_put_in_words_by_its_task(result, text):
    assert held_out_result(card(**result)) == text


def test_a_card_without_a_held_out_result_is_refused_with_the_fix():
    with pytest.raises(InvalidParameterError, match="records no held-out result.*retrain"):
        held_out_result(card())


def test_describe_card_reads_every_entry_from_the_card():
    row = describe_card(card(test_both_top=0.5, test_mean_ap=0.7))
    assert row["task"] == "multi-label, 10 classes (one sigmoid each)"
    assert row["data"] == "synthetic pairs of shapes (20 train / 5 test)"
    assert row["input"] == "64 x 64, 8 x 8 patches"
    assert row["embedding dim / depth / heads"] == "96 / 4 / 3"
    assert row["starts from"] == "demo-shapes-vit" and row["training time (min)"] == 1.5
    assert describe_card({**card(test_mse=0.5), "recipe": {}})["starts from"] == "random weights"
    assert describe_card(card(test_mse=0.5))["task"] == "regression of 10 targets"


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_every_shipped_card_is_described_and_has_the_recipe_its_check_needs(name):
    """Foundations 2 lists the cards of xaikit/weights: a new one must be describable and re-measurable."""
    assert name in RECIPES
    assert describe_card(model_card(name))["held-out result (card)"] == held_out_result(model_card(name))


def test_held_out_score_re_measures_the_cards_measure():
    import xaikit

    score = held_out_score(xaikit.load_model("demo-pairs-vit"), "demo-pairs-vit", 40)
    assert score["measure"] == "both objects top-2 (%)"
    assert score["card"] == pytest.approx(100 * model_card("demo-pairs-vit")["test_both_top"])
    assert 0 <= score["re-measured"] <= 100 and score["re-measured"] * 40 / 100 == pytest.approx(round(score["re-measured"] * 0.4))


def test_held_out_score_refuses_a_model_without_recipe():
    with pytest.raises(InvalidParameterError, match="no recipe.*name one of"):
        held_out_score(None, "not-a-demo-model", 4)
