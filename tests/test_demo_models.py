"""The demo ViTs shipped in xaikit/weights: intact, loadable offline, and as accurate as their cards say."""

import dataclasses
import json

import numpy as np
import pytest

import xaikit
from xaikit.demo_models import DEMO_MODELS, WEIGHTS_DIR, model_card
from xaikit.errors import DataIntegrityError, DataUnavailableError
from xaikit.train import RECIPES, accuracy

REQUIRED = {"demo-cifar10-vit": 0.75, "demo-shapes-vit": 0.95}  # top-1 the issue asks for
SAMPLE = 2000  # fixed test sample (stratified for CIFAR-10)

CIFAR_ON_GPU = 0.80  # what the issue asks of demo-cifar10-vit when it was trained on a GPU


def test_both_demo_models_are_shipped_small_and_documented():
    assert set(REQUIRED) <= set(DEMO_MODELS)
    total = sum((WEIGHTS_DIR / f"{name}.safetensors").stat().st_size for name in REQUIRED)
    assert total < 30 * 2**20
    for name in REQUIRED:
        card = model_card(name)
        for field in ("architecture", "timm_kwargs", "data", "seed", "epochs", "test_accuracy", "hardware", "train_seconds", "sha256", "history"):
            assert field in card, f"{name} card lacks {field}"
        # The recipe in the code made these weights; fields added to TrainConfig since then
        # (init, output_name: fine-tuning) are absent from older cards and None in the recipe.
        recipe = dataclasses.asdict(RECIPES[name])
        added_later = {k for k, v in recipe.items() if k not in card["recipe"] and v is None}
        assert card["recipe"] == {k: v for k, v in recipe.items() if k not in added_later}
        assert card["epochs"] == len(card["history"])


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_card_accuracy_meets_the_requirement(name):
    card = model_card(name)
    required = CIFAR_ON_GPU if name == "demo-cifar10-vit" and card["device"] == "cuda" else REQUIRED[name]
    assert card["test_accuracy"] >= required, f"{name} was trained on {card['hardware']}"


def test_cpu_recipe_fits_in_two_hours():
    card = model_card("demo-cifar10-vit")
    if card["hardware"].startswith("CPU"):
        assert card["train_seconds"] <= 2 * 3600


def test_a_tampered_weight_file_is_refused(tmp_path, monkeypatch):
    import shutil

    from xaikit import demo_models

    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS_DIR / f"demo-shapes-vit{suffix}", tmp_path / f"demo-shapes-vit{suffix}")
    card = json.loads((tmp_path / "demo-shapes-vit.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "demo-shapes-vit.json").write_text(json.dumps(card))
    monkeypatch.setitem(demo_models.DEMO_MODELS, "demo-shapes-vit", tmp_path / "demo-shapes-vit.json")
    with pytest.raises(DataIntegrityError, match="sha256"):
        xaikit.load_model("demo-shapes-vit")


def test_shapes_model_accuracy_on_held_out_synthetic_images():
    from xaikit.data.synthetic import make_shapes

    held_out = make_shapes(SAMPLE, seed=1, with_importance=False)  # the recipe's test seed
    measured = accuracy(xaikit.load_model("demo-shapes-vit"), held_out.images, held_out.labels)
    assert measured >= REQUIRED["demo-shapes-vit"]
    assert abs(measured - model_card("demo-shapes-vit")["test_accuracy"]) < 0.02


def test_cifar10_model_accuracy_on_a_fixed_test_sample():
    from xaikit.data.cifar10 import load_cifar10

    try:
        test = load_cifar10("test", download=False).take(SAMPLE, seed=0)
    except DataUnavailableError as missing:
        pytest.skip(f"no CIFAR-10 test images here (neither ../shared/data nor a cached official archive): {missing}")
    measured = accuracy(xaikit.load_model("demo-cifar10-vit"), test.images, test.labels)
    assert abs(measured - model_card("demo-cifar10-vit")["test_accuracy"]) < 0.03  # the card tells the truth
    assert measured >= 0.70  # far above chance (10 %): a broken or untrained model fails here


def test_demo_models_explain_offline():
    model = xaikit.load_model("demo-cifar10-vit")
    pixels = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    maps = xaikit.explain(model, xaikit.preprocess(model, pixels), "gae")
    assert maps.shape == (2, 8, 8)
