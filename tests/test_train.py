"""The training loop behind the demo models: an interrupted run resumes to the same weights; a run
writes into the cache (never over the shipped models unless asked), refuses recipes and results
that would make a useless model, explains unreadable checkpoints, and writes files the umask allows."""

import dataclasses
import hashlib
import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import xaikit.train as training
from xaikit.train import cards, cli
from xaikit.errors import DataIntegrityError, InvalidParameterError, WeightsUnavailableError
from xaikit.train import (
    RECIPES,
    TrainingError,
    accuracy,
    chance_threshold,
    load_trained,
    main,
    train,
    trained_dir,
    training_dir,
)

from conftest import quiet


def colours(split: str, n_train: int = 128, n_test: int = 64, informative: bool = True):
    """Ten classes, each a flat colour plus pixel noise: a tiny ViT learns it in a few steps.

    informative=False shows the colour of a shuffled label, so there is nothing to learn.
    """
    n = n_train if split == "train" else n_test
    rng = np.random.default_rng([0 if split == "train" else 1])
    palette = np.random.default_rng(7).integers(0, 256, (10, 3))
    labels = np.arange(n) % 10
    shown = labels if informative else rng.permutation(labels)
    noise = rng.integers(-20, 21, (n, 32, 32, 3))
    images = np.clip(palette[shown][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return SimpleNamespace(images=images, labels=labels)


TINY = dataclasses.replace(
    RECIPES["demo-shapes-vit"],
    name="tiny-colours-vit",
    data="colours",
    timm_kwargs=training._vit_kwargs(32, 1, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    data_kwargs={},
    monitor_size=64,
    epochs=2,
    batch_size=32,
    bf16_autocast=False,  # emulated (slow) on CPUs without avx512_bf16
)  # 4 steps per epoch, 8 in all; about 40 % test accuracy, chance is 10.9 % (threshold 22.6 %)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """The toy data set is registered and the cache is the test's own."""
    monkeypatch.setitem(training.DATASETS, "colours", colours)
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)



def file_digests(folder) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight = train(TINY, out_dir=tmp_path / "straight", work_dir=tmp_path / "straight", log=quiet)

    messages = []
    stopped = train(TINY, out_dir=tmp_path / "resumed", work_dir=tmp_path / "resumed", max_steps=6, log=quiet)
    assert stopped == {"step": 6, "train_seconds": stopped["train_seconds"], "finished": False}
    assert not (tmp_path / "resumed" / f"{TINY.name}.safetensors").exists()  # no weights before the end
    assert not (tmp_path / "resumed" / f"{TINY.name}.json").exists()
    resumed = train(TINY, out_dir=tmp_path / "resumed", work_dir=tmp_path / "resumed", log=messages.append)

    assert messages[0].startswith(f"resumed {TINY.name} at step 6/8")
    assert [e["monitor_accuracy"] for e in resumed["history"]] == [e["monitor_accuracy"] for e in straight["history"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    reference = load_file(str(tmp_path / "straight" / f"{TINY.name}.safetensors"))
    weights = load_file(str(tmp_path / "resumed" / f"{TINY.name}.safetensors"))
    assert weights.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0, msg=key)


def test_a_run_writes_into_the_cache_and_load_trained_reads_it_back(tmp_path):
    card = train(TINY, log=quiet)

    folder = tmp_path / "cache" / "trained"
    assert trained_dir() == folder and training_dir() == tmp_path / "cache" / "training"
    assert sorted(p.name for p in folder.iterdir()) == [f"{TINY.name}.json", f"{TINY.name}.safetensors"]
    assert (tmp_path / "cache" / "training" / f"{TINY.name}.ckpt.pt").is_file()
    assert json.loads((folder / f"{TINY.name}.json").read_text()) == card
    assert card["sha256"] == hashlib.sha256((folder / f"{TINY.name}.safetensors").read_bytes()).hexdigest()

    data = colours("test")
    for reference in (TINY.name, folder / f"{TINY.name}.json", str(folder / f"{TINY.name}.safetensors")):
        model = load_trained(reference)
        assert not model.training
        assert accuracy(model, data.images, data.labels) == card["test_accuracy"]

    with pytest.raises(WeightsUnavailableError, match="python -m xaikit.train"):
        load_trained("demo-never-trained")
    weights = folder / f"{TINY.name}.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DataIntegrityError, match="do not belong together"):
        load_trained(TINY.name)


def test_the_shipped_weights_are_replaced_only_with_replace_shipped(tmp_path, monkeypatch):
    shipped = training.WEIGHTS_DIR
    before = file_digests(shipped)
    with pytest.raises(InvalidParameterError, match="replace_shipped=True"):
        train(dataclasses.replace(TINY, name="demo-shapes-vit"), out_dir=shipped, log=quiet)
    with pytest.raises(InvalidParameterError, match="replace_shipped=True"):
        train(dataclasses.replace(TINY, name="demo-shapes-vit"), out_dir=shipped / ".." / "weights", log=quiet)
    assert file_digests(shipped) == before

    # With a stand-in for the package folder: replace_shipped=True writes there, and only there.
    stand_in = tmp_path / "package-weights"
    monkeypatch.setattr(cards, "WEIGHTS_DIR", stand_in)
    with pytest.raises(InvalidParameterError, match="pass one or the other"):
        train(TINY, out_dir=tmp_path / "elsewhere", replace_shipped=True, log=quiet)
    card = train(TINY, replace_shipped=True, log=quiet)
    assert json.loads((stand_in / f"{TINY.name}.json").read_text()) == card
    assert not (tmp_path / "cache" / "trained").exists()


def test_cli_trains_into_the_cache_unless_told_to_replace_the_shipped_models(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "train", lambda config, **kwargs: calls.append((config, kwargs)))
    threads = ["--threads", str(torch.get_num_threads())]

    main(["demo-shapes-vit", "--epochs", "3", *threads])
    main(["demo-cifar10-vit", "--replace-shipped", *threads])

    (config, kwargs), (config_replace, kwargs_replace) = calls
    assert config == dataclasses.replace(RECIPES["demo-shapes-vit"], epochs=3)
    assert kwargs == {"out_dir": None, "work_dir": None, "replace_shipped": False}
    assert config_replace == RECIPES["demo-cifar10-vit"]
    assert kwargs_replace["replace_shipped"] is True
    assert training._resolve_out_dir(None, False) == trained_dir()
    assert training._resolve_out_dir(None, True) == training.WEIGHTS_DIR


@pytest.mark.parametrize("epochs", ["0", "-1", "two"])
def test_cli_refuses_epochs_below_one(epochs, monkeypatch, capsys):
    monkeypatch.setattr(cli, "train", lambda *args, **kwargs: pytest.fail("trained despite bad --epochs"))
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-shapes-vit", "--epochs", epochs, "--threads", str(torch.get_num_threads())])
    assert exit_info.value.code == 2
    assert "--epochs: must be a whole number >= 1" in capsys.readouterr().err


def test_cli_reports_the_shipped_folder_refusal(capsys):
    before = file_digests(training.WEIGHTS_DIR)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-shapes-vit", "--out-dir", str(training.WEIGHTS_DIR), "--threads", str(torch.get_num_threads())])
    assert exit_info.value.code == 1
    assert "--replace-shipped" in capsys.readouterr().err
    assert file_digests(training.WEIGHTS_DIR) == before


@pytest.mark.parametrize("field, value", [("epochs", 0), ("epochs", -1), ("epochs", 1.5), ("batch_size", 0), ("monitor_size", 0)])
def test_recipes_that_train_nothing_are_refused(field, value, tmp_path):
    with pytest.raises(InvalidParameterError, match=f"{field} must be a whole number >= 1"):
        dataclasses.replace(TINY, **{field: value})
    changed = dataclasses.replace(TINY)
    setattr(changed, field, value)  # a recipe changed after it was made is checked again by train()
    with pytest.raises(InvalidParameterError, match=f"{field} must be a whole number >= 1"):
        train(changed, out_dir=tmp_path, work_dir=tmp_path, log=quiet)
    with pytest.raises(InvalidParameterError, match="max_steps must be"):
        train(TINY, out_dir=tmp_path, work_dir=tmp_path, max_steps=0, log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_training_set_trains_nothing_and_writes_nothing(tmp_path):
    with pytest.raises(InvalidParameterError, match="training set .* is empty, so no step would be trained"):
        train(dataclasses.replace(TINY, data_kwargs={"n_train": 0}), out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert not (tmp_path / "out").exists()


def test_a_run_at_chance_level_writes_no_weights_or_card(tmp_path):
    unlearnable = dataclasses.replace(TINY, data_kwargs={"informative": False})
    with pytest.raises(TrainingError, match=r"test accuracy \d+\.\d % on 64 images after 8 steps is at chance level") as info:
        train(unlearnable, out_dir=tmp_path / "out", work_dir=tmp_path, log=quiet)
    assert "no weights or model card were written" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_chance_threshold_is_chance_plus_three_standard_errors():
    balanced = np.arange(10_000) % 10
    assert chance_threshold(balanced, 10) == pytest.approx(0.1 + 3 * np.sqrt(0.09 / 10_000))
    assert chance_threshold(np.arange(2000) % 10, 10) == pytest.approx(0.1201, abs=1e-4)
    # Always answering the majority class of an unbalanced test set is chance too.
    skewed = np.array([0] * 80 + [1] * 20)
    assert chance_threshold(skewed, 10) == pytest.approx(0.8 + 3 * np.sqrt(0.8 * 0.2 / 100))


def corrupt_garbage(path):
    path.write_bytes(b"this is not a checkpoint" * 10)


def corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_pickled_object(path):
    torch.save({"model": SimpleNamespace(weights=1)}, path)  # a weights-only load refuses arbitrary objects


def corrupt_not_a_checkpoint(path):
    torch.save([torch.zeros(3)], path)


@pytest.mark.parametrize("corrupt", [corrupt_garbage, corrupt_truncated, corrupt_pickled_object, corrupt_not_a_checkpoint])
def test_an_unreadable_checkpoint_says_which_file_to_delete(corrupt, tmp_path):
    train(TINY, out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)
    checkpoint = tmp_path / f"{TINY.name}.ckpt.pt"
    corrupt(checkpoint)
    with pytest.raises(DataIntegrityError, match="delete it to start afresh") as info:
        train(TINY, out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)
    message = str(info.value)
    assert str(checkpoint) in message
    assert "weights_only" not in message and info.value.__cause__ is None  # never advise loading pickled code


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    train(TINY, out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)
    with pytest.raises(DataIntegrityError, match="another recipe; delete it to start afresh"):
        train(dataclasses.replace(TINY, lr=2e-3), out_dir=tmp_path, work_dir=tmp_path, max_steps=1, log=quiet)


def test_checkpoint_weights_and_card_get_the_umask_permissions(umask, tmp_path):
    train(TINY, out_dir=tmp_path / "out", work_dir=tmp_path / "work", log=quiet)
    expected = 0o666 & ~umask
    written = [tmp_path / "work" / f"{TINY.name}.ckpt.pt", tmp_path / "out" / f"{TINY.name}.safetensors",
               tmp_path / "out" / f"{TINY.name}.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(expected) for p in written}
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [f"{TINY.name}.ckpt.pt"]  # no temporary left
