"""ViTA's grid search (`xaikit.experiments.vita`, issue 15 section 5): the grid, the shared prefix, one
forward and one backward per configuration, resumable units on the results ledger, the best configuration per
(CAM, metric). More of the ledger's side in test_vita_grid_ledger.py."""

from __future__ import annotations

import importlib
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

import xaikit
import xaikit.experiments
import xaikit.metrics
from xaikit.astrocytes import AstrocyteSettings
from xaikit.errors import DataIntegrityError, InvalidParameterError
from xaikit.introspection import token_grid
from xaikit.experiments import vita
from xaikit.ledger import Ledger, Unit

from conftest import small_vit


# -- stand-ins for what other helpers of issue 15 write in parallel ------------------------------
# `xaikit.experiments.vita_maps.cam_pictures_from` and `xaikit.metrics.spearman/dice/ssim`: used only where the
# real ones are missing, so these tests run before they land and test the real ones after.


def _stand_in_pictures(activations, gradients, grid, size):
    gh, gw = grid
    features = activations[:, -gh * gw :].float()
    grads = gradients[:, -gh * gw :].float()
    pictures = {}
    squared = grads**2
    alpha = squared / (2 * squared + features.sum(1, keepdim=True) * squared * grads + 1e-6)
    for name, weights in (("gradcam", grads.mean(1)), ("gradcam_pp", (grads.clamp(min=0) * alpha).sum(1))):
        cams = (features * weights[:, None]).sum(-1).clamp(min=0).reshape(-1, 1, gh, gw)
        cams = torch.nn.functional.interpolate(cams, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        flat = cams.flatten(1) - cams.flatten(1).amin(1, keepdim=True)
        pictures[name] = (flat / (1e-7 + flat.amax(1, keepdim=True))).reshape(cams.shape)
    return pictures


def _stand_in_spearman(maps, human):
    def ranks(x):
        return x.flatten(1).argsort(1).argsort(1).double()

    a, b = ranks(maps), ranks(human)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _stand_in_dice(maps, human, top=0.1):
    def binary(x):
        flat = x.flatten(1).double()
        return flat > torch.quantile(flat, 1 - top, dim=1, keepdim=True)

    a, b = binary(maps).double(), binary(human).double()
    return 2 * (a * b).sum(1) / ((a + b).sum(1) + 1e-9)


def _stand_in_ssim(maps, human):
    return 1 - (maps - human).flatten(1).double().pow(2).mean(1)


@pytest.fixture(autouse=True)
def alignment_functions(monkeypatch):
    """The real `vita_maps` and metrics where they exist, the stand-ins above otherwise."""
    try:
        importlib.import_module("xaikit.experiments.vita_maps")
    except ModuleNotFoundError:
        module = types.ModuleType("xaikit.experiments.vita_maps")
        module.cam_pictures_from = _stand_in_pictures
        monkeypatch.setitem(sys.modules, "xaikit.experiments.vita_maps", module)
        monkeypatch.setattr(xaikit.experiments, "vita_maps", module, raising=False)
    for name, stand_in in (("spearman", _stand_in_spearman), ("dice", _stand_in_dice), ("ssim", _stand_in_ssim)):
        if not hasattr(xaikit.metrics, name):
            monkeypatch.setattr(xaikit.metrics, name, stand_in, raising=False)


# -- the grid -------------------------------------------------------------------------------------


def test_the_grid_is_the_papers_plus_table_1s_alpha():
    grid = vita.vita_grid()
    assert len(grid) == 540 == 3 * 3 * 5 * 4 * 3 and len(set(grid)) == 540
    assert sorted({c.alpha for c in grid}) == [1.05, 1.2, 1.25, 1.5]
    assert sorted({c.phi for c in grid}) == [-0.5, -0.2, 0.0, 0.2, 0.5]
    assert sorted({c.k for c in grid}) == [4, 6, 8] and sorted({c.tau for c in grid}) == [1, 2, 3]
    assert sorted({c.beta for c in grid}) == [0.005, 0.05, 0.25]
    assert grid[0] == AstrocyteSettings(4, 1, -0.5, 1.05, 0.005) and grid[1] == AstrocyteSettings(4, 1, -0.5, 1.05, 0.05)
    for row in vita.paper_table1().itertuples():  # every configuration of the paper's Table 1 is searched
        assert AstrocyteSettings(row.k, row.tau, row.phi, row.alpha, row.beta) in grid
    reduced = vita.vita_grid(k=[4, 8], tau=[3], phi=[-0.5, 0.0], alpha=[1.5], beta=[0.05, 0.05])
    assert reduced == [AstrocyteSettings(k, 3, phi, 1.5, 0.05) for k in (4, 8) for phi in (-0.5, 0.0)]
    assert len(vita.vita_grid(k=6)) == 180
    with pytest.raises(InvalidParameterError, match="no axis 'gamma'"):
        vita.vita_grid(gamma=[1])
    with pytest.raises(InvalidParameterError, match="beta"):
        vita.vita_grid(beta=[2.0])
    names = {vita.config_name(c) for c in grid}
    assert len(names) == 540 and vita.config_name(grid[0]) == "k4_tau1.0_phi-0.5_alpha1.05_beta0.005"


# -- the shared prefix: one forward and one backward per configuration ----------------------------------


def norm1_pass(model, images, targets):
    """Activations and gradients at blocks[-1].norm1 from the whole model (the straightforward way)."""
    seen = []

    def keep(module, args, output):
        seen.append(output)

    handle = model.blocks[-1].norm1.register_forward_hook(keep)
    try:
        logits = model(images)
        (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), seen)
    finally:
        handle.remove()
    return seen[0].detach(), grads


@pytest.mark.parametrize("kind", ["plain", "deit_distilled", "registers", "non_square"])
def test_running_from_the_proj_input_equals_the_whole_model(kind):
    model = small_vit(kind, depth=3)
    images = torch.randn(3, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 6])
    prefix = vita.proj_inputs(model, images, batch_size=2)
    assert prefix.grid == token_grid(model) and len(prefix) == 3
    settings = AstrocyteSettings(k=6, tau=2, phi=0.0, alpha=1.5, beta=0.05)
    for astro in (settings, None):
        fast = vita.cam_layer_pass(model, prefix.block_input, prefix.proj_input, targets, astro)
        if astro is None:
            full = norm1_pass(model, images, targets)
        else:
            with xaikit.astrocytes(model, **vars(astro)):
                full = norm1_pass(model, images, targets)
        for ours, reference in zip(fast, full):
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_the_last_block_cannot_be_searched_and_no_class_token_is_refused():
    with pytest.raises(InvalidParameterError, match="last block"):
        vita.proj_inputs(small_vit("plain"), torch.zeros(1, 3, 64, 64), block=1)
    with pytest.raises(InvalidParameterError, match="class token"):
        vita.proj_inputs(small_vit("plain", class_token=False, global_pool="avg"), torch.zeros(1, 3, 64, 64))


# -- the search: resumable, and the same scores as the straightforward way ----------------------


@pytest.fixture
def search_inputs():
    model = small_vit("plain", depth=2)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(5, 3, 64, 64, generator=generator)
    human = torch.rand(5, 16, 16, generator=generator)
    targets = torch.tensor([1, 0, 6, 2, 2])
    configs = vita.vita_grid(k=[2, 6], tau=[1], phi=[0.0], alpha=[1.5], beta=[0.05, 0.25])
    return model, images, human, targets, configs


def counting(monkeypatch, fail_at: int | None = None) -> list:
    """Record the configuration of every `_config_scores` call; with `fail_at`, that call raises (a crash)."""
    calls = []
    real = vita._config_scores

    def counted(model, prefix, human, targets, settings, *args):
        calls.append(settings)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("interrupted")
        return real(model, prefix, human, targets, settings, *args)

    monkeypatch.setattr(vita, "_config_scores", counted)
    return calls


def test_the_scores_are_the_metrics_of_the_cam_pictures_inside_the_context(tmp_path, search_inputs):
    from xaikit.experiments import vita_maps

    model, images, human, targets, configs = search_inputs
    run = vita.grid_search(model, images, human, targets, tmp_path, configs[:1], batch_size=2, log=None)
    found = run.scores()
    scores = found[configs[0]]
    assert list(found) == [None, configs[0]] and run.computed == 2 and run.skipped == 0  # the baseline and one configuration
    with xaikit.astrocytes(model, **vars(configs[0])):
        activations, gradients = norm1_pass(model, images, targets)
    pictures = vita_maps.cam_pictures_from(activations, gradients, (4, 4), 16)
    for cam in vita.CAM_METHODS:
        for metric in vita.METRICS:
            expected = getattr(xaikit.metrics, metric)(pictures[cam], human).double().numpy()
            np.testing.assert_allclose(scores[f"{cam}/{metric}"], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(scores["gradcam/ssim"], found[None]["gradcam/ssim"])


def test_an_interrupted_search_recomputes_nothing_finished(tmp_path, search_inputs, monkeypatch):
    model, images, human, targets, configs = search_inputs
    calls = counting(monkeypatch, fail_at=3)  # the baseline and one configuration finish, the third call crashes
    with pytest.raises(KeyboardInterrupt, match="run grid_search again"):
        vita.grid_search(model, images, human, targets, tmp_path, configs, batch_size=2, log=None)
    ledger = Ledger(tmp_path)
    assert [vita._spec_settings(ledger.spec(key)) for key in ledger.keys()] in ([None, configs[0]], [configs[0], None])
    assert not [path for path in (tmp_path / "units").iterdir() if path.name.endswith(".tmp")]  # no half-written file
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "units").iterdir()}

    calls = counting(monkeypatch)
    run = vita.grid_search(model, images, human, targets, tmp_path, configs, batch_size=2, log=None)
    assert calls == configs[1:] and run.computed == 3 and run.skipped == 2
    assert all(path.stat().st_mtime_ns == time for path, time in written.items())  # untouched
    throughput = run.throughput
    assert throughput["configurations"] == 3 and throughput["images"] == 5
    assert throughput["config_images_per_s"] == pytest.approx(3 * 5 / throughput["seconds"])

    ledger.result_path(run.units[3]).unlink()  # a lost file is recomputed, alone (units: the baseline, then configs)
    calls = counting(monkeypatch)
    vita.grid_search(model, images, human, targets, tmp_path, configs, batch_size=2, log=None)
    assert calls == [configs[2]]
    calls = counting(monkeypatch)
    run = vita.grid_search(model, images, human, targets, tmp_path, configs, batch_size=2, log=None)
    assert calls == [] and run.computed == 0 and run.throughput["config_images_per_s"] is None
    assert len(run.table()) == 4


def test_two_searches_in_one_folder_keep_apart(tmp_path, search_inputs):
    """The units' specifications carry the fingerprint of the weights and the images, human maps and targets
    (and the metrics), so another search in the same folder adds its own units, mixing nothing."""
    model, images, human, targets, configs = search_inputs
    first = vita.grid_search(model, images, human, targets, tmp_path, configs[:1], metrics=["dice"], log=None)
    other = vita.grid_search(model, images, human, targets.flip(0), tmp_path, configs[:1], metrics=["dice"], log=None)
    assert other.computed == 2 and not {u.key for u in first.units} & {u.key for u in other.units}
    assert not np.allclose(first.scores()[None]["gradcam/dice"], other.scores()[None]["gradcam/dice"])
    again = vita.grid_search(model, images, human, targets, tmp_path, configs[:1], metrics=["dice"], log=None)
    assert again.computed == 0 and again.table().equals(first.table())
    with pytest.raises(DataIntegrityError, match="more than one grid search.*its own folder"):
        vita.load_scores(tmp_path)  # the folder alone cannot say which search is meant
    with pytest.raises(InvalidParameterError, match="from 0 to 6"):
        vita.grid_search(model, images, human, targets + 5, tmp_path / "other", configs[:1], log=None)
    with pytest.raises(InvalidParameterError, match="square, one per image"):
        vita.grid_search(model, images, human[:4], targets, tmp_path / "other", configs[:1], log=None)


def write_unit(ledger, settings, scores: dict, n: int = 3) -> Unit:
    """A grid-search unit of `scores` {"cam/metric": per-image values}, written as grid_search writes it."""
    pairs = [key.split("/") for key in scores]
    unit = ledger.unit(**vita._unit_spec("f" * 64, range(n), settings, 0, sorted({c for c, _ in pairs}),
                                         list(dict.fromkeys(m for _, m in pairs)), 16))
    rows = [(i, cam, metric, value) for (cam, metric), values in zip(pairs, scores.values()) for i, value in enumerate(values)]
    ledger.write(unit, pd.DataFrame(rows, columns=["image", "cam", "metric", "value"]))
    return unit


def test_the_best_configuration_per_cam_and_metric_is_read_from_the_ledger(tmp_path):
    configs = vita.vita_grid(k=[4, 6], tau=[3], phi=[-0.5], alpha=[1.5], beta=[0.05])
    scores = {
        configs[0]: {"gradcam/spearman": [0.1, 0.3, math.nan], "gradcam/dice": [0.5, 0.5, 0.5]},
        configs[1]: {"gradcam/spearman": [0.2, 0.1, 0.0], "gradcam/dice": [0.4, 0.6, 0.5]},  # a tie: the first wins
    }
    ledger = Ledger(tmp_path)
    units = [write_unit(ledger, settings, values) for settings, values in scores.items()]
    write_unit(ledger, None, {"gradcam/spearman": np.ones(3), "gradcam/dice": np.ones(3)})
    table = vita.grid_table(tmp_path)
    assert table["gradcam/spearman"].tolist() == pytest.approx([0.2, 0.1])  # the NaN image left out of the mean...
    assert table["gradcam/spearman undefined"].tolist() == [1, 0]  # ...and counted
    best = vita.best_configurations(tmp_path)
    assert best.loc[("gradcam", "spearman"), ["k", "mean", "undefined"]].tolist() == [4, pytest.approx(0.2), 1]
    assert best.loc[("gradcam", "dice"), "k"] == 4 and best.loc[("gradcam", "dice"), "configurations"] == 2
    with pytest.raises(DataIntegrityError, match="no scores"):
        vita.best_configurations(tmp_path, vita.vita_grid(k=[8], tau=[3], phi=[-0.5], alpha=[1.5], beta=[0.05]))
    ledger.result_path(units[1]).write_bytes(b"not a parquet file")
    with pytest.raises(DataIntegrityError, match="delete it and run grid_search again"):
        vita.grid_table(tmp_path)
