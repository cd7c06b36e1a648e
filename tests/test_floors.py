"""Issue 14: the honest floors (the centre prior, all background) and the pictures of perturbed images."""

import numpy as np
import pytest
import torch
from conftest import SMALL_VIT_KINDS, small_vit

import xaikit
from xaikit.errors import InvalidParameterError
from xaikit.protocols import ALL_BACKGROUND, FractionSchedule, PerturbationEngine, Segmentation, all_background_stats
from xaikit.metrics import segmentation_stats


def images_for(model, batch=3, seed=1):
    h, w = model.patch_embed.img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- centre prior -------------------------------------------------------------------------------------
def test_centre_prior_is_a_centred_symmetric_gaussian_with_peak_one_without_a_forward_pass():
    model = small_vit("plain", img_size=112)  # a 7 x 7 grid: the centre is a token
    images = images_for(model, batch=4)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps = xaikit.explain(model, images, "centre_prior")
    finally:
        handle.remove()
    assert calls == []
    assert maps.shape == (4, 7, 7) and maps.dtype == torch.float32
    prior = maps[0]
    assert float(prior[3, 3]) == 1.0 and float(prior.max()) == 1.0 and bool((prior > 0).all())
    torch.testing.assert_close(prior, prior.flip(0))
    torch.testing.assert_close(prior, prior.flip(1))
    torch.testing.assert_close(prior, prior.T)  # isotropic on a square grid
    # a Gaussian of standard deviation 0.25 * 7 tokens: exp(-d^2 / (2 sigma^2)) at d tokens from the centre
    sigma = 0.25 * 7
    assert float(prior[3, 5]) == pytest.approx(np.exp(-4 / (2 * sigma**2)), rel=1e-6)
    assert float(prior[1, 5]) == pytest.approx(np.exp(-8 / (2 * sigma**2)), rel=1e-6)
    # the same map for every image and class, whatever the batch size; sigma widens it
    assert all(torch.equal(m, prior) for m in maps)
    torch.testing.assert_close(maps, xaikit.explain(model, -images, "centre_prior", targets=[1, 2, 3, 4], batch_size=3))
    wide = xaikit.explain(model, images[:1], "centre_prior", sigma=1.0)[0]
    assert float(wide[0, 0]) > float(prior[0, 0]) and float(wide[3, 3]) == 1.0


@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
def test_centre_prior_works_on_every_layout_and_grid(kind):
    model = small_vit(kind)
    maps = xaikit.explain(model, images_for(model, batch=2), "centre_prior")
    gh, gw = maps.shape[1:]
    prior = maps[0]
    # symmetric about the middle of the grid; on an even side the two middle tokens share the peak
    torch.testing.assert_close(prior, prior.flip(0))
    torch.testing.assert_close(prior, prior.flip(1))
    assert float(prior.max()) == pytest.approx(1.0) or (gh % 2 == 0 or gw % 2 == 0)
    peak = (prior == prior.max()).nonzero().float().mean(0)
    assert peak.tolist() == pytest.approx([(gh - 1) / 2, (gw - 1) / 2])
    if kind == "non_square":
        assert (gh, gw) == (3, 5)
        # isotropic: one standard deviation in tokens (0.25 x the shorter side) along both axes
        sigma = 0.25 * 3
        assert float(prior[0, 2] / prior[1, 2]) == pytest.approx(np.exp(-1 / (2 * sigma**2)), rel=1e-6)
        assert float(prior[1, 1] / prior[1, 2]) == pytest.approx(np.exp(-1 / (2 * sigma**2)), rel=1e-6)


def test_centre_prior_needs_no_class_token_and_refuses_bad_sigmas():
    pooled = small_vit("plain", class_token=False, global_pool="avg")
    assert xaikit.explain(pooled, torch.randn(1, 3, 64, 64), "centre_prior").shape == (1, 4, 4)
    assert not xaikit.get_method("centre_prior").class_specific
    for sigma in (0, -0.1, float("nan"), float("inf"), True, "0.25"):
        with pytest.raises(InvalidParameterError, match=r"sigma of method 'centre_prior' must be a finite float > 0"):
            xaikit.explain(pooled, torch.randn(1, 3, 64, 64), "centre_prior", sigma=sigma)
    with pytest.raises(InvalidParameterError, match="one integer class index per image"):
        xaikit.explain(pooled, torch.randn(2, 3, 64, 64), "centre_prior", targets=[1, 2, 3])


def test_centre_prior_segments_a_centred_object():
    model = small_vit("plain")
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, 16:48, 16:48] = 1
    maps = xaikit.explain(model, images_for(model, batch=2), "centre_prior")
    result = Segmentation()(maps, masks)
    assert not bool(result.per_image["degenerate"].any())
    floor = Segmentation.pool(all_background_stats(masks))
    assert floor.pixel_accuracy == 0.75 and result.pixel_accuracy > 0.85 and result.mean_ap > 0.95
    corner = torch.zeros_like(masks)
    corner[:, :32, :32] = 1  # the same object off the centre: the prior does worse than the background floor
    assert Segmentation()(maps, corner).pixel_accuracy < 0.75


# -- all background -------------------------------------------------------------------------------------
def test_all_background_scores_the_background_share_and_chance_ap():
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    masks[0, 2:5, 2:5] = 1  # 9 foreground pixels
    masks[1, :, :4] = 1  # 32
    stats = all_background_stats(masks)
    assert stats["correct"].tolist() == [55, 32, 64] and stats["labeled"].tolist() == [64] * 3
    assert stats["intersection"].tolist() == [[55, 0], [32, 0], [64, 0]]
    assert stats["union"].tolist() == [[64, 9], [64, 32], [64, 0]]
    assert stats["ap"].tolist() == [0.5] * 3 and stats["ap"].dtype == torch.float64
    assert not bool(stats["degenerate"].any())
    pooled = Segmentation.pool(stats)
    background = 151 / 192
    assert pooled.pixel_accuracy == pytest.approx(background)
    assert pooled.iou.tolist() == pytest.approx([background, 0.0])
    assert pooled.miou == pytest.approx(background / 2) and pooled.mean_ap == 0.5
    assert ALL_BACKGROUND == "all_background"


def test_all_background_is_what_the_protocol_gives_a_constant_map():
    masks = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size=(4, 16, 16)))
    constant = segmentation_stats(torch.full((4, 4, 4), 0.3), masks)
    floor = all_background_stats(masks)
    for key in ("correct", "labeled", "intersection", "union", "ap"):
        torch.testing.assert_close(floor[key], constant[key])
    # pools with a method's statistics, batch by batch
    both = Segmentation.pool([floor, all_background_stats(masks[:2])])
    assert len(both.per_image["ap"]) == 6


def test_all_background_refuses_bad_masks():
    with pytest.raises(InvalidParameterError, match=r"masks\[None\]"):
        all_background_stats(torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(InvalidParameterError, match="only 0 \\(background\\) and 1"):
        all_background_stats(torch.full((1, 8, 8), 2))
    with pytest.raises(InvalidParameterError, match="integer or bool"):
        all_background_stats(torch.zeros(1, 8, 8))


# -- perturbed copies ------------------------------------------------------------------------------------
def test_perturbed_images_are_the_copies_the_engine_forwards():
    model = small_vit("plain")
    images = images_for(model, batch=2)
    maps = torch.arange(16.0).reshape(1, 4, 4).expand(2, 4, 4)
    seen = []

    def recording(batch):
        seen.append(batch.clone())
        return model(batch)

    schedule = FractionSchedule([0.0, 0.25, 0.5])
    engine = PerturbationEngine(recording, mean=(0.5,) * 3, std=(0.5,) * 3, cache_size=0, batch_size=100)
    copies = engine.perturbed_images(images, maps, schedule, replacement=0.0)
    assert copies.shape == (2, 3, 3, 64, 64)
    torch.testing.assert_close(copies[:, 0], images)  # step 0 removes nothing
    black = -1.0  # 0 in [0, 1] image space, normalised with mean 0.5 and std 0.5
    removed = (copies[:, 2] == black).all(1)
    assert removed.float().mean().item() == pytest.approx(0.5, abs=0.01)
    engine.run(images, maps, schedule)
    forwarded = torch.cat(seen)
    for image in range(2):
        for step in (1, 2):
            assert any(torch.equal(copies[image, step], f) for f in forwarded)
