"""The benchmark: its plan of units, a smoke run on the ledger (resumed, stopped, on Ray), the command line, and
the paper profile's code path on small files in the real formats with random-weight stand-ins."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest

import xaikit.benchmark as benchmark
from xaikit import __version__
from xaikit.benchmark import summary as bs
from xaikit.benchmark.units import PROFILES, Track, get_profile, higher_is_better, plan, reads_layer_weights
from xaikit.cli import main as cli
from xaikit.errors import InvalidParameterError
from xaikit.ledger import Ledger

SMOKE = get_profile("smoke")
FEW = ["random", "raw_attention", "cdam"]


def small(profile=SMOKE, n_images: int = 4):
    return profile.with_images(n_images)


def test_the_plan_crosses_tracks_methods_astrocytes_and_shards(tmp_path):
    ledger = Ledger(tmp_path)
    units = plan(small(), ledger, methods=["random", "lrp"], protocols=["pointing_game", "cost", "perturbation"])
    specs = [unit.spec for unit in units]
    assert len({unit.key for unit in units}) == len(units)
    # lrp reads the layers' weights: no astrocyte row; random has both
    assert {s["astrocytes"] == "off" for s in specs if s["method"] == "lrp"} == {True}
    assert sum(s["astrocytes"] != "off" for s in specs if s["method"] == "random") > 0
    assert reads_layer_weights("lrp") and not reads_layer_weights("random")
    # the cost runs on the profile's first 3 images only (smoke limits); 4 images in shards of 3 otherwise
    cost = [s for s in specs if s["protocol"] == "cost"]
    assert {len(s["images"]) for s in cost} == {3} and {s["shard"] for s in cost} == {0}
    perturbation = [s for s in specs if s["protocol"] == "perturbation" and s["method"] == "random" and s["astrocytes"] == "off"]
    assert sorted(len(s["images"]) for s in perturbation) == [1, 3]
    first = specs[0]
    assert first["xaikit_version"].startswith(__version__) and len(first["weights_sha256"]) == 64
    assert first["method_settings"] == {"seed": 0}  # every setting, the registry's defaults
    with pytest.raises(InvalidParameterError, match="valid methods"):
        plan(small(), ledger, methods=["no_such_method"])
    with pytest.raises(InvalidParameterError, match="valid protocols"):
        plan(small(), ledger, protocols="segmentation,nope")


def test_the_smoke_benchmark_runs_every_protocol_resumes_and_summarises(tmp_path):
    run = benchmark.run_benchmark(small(), tmp_path / "ledger", methods=FEW, progress=False)
    assert run.report.failed == [] and run.report.computed == run.report.total > 0
    table = run.table
    ran = set(zip(table.dataset, table.protocol))
    assert ran == {(track.dataset, protocol) for track in SMOKE.tracks for protocol in track.protocols}
    assert set(table.method) == set(FEW) and {"off"} < set(table.astrocytes)
    assert table.value.notna().mean() > 0.9
    again = benchmark.run_benchmark(small(), tmp_path / "ledger", methods=FEW, progress=False)
    assert again.report.computed == 0 and again.report.skipped == run.report.total
    pd.testing.assert_frame_equal(again.table, table)
    summary = bs.summary_table(table, higher_is_better(), n_resamples=100)
    assert len(summary) == len(table.groupby(["method", "astrocytes"]))


def test_a_stopped_benchmark_recomputes_only_the_missing_units(tmp_path, monkeypatch):
    calls = []

    def stopped_after_five(spec, context):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(spec)
        return real(spec, context)

    real = benchmark.run_unit
    monkeypatch.setattr(benchmark, "run_unit", stopped_after_five)
    first = benchmark.run_benchmark(small(n_images=3), tmp_path, methods=["random"], astrocytes=None, progress=False)
    assert first.report.interrupted and first.report.computed == 5
    monkeypatch.setattr(benchmark, "run_unit", real)
    second = benchmark.run_benchmark(small(n_images=3), tmp_path, methods=["random"], astrocytes=None, progress=False)
    assert second.report.skipped == 5 and second.report.computed == second.report.total - 5
    assert not second.report.interrupted


def test_the_ray_executor_gives_the_local_benchmark_table(ray_cluster, tmp_path):
    profile = dataclasses.replace(small(n_images=3), tracks=SMOKE.tracks[1:2])  # the shapes model: 3 protocols
    local = benchmark.run_benchmark(profile, tmp_path / "local", methods=["random", "cdam"], progress=False).table
    on_ray = benchmark.run_benchmark(profile, tmp_path / "ray", methods=["random", "cdam"], executor="ray",
                                     progress=False).table
    columns = ["key", "image", "metric"]
    local, on_ray = (t.sort_values(columns).reset_index(drop=True) for t in (local, on_ray))
    pd.testing.assert_frame_equal(local.drop(columns="value"), on_ray.drop(columns="value"))
    np.testing.assert_allclose(on_ray.value, local.value, rtol=1e-5, atol=1e-6)


def test_the_command_line_runs_resumes_and_explains_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(benchmark.PROFILES, "smoke", small(n_images=2))
    out = tmp_path / "ledger"
    arguments = ["benchmark", "--profile", "smoke", "--methods", "random", "--protocols", "pointing_game", "--out", str(out)]
    assert cli(arguments) == 0
    assert "computed now" in capsys.readouterr().out
    assert cli(arguments) == 0
    assert "0 computed now" in capsys.readouterr().out
    assert cli(["benchmark", "--profile", "smoke", "--methods", "nope", "--out", str(out)]) == 2
    assert "valid methods" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli(arguments[:-2] + ["--protocols", "segmentation", "--executor", "ray", "--out", str(out)]) == 2
    assert "pip install 'xaikit[ray]'" in capsys.readouterr().err


def test_the_astrocyte_setting_comes_from_the_vita_chapter(tmp_path):
    settings, source = benchmark.vita_chapter_astrocytes(tmp_path)
    assert settings == benchmark.DEFAULT_ASTROCYTES and "no ViTA grid search" in source
    (tmp_path / "vita").mkdir()
    pd.DataFrame({
        "cam": ["gradcam", "gradcam", "gradcam_pp"], "metric": ["spearman", "dice", "spearman"],
        "k": [4, 6, 6], "tau": [1.0, 3.0, 3.0], "phi": [-0.5, 0.5, 0.5], "alpha": [1.5, 1.05, 1.05], "beta": [0.25, 0.05, 0.05],
    }).to_csv(tmp_path / "vita" / "02_grid_search-best.csv", index=False)
    settings, source = benchmark.vita_chapter_astrocytes(tmp_path)
    assert settings == {"k": 6, "tau": 3.0, "phi": 0.5, "alpha": 1.05, "beta": 0.05} and "2 of its 3" in source


def test_run_benchmark_takes_the_chapter_setting_vita1_or_none(tmp_path, monkeypatch):
    run_folder = tmp_path / "run"
    (run_folder / "results" / "vita").mkdir(parents=True)
    pd.DataFrame({"cam": ["gradcam"], "metric": ["dice"], "k": [4], "tau": [1.0], "phi": [0.0], "alpha": [1.5],
                  "beta": [0.25]}).to_csv(run_folder / "results" / "vita" / "02_grid_search-best.csv", index=False)
    monkeypatch.setenv("XAIKIT_RUN_DIR", str(run_folder))
    profile = dataclasses.replace(small(n_images=2), tracks=small(n_images=2).tracks[1:2])  # shapes: a cheap track
    arguments = dict(methods=["random"], protocols=["pointing_game"], progress=False)
    chapter = benchmark.run_benchmark(profile, tmp_path / "ledger", astrocytes="vita", **arguments)
    assert chapter.astrocytes == {"k": 4, "tau": 1.0, "phi": 0.0, "alpha": 1.5, "beta": 0.25}
    assert "grid search" in chapter.astrocytes_source
    vita1 = benchmark.run_benchmark(profile, tmp_path / "ledger", astrocytes="vita1", **arguments)
    assert vita1.astrocytes == benchmark.DEFAULT_ASTROCYTES and set(vita1.table.astrocytes) - {"off"} != set(chapter.table.astrocytes) - {"off"}
    off = benchmark.run_benchmark(profile, tmp_path / "ledger", astrocytes=None, **arguments)
    assert set(off.table.astrocytes) == {"off"}
    with pytest.raises(InvalidParameterError, match="'vita1'"):
        benchmark.run_benchmark(profile, tmp_path / "ledger", astrocytes="vita2", **arguments)


def test_every_demo_protocol_and_model_is_one_the_benchmark_knows():
    known = set(higher_is_better())
    for profile in PROFILES.values():
        for track in profile.tracks:
            assert isinstance(track, Track)
            for protocol in track.protocols:
                assert any(key.startswith(f"{protocol}/") for key in known), protocol
