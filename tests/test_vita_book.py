"""xaikit.experiments.vita_book: the ViTA chapter's plumbing, with known answers (hand-made scores, scipy,
the grid search's own code path, the paper's printed numbers)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from tests.conftest import small_vit
from xaikit.astrocytes import AstrocyteSettings
from xaikit.errors import InvalidParameterError
from xaikit.experiments import vita_book as vb
from xaikit.experiments.vita import grid_search, load_scores


def tiny_data(model, n: int = 6, seed: int = 0) -> vb.AlignmentData:
    """Random images and smooth random "human" maps at the model's input size, labels 0..n-1 mod classes."""
    generator = torch.Generator().manual_seed(seed)
    side = model.patch_embed.img_size[0]
    images = torch.randn(n, 3, side, side, generator=generator)
    human = torch.nn.functional.avg_pool2d(torch.rand(n, 1, side, side, generator=generator), 9, 1, 4)[:, 0]
    labels = torch.arange(n) % model.num_classes
    return vb.AlignmentData(images, np.zeros((n, side, side, 3), np.uint8), human, labels, None, f"{n} random images")


def test_the_paper_numbers_are_the_papers():
    table2 = vb.paper_table2()
    assert len(table2) == 6 and list(table2.index.get_level_values(0)) == ["gradcam"] * 3 + ["gradcam_pp"] * 3
    assert table2.loc[("gradcam", "ssim"), "ViTA mean"] == 0.436 and table2.loc[("gradcam", "ssim"), "rank-sum p"] == 3.9e-290
    assert table2.loc[("gradcam_pp", "spearman"), "ViT SD"] == 0.311
    assert vb.PAPER_IMAGES == 3 * 984 + 2 * 14 + 1 * 2


def test_the_paper_model_resolves_to_timms_default_pretrained_tag():
    assert vb.pretrained_name(vb.PAPER_MODEL) == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert vb.pretrained_name("vit_base_patch16_224.orig_in21k_ft_in1k") == "vit_base_patch16_224.orig_in21k_ft_in1k"


def test_the_grids_have_the_stated_sizes():
    assert [len(vb.book_grid(name)) for name in ("paper", "demo", "smoke")] == [540, 72, 2]
    assert {s.alpha for s in vb.book_grid("paper")} == {1.05, 1.2, 1.25, 1.5}
    with pytest.raises(InvalidParameterError, match="paper, demo, smoke"):
        vb.book_grid("full")


def test_halves_are_disjoint_cover_the_images_and_are_seeded():
    first, second = vb.split_halves(9, seed=3)
    assert len(first) == 5 and len(second) == 4
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(9))
    again = vb.split_halves(9, seed=3)
    assert np.array_equal(again[0], first) and not np.array_equal(vb.split_halves(9, seed=4)[0], first)
    with pytest.raises(InvalidParameterError, match="at least 4"):
        vb.split_halves(3)


def _scores(values: dict) -> dict:
    """{settings or None: {"gradcam/ssim": array}} from {k or None: list}."""
    return {None if k is None else AstrocyteSettings(k=k): {"gradcam/ssim": np.asarray(v, dtype=float)} for k, v in values.items()}


def test_best_settings_by_hand():
    scores = _scores({None: [0, 0, 0, 0], 4: [1, 0, 5, 5], 6: [0, 2, np.nan, 0], 8: [1, 1, 5, 5]})
    assert vb.best_settings(scores, "gradcam/ssim", [0, 1]).k == 6  # means 0.5, 1.0, 1.0: the tie goes to k = 6 (grid order)
    assert vb.best_settings(scores, "gradcam/ssim", [1, 2]).k == 8  # means 2.5, 2.0 (NaN left out), 3.0
    with pytest.raises(InvalidParameterError, match="grid search first"):
        vb.best_settings(_scores({None: [0, 0]}), "gradcam/ssim", [0])


def test_the_selection_test_finds_no_inflation_where_one_setting_is_better_everywhere():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    scores = _scores({None: base, 4: base + 0.1, 6: base + 0.05})
    frame, found = vb.selection_test(scores, seed=1, n_resamples=200)
    row = frame.iloc[0]
    assert row["selected on the other half"] == row["selected on these images"] == vb.settings_text(AstrocyteSettings(k=4))
    assert math.isclose(row["held-out"], 0.1) and math.isclose(row["in-sample"], 0.1) and row["inflation"] == 0
    assert found["gradcam/ssim"]["held-out"].verdict == "holds" and found["gradcam/ssim"]["inflation"].verdict == "does not hold"
    assert frame.attrs == {"selection": 20, "held_out": 20}


def test_the_selection_test_sees_a_setting_that_only_fits_the_scored_half():
    # k = 6 gains 1 on the held-out half and loses 1 on the selection half; k = 4 gains 0.2 everywhere
    n = 20
    selection, held_out = vb.split_halves(n, seed=0)
    base = np.zeros(n)
    lucky = base.copy()
    lucky[held_out], lucky[selection] = 1.0, -1.0
    scores = _scores({None: base, 4: base + 0.2, 6: lucky})
    frame, found = vb.selection_test(scores, seed=0, n_resamples=200)
    row = frame.iloc[0]
    assert row["selected on the other half"] == vb.settings_text(AstrocyteSettings(k=4))
    assert row["selected on these images"] == vb.settings_text(AstrocyteSettings(k=6))
    assert math.isclose(row["held-out"], 0.2) and math.isclose(row["in-sample"], 1.0) and math.isclose(row["inflation"], 0.8)
    reason = vb.selection_reason(found, ["gradcam/ssim"])
    assert "Grad-CAM, SSIM" in reason and "1.00" in reason and "0.20" in reason


def test_the_reasons_follow_the_tests_outcome():
    rng = np.random.default_rng(1)
    base = rng.normal(size=30)
    scores = _scores({None: base, 4: base + rng.normal(scale=0.01, size=30)})  # no real gain anywhere
    _, found = vb.selection_test(scores, seed=0, n_resamples=200)
    assert found["gradcam/ssim"]["held-out"].verdict == "does not hold"
    assert "the reason is unknown" in vb.selection_reason(found, ["gradcam/ssim"])
    with pytest.raises(InvalidParameterError):
        vb.selection_reason(found, [])
    gain = found["gradcam/ssim"]["held-out"]
    _, strong = vb.selection_test(_scores({None: base, 4: base + 1.0}), seed=0, n_resamples=200)
    text = vb.own_settings_reason({"gradcam/ssim": gain}, {"gradcam/ssim": strong["gradcam/ssim"]["held-out"]}, ["gradcam/ssim"])
    assert "do not carry over" in text and "1.00" in text


def test_table2_rows_match_scipy():
    rng = np.random.default_rng(2)
    before = rng.uniform(size=50)
    after = before + rng.normal(0.05, 0.05, size=50)
    after[3] = np.nan  # a constant map's Spearman: left out of both, counted
    table, found = vb.table2_rows({"gradcam/spearman": before}, {"gradcam/spearman": after}, n_resamples=200)
    row = table.iloc[0]
    kept = ~np.isnan(after)
    assert row["undefined"] == 1 and row["images"] == 49
    assert math.isclose(row["ViT mean"], before[kept].mean()) and math.isclose(row["ViTA median"], np.median(after[kept]))
    assert math.isclose(row["ViTA SD"], np.std(after[kept], ddof=1))
    assert math.isclose(row["rank-sum p"], scipy_stats.ranksums(after[kept], before[kept], alternative="greater").pvalue)
    assert math.isclose(row["signed-rank p"], scipy_stats.wilcoxon(after[kept], before[kept], alternative="greater").pvalue)
    assert math.isclose(row["gain"], (after[kept] - before[kept]).mean()) and row["verdict"] == "holds"
    assert found["gradcam/spearman"].verdict == "holds"


def test_the_chapters_cam_scores_equal_the_grid_searchs(tmp_path):
    """Two code paths: the whole model inside xaikit.astrocytes (the pages) and the grid search's pass from the
    wrapped layer onward give the same per-image scores, without and with astrocytes."""
    model = small_vit("plain", depth=3)
    data = tiny_data(model)
    settings = AstrocyteSettings(k=4, tau=1, phi=0.0, alpha=1.5, beta=0.05)
    grid_search(model, data.images, data.human, data.labels, tmp_path, [settings], batch_size=4, log=None)
    stored = load_scores(tmp_path)
    for chosen in (None, settings):
        ours = vb.cam_alignment(model, data, chosen, batch_size=4)
        assert sorted(ours) == sorted(stored[chosen])
        for key, values in ours.items():
            np.testing.assert_allclose(values, stored[chosen][key], rtol=0, atol=1e-4, err_msg=f"{chosen} {key}")
    plain, astro = vb.cam_alignment(model, data, None), vb.cam_alignment(model, data, settings)
    assert not np.allclose(plain["gradcam/ssim"], astro["gradcam/ssim"])  # the layer changes the maps


def test_any_method_with_k_zero_scores_as_without_astrocytes():
    model = small_vit("plain")
    data = tiny_data(model, n=3)
    plain = vb.method_alignment(model, data, "gae")
    k_zero = vb.method_alignment(model, data, "gae", {"k": 0, "tau": 3, "phi": -0.5, "alpha": 1.5, "beta": 0.05})
    moved = vb.method_alignment(model, data, "gae", {"k": 8, "tau": 1, "phi": 0.0, "alpha": 1.5, "beta": 0.005})
    for metric in ("spearman", "dice", "ssim"):
        np.testing.assert_array_equal(plain[metric], k_zero[metric])
    assert not np.allclose(plain["ssim"], moved["ssim"])
    rollout = vb.method_alignment(model, data, "rollout")  # class-agnostic: explained without a target
    assert rollout["spearman"].shape == (3,)
    with pytest.raises(InvalidParameterError, match="settings must be"):
        vb.method_alignment(model, data, "gae", [6, 3])


def test_shapes_data_use_the_blurred_object_masks_and_the_true_labels():
    import xaikit
    from xaikit.data import load_examples
    from xaikit.data.clickme import blurred_object_maps

    model = xaikit.load_model("demo-shapes-vit")
    data = vb.shapes_alignment_data(model, 3, seed=5)
    shapes = load_examples("shapes", 3, seed=5)
    np.testing.assert_array_equal(data.human.numpy(), blurred_object_maps(shapes.masks))
    assert data.labels.tolist() == list(shapes.labels) and data.images.shape == (3, 3, 32, 32)
    assert data.pictures.shape == (3, 32, 32, 3) and "numbers 5 to 7" in data.described
    part = data.subset([2])
    assert len(part) == 1 and torch.equal(part.human[0], data.human[2])
    with pytest.raises(InvalidParameterError, match="'shapes'"):
        vb.alignment_data(model, "imagenet", 2)


def test_clickme_pictures_are_resized_whole_not_cropped():
    model = small_vit("plain")  # 64 x 64 input
    pixels = np.zeros((1, 256, 256, 3), np.uint8)
    pixels[:, :, :32] = 255  # a white band along the left eighth
    images = vb.clickme_images(model, pixels)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    shown = images[0] * std + mean
    assert shown.shape == (3, 64, 64)
    assert torch.allclose(shown[:, :, :7], torch.ones(3, 64, 7), atol=1e-6)  # 32/256 of 64 = 8 columns, bilinear edge
    assert torch.allclose(shown[:, :, 9:], torch.zeros(3, 64, 55), atol=1e-6)


def test_the_figures_fit_the_book():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    import xaikit
    from xaikit.viz import figure_problems

    intervals = pd.DataFrame([{"cam": c, "metric": m, "model": model, "mean": 0.3, "low": 0.2, "high": 0.4}
                              for c in vb.CAM_LABELS for m in vb.METRIC_LABELS for model in ("ViT", "ViTA")])
    assert figure_problems(vb.error_bar_figure(intervals)) == []
    model = small_vit("plain")
    data = tiny_data(model, n=2)
    maps = {"Grad-CAM": torch.rand(2, 64, 64), "Grad-CAM ViTA": torch.rand(2, 64, 64)}
    fig = vb.examples_figure(data.pictures, data.human, maps, {k: np.array([0.1, 0.2]) for k in maps}, ["a", "b"])
    assert figure_problems(fig) == []
    with xaikit.astrocytes(model, k=4) as layer:
        with torch.no_grad():
            model(data.images)
    assert figure_problems(vb.trace_figure(layer.trace, 1)) == []


def test_an_unpaired_test_on_the_papers_summaries_by_hand():
    approx = vb.paper_unpaired_p()
    row = approx.loc[("gradcam", "spearman")]
    z = (0.378 - 0.370) / math.sqrt((0.233**2 + 0.231**2) / 2982)  # = 1.33
    assert math.isclose(row["z"], z) and math.isclose(row["approximate p"], scipy_stats.norm.sf(z))
    assert 0.05 < row["approximate p"] < 0.1 and row["paper p"] == 1.9e-8


def test_the_demo_grid_lacks_values_of_four_of_the_papers_best_settings():
    missing, unreachable = vb.missing_from_grid(vb.book_grid("demo"))
    assert missing == {"phi": [0.2], "alpha": [1.25], "beta": [0.05]} and unreachable == 4
    assert vb.missing_from_grid(vb.book_grid("paper")) == ({}, 0)


def test_undefined_counts_count_the_nan_scores_per_setting():
    scores = _scores({None: [0, np.nan, 1], 4: [np.nan, np.nan, 1], 6: [1, 2, 3]})
    assert vb.undefined_counts(scores, "gradcam/ssim").tolist() == [1, 2, 0]


def test_the_selection_explains_a_gain_only_where_the_inflation_is_beyond_the_noise():
    from xaikit.verdicts import Verdict

    def part(verdict):
        return Verdict(verdict=verdict, evidence="")

    found = {"gradcam/ssim": {"held-out": part("does not hold"), "in-sample": part("holds"), "inflation": part("holds")},
             "gradcam/dice": {"held-out": part("does not hold"), "in-sample": part("holds"), "inflation": part("does not hold")}}
    keys = list(found)
    text = vb.selection_reason(found, keys, numbers=False)
    assert "2 of the 2 would count as a gain" in text and "for 1 the inflation itself is beyond the noise" in text
    assert "for 1 the inflation is within the noise, so the selection may explain" in text and "unknown" not in text
    only_within = vb.selection_reason({"gradcam/dice": found["gradcam/dice"]}, ["gradcam/dice"], numbers=False)
    assert "may explain" in only_within and "explains" not in only_within


def test_one_shape_is_described_in_the_singular():
    import xaikit

    model = xaikit.load_model("demo-shapes-vit")
    data = vb.shapes_alignment_data(model, 1, seed=20_000)
    assert data.described == "1 held-out synthetic shape (number 20000)"
    assert data.subset([0]).described == data.described
