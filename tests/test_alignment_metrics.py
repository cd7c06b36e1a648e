"""xaikit.metrics' alignment with human maps (ViTA, Harmonization): Spearman, Dice, SSIM against scipy,
numpy's percentile and skimage, on random and tied maps."""

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from skimage.metrics import structural_similarity

from xaikit.errors import InvalidParameterError
from xaikit.metrics import (
    HUMAN_SPEARMAN_CEILING,
    ConstantMapWarning,
    alignment_score,
    constant_maps,
    dice,
    spearman,
    ssim,
)


def _random_maps(seed: int, batch: int = 4, size=(24, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *size, generator=generator), torch.rand(batch, *size, generator=generator)


def _tied_maps(seed: int, batch: int = 4, size=(24, 20)) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of few distinct values (many ties), as quantised heatmaps and ReLU-ed CAMs have."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, 5, (batch, *size), generator=generator).float() / 4
    human = torch.randint(0, 3, (batch, *size), generator=generator).float()
    maps[0, :10] = 0.0  # a ReLU-like block of zeros
    return maps, human


def _harmonization_dice(a: np.ndarray, b: np.ndarray, percentile: int = 10, dtype=np.float64) -> float:
    """Harmonization's dice (evaluation/metrics.py) for one pair, written out with numpy. Harmonization
    sums the masks in float32 (where the 1e-9 vanishes); ours sums in float64 (`dtype`)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    a = (a > np.percentile(a, 100 - percentile, (0, 1))).astype(dtype)
    b = (b > np.percentile(b, 100 - percentile, (0, 1))).astype(dtype)
    return float(2.0 * np.sum(a * b) / (np.sum(a + b) + 1e-9))


def _normalised(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


@pytest.mark.parametrize("make", [_random_maps, _tied_maps], ids=["random", "tied"])
def test_spearman_equals_scipy_per_image(make):
    maps, human = make(seed=3)
    ours = spearman(maps, human)
    assert ours.shape == (4,) and ours.dtype == torch.float64
    expected = [scipy_stats.spearmanr(m.flatten(), h.flatten()).statistic for m, h in zip(maps.numpy(), human.numpy())]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)
    # numpy arrays in, the same numbers out
    np.testing.assert_allclose(spearman(maps.numpy(), human.numpy()).numpy(), expected, rtol=0, atol=1e-12)


def test_spearman_hand_computed_ties():
    # map ranks 1.5, 1.5, 3, 4 (the two zeros tied); human ranks 1, 2, 3, 4
    maps = torch.tensor([[[0.0, 0.0], [0.5, 2.0]]])
    human = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    centred_map, centred_human = np.array([-1.0, -1.0, 0.5, 1.5]), np.array([-1.5, -0.5, 0.5, 1.5])
    expected = (centred_map @ centred_human) / np.sqrt((centred_map**2).sum() * (centred_human**2).sum())
    assert spearman(maps, human).item() == pytest.approx(expected, abs=1e-15)
    assert spearman(maps, -human).item() == pytest.approx(-expected, abs=1e-15)


def test_constant_map_has_nan_spearman_counted_and_warned():
    maps, human = _random_maps(seed=5, batch=5)
    maps[1] = 0.0  # a CAM that is zero everywhere
    human[3] = 0.7  # a human map without clicks
    with pytest.warns(ConstantMapWarning, match="2 of 5 images"):
        scores = spearman(maps, human)
    assert torch.isnan(scores).tolist() == [False, True, False, True, False]
    assert constant_maps(maps, human).tolist() == [False, True, False, True, False]
    assert int(constant_maps(maps, human).sum()) == 2
    with pytest.warns(scipy_stats.ConstantInputWarning):
        assert np.isnan(scipy_stats.spearmanr(maps[1].flatten(), human[1].flatten()).statistic)  # scipy's is NaN too
    with pytest.warns(ConstantMapWarning):
        normalised = alignment_score(maps, human)
    assert torch.isnan(normalised).tolist() == torch.isnan(scores).tolist()


def test_alignment_score_is_spearman_over_harmonization_ceiling():
    maps, human = _random_maps(seed=7)
    human = human + 0.8 * maps  # some agreement, so the scores are far from 0
    assert HUMAN_SPEARMAN_CEILING == pytest.approx(0.65753, abs=5e-6)
    torch.testing.assert_close(alignment_score(maps, human), spearman(maps, human) / 0.6575315343478081)


@pytest.mark.parametrize("make", [_random_maps, _tied_maps], ids=["random", "tied"])
def test_dice_equals_harmonization(make):
    maps, human = make(seed=11)
    expected = [_harmonization_dice(m, h) for m, h in zip(maps.numpy(), human.numpy())]
    ours = dice(maps, human)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=0)
    as_harmonization = [_harmonization_dice(m, h, dtype=np.float32) for m, h in zip(maps.numpy(), human.numpy())]
    np.testing.assert_allclose(ours.numpy(), as_harmonization, rtol=1e-6, atol=0)
    # another share: top 25% binarises at the 75th percentile
    expected_quarter = [_harmonization_dice(m, h, percentile=25) for m, h in zip(maps.numpy(), human.numpy())]
    np.testing.assert_allclose(dice(maps, human, top=0.25).numpy(), expected_quarter, rtol=1e-12, atol=0)


def test_dice_threshold_is_numpys_interpolated_percentile_exactly():
    # float64 maps go through float32 as in Harmonization; values crowded near the 90th percentile test
    # that the threshold is numpy's to the last bit (a pixel equal to it must stay out)
    generator = np.random.default_rng(0)
    maps = np.round(generator.random((6, 31, 17)) * 50) / 50 + generator.random((6, 31, 17)) * 1e-7
    human = generator.random((6, 31, 17))
    expected = [_harmonization_dice(m, h) for m, h in zip(maps, human)]
    np.testing.assert_allclose(dice(maps, human).numpy(), expected, rtol=1e-12, atol=0)


def test_dice_hand_computed():
    # 10 pixels each; the 90th percentile of 0..9 is 8.1, so only the 9 is kept
    maps = torch.arange(10.0).reshape(1, 2, 5)
    human = torch.arange(10.0).reshape(1, 2, 5)
    assert dice(maps, human).item() == pytest.approx(2 / (2 + 1e-9))
    assert dice(maps, human.flip(-1).flip(-2)).item() == 0.0
    # top 30%: kept pixels are 7, 8, 9 of the map and 7, 8, 9 of the human map mapped to pixels 0, 1, 2
    reversed_human = human.flatten().flip(0).reshape(1, 2, 5)
    assert dice(maps, reversed_human, top=0.3).item() == 0.0
    shifted = torch.roll(maps.flatten(), 1).reshape(1, 2, 5)  # its top three pixels are 8, 9, 0 of the map's grid
    assert dice(maps, shifted, top=0.3).item() == pytest.approx(2 * 2 / (6 + 1e-9))
    # a constant map has no pixel strictly above its percentile: an empty mask, Dice 0
    assert dice(torch.zeros(1, 2, 5), human).item() == 0.0


@pytest.mark.parametrize("make", [_random_maps, _tied_maps], ids=["random", "tied"])
def test_ssim_equals_skimage_on_min_max_normalised_maps(make):
    maps, human = make(seed=13)
    maps = maps * 3 - 1  # not in [0, 1]: the metric normalises
    expected = [
        structural_similarity(_normalised(m), _normalised(h), data_range=1.0)
        for m, h in zip(maps.numpy(), human.numpy())
    ]
    ours = ssim(maps, human)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)


def test_ssim_of_identical_maps_is_one_and_constant_map_is_defined():
    maps, human = _random_maps(seed=17, batch=3)
    assert ssim(maps, maps * 5 + 2).numpy() == pytest.approx(np.ones(3), abs=1e-12)
    maps[0] = 0.25
    expected = structural_similarity(np.zeros((24, 20)), _normalised(human[0].numpy()), data_range=1.0)
    assert ssim(maps, human)[0].item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", [spearman, dice, ssim, alignment_score, constant_maps])
def test_alignment_metrics_refuse_bad_input(metric):
    maps, human = _random_maps(seed=19)
    with pytest.raises(InvalidParameterError, match="same size"):
        metric(maps, human[:, :-1])
    with pytest.raises(InvalidParameterError, match="same size"):
        metric(maps[0], human[0])
    maps[2, 0, 0] = float("nan")
    with pytest.raises(InvalidParameterError, match="NaN or infinite values in 1 of 4 images.*image 2"):
        metric(maps, human)


def test_ssim_and_dice_parameter_errors():
    maps, human = _random_maps(seed=23, size=(6, 9))
    with pytest.raises(InvalidParameterError, match="7 x 7"):
        ssim(maps, human)
    for top in (0, 1, 1.5, True, "0.1"):
        with pytest.raises(InvalidParameterError, match="top must be"):
            dice(maps, human, top=top)


def test_constant_maps_nan_reach_compare_scores_counted():
    from xaikit.stats import compare_scores

    maps, human = _random_maps(seed=29, batch=6)
    treated = maps + 0.5 * human
    maps[4] = 0.0
    with pytest.warns(ConstantMapWarning, match="1 of 6"):
        baseline_scores = spearman(maps, human)
    with pytest.raises(InvalidParameterError, match="NaN"):
        compare_scores(baseline_scores, spearman(treated, human))
    result = compare_scores(baseline_scores, spearman(treated, human), nan="omit")
    assert (result.n, result.n_omitted) == (5, 1)
