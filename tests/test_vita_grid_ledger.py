"""ViTA's grid search on the results ledger (issue 16): units are (configuration or the baseline) x image
shard; the same scores as the whole model inside the astrocytic context, shard by shard; a resumed search
computes only the missing units (the shared prefix once per shard); the shard split and the `ray` executor
change nothing in the table; a folder of the former layout is left alone, with a warning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit
import xaikit.metrics
from xaikit.errors import DataIntegrityError
from xaikit.experiments import vita, vita_maps
from xaikit.ledger import Ledger, LedgerError, xaikit_version

from conftest import small_vit
from test_vita_grid import norm1_pass


@pytest.fixture
def inputs():
    """A tiny ViT, 5 images with their human maps (image 1's constant: its Spearman is undefined), targets and
    two configurations."""
    model = small_vit("plain", depth=2)
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(5, 3, 64, 64, generator=generator)
    human = torch.rand(5, 16, 16, generator=generator)
    human[1] = 0.5
    targets = torch.tensor([1, 0, 6, 2, 2])
    configs = vita.vita_grid(k=[2, 6], tau=[1], phi=[0.0], alpha=[1.5], beta=[0.05])
    return model, images, human, targets, configs


def search(inputs, folder, **options):
    model, images, human, targets, configs = inputs
    return vita.grid_search(model, images, human, targets, folder, configs, batch_size=2, log=None, **options)


def count_calls(monkeypatch, name: str, fail_at: int | None = None, error=KeyboardInterrupt) -> list:
    """Record the arguments' settings (or shard length) of every call of ``vita.<name>``; `fail_at`: that call raises."""
    calls, real = [], getattr(vita, name)

    def counted(*args, **kwargs):
        calls.append(args[4] if name == "_config_scores" else len(args[1]))
        if fail_at is not None and len(calls) == fail_at:
            raise error("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(vita, name, counted)
    return calls


def test_each_unit_holds_one_row_per_image_and_score_equal_to_the_whole_model(tmp_path, inputs):
    model, images, human, targets, configs = inputs
    run = search(inputs, tmp_path, shard_size=2)
    assert run.shards == 3 and run.computed == 3 * 3 and len(run.units) == 9
    spec = run.units[1].spec  # shard-major: the baseline, then each configuration, shard after shard
    assert spec["images"] == [0, 1] and spec["config"] == vars(configs[0]) and spec["experiment"] == "vita-grid"
    assert spec["xaikit_version"] == xaikit_version() and spec["xaikit_version"].startswith(xaikit.__version__ + "+src.") and len(spec["fingerprint"]) == 64
    assert (spec["block"], spec["cams"], spec["metrics"], spec["size"]) == (0, list(vita.CAM_METHODS), list(vita.METRICS), 16)
    assert len({unit.spec["fingerprint"] for unit in run.units}) == 3  # one per shard

    rows = Ledger(tmp_path).table()
    assert len(rows) == 3 * len(images) * 6  # every (setting, image, score) once, NaN rows kept
    spearman = rows[(rows.metric == "spearman") & (rows.image == 1)]
    assert len(spearman) == 3 * 2 and spearman.value.isna().all()  # the constant map: kept, undefined
    assert rows[rows.metric != "spearman"].value.notna().all()

    scores = run.scores()
    for settings in (None, *configs):
        if settings is None:
            activations, gradients = norm1_pass(model, images, targets)
        else:
            with xaikit.astrocytes(model, **vars(settings)):
                activations, gradients = norm1_pass(model, images, targets)
        pictures = vita_maps.cam_pictures_from(activations, gradients, (4, 4), 16)
        for cam in vita.CAM_METHODS:
            for metric in vita.METRICS:
                with warnings.catch_warnings():  # image 1's constant human map: its Spearman is NaN, as in the unit
                    warnings.simplefilter("ignore", xaikit.metrics.ConstantMapWarning)
                    expected = getattr(xaikit.metrics, metric)(pictures[cam], human).double().numpy()
                np.testing.assert_allclose(scores[settings][f"{cam}/{metric}"], expected, rtol=1e-4, atol=1e-5)
    assert run.table()["gradcam/spearman undefined"].tolist() == [1, 1]


def test_a_resumed_search_computes_only_the_missing_units_and_each_prefix_once(tmp_path, inputs, monkeypatch):
    prefixes = count_calls(monkeypatch, "proj_inputs")
    calls = count_calls(monkeypatch, "_config_scores", fail_at=5)  # shard 0 and shard 1's baseline finish
    with pytest.raises(KeyboardInterrupt):
        search(inputs, tmp_path, shard_size=2)
    assert len(Ledger(tmp_path).keys()) == 4 and prefixes == [2, 2]

    prefixes = count_calls(monkeypatch, "proj_inputs")
    calls = count_calls(monkeypatch, "_config_scores")
    run = search(inputs, tmp_path, shard_size=2)
    assert (run.computed, run.skipped) == (5, 4) and len(calls) == 5
    assert prefixes == [2, 1]  # shards 1 and 2, once each for their units; shard 0 is finished
    assert run.throughput["units"] == 5 and run.throughput["config_images"] == 2 + 2 + 1 * 3
    assert run.throughput["configurations"] == 3 and run.throughput["shards"] == 3

    calls = count_calls(monkeypatch, "_config_scores")
    assert search(inputs, tmp_path, shard_size=2).computed == 0 and calls == []


def test_a_failed_unit_raises_after_the_others_and_is_computed_next_time(tmp_path, inputs, monkeypatch):
    count_calls(monkeypatch, "_config_scores", fail_at=2, error=RuntimeError)
    with pytest.raises(LedgerError, match="1 of the grid search's 3 units failed.*RuntimeError.*run grid_search again"):
        search(inputs, tmp_path)
    ledger = Ledger(tmp_path)
    assert len(ledger.keys()) == 2 and [record["error"] for record in ledger.failures()] == ["RuntimeError"]
    calls = count_calls(monkeypatch, "_config_scores")
    run = search(inputs, tmp_path)
    assert calls == [inputs[4][0]] and run.computed == 1 and ledger.failures() == []


def test_a_shard_split_gives_the_same_table_as_one_shard(tmp_path, inputs):
    whole, split = search(inputs, tmp_path / "whole"), search(inputs, tmp_path / "split", shard_size=2)
    assert (whole.shards, split.shards) == (1, 3)
    pd.testing.assert_frame_equal(split.table(), whole.table(), rtol=1e-6)
    for settings, scores in whole.scores().items():
        for key, values in scores.items():
            np.testing.assert_allclose(split.scores()[settings][key], values, rtol=1e-6)
    assert vita.grid_table(tmp_path / "split").equals(split.table())  # the folder alone: one search, all shards


def test_the_ray_executor_gives_the_same_table_as_local(tmp_path, inputs, ray_cluster):
    """Ray's workers import xaikit afresh: the checkout under test where pytest runs from its root (Ray puts the
    driver's working directory first on the workers' path) or where PYTHONPATH names it."""
    local = search(inputs, tmp_path / "local", shard_size=3)
    on_ray = search(inputs, tmp_path / "ray", shard_size=3, executor="ray")
    assert on_ray.computed == 6 and on_ray.throughput["executor"] == "ray"
    pd.testing.assert_frame_equal(on_ray.table(), local.table(), rtol=1e-6)
    assert sorted(Ledger(tmp_path / "ray").keys()) == sorted(Ledger(tmp_path / "local").keys())  # the same units
    assert search(inputs, tmp_path / "ray", shard_size=3, executor="ray").computed == 0


def test_a_folder_of_the_former_layout_is_left_alone_with_a_warning(tmp_path, inputs):
    (tmp_path / "search.json").write_text(json.dumps({"fingerprint": "old"}))
    (tmp_path / "baseline.npz").write_bytes(b"former scores")
    with pytest.raises(DataIntegrityError, match="former layout"):
        vita.load_scores(tmp_path)
    with pytest.warns(UserWarning, match="former layout.*baseline.npz, search.json.*neither reads nor changes"):
        run = search(inputs, tmp_path)
    assert run.computed == 3 and len(run.table()) == 2
    assert (tmp_path / "baseline.npz").read_bytes() == b"former scores"  # nothing lost
