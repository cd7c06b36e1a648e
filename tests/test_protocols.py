"""Perturbation engine and protocols on cases whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import small_vit
from torch import nn

from xaikit import upsample
from xaikit.errors import InvalidParameterError
from xaikit.imaging import mean_std
from xaikit.metrics import aopc, lodds, perturbation_auc
from xaikit.protocols import (
    BoxSchedule,
    FractionSchedule,
    MaskSchedule,
    Perturbation,
    PerturbationEngine,
    Readout,
    gaussian_blur,
    throughput,
)

SIZE = 16
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
# The toy model reads only this 8x8 block (64 of 256 pixels, a quarter of the image).
REGION = (slice(6, 14), slice(5, 13))


class RegionModel(nn.Module):
    """Class 1 wins while the mean brightness of REGION, in [0, 1] image space, exceeds 0.5; class 0 is the rest.

    Counts its forward calls and the images it sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pixels = x * self.std + self.mean
        brightness = pixels[:, :, REGION[0], REGION[1]].mean((1, 2, 3))
        one = self.scale * (brightness - 0.5)
        return torch.stack([torch.zeros_like(one), one, -one], 1)


def region_images(count: int, seed: int = 0) -> torch.Tensor:
    """Normalised images: REGION white, the rest random and dim."""
    generator = torch.Generator().manual_seed(seed)
    pixels = 0.3 * torch.rand(count, 3, SIZE, SIZE, generator=generator)
    pixels[:, :, REGION[0], REGION[1]] = 1.0
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def perfect_maps(count: int) -> torch.Tensor:
    maps = torch.zeros(count, SIZE, SIZE)
    maps[:, REGION[0], REGION[1]] = 1.0
    return maps


def protocol(model, **settings) -> Perturbation:
    return Perturbation(model, mean=MEAN, std=STD, **settings)


@pytest.fixture
def model():
    return RegionModel().eval()


# -- known answers ---------------------------------------------------------------------------------


def test_perfect_and_inverted_maps_have_the_computed_curves(model):
    images, labels = region_images(4), torch.ones(4, dtype=torch.long)
    perfect, inverted = perfect_maps(4), 1 - perfect_maps(4)
    positive = protocol(model, order="positive")
    # Positive order, perfect map: 25 of the 64 region pixels go at 10 %, 51 at 20 %: wrong from 20 % on.
    result = positive(images, labels, perfect)
    assert result.accuracy.tolist() == [1, 1] + [0] * 8
    assert result.auc == pytest.approx(15.0)
    # Inverted map: the region is reached after 75 %; at 90 % 38 of its 64 pixels are gone.
    result = positive(images, labels, inverted)
    assert result.accuracy.tolist() == [1] * 9 + [0]
    assert result.auc == pytest.approx(85.0)
    # The negative order reverses both.
    negative = protocol(model, order="negative")
    assert negative(images, labels, perfect).accuracy.tolist() == [1] * 9 + [0]
    assert negative(images, labels, inverted).accuracy.tolist() == [1, 1] + [0] * 8


def test_random_map_lies_between_perfect_and_inverted(model):
    images, labels = region_images(8), torch.ones(8, dtype=torch.long)
    random_maps = torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for order, sign in (("positive", 1), ("negative", -1)):
        test = protocol(model, order=order)
        perfect = test(images, labels, perfect_maps(8))
        inverted = test(images, labels, 1 - perfect_maps(8))
        random = test(images, labels, random_maps)
        assert sign * perfect.auc < sign * random.auc < sign * inverted.auc
        assert sign * perfect.aopc > sign * random.aopc > sign * inverted.aopc
        assert sign * perfect.lodds < sign * random.lodds < sign * inverted.lodds


def test_constant_map_ties_go_in_raster_order_for_both_orders(model):
    images, labels = region_images(2), torch.ones(2, dtype=torch.long)
    constant = torch.full((2, SIZE, SIZE), 0.3)
    positive = protocol(model, order="positive")(images, labels, constant)
    negative = protocol(model, order="negative")(images, labels, constant)
    assert torch.equal(positive.correct, negative.correct)
    assert torch.equal(positive.probability, negative.probability)
    # Ties go in raster order: step k removes exactly the first floor(256 f) pixels, row by row.
    bound = FractionSchedule().bind(upsample(constant, SIZE), 2, (SIZE, SIZE), torch.device("cpu"))
    removed = bound.masks(torch.zeros(10, dtype=torch.long), torch.arange(10))
    for step, k in enumerate(int(256 * f) for f in FractionSchedule().fractions):
        assert removed[step].flatten().nonzero().flatten().tolist() == list(range(k))


def test_aopc_and_lodds_follow_the_probability_of_the_predicted_class(model):
    images, labels = region_images(3), torch.tensor([1, 0, 2])  # the prediction is 1 for all: labels do not matter
    result = protocol(model)(images, labels, perfect_maps(3))
    assert result.predicted.tolist() == [1, 1, 1]
    assert result.correct[:, 0].tolist() == [True, False, False]
    expected_aopc = (result.clean_probability[:, None] - result.probability[:, 1:]).mean(1)
    torch.testing.assert_close(result.aopc_per_image, expected_aopc)
    expected_lodds = (result.probability[:, 1:].log() - result.clean_probability.log()[:, None]).mean(1)
    torch.testing.assert_close(result.lodds_per_image, expected_lodds)
    assert result.aopc == pytest.approx(float(expected_aopc.mean()))
    # step 0 is the clean image
    torch.testing.assert_close(result.probability[:, 0], result.clean_probability)


def test_metric_functions_on_hand_computed_values():
    fractions = [0.0, 0.1, 0.2, 0.3]
    curve = torch.tensor([[0.5, 1.0, 0.0, 0.0]])
    assert perturbation_auc(fractions, curve).item() == pytest.approx(100 * (0.075 + 0.05))
    assert perturbation_auc(fractions, curve, "trapezoid_start_at_one").item() == pytest.approx(100 * (0.1 + 0.05))
    assert perturbation_auc(fractions, curve, "mean").item() == pytest.approx(37.5)
    assert aopc(torch.tensor([0.8]), torch.tensor([[0.6, 0.4]])).item() == pytest.approx(0.3)
    expected = (math.log(0.6 / 0.8) + math.log(0.4 / 0.8)) / 2
    assert lodds(torch.tensor([0.8]).log(), torch.tensor([[0.6, 0.4]]).log()).item() == pytest.approx(expected)
    with pytest.raises(InvalidParameterError, match="AUC convention"):
        perturbation_auc(fractions, curve, "simpson")


def test_auc_convention_is_a_setting(model):
    images, labels = region_images(2), torch.ones(2, dtype=torch.long)
    maps = perfect_maps(2)
    assert protocol(model, auc="mean")(images, labels, maps).auc == pytest.approx(20.0)
    assert protocol(model, auc="trapezoid")(images, labels, maps).auc == pytest.approx(15.0)


# -- the reference perturbation, written out per image -------------------------------------------------


def reference_perturbation(model, images, pixel_maps, fractions, negative: bool) -> torch.Tensor:
    """Chefer's stage 2 per image: topk of the map, zero in [0, 1] space, normalise, forward."""
    mean, std = mean_std(model)
    outputs = []
    for image, vis in zip(images, pixel_maps):
        vis = -vis if negative else vis
        unnormalised = image * std[0] + mean[0]
        rows = []
        for f in fractions:
            k = int(vis.numel() * f)
            _, idx = torch.topk(vis.flatten(), k)
            x = unnormalised.clone().view(3, -1)
            x[:, idx] = 0
            with torch.no_grad():
                rows.append(model(((x.view_as(image) - mean[0]) / std[0])[None])[0])
        outputs.append(torch.stack(rows))
    return torch.stack(outputs)


@pytest.mark.parametrize("order", ["positive", "negative"])
def test_engine_matches_the_reference_loop_on_a_vit(order):
    vit = small_vit("plain")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # pixel maps without ties: the reference's topk breaks ties in no stated order
    pixel_maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1))
    fractions = (0.0, 0.3, 0.8)
    engine = PerturbationEngine(vit, batch_size=5)
    got = engine.run(images, pixel_maps, FractionSchedule(fractions, order), readouts={"logits": "logits"})["logits"]
    expected = reference_perturbation(vit, images, pixel_maps, fractions, order == "negative")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_token_maps_are_ranked_after_bilinear_upsampling(model):
    images = region_images(2)
    token_maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    engine = PerturbationEngine(model, mean=MEAN, std=STD, cache_size=0)
    readouts = {"logits": "logits"}
    from_tokens = engine.run(images, token_maps, FractionSchedule(), readouts=readouts)["logits"]
    from_pixels = engine.run(images, upsample(token_maps, SIZE), FractionSchedule(), readouts=readouts)["logits"]
    assert torch.equal(from_tokens, from_pixels)
    nearest = PerturbationEngine(model, mean=MEAN, std=STD, upsample_mode="nearest")
    assert not torch.equal(nearest.run(images, token_maps, FractionSchedule(), readouts=readouts)["logits"], from_tokens)


# -- batching, caching, devices -----------------------------------------------------------------------


def test_copies_are_forwarded_in_large_batches_not_per_image(model):
    images, labels = region_images(5), torch.ones(5, dtype=torch.long)
    test = protocol(model, batch_size=64, fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    test(images, labels, torch.rand(5, SIZE, SIZE))
    # one clean forward, then 5 images x 9 perturbed steps = 45 copies in one batch
    assert model.calls == 2
    assert test.engine.forwarded == 5 + 45


def test_results_do_not_depend_on_batch_size(model):
    images, labels = region_images(4), torch.ones(4, dtype=torch.long)
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(2))
    small = protocol(model, batch_size=3)(images, labels, maps)
    large = protocol(model, batch_size=1000)(images, labels, maps)
    assert torch.equal(small.correct, large.correct)
    torch.testing.assert_close(small.probability, large.probability)


def test_identical_maps_are_not_recomputed(model):
    images, labels = region_images(4), torch.ones(4, dtype=torch.long)
    maps = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    predicted = protocol(model, explained_class="predicted")
    target = Perturbation(model, explained_class="target", engine=predicted.engine)
    first = predicted(images, labels, maps)
    forwarded = predicted.engine.forwarded
    # a class-independent method gives the same maps for the target class: nothing is forwarded again
    second = target(images, labels, maps)
    assert predicted.engine.forwarded == forwarded
    assert torch.equal(first.correct, second.correct)
    # duplicates within one batch are forwarded once
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    twice = torch.cat([images[:2], images[:2]])
    out = engine.run(twice, torch.cat([maps[:2], maps[:2]]), FractionSchedule(), readouts={"p": ("probability", 1)})
    assert engine.forwarded == 2 + 2 * 9
    assert torch.equal(out["p"][:2], out["p"][2:])
    # another map is new work
    before = engine.forwarded
    engine.run(images[:2], 1 - maps[:2], FractionSchedule(), readouts={"p": ("probability", 1)})
    assert engine.forwarded == before + 2 * 9


def test_cache_is_dropped_when_the_weights_change(model):
    images, maps = region_images(2), perfect_maps(2)
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    readouts = {"logit": ("logit", 1)}
    before = engine.run(images, maps, FractionSchedule(), readouts=readouts)["logit"]
    with torch.no_grad():
        model.scale.mul_(2)
    after = engine.run(images, maps, FractionSchedule(), readouts=readouts)["logit"]
    torch.testing.assert_close(after, 2 * before)


def test_cache_can_be_turned_off(model):
    images, maps = region_images(2), perfect_maps(2)
    engine = PerturbationEngine(model, mean=MEAN, std=STD, cache_size=0)
    engine.run(images, maps, FractionSchedule())
    engine.run(images, maps, FractionSchedule())
    assert engine.forwarded == 2 * 2 * 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_model_device():
    vit = small_vit("plain")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps, labels = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2])
    on_cpu = Perturbation(vit)(images, labels, maps)
    on_gpu = Perturbation(vit.cuda())(images, labels, maps)  # CPU inputs follow the model to the GPU
    assert torch.equal(on_cpu.predicted, on_gpu.predicted)
    torch.testing.assert_close(on_cpu.probability, on_gpu.probability, atol=1e-4, rtol=1e-3)
    blurred = PerturbationEngine(vit).run(
        images.cuda(), None, BoxSchedule(sizes=(16,), boxes_per_size=4), replacement=gaussian_blur, readouts={"l": ("logit", 0)}
    )
    assert blurred["l"].device.type == "cuda" and blurred["l"].shape == (3, 4)


# -- maps of the predicted or the target class ---------------------------------------------------------


def test_map_callables_get_the_explained_class(model):
    images, labels = region_images(3), torch.tensor([1, 0, 2])
    seen = []

    def explain(batch, classes):
        seen.append(classes.tolist())
        return perfect_maps(len(batch))

    predicted = protocol(model, explained_class="predicted")(images, labels, explain)
    target = protocol(model, explained_class="target")(images, labels, explain)
    assert seen == [[1, 1, 1], [1, 0, 2]]
    assert predicted.explained.tolist() == [1, 1, 1] and target.explained.tolist() == [1, 0, 2]


def test_an_explainer_can_make_the_maps():
    from xaikit import get_method

    vit = small_vit("plain")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = Perturbation(vit, explained_class="target", fractions=(0.0, 0.5))(images, [3, 4], get_method("gae")(vit))
    assert result.explained.tolist() == [3, 4]
    assert result.correct.shape == (2, 2)


# -- replacements and other schedules (the CDAM protocols) ---------------------------------------------


def test_constant_replacement_is_set_in_image_space(model):
    images = region_images(1)
    everything = MaskSchedule(torch.ones(1, SIZE, SIZE, dtype=torch.bool))
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    for value in (0.0, 0.75):
        # the whole image becomes `value`, so the region's brightness is `value`
        logit = engine.run(images, None, everything, replacement=value, readouts={"l": ("logit", 1)})["l"]
        torch.testing.assert_close(logit, torch.tensor([[20 * (value - 0.5)]]))
    per_channel = engine.run(images, None, everything, replacement=(0.0, 0.5, 1.0), readouts={"l": ("logit", 1)})["l"]
    torch.testing.assert_close(per_channel, torch.tensor([[0.0]]), atol=1e-5, rtol=0)


def test_blurred_replacement_and_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    vit = small_vit("plain")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(images)  # sigma 14 at 224 px -> 4 px at 64 px, kernel 2*12+1
    torch.testing.assert_close(blurred, tv_blur(images, kernel_size=[25, 25], sigma=[4.0, 4.0]))
    # blurring commutes with the normalisation
    mean, std = torch.tensor(0.3), torch.tensor(0.2)
    torch.testing.assert_close(gaussian_blur(images * std + mean), blurred * std + mean, atol=1e-5, rtol=0)
    everything = MaskSchedule(torch.ones(1, 64, 64, dtype=torch.bool))
    engine = PerturbationEngine(vit)
    out = engine.run(images, None, everything, replacement=gaussian_blur, readouts={"logits": "logits"})["logits"]
    with torch.no_grad():
        torch.testing.assert_close(out[:, 0], vit(blurred))


def test_box_schedule_replaces_boxes_and_reads_raw_logits(model):
    images = region_images(2)
    schedule = BoxSchedule(sizes=(2, 8), boxes_per_size=3, seed=5)
    bound = schedule.bind(None, 2, (SIZE, SIZE), torch.device("cpu"))
    masks = bound.masks(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 5, 2, 3]))
    assert masks.flatten(1).sum(1).tolist() == [4, 64, 4, 64]
    engine = PerturbationEngine(model, mean=MEAN, std=STD, batch_size=4)
    logit = engine.run(images, None, schedule, readouts={"l": ("logit", 1)})["l"]
    assert logit.shape == (2, 6)
    # Box in the region -> the logit drops by scale * (removed share of the region)
    top, left, side = bound.boxes.unbind(-1)
    rows = (torch.minimum(top + side, torch.tensor(14)) - torch.maximum(top, torch.tensor(6))).clamp(min=0)
    cols = (torch.minimum(left + side, torch.tensor(13)) - torch.maximum(left, torch.tensor(5))).clamp(min=0)
    torch.testing.assert_close(logit, 20 * (0.5 - rows * cols / 64.0))


def test_fraction_schedule_by_counts(model):
    images, maps = region_images(1), perfect_maps(1)
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    logit = engine.run(images, maps, FractionSchedule(counts=[0, 16, 32]), readouts={"l": ("logit", 1)})["l"]
    torch.testing.assert_close(logit, torch.tensor([[10.0, 5.0, 0.0]]))


# -- speed ---------------------------------------------------------------------------------------------


def test_throughput_reports_copies_per_second(model):
    figures = throughput(model, region_images(4), torch.rand(4, SIZE, SIZE), repeats=1, mean=MEAN, std=STD)
    assert figures["copies"] == 4 * 10
    assert figures["engine_per_s"] > 0 and figures["plain_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["engine_per_s"] / figures["plain_per_s"])


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_input_is_refused(model):
    images, labels, maps = region_images(2), torch.ones(2, dtype=torch.long), perfect_maps(2)
    test = protocol(model)
    nan_maps = maps.clone()
    nan_maps[1, 0, 0] = float("nan")
    cases = [
        (lambda: test(images, labels, nan_maps), "NaN"),
        (lambda: test(images, labels, maps[:1]), "1 maps for 2 images"),
        (lambda: test(images, labels, torch.rand(2, 32, 32)), "larger than the images"),
        (lambda: test(images, labels, torch.rand(2, 1, 4, 4)), "token maps"),
        (lambda: test(images[0], labels, maps), r"\(B, C, H, W\)"),
        (lambda: test(images, labels[:1], maps), "one integer ground-truth class"),
        (lambda: test(images, torch.tensor([1, 7]), maps), "out of range"),
        (lambda: protocol(model, fractions=(0.0, 0.3, 0.2)), "strictly increasing"),
        (lambda: protocol(model, fractions=(0.0, 1.5)), r"\[0, 1\]"),
        (lambda: protocol(model, fractions=()), "empty"),
        (lambda: protocol(model, fractions=(0.0,)), "perturb nothing"),
        (lambda: protocol(model, order="neg"), "order"),
        (lambda: protocol(model, explained_class="top"), "explained_class"),
        (lambda: protocol(model, auc="simpson"), "AUC convention"),
        (lambda: protocol(model, batch_size=0), "batch_size"),
        (lambda: protocol(model, replacement=2.0)(images, labels, maps), r"\[0, 1\]"),
        (lambda: protocol(model, replacement=torch.zeros(2, 3, 8, 8))(images, labels, maps), "replacement images"),
        (lambda: Perturbation(model)(images, labels, maps), "mean= and std="),
        (lambda: Perturbation(model, engine=PerturbationEngine(small_vit("plain"))), "another model"),
        (lambda: protocol(RegionModel().train())(images, labels, maps), "training mode"),
        (lambda: FractionSchedule((0.1,), counts=[1]), "not both"),
        (lambda: Readout("accuracy"), "unknown readout"),
        (lambda: Readout("probability"), "needs classes"),
        (lambda: BoxSchedule(sizes=(32,)).bind(None, 1, (SIZE, SIZE), torch.device("cpu")), "does not fit"),
        (lambda: MaskSchedule(torch.ones(2, 8, 8)).bind(None, 1, (SIZE, SIZE), torch.device("cpu")), "do not fit"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidParameterError, match=message):
            call()


def test_a_model_that_does_not_return_logits_is_refused():
    engine = PerturbationEngine(lambda x: x.mean((1, 2, 3)), mean=MEAN, std=STD)
    with pytest.raises(InvalidParameterError, match="logits"):
        engine.run(region_images(1), perfect_maps(1), FractionSchedule())
