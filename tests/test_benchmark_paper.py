"""The benchmark's paper profile, end to end, on small files in the real formats.

`paper_fixtures.paper_environment` writes ImageNet-Segmentation (``gtsegs_ijcv.mat``), an ImageNet validation
folder (whose two-label images make X_multi) and the stand-ins' random weights; the ClickMe validation shards are
written as TFRecords (`test_vita_paper_profile.write_clickme_shards`). Every model of the paper profile (DeiT-B,
ViT-B/16, DINO ViT-S/8 with its head) is swapped for timm's small test ViT with those random weights, and
each track keeps two images: every loader, protocol and the summary run as they would on the real data.
"""

from __future__ import annotations

import dataclasses

import pytest

import xaikit.benchmark as benchmark
from paper_fixtures import PAPER_STAND_INS, paper_environment
from test_vita_paper_profile import write_clickme_shards
from xaikit.benchmark import summary as bs
from xaikit.benchmark.units import get_profile, higher_is_better


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark-paper")
    files = paper_environment(root)
    write_clickme_shards(root / "clickme")
    files.env["XAIKIT_CLICKME"] = str(root / "clickme")
    return files


def test_the_paper_profile_runs_every_track_on_real_format_files(paper_files, tmp_path, monkeypatch):
    for key, value in paper_files.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paper = get_profile("paper")
    stand_in = PAPER_STAND_INS["vit"]
    weights = str(paper_files.weights[stand_in])
    profile = paper.with_models({track.model: (stand_in, weights) for track in paper.tracks}).with_images(2)
    few_boxes = {"n_boxes": 3, "sizes": [56, 112]}  # the paper's 100 boxes x 14 sizes take minutes on a CPU
    profile = dataclasses.replace(profile, protocol_settings={**paper.protocol_settings, "box_sensitivity": few_boxes,
                                                              "class_discrimination": few_boxes, "cost": {"repeats": 1}})
    with pytest.warns(UserWarning):  # the fabricated ClickMe shards have no published hashes: trust on first use
        run = benchmark.run_benchmark(profile, tmp_path / "ledger", methods=["random", "gradcam"], progress=False)
    assert run.report.failed == [], [(f["spec"]["dataset"], f["spec"]["protocol"], f["message"][:300]) for f in run.ledger.failures()]
    table = run.table
    expected = {(track.dataset, protocol) for track in paper.tracks for protocol in track.protocols}
    assert set(zip(table.dataset, table.protocol)) == expected
    assert set(table.model) == {stand_in}
    summary = bs.summary_table(table, higher_is_better(), n_resamples=100)
    assert set(summary.index.get_level_values("method")) == {"random", "gradcam"}
