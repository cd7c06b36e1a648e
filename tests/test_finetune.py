"""Fine-tuning published weights with xaikit.train: the paper profile's CIFAR checkpoints.

The recipes ``deit_base-cifar10`` / ``deit_base-cifar100`` start from the ImageNet DeiT-B,
drop its 1,000-class head for a fresh one, upsample the 32 x 32 images bilinearly to the
model's input and write their weights and card into ``$XAIKIT_WEIGHTS_DIR``. Tested here on
tiny random DeiTs and a CIFAR-10 binary archive written in the official format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import xaikit
import xaikit.train as training
from xaikit.train import cli
from paper_fixtures import write_cifar10_binary, write_random_weights
from xaikit.errors import InvalidParameterError, WeightsUnavailableError
from xaikit.train import (
    RECIPES,
    accuracy,
    build_model,
    default_out_dir,
    finetune_recipe,
    initialise,
    load_data,
    load_trained,
    main,
    resize_to_model,
    to_inputs,
    train,
    trained_dir,
)

from conftest import quiet

TINY_DEIT = "deit_tiny_patch16_224.fb_in1k"
SMALL = {"depth": 1}  # timm kwargs that keep the stand-in DeiT small


pytestmark = pytest.mark.usefixtures("isolated_training")



def imagenet_stand_in(path, **kwargs):
    """Random weights of a 1,000-class tiny DeiT (32 x 32 unless told), standing in for the ImageNet weights."""
    return write_random_weights(path, "deit_tiny_patch16_224", **{"img_size": 32, **SMALL, **kwargs})


def cifar10_in_the_cache(tmp_path, monkeypatch, **sizes):
    """The official CIFAR-10 binary layout, placed where load_cifar10(source='binary') finds it."""
    archive = tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    parts = write_cifar10_binary(archive, **sizes)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    entry = json.loads((Path(__file__).resolve().parents[1] / "data_manifests" / "cifar10.json").read_text())
    entry.update(size=archive.stat().st_size, sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
                 md5=hashlib.md5(archive.read_bytes()).hexdigest())
    (manifests / "cifar10.json").write_text(json.dumps(entry))
    monkeypatch.setenv("XAIKIT_MANIFEST_DIR", str(manifests))
    return parts


# ----------------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("data, classes", [("cifar10", 10), ("cifar100", 100)])
def test_the_cifar_recipes_fine_tune_the_imagenet_deit_base_at_224(data, classes, tmp_path):
    recipe = RECIPES[f"deit_base-{data}"]
    assert recipe.architecture == "deit_base_patch16_224" and recipe.init == "deit_base_patch16_224.fb_in1k"
    assert recipe.timm_kwargs["img_size"] == 224 and recipe.timm_kwargs["num_classes"] == classes
    overlay = recipe.timm_kwargs["pretrained_cfg_overlay"]
    assert overlay["mean"] == [0.485, 0.456, 0.406] and overlay["crop_pct"] == 1.0 and overlay["interpolation"] == "bilinear"
    assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.warmup_epochs, recipe.label_smoothing) == (1e-4, 10, 128, 1.0, 0.1)
    assert recipe.stem == f"deit_base_patch16_224-{data}"
    # Fine-tuned checkpoints go beside the published weights; the demo models stay in the training cache.
    assert default_out_dir(recipe) == tmp_path / "weights"
    assert default_out_dir(RECIPES["demo-cifar10-vit"]) == trained_dir() == tmp_path / "cache" / "trained"
    assert RECIPES["deit_base-cifar10"].data_kwargs == {"source": "binary"}  # the official data, not the JPEG copy


def test_finetune_recipe_renames_what_it_changes():
    changed = finetune_recipe("cifar100", model_name=TINY_DEIT, img_size=48, n_train=20, n_test=10,
                              timm_kwargs=SMALL, epochs=2, batch_size=8)
    assert (changed.architecture, changed.init) == ("deit_tiny_patch16_224", TINY_DEIT)
    assert changed.name == changed.stem == "deit_tiny_patch16_224-cifar100"  # never the DeiT-B file name
    assert changed.timm_kwargs["img_size"] == 48 and changed.timm_kwargs["pretrained_cfg_overlay"]["input_size"] == [3, 48, 48]
    assert changed.timm_kwargs["depth"] == 1 and changed.timm_kwargs["num_classes"] == 100
    assert changed.data_kwargs == {"n_train": 20, "n_test": 10} and (changed.epochs, changed.batch_size) == (2, 8)
    assert finetune_recipe("cifar10") == RECIPES["deit_base-cifar10"]  # empty values keep the recipe's
    with pytest.raises(InvalidParameterError, match="no fine-tuning recipe for data 'imagenet'"):
        finetune_recipe("imagenet")
    with pytest.raises(InvalidParameterError, match="img_size must be a whole number"):
        finetune_recipe("cifar10", img_size=-3)


def test_describe_recipe_states_every_setting_that_decides_the_weights():
    described = training.describe_recipe(RECIPES["deit_base-cifar100"])
    assert described["starting weights"] == "deit_base_patch16_224.fb_in1k (its head dropped, a new one initialised)"
    assert described["input"] == "32 x 32 upsampled to 224 x 224, bilinear (after augmentation)"
    assert described["training data"] == "CIFAR-100 training split, all images" and described["classes"] == "100"
    assert described["optimiser"] == "AdamW, lr 0.0001, weight decay 0.05, betas (0.9, 0.999)"
    assert described["epochs"] == "10" and described["batch size"] == "128" and described["seed"] == "0"
    assert described["loss"] == "cross-entropy, label smoothing 0.1"
    assert described["precision"].startswith("bfloat16 autocast")
    small = training.describe_recipe(finetune_recipe("cifar10", n_train=500, img_size=32, init=None, bf16_autocast=False,
                                                     random_crop_padding=0, horizontal_flip=False))
    assert small["starting weights"] == "random (timm's initialisation, seed 0)" and small["input"] == "32 x 32, not resized"
    assert small["training data"] == "CIFAR-10 training split, official binary archive, 500 images (class-balanced, seeded)"
    assert small["augmentation"] == "none" and small["precision"] == "float32"


# ----------------------------------------------------------------------------- the head


def test_initialise_copies_every_tensor_but_a_head_of_another_size(tmp_path):
    weights = imagenet_stand_in(tmp_path / "imagenet.safetensors")
    source = load_file(str(weights))
    recipe = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=32, timm_kwargs=SMALL)

    model = build_model(recipe)
    fresh_head = model.head.weight.detach().clone()
    info = initialise(model, recipe.init, weights=weights, timm_kwargs=recipe.timm_kwargs)

    state = model.state_dict()
    body = [key for key in source if not key.startswith("head.")]
    assert body and all(torch.equal(state[key], source[key]) for key in body)
    assert source["head.weight"].shape == (1000, 192) and state["head.weight"].shape == (10, 192)
    torch.testing.assert_close(state["head.weight"], fresh_head, rtol=0, atol=0)  # timm's seeded init, kept
    assert torch.equal(state["head.bias"], torch.zeros(10))
    assert info == {"weights": TINY_DEIT, "source": str(weights), "copied_tensors": len(body),
                    "reinitialised": ["head.bias", "head.weight"], "head": "dropped (head.bias, head.weight: 1000 classes) and re-initialised for 10 classes"}
    # The same seed gives the same fresh head: a fine-tuning run is reproducible from the recipe.
    torch.testing.assert_close(build_model(recipe).head.weight, fresh_head, rtol=0, atol=0)

    same_size = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=32, timm_kwargs={**SMALL, "num_classes": 1000})
    kept = build_model(same_size)
    assert initialise(kept, same_size.init, weights=weights)["head"] == "kept"
    assert torch.equal(kept.head.weight, source["head.weight"])


def test_load_model_refuses_a_head_of_another_size_so_fine_tuning_drops_it_explicitly(tmp_path):
    """xaikit.load_model never silently swaps a head: evaluating with a random head would be wrong."""
    weights = imagenet_stand_in(tmp_path / "imagenet.safetensors")
    with pytest.raises(WeightsUnavailableError, match=r"(?s)does not fit .*size mismatch for head.weight.*num_classes"):
        xaikit.load_model("deit_tiny_patch16_224", weights=weights, num_classes=10, img_size=32, **SMALL)
    assert xaikit.load_model("deit_tiny_patch16_224", weights=weights, img_size=32, **SMALL).num_classes == 1000


def test_initialise_refuses_weights_of_another_architecture(tmp_path):
    recipe = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=32, timm_kwargs=SMALL)
    deeper = imagenet_stand_in(tmp_path / "deeper.safetensors", depth=2)
    with pytest.raises(WeightsUnavailableError, match=r"unexpected blocks\.1\..* Check that .* holds weights of"):
        initialise(build_model(recipe), recipe.init, weights=deeper)
    wider = imagenet_stand_in(tmp_path / "wider.safetensors", embed_dim=96, num_heads=3)
    with pytest.raises(WeightsUnavailableError, match=r"(?s)does not fit VisionTransformer: .*size mismatch"):
        initialise(build_model(recipe), recipe.init, weights=wider)


def test_initialise_finds_the_published_weights_where_load_model_looks(tmp_path):
    recipe = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=32, timm_kwargs=SMALL)
    with pytest.raises(WeightsUnavailableError) as missing:
        initialise(build_model(recipe), recipe.init, timm_kwargs=recipe.timm_kwargs)
    assert "download" in str(missing.value) and "XAIKIT_WEIGHTS_DIR" in str(missing.value)
    assert str(tmp_path / "weights" / f"{TINY_DEIT}.safetensors") in str(missing.value)

    write_random_weights(tmp_path / "weights" / f"{TINY_DEIT}.safetensors", "deit_tiny_patch16_224", **SMALL)  # at 224
    with pytest.warns(UserWarning, match=r"timm resamples .* position grid 14x14 -> 2x2"):
        info = initialise(build_model(recipe), recipe.init, timm_kwargs=recipe.timm_kwargs)
    assert info["source"] == f"{TINY_DEIT} (found by xaikit.load_model)" and info["head"].startswith("dropped")


# ----------------------------------------------------------------------------- upsampling


def test_training_inputs_equal_what_xaikit_preprocess_gives_the_fine_tuned_model():
    """The card's data config (crop_pct 1, bilinear) makes xaikit.preprocess upsample as training did."""
    recipe = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=64, timm_kwargs=SMALL)
    model = build_model(recipe)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)

    trained_on = to_inputs(torch.from_numpy(images), model)
    explained = xaikit.preprocess(model, images)

    assert trained_on.shape == explained.shape == (3, 3, 64, 64)
    # PIL upsamples 8-bit pixels in fixed point: at most one grey level apart (over the smallest std).
    difference = (trained_on - explained).abs()
    assert difference.max() <= 1 / 255 / 0.224 + 1e-5 and difference.mean() < 0.5 / 255 / 0.224
    assert to_inputs(torch.from_numpy(images), model, resize=False).shape == (3, 3, 32, 32)


def test_resize_to_model_upsamples_bilinearly_with_half_pixel_centres():
    model = build_model(finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=64, timm_kwargs=SMALL))
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    up = resize_to_model(ramp, model)
    assert up.shape == (1, 3, 64, 64)
    # Output pixel j samples input position (j + 0.5) / 2 - 0.5, clamped at the border.
    expected = torch.clamp((torch.arange(64) + 0.5) / 2 - 0.5, 0, 31)
    torch.testing.assert_close(up[0, 0, 5], expected)
    same = torch.randn(2, 3, 64, 64)
    assert resize_to_model(same, model) is same


# ----------------------------------------------------------------------------- a whole run


def test_a_fine_tuning_run_writes_into_the_weights_dir_and_loads_back(tmp_path, monkeypatch):
    parts = cifar10_in_the_cache(tmp_path, monkeypatch, train_per_class=4, test_per_class=3)
    weights = imagenet_stand_in(tmp_path / "imagenet.safetensors", img_size=48)
    recipe = finetune_recipe("cifar10", model_name=TINY_DEIT, img_size=48, timm_kwargs=SMALL,
                             epochs=4, batch_size=8, bf16_autocast=False)
    seen_sizes, steps = [], []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen_sizes.append(tuple(args[0].shape[-2:])) if module.__class__.__name__ == "PatchEmbed" else None
    )
    try:
        card = train(recipe, init_weights=weights, log=quiet, on_step=steps.append)
    finally:
        hook.remove()

    folder = tmp_path / "weights"
    assert sorted(p.name for p in folder.iterdir()) == ["deit_tiny_patch16_224-cifar10.json", "deit_tiny_patch16_224-cifar10.safetensors"]
    assert json.loads((folder / "deit_tiny_patch16_224-cifar10.json").read_text()) == card
    assert card["init"]["head"] == "dropped (head.bias, head.weight: 1000 classes) and re-initialised for 10 classes"
    assert card["input"]["data_size"] == [32, 32] and card["input"]["model_size"] == [48, 48]
    assert card["input"]["resize"].startswith("bilinear upsampling")
    assert card["data"]["source"].startswith("CIFAR-10 train split, official binary version")
    assert card["data"]["train_images"] == 40 and card["data"]["test_images"] == 30
    assert set(seen_sizes) == {(48, 48)}  # training and evaluation both see upsampled images
    assert [s["step"] for s in steps] == list(range(1, 21)) and all(np.isfinite(s["loss"]) for s in steps)
    assert steps[0]["lr"] == pytest.approx(1e-4 / 5) and steps[4]["lr"] > steps[-1]["lr"]  # warm-up, then decay
    assert card["test_accuracy"] > training.chance_threshold(parts["test"][1], 10)

    model = load_trained(folder / "deit_tiny_patch16_224-cifar10.json")
    assert model.num_classes == 10 and model.patch_embed.img_size == (48, 48)
    assert accuracy(model, *parts["test"]) == card["test_accuracy"]
    with torch.no_grad():
        predicted = model(xaikit.preprocess(model, parts["test"][0])).argmax(1).numpy()
    assert (predicted == parts["test"][1]).mean() == pytest.approx(card["test_accuracy"], abs=2 / 30)


def test_load_trained_finds_the_cifar_checkpoints_by_recipe_name(tmp_path):
    with pytest.raises(WeightsUnavailableError) as missing:
        load_trained("deit_base-cifar100")
    message = str(missing.value)
    assert str(tmp_path / "weights" / "deit_base_patch16_224-cifar100.json") in message
    assert "python -m xaikit.train deit_base-cifar100" in message


def test_load_data_samples_class_balanced_subsets(tmp_path, monkeypatch):
    cifar10_in_the_cache(tmp_path, monkeypatch, train_per_class=4, test_per_class=3)
    recipe = finetune_recipe("cifar10", n_train=20, n_test=10)
    train_set, test_set = load_data(recipe)
    assert np.bincount(train_set.labels).tolist() == [2] * 10 and np.bincount(test_set.labels).tolist() == [1] * 10
    with pytest.raises(InvalidParameterError, match="asked for 50 train images, but the train split has only 40"):
        load_data(finetune_recipe("cifar10", n_train=50))


def test_init_weights_for_a_recipe_trained_from_scratch_are_refused(tmp_path):
    with pytest.raises(InvalidParameterError, match="trains from scratch"):
        train(RECIPES["demo-shapes-vit"], init_weights=tmp_path / "x.safetensors", out_dir=tmp_path, work_dir=tmp_path, log=quiet)
    with pytest.raises(InvalidParameterError, match="init must be None or a model/file name"):
        dataclasses.replace(RECIPES["deit_base-cifar10"], init="")


def test_cli_passes_the_starting_weights_file(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "train", lambda config, **kwargs: calls.append((config, kwargs)))
    main(["deit_base-cifar10", "--init-weights", str(tmp_path / "deit.safetensors"), "--threads", "1"])
    (config, kwargs), = calls
    assert config == RECIPES["deit_base-cifar10"]
    assert kwargs["init_weights"] == tmp_path / "deit.safetensors" and kwargs["out_dir"] is None
    assert os.fspath(default_out_dir(config)) == str(tmp_path / "weights")
