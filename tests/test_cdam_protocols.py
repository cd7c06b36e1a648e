"""CDAM benchmarks (fidelity, box sensitivity, class discrimination) and the X_val / X_multi selections.

Known answers come from a linear model that reads only known pixels: class 1 is ten times the mean
brightness of REGION, class 2 ten times that of OTHER_REGION (in [0, 1] image space), class 0 is 0.
With black replacement every curve and correlation can be written down by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_vit
from paper_fixtures import write_imagenet_folder
from torch import nn

from xaikit import upsample
from xaikit.data.imagenet import (
    check_imagenet_val,
    load_real_labels,
    sample_imagenet_val,
    sample_x_val,
    same_object_by_name,
    select_x_multi,
)
from xaikit.errors import InvalidParameterError
from xaikit.protocols import BoxSensitivity, ClassDiscrimination, Fidelity, PerturbationEngine, gaussian_blur
from xaikit.protocols.cdam import DEFAULT_BOX_SIZES, box_sums, pearson

SIZE = 16
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
REGION = (slice(6, 14), slice(5, 13))  # 8 x 8 = 64 pixels, read by class 1
OTHER_REGION = (slice(0, 4), slice(0, 16))  # 4 x 16 = 64 pixels, read by class 2
SMALL_BOXES = dict(sizes=(2, 4, 6), reference_size=SIZE, n_boxes=50)  # box sides in pixels on 16 px images


class MaskModel(nn.Module):
    """Logits [0, 10 * mean brightness of REGION, 10 * mean brightness of OTHER_REGION]; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pixels = x * self.std + self.mean
        one = 10 * pixels[:, :, REGION[0], REGION[1]].mean((1, 2, 3))
        two = 10 * pixels[:, :, OTHER_REGION[0], OTHER_REGION[1]].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(one), one, two], 1)


class ConstantModel(nn.Module):
    """The logit of class 1 is 12 whatever the image."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 12.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 2) + 0 * x.mean((1, 2, 3))[:, None]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def mask_images(count: int, seed: int = 0) -> torch.Tensor:
    """Normalised images: both regions white, the rest random and dim."""
    pixels = 0.3 * torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    pixels[:, :, REGION[0], REGION[1]] = 1.0
    pixels[:, :, OTHER_REGION[0], OTHER_REGION[1]] = 1.0
    return normalise(pixels)


def region_map(count: int, region=REGION) -> torch.Tensor:
    maps = torch.zeros(count, SIZE, SIZE)
    maps[:, region[0], region[1]] = 1.0
    return maps


@pytest.fixture
def model():
    return MaskModel().eval()


def black(cls, model, **settings):
    """A protocol replacing pixels by black (0 in [0, 1] space), where the answers are exact."""
    return cls(model, mean=MEAN, std=STD, replacement=0.0, **settings)


# -- fidelity ----------------------------------------------------------------------------------------


def test_fidelity_curves_and_areas_of_the_exact_map_and_its_inverse(model):
    images = mask_images(3)
    result = black(Fidelity, model)(images, 1, region_map(3))
    # step 0.05 of 256 pixels: int(12.8) = 12 pixels a step, range(0, 256, 12) -> 22 steps
    counts = np.arange(0, 256, 12)
    assert result.counts.tolist() == counts.tolist()
    x = 100 * counts / 256
    torch.testing.assert_close(result.x, torch.from_numpy(x))
    # MIF removes the 64 region pixels first; LIF removes the 192 others first
    mif = 10 * (1 - np.minimum(counts, 64) / 64)
    lif = 10 * (1 - np.maximum(counts - 192, 0) / 64)
    for b in range(3):
        torch.testing.assert_close(result.mif[b], torch.from_numpy(mif), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.lif[b], torch.from_numpy(lif), atol=1e-5, rtol=0)
    a_mif, a_lif = np.trapezoid(mif, x), np.trapezoid(lif, x)
    assert result.a_mif == pytest.approx(a_mif, abs=1e-3) and result.a_lif == pytest.approx(a_lif, abs=1e-3)
    assert result.summary()["A_LIF-MIF"] == pytest.approx(a_lif - a_mif, abs=1e-3)
    torch.testing.assert_close(result.clean_logit, torch.full((3,), 10.0, dtype=torch.float64), atol=1e-5, rtol=0)
    # the inverse map swaps the two orders: its A_LIF-MIF is the negative
    inverse = black(Fidelity, model)(images, 1, 1 - region_map(3))
    torch.testing.assert_close(inverse.mif, result.lif)
    torch.testing.assert_close(inverse.lif, result.mif)
    assert inverse.a_lif_minus_mif == pytest.approx(-result.a_lif_minus_mif)


def test_fidelity_areas_are_on_the_papers_scale():
    # x in percent of pixels, the raw logit on y: a logit of 12 that nothing moves has area 12 * x[-1]
    # (about 1200, the magnitude of the paper's A_LIF), not 100 or 1 as with normalised curves
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    result = Fidelity(ConstantModel().eval(), mean=MEAN, std=STD)(images, 1, torch.rand(2, SIZE, SIZE))
    assert float(result.x[-1]) == pytest.approx(100 * 252 / 256)
    assert result.a_mif == pytest.approx(12 * 100 * 252 / 256) and result.a_lif == pytest.approx(result.a_mif)
    assert result.a_lif_minus_mif == pytest.approx(0.0)


def test_fidelity_constant_and_random_maps_score_near_zero(model):
    images = mask_images(16)
    fidelity = black(Fidelity, model)
    exact = fidelity(images, 1, region_map(16)).a_lif_minus_mif
    # a constant map removes the same pixels (raster order) in both orders: exactly 0
    constant = fidelity(images, 1, torch.full((16, SIZE, SIZE), 0.5))
    assert torch.equal(constant.mif, constant.lif) and constant.a_lif_minus_mif == 0.0
    random = fidelity(images, 1, torch.rand(16, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    assert abs(random.a_lif_minus_mif) < 0.15 * exact


def reference_fidelity(model, images, pixel_maps, counts, replacement, most_first: bool) -> torch.Tensor:
    """Per image and step: rank the pixels (stable, raster order for ties), replace the first k, read logit 1."""
    rows = []
    for image, fill, vis in zip(images, replacement, pixel_maps):
        order = torch.sort(vis.flatten(), descending=most_first, stable=True).indices
        logits = []
        for k in counts:
            mask = torch.zeros(SIZE * SIZE, dtype=torch.bool)
            mask[order[:k]] = True
            with torch.no_grad():
                logits.append(model(torch.where(mask.view(1, SIZE, SIZE), fill, image)[None])[0, 1])
        rows.append(torch.stack(logits))
    return torch.stack(rows).double()


def test_fidelity_blurs_with_sigma_scaled_to_the_image_and_matches_a_per_image_loop(model):
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    images = mask_images(2)
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    result = Fidelity(model, mean=MEAN, std=STD)(images, 1, maps)
    # sigma 14 at 224 px is 1 px at 16 px; kernel 2 * ceil(3) + 1 = 7 taps
    blurred = tv_blur(images, kernel_size=[7, 7], sigma=[1.0, 1.0])
    counts = result.counts.tolist()
    torch.testing.assert_close(result.mif, reference_fidelity(model, images, maps, counts, blurred, True), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.lif, reference_fidelity(model, images, maps, counts, blurred, False), atol=1e-5, rtol=0)
    # blurring in [0, 1] pixel space gives the same curves (the blur is linear, weights sum to 1)
    pixel_space = Fidelity(model, mean=MEAN, std=STD, blur_space="pixel")(images, 1, maps)
    torch.testing.assert_close(pixel_space.mif, result.mif, atol=1e-4, rtol=0)
    # a kernel and sigma of one's own
    wide = Fidelity(model, mean=MEAN, std=STD, sigma=28.0, kernel_size=5)(images, 1, maps)
    wide_blur = tv_blur(images, kernel_size=[5, 5], sigma=[2.0, 2.0])
    torch.testing.assert_close(wide.mif, reference_fidelity(model, images, maps, counts, wide_blur, True), atol=1e-5, rtol=0)


def test_token_maps_are_upsampled_by_nearest_neighbour_unless_told(model):
    images = mask_images(2)
    tokens = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    fidelity = black(Fidelity, model)
    from_tokens = fidelity(images, 1, tokens)
    from_pixels = fidelity(images, 1, upsample(tokens, SIZE, mode="nearest"))
    assert torch.equal(from_tokens.mif, from_pixels.mif)
    # the protocol's mode applies even on an engine shared with a bilinear protocol
    bilinear = black(Fidelity, model, upsample_mode="bilinear", engine=fidelity.engine)
    assert torch.equal(bilinear(images, 1, tokens).mif, fidelity(images, 1, upsample(tokens, SIZE)).mif)
    assert not torch.equal(bilinear(images, 1, tokens).mif, from_tokens.mif)


def test_fidelity_targets_default_to_the_prediction_and_maps_may_be_a_callable(model):
    images = mask_images(2)  # class 1 and class 2 both read 10: argmax picks class 1
    seen = []

    def explain(batch, classes):
        seen.append(classes.tolist())
        return region_map(len(batch))

    predicted = black(Fidelity, model)(images, None, explain)
    assert seen == [[1, 1]] and predicted.targets.tolist() == [1, 1]
    other = black(Fidelity, model)(images, [2, 2], explain)
    assert seen[-1] == [2, 2] and other.targets.tolist() == [2, 2]
    # the region map says nothing about class 2: its curves only move when OTHER_REGION goes
    assert other.a_lif_minus_mif < 0.5 * predicted.a_lif_minus_mif


def test_fidelity_steps_can_be_explicit_fractions(model):
    result = black(Fidelity, model, fractions=(0.0, 0.25, 0.5))(mask_images(1), 1, region_map(1))
    assert result.counts.tolist() == [0, 64, 128]
    torch.testing.assert_close(result.mif[0], torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_fidelity_forwards_copies_in_large_batches(model):
    images = mask_images(4)
    fidelity = black(Fidelity, model, batch_size=1000)
    fidelity(images, 1, torch.rand(4, SIZE, SIZE))
    # one clean forward, then 4 images x 21 perturbed steps per order in one batch each
    assert model.calls == 3 and fidelity.engine.forwarded == 4 + 2 * 4 * 21


# -- box sensitivity ---------------------------------------------------------------------------------


def test_box_correlation_is_one_for_the_exact_map_and_minus_one_for_its_inverse(model):
    images = mask_images(3)
    box = black(BoxSensitivity, model, **SMALL_BOXES)
    exact = box(images, 1, region_map(3))
    assert exact.sizes.tolist() == [2, 4, 6]
    torch.testing.assert_close(exact.x, torch.tensor([12.5, 25.0, 37.5], dtype=torch.float64))
    # black boxes on a white region: the drop is 10 / 64 per region pixel covered, the map's box sum counts them
    top, left, side = exact.boxes.unbind(-1)
    rows = (torch.clamp(top + side, max=14) - torch.clamp(top, min=6)).clamp(min=0)
    cols = (torch.clamp(left + side, max=13) - torch.clamp(left, min=5)).clamp(min=0)
    torch.testing.assert_close(exact.importance, (rows * cols).double())
    torch.testing.assert_close(exact.drop, (rows * cols).double() * 10 / 64, atol=1e-5, rtol=0)
    torch.testing.assert_close(exact.r_per_image, torch.ones(3, 3, dtype=torch.float64))
    assert not exact.undefined.any()
    assert exact.a_box == pytest.approx(37.5 - 12.5) and exact.summary() == {"A_box": exact.a_box}
    # the inverse map's box sum is side^2 minus the region pixels: r = -1
    inverse = box(images, 1, 1 - region_map(3))
    torch.testing.assert_close(inverse.r_per_image, -torch.ones(3, 3, dtype=torch.float64))
    assert inverse.a_box == pytest.approx(-exact.a_box)


def test_box_correlation_with_blur_ranks_the_exact_map_above_its_inverse(model):
    images = mask_images(3)
    box = BoxSensitivity(model, mean=MEAN, std=STD, **SMALL_BOXES)
    exact, inverse = box(images, 1, region_map(3)), box(images, 1, 1 - region_map(3))
    assert bool((exact.r_per_image > 0.9).all()) and bool((inverse.r_per_image < -0.9).all())
    assert exact.a_box > 0.9 * 25 and inverse.a_box < -0.9 * 25


def test_constant_map_gives_undefined_r_counted_as_zero(model):
    images = mask_images(2)
    box = black(BoxSensitivity, model, **SMALL_BOXES)
    constant = box(images, 1, torch.full((2, SIZE, SIZE), 0.3))
    assert bool(constant.undefined.all())
    assert torch.equal(constant.r_per_image, torch.zeros(2, 3, dtype=torch.float64))
    assert constant.a_box == 0.0 and torch.equal(constant.f_box, torch.zeros(3, dtype=torch.float64))
    # variation below tolerance x magnitude (rounding noise) counts as constant too, not as a signal
    noisy = torch.full((2, SIZE, SIZE), 0.3, dtype=torch.float64)
    noisy += 1e-9 * torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert bool(box(images, 1, noisy).undefined.all())
    strict = black(BoxSensitivity, model, tolerance=0.0, **SMALL_BOXES)(images, 1, noisy)
    assert not strict.undefined.any() and bool((strict.r_per_image != 0).all())
    # one image constant, one exact: the curve averages 0 and 1
    mixed = torch.stack([torch.full((SIZE, SIZE), 0.3), region_map(1)[0]])
    result = box(images, 1, mixed)
    assert result.undefined.tolist() == [[True] * 3, [False] * 3]
    torch.testing.assert_close(result.f_box, torch.full((3,), 0.5, dtype=torch.float64))
    # a model that no box moves: r is undefined on the model's side, also 0
    still = BoxSensitivity(ConstantModel().eval(), mean=MEAN, std=STD, **SMALL_BOXES)(images, 1, region_map(2))
    assert bool(still.undefined.all()) and still.a_box == 0.0


def test_random_map_correlation_is_near_zero(model):
    images = mask_images(8)
    box = black(BoxSensitivity, model, sizes=(2, 4, 6), reference_size=SIZE, n_boxes=100)
    random = box(images, 1, torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(4)))
    exact = box(images, 1, region_map(8))
    assert float(random.f_box.abs().max()) < 0.3
    assert abs(random.a_box) < 0.25 * exact.a_box


def test_box_forwards_are_batched_and_shared_between_maps(model):
    images = mask_images(3)
    box = black(BoxSensitivity, model, batch_size=64, **SMALL_BOXES)
    box(images, 1, region_map(3))
    # one clean forward, then 3 images x 3 sizes x 50 boxes = 450 copies in chunks of 64
    assert model.calls == 1 + 8 and box.engine.forwarded == 3 + 450
    # the boxes do not depend on the map: another method's maps reuse every forward
    box(images, 1, torch.rand(3, SIZE, SIZE))
    assert box.engine.forwarded == 3 + 450


def test_box_sizes_scale_with_the_image_and_defaults_are_the_stated_ones(model):
    assert DEFAULT_BOX_SIZES == tuple(range(8, 113, 8))
    box = BoxSensitivity(model, mean=MEAN, std=STD)
    assert box.sizes == DEFAULT_BOX_SIZES and box.n_boxes == 100 and box.seed == 0
    assert box.pixel_sizes(224, 224) == DEFAULT_BOX_SIZES
    assert box.pixel_sizes(32, 32) == (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)
    assert box.pixel_sizes(32, 48) == box.pixel_sizes(32, 32)  # the shorter side


def test_box_sums_and_pearson_helpers():
    maps = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    boxes = torch.tensor([[[0, 0, 2], [1, 1, 3], [2, 3, 1]]])
    assert box_sums(maps, boxes).tolist() == [[0 + 1 + 4 + 5, float(maps[0, 1:4, 1:4].sum()), 11.0]]
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 4.0, 5.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    r, undefined = pearson(a, b)
    assert r[0].item() == pytest.approx(float(np.corrcoef(a[0], b[0])[0, 1]))
    assert undefined.tolist() == [False, True] and r[1].item() == 0.0


# -- class discrimination ----------------------------------------------------------------------------


def test_class_discrimination_known_answer(model):
    images = mask_images(2)
    test = black(ClassDiscrimination, model, **SMALL_BOXES)
    result = test(images, 1, 2, region_map(2), region_map(2, OTHER_REGION))
    counts = result.fidelity.counts.numpy()
    # c' map: OTHER_REGION first or last, then the other 192 pixels (rows 4..15) in raster order, and only REGION
    # moves the logit of c
    rows, cols = np.meshgrid(np.arange(6, 14), np.arange(5, 13), indexing="ij")
    raster = ((rows - 4) * 16 + cols).ravel()  # positions of REGION's pixels in rows 4..15's raster order

    def logit_after(removed):
        return 10 * (1 - (raster[None, :] < np.asarray(removed)[:, None]).sum(1) / 64)

    other_mif = logit_after(np.maximum(counts - 64, 0))
    other_lif = logit_after(np.minimum(counts, 192))
    for b in range(2):
        torch.testing.assert_close(result.other_fidelity.mif[b], torch.from_numpy(other_mif), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.other_fidelity.lif[b], torch.from_numpy(other_lif), atol=1e-5, rtol=0)
    x = result.fidelity.x.numpy()
    mif, lif = 10 * (1 - np.minimum(counts, 64) / 64), 10 * (1 - np.maximum(counts - 192, 0) / 64)
    expected = np.trapezoid((lif - mif) - (other_lif - other_mif), x)
    assert result.a_delta_lif_minus_mif == pytest.approx(expected, abs=1e-3)
    assert result.a_delta_lif_minus_mif == pytest.approx(
        result.fidelity.a_lif_minus_mif - result.other_fidelity.a_lif_minus_mif
    )
    # every curve reads c: the c' runs too
    assert result.other_fidelity.targets.tolist() == [1, 1] and result.other_box.targets.tolist() == [1, 1]
    # box: r = 1 for c's map; c's map and c''s map never overlap, so r(c') <= 0 wherever defined
    torch.testing.assert_close(result.box.r_per_image, torch.ones(2, 3, dtype=torch.float64))
    assert bool((result.other_box.r_per_image <= 0).all())
    assert result.a_delta_box == pytest.approx(result.box.a_box - result.other_box.a_box)
    assert result.a_delta_box > result.box.a_box  # 25 minus a negative area
    assert set(result.summary()) == {"A_Δ(LIF-MIF)", "A_Δbox"}


def test_class_independent_maps_score_zero_and_cost_no_second_forward(model):
    images = mask_images(2)
    test = black(ClassDiscrimination, model, **SMALL_BOXES)
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    forwarded = []

    def same_map(batch, classes):
        forwarded.append(test.engine.forwarded)
        return maps

    result = test(images, [1, 1], [2, 2], same_map)  # one callable explains both classes
    assert result.a_delta_lif_minus_mif == 0.0 and result.a_delta_box == 0.0
    # both maps were asked for before any perturbed forward; the c' runs came from the cache
    steps = len(result.fidelity.counts) - 1
    assert test.engine.forwarded == 2 + 2 * 2 * steps + 2 * 3 * 50


def test_an_explainer_makes_both_maps_on_a_vit():
    from xaikit import get_method

    vit = small_vit("plain")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    test = ClassDiscrimination(vit, step=0.25, sizes=(16, 32), reference_size=64, n_boxes=5)
    result = test(images, [3, 4], [5, 6], get_method("gae")(vit))
    assert result.delta_curve.shape == (2, 4) and result.delta_box.shape == (2, 2)
    assert result.fidelity.targets.tolist() == [3, 4] and result.other_fidelity.targets.tolist() == [3, 4]


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_settings_and_data_are_refused(model):
    images, maps = mask_images(2), region_map(2)
    fidelity = black(Fidelity, model)
    discrimination = black(ClassDiscrimination, model, **SMALL_BOXES)
    cases = [
        (lambda: Fidelity(model, mean=MEAN, std=STD, step=0.0), "step"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, step=1.5), "step"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, fractions=(0.0,)), "at least two"),
        (lambda: black(Fidelity, model, fractions=(0.0, 0.001, 0.002))(images, 1, maps), "repeated pixel counts"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, sigma=0), "sigma"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, kernel_size=4), "kernel_size"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, blur_space="lab"), "blur_space"),
        (lambda: Fidelity(model, blur_space="pixel"), "mean= and std="),
        (lambda: Fidelity(model, mean=MEAN, std=STD, replacement="mean"), "replacement"),
        (lambda: Fidelity(model, mean=MEAN, std=STD, upsample_mode="area"), "upsampling mode"),
        (lambda: Fidelity(model, engine=PerturbationEngine(ConstantModel().eval())), "another model"),
        (lambda: fidelity(images, lambda logits: logits[:, 1], maps), "not a score callable"),
        (lambda: fidelity(images, [1, 7], maps), "out of range"),
        (lambda: fidelity(images, 1, maps[:1]), "1 maps for 2 images"),
        (lambda: BoxSensitivity(model, mean=MEAN, std=STD, sizes=(8, 4)), "strictly increasing"),
        (lambda: BoxSensitivity(model, mean=MEAN, std=STD, sizes=(0,)), "box sides"),
        (lambda: BoxSensitivity(model, mean=MEAN, std=STD, sizes=(300,)), "box sides"),
        (lambda: BoxSensitivity(model, mean=MEAN, std=STD, n_boxes=2), "at least 3 boxes"),
        (lambda: BoxSensitivity(model, mean=MEAN, std=STD, tolerance=-1), "tolerance"),
        (lambda: discrimination(images, [1, 2], [2, 2], maps, maps), "equal targets for images \\[1\\]"),
        (lambda: discrimination(images, None, 2, maps, maps), "both classes"),
        (lambda: discrimination(images, 1, 2, maps), "other_maps"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidParameterError, match=message):
            call()


# -- X_val and X_multi -------------------------------------------------------------------------------


def set_original_label(root, number: int, label: int) -> None:
    """Give validation file `number` another original label in val.txt."""
    path = root / "val.txt"
    lines = path.read_text().splitlines()
    lines[number - 1] = f"ILSVRC2012_val_{number:08d}.JPEG {label}"
    path.write_text("\n".join(lines) + "\n")


def test_x_val_is_the_seeded_sample_by_path(tmp_path):
    root = write_imagenet_folder(tmp_path / "val", [1, 2, 3, 5, 8, 13, 21])
    selection = sample_x_val(4, seed=3, root=root)
    loaded = sample_imagenet_val(4, 3, root=root)
    assert selection.files == loaded.files and len(selection) == 4
    assert selection.paths == [root / "images" / f for f in selection.files] and all(p.is_file() for p in selection.paths)
    assert selection.labels == loaded.labels and selection.real_labels is None and selection.classes is None
    assert [image.size for image in selection.load_images()] == [(8, 6)] * 4
    assert sample_x_val(4, seed=4, root=root).files != selection.files
    real = sample_x_val(3, seed=0, root=root, labels="real")  # file 1 has no ReaL label: never drawn
    assert "ILSVRC2012_val_00000001.JPEG" not in real.files and all(real.real_labels)
    with pytest.raises(InvalidParameterError, match="cannot sample 8 images"):
        sample_x_val(8, root=root)


def test_x_multi_keeps_two_object_images_and_names_both_classes(tmp_path):
    real = load_real_labels()
    # the ReaL sets these files have (timm's copy of real.json); val.txt of the fixture gives other labels
    assert real[0] == [] and real[1] == [970, 795] and real[3] == [809]  # file 1: no label; 2: alp, ski; 4: one label
    assert real[25] == [619, 526, 846] and real[150] == [681, 810, 620, 508] and real[183] == [638, 639]
    root = write_imagenet_folder(tmp_path / "val", [1, 2, 4, 26, 151, 184])
    set_original_label(root, 151, 620)  # laptop: the object the image was collected for
    check_imagenet_val(root)
    selection = select_x_multi(None, root=root)
    assert [int(f[15:23]) for f in selection.files] == [2, 26, 151]
    # c: the original label when it is a ReaL label, else the first ReaL label
    assert selection.classes == [970, 619, 620]
    # c': the first other label naming another object (151: notebook names a computer like laptop: skipped)
    assert selection.other_classes == [795, 526, 810]
    assert selection.real_labels == [(970, 795), (619, 526, 846), (681, 810, 620, 508)]
    # 184 holds two maillot classes, the same object; a rule that calls nothing the same keeps it
    everything = select_x_multi(None, root=root, same_object=lambda c, other: False)
    assert len(everything) == 4 and everything.classes[-1] == 638 and everything.other_classes[-1] == 639
    assert len(select_x_multi(None, root=root, same_object=lambda c, other: True)) == 0
    # a seeded sample of the eligible images, in file order
    two = select_x_multi(2, seed=1, root=root)
    assert len(two) == 2 and two.files == sorted(two.files) and set(two.files) <= set(selection.files)
    assert select_x_multi(2, seed=1, root=root).files == two.files
    with pytest.raises(InvalidParameterError, match="cannot select 4 images"):
        select_x_multi(4, root=root)
    with pytest.raises(InvalidParameterError, match="same_object"):
        select_x_multi(None, root=root, same_object="wordnet")


def test_same_object_rule_on_known_class_pairs():
    same = [(620, 681), (836, 837), (638, 639), (657, 744), (281, 282), (207, 208), (906, 457), (527, 620)]
    different = [(526, 664), (620, 508), (970, 795), (230, 231), (619, 846), (457, 834)]
    assert all(same_object_by_name(a, b) and same_object_by_name(b, a) for a, b in same)
    assert not any(same_object_by_name(a, b) for a, b in different)
    with pytest.raises(InvalidParameterError, match="class indices"):
        same_object_by_name(1000, 1)
