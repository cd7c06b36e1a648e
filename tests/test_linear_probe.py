"""Linear probe and LIDC fine-tuning recipes of xaikit.train (CDAM paper profile, reference-spec §2.1, §2.10).

Tested on tiny random ViT-S/8 stand-ins (one block, width 32, 32 x 32 input), an ImageNet training
folder in ImageFolder layout and a validation folder as `xaikit.data.imagenet` reads it, and a LIDC
crops ``.npz`` in the format of `write_cohort_crops` with a matching cohort table.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import xaikit
import xaikit.train as training
from xaikit.train import loop
from paper_fixtures import write_imagenet_folder, write_random_weights
from xaikit.data import lidc
from xaikit.data.synthetic import LIDC_BIOMARKERS
from xaikit.errors import InvalidParameterError
from xaikit.train import LIDC_SPLIT, TrainConfig, lidc_recipe, linear_probe_recipe, stratified_split, train

from conftest import quiet

TINY = dict(img_size=32, depth=1, embed_dim=32, num_heads=2)  # overrides vit_small_patch8_224's size


pytestmark = pytest.mark.usefixtures("isolated_training")



def dino_stand_in(tmp_path):
    """Random weights of the tiny ViT-S/8 without a head, as DINO publishes its backbone."""
    return write_random_weights(tmp_path / "dino.safetensors", "vit_small_patch8_224", num_classes=0, **TINY)


def imagenet_files(tmp_path, per_class: int = 3):
    rng = np.random.default_rng(0)
    train_root = tmp_path / "train"
    for synset in ("n01440764", "n01443537"):
        (train_root / synset).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(train_root / synset / f"{i}.JPEG")
    val_root = write_imagenet_folder(tmp_path / "val", [1, 2, 3, 4], size=(48, 40))
    return train_root, val_root


def probe_config(train_root, val_root, **changes):
    kwargs = training._dino_kwargs(1000, **TINY)
    return linear_probe_recipe(train_root, val_root, timm_kwargs=kwargs, epochs=3, batch_size=4, monitor_size=4,
                               bf16_autocast=False, data_kwargs={"train_root": str(train_root), "val_root": str(val_root),
                                                                 "img_size": 32, "workers": 1}, **changes)


def test_probe_trains_only_the_head_and_keeps_the_best_validation_epoch(tmp_path, monkeypatch):
    train_root, val_root = imagenet_files(tmp_path)
    start = dino_stand_in(tmp_path)
    # Scripted validation losses: epoch 2 is best, so its head (not the last epoch's) must be written.
    scripted, heads = [0.5, 0.2, 0.9], []

    def scripted_loss(model, val_set, standardised=None):
        heads.append({k: v.detach().clone() for k, v in model.head.state_dict().items()})
        return scripted[len(heads) - 1]

    monkeypatch.setattr(loop, "validation_loss", scripted_loss)
    monkeypatch.setattr(loop, "chance_threshold", lambda labels, classes: -1.0)  # 4 test images: not learnable
    card = train(probe_config(train_root, val_root), out_dir=tmp_path / "out", work_dir=tmp_path / "work",
                 init_weights=start, device="cpu", log=quiet)

    assert card["kept"]["epoch"] == 2 and card["kept"]["val_loss"] == 0.2
    assert [entry["val_loss"] for entry in card["history"]] == scripted
    assert card["trained_parameters"] == 32 * 1000 + 1000
    written = load_file(str(tmp_path / "out" / "vit_small_patch8_224.dino-in1k-probe.safetensors"))
    initial = load_file(str(start))
    backbone = [k for k in written if not k.startswith("head.")]
    assert backbone and set(backbone) == set(initial)
    for key in backbone:  # frozen: bit for bit the starting weights
        assert torch.equal(written[key], initial[key]), key
    assert torch.equal(written["head.weight"], heads[1]["weight"])
    assert not torch.equal(heads[1]["weight"], heads[2]["weight"])  # the head did train between epochs
    assert not torch.equal(heads[0]["weight"], heads[1]["weight"])

    # The weights load as the paper profile loads the probe.
    model = xaikit.load_model("vit_small_patch8_224.dino", weights=tmp_path / "out" / "vit_small_patch8_224.dino-in1k-probe.safetensors",
                              num_classes=1000, **TINY)
    assert torch.equal(model.head.weight.detach(), written["head.weight"])


def test_probe_gives_gradients_to_the_head_only(tmp_path):
    config = probe_config(tmp_path, tmp_path)
    model = training.build_model(config)
    trained = training.freeze(model, config)
    assert {id(p) for p in trained} == {id(p) for p in model.head.parameters()}
    assert all(not p.requires_grad for name, p in model.named_parameters() if not name.startswith("head."))


def test_imagefolder_transforms(tmp_path):
    train_root, val_root = imagenet_files(tmp_path, per_class=2)
    data = training._imagenet("train", train_root=str(train_root), img_size=32, workers=2)
    assert data.labels.tolist() == [0, 0, 1, 1]
    first = data.augmented([0, 3], np.random.default_rng(5))
    again = data.augmented([0, 3], np.random.default_rng(5))
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8 and np.array_equal(first, again)
    val = training._imagenet("val", val_root=str(val_root), img_size=32)
    assert val.labels.tolist() == [7, 14, 21, 28] and val.images[1:3].shape == (2, 32, 32, 3)


# ----------------------------------------------------------------------------- LIDC


def lidc_files(tmp_path, monkeypatch, benign: int = 10, malignant: int = 8):
    rng = np.random.default_rng(1)
    n = benign + malignant
    cohort = pd.DataFrame({
        "scan_id": [f"LIDC-IDRI-{i:04d}" for i in range(n)], "scan_index": np.arange(n) + 100,
        "nodule": np.zeros(n, np.int64), "n_annotations": np.full(n, 4),
        **{name: rng.uniform(1, 5, n) for name in LIDC_BIOMARKERS},
        "malignancy_median": np.r_[np.full(benign, 2.0), np.full(malignant, 4.0)],
        "label": ["benign"] * benign + ["malignant"] * malignant,
    })
    monkeypatch.setattr(lidc, "select_cohort", lambda *args, **kwargs: cohort)
    order = rng.permutation(n)  # the file's order differs from the cohort's
    path = tmp_path / "crops.npz"
    np.savez_compressed(path, cubes=rng.integers(-1000, 400, (n, 32, 32, 32)).astype(np.int16),
                        scan_index=cohort["scan_index"].to_numpy()[order], nodule=cohort["nodule"].to_numpy()[order])
    return path, cohort, order


def test_stratified_split_has_the_reference_fractions():
    labels = np.r_[np.zeros(443, int), np.ones(411, int)]  # the paper's cohort
    parts = stratified_split(labels, seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(labels)))
    for name, fraction in LIDC_SPLIT.items():
        assert abs(len(parts[name]) / len(labels) - fraction) < 0.005, name
        for value in (0, 1):  # stratified: each class in the same proportion
            share = np.mean(labels[parts[name]] == value)
            assert abs(share - np.mean(labels == value)) < 0.01
    assert not np.array_equal(stratified_split(labels, seed=1)["test"], parts["test"])


def test_lidc_data_split_labels_and_slices(tmp_path, monkeypatch):
    path, cohort, order = lidc_files(tmp_path, monkeypatch)
    splits = {split: training._lidc(split, crops=str(path)) for split in LIDC_SPLIT}
    assert sum(len(s.labels) for s in splits.values()) == len(cohort)
    assert [int(np.sum(splits["test"].labels == c)) for c in (0, 1)] == [2, 1]  # round(0.15 * 10), round(0.15 * 8)
    cubes, rows = lidc.read_cohort_crops(path)
    test_rows = stratified_split((rows["label"] == "malignant").to_numpy().astype(int))["test"]
    expected = np.rint(lidc.slices(cubes[test_rows[0]], "centre")[0] * 255).astype(np.uint8)
    assert np.array_equal(splits["test"].images[0][..., 0], expected)  # centre axial slice at test
    drawn = splits["train"].augmented([0, 1], np.random.default_rng(3))
    rng = np.random.default_rng(3)
    reference = [np.rint(lidc.slices(splits["train"].cubes[i], "random", rng)[rng.integers(3)] * 255) for i in (0, 1)]
    assert np.array_equal(drawn[..., 0], np.stack(reference).astype(np.uint8))
    biomarkers = training._lidc("train", crops=str(path), target="biomarkers")
    assert biomarkers.labels.shape == (len(splits["train"].labels), 8)
    assert tuple(biomarkers.target_names) == LIDC_BIOMARKERS


def test_lidc_biomarkers_are_standardised_with_the_training_split(tmp_path, monkeypatch):
    path, cohort, order = lidc_files(tmp_path, monkeypatch)
    monkeypatch.setattr(loop, "mean_baseline_threshold", lambda z: float("inf"))  # random cubes: not learnable
    start = dino_stand_in(tmp_path)
    config = lidc_recipe("biomarkers", path, timm_kwargs=training._dino_kwargs(8, **TINY), epochs=2, batch_size=8,
                         bf16_autocast=False, monitor_size=4)
    card = train(config, out_dir=tmp_path / "out", work_dir=tmp_path / "work", init_weights=start, device="cpu", log=quiet)
    train_split = training._lidc("train", crops=str(path), target="biomarkers")
    assert np.allclose(card["targets"]["mean"], train_split.labels.mean(axis=0))
    assert np.allclose(card["targets"]["std"], train_split.labels.std(axis=0))
    assert card["targets"]["names"] == list(LIDC_BIOMARKERS)
    assert card["kept"]["epoch"] == 1 + int(np.argmin([e["val_loss"] for e in card["history"]]))
    assert card["data"]["train_images"] == len(train_split.labels) and card["recipe"]["schedule"] == "exponential"


def test_lidc_malignancy_recipe_trains_all_weights(tmp_path, monkeypatch):
    path, cohort, order = lidc_files(tmp_path, monkeypatch)
    monkeypatch.setattr(loop, "chance_threshold", lambda labels, classes: -1.0)
    start = dino_stand_in(tmp_path)
    config = lidc_recipe("malignancy", path, timm_kwargs=training._dino_kwargs(2, **TINY), epochs=1, batch_size=8,
                         bf16_autocast=False, monitor_size=4)
    train(config, out_dir=tmp_path / "out", work_dir=tmp_path / "work", init_weights=start, device="cpu", log=quiet)
    written = load_file(str(tmp_path / "out" / "vit_small_patch8_224.dino-lidc-malignancy.safetensors"))
    assert not torch.equal(written["blocks.0.attn.qkv.weight"], load_file(str(start))["blocks.0.attn.qkv.weight"])


def test_exponential_schedule_and_bad_settings():
    config = lidc_recipe("malignancy")
    factor = training.lr_factor(config, steps_per_epoch=10)
    assert factor(0) == factor(9) == 1.0 and factor(10) == pytest.approx(0.95) and factor(25) == pytest.approx(0.95**2)
    with pytest.raises(InvalidParameterError, match="frozen"):
        TrainConfig(name="x", data="cifar10", timm_kwargs={}, frozen="all")
    with pytest.raises(InvalidParameterError, match="target"):
        lidc_recipe("size")


def test_old_recipes_keep_their_checkpoint_identity():
    config = training.RECIPES["demo-cifar10-vit"]
    identity = json.loads(training.recipe_identity(config))
    assert "frozen" not in identity and identity["lr"] == config.lr
    assert "frozen" in json.loads(training.recipe_identity(training.RECIPES["cdam-dino-linear-probe"]))
