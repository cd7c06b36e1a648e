"""Protocols and metrics under hostile input (issue 13): NaN logits, edited weights, one-point curves, empty batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaikit.errors import InvalidParameterError
from xaikit.metrics import aopc, compactness, lodds, mass_inside, perturbation_auc, pointing_game, segmentation_stats
from xaikit.protocols import (
    BoxSensitivity,
    ClassDiscrimination,
    FractionSchedule,
    MaskSchedule,
    Perturbation,
    PerturbationEngine,
    Segmentation,
    pool_segmentation,
)

SIZE = 16
PIXELS = SIZE * SIZE
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
QUARTERS = (0.0, 0.25, 0.5, 0.75)  # 0, 64, 128 and 192 of the 256 pixels
SMALL_BOXES = dict(sizes=(2, 4), reference_size=SIZE, n_boxes=3)  # steps 0-2: 2x2 boxes, steps 3-5: 4x4 boxes


class LinearModel(nn.Module):
    """Fixed random logits of the flattened image, with a bias buffer."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 3 * PIXELS, generator=generator) / SIZE)
        self.register_buffer("bias", torch.tensor([0.0, 1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class NanFor(nn.Module):
    """`model`, but NaN logits for the copies of ``images[image]`` in which `changed` pixels differ from it.

    A copy's source is the image it shares the most pixels with; 0 changed pixels is the clean image.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, image: int, changed: int) -> None:
        super().__init__()
        self.model, self.images, self.image, self.changed = model, images, image, changed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        unchanged, source = (x[:, None] == self.images[None]).all(2).flatten(2).sum(2).max(1)
        hit = (source == self.image) & (PIXELS - unchanged == self.changed)
        return logits.masked_fill(hit[:, None], float("nan"))


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def random_maps(count: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def nan_model(images: torch.Tensor, image: int, changed: int) -> NanFor:
    return NanFor(LinearModel(), images, image, changed).eval()


# -- NaN logits are an error naming the images and steps -------------------------------------------


def test_perturbation_refuses_nan_logits_of_a_perturbed_copy():
    images = random_images(3)
    model = nan_model(images, image=1, changed=128)  # the copy of image 1 at fraction 0.5, step 2
    test = Perturbation(model, fractions=QUARTERS, mean=MEAN, std=STD)
    with pytest.raises(InvalidParameterError, match=r"NaN or infinite logits for image 1 at step 2 \(steps"):
        test(images, torch.tensor([0, 1, 2]), random_maps(3))


def test_perturbation_refuses_nan_logits_of_a_clean_image():
    # the case: a NaN row's top-1 class is 0, which scored clean accuracy 1.0 for label 0
    images = random_images(3)
    test = Perturbation(nan_model(images, image=2, changed=0), fractions=QUARTERS, mean=MEAN, std=STD)
    with pytest.raises(InvalidParameterError, match=r"NaN or infinite logits for image 2 unperturbed;.*dtype"):
        test(images, torch.zeros(3, dtype=torch.long), random_maps(3))
    with pytest.raises(InvalidParameterError, match="image 2 unperturbed"):  # maps of the predicted class
        test(images, torch.zeros(3, dtype=torch.long), lambda images, classes: random_maps(3))


def test_fidelity_refuses_nan_logits():
    from xaikit.protocols import Fidelity

    images = random_images(2)
    fidelity = Fidelity(nan_model(images, image=1, changed=64), step=0.25)
    with pytest.raises(InvalidParameterError, match=r"for image 1 at step 1 \(steps"):
        fidelity(images, 1, random_maps(2))
    with pytest.raises(InvalidParameterError, match="for image 0 unperturbed"):
        Fidelity(nan_model(images, image=0, changed=0), step=0.25)(images, None, random_maps(2))


def test_box_sensitivity_refuses_nan_logits_at_every_step_that_gave_them():
    images = random_images(2)
    box = BoxSensitivity(nan_model(images, image=0, changed=16), **SMALL_BOXES)  # the three 4x4 boxes of image 0
    with pytest.raises(InvalidParameterError, match=r"for image 0 at steps 3, 4, 5 \(steps"):
        box(images, 1, random_maps(2))


def test_class_discrimination_refuses_nan_logits_of_its_box_runs():
    images = random_images(2)
    # 16 changed pixels: no fidelity step (0, 64, 128, 192 pixels), the 4x4 boxes of image 1
    test = ClassDiscrimination(nan_model(images, image=1, changed=16), step=0.25, **SMALL_BOXES)
    with pytest.raises(InvalidParameterError, match=r"for image 1 at steps 3, 4, 5 \(steps"):
        test(images, [1, 1], [2, 2], random_maps(2), random_maps(2, seed=2))


def test_engine_names_the_callers_image_when_others_come_from_the_cache():
    images = random_images(3)
    engine = PerturbationEngine(nan_model(images, image=2, changed=64), mean=MEAN, std=STD)
    maps, schedule = random_maps(3), FractionSchedule(QUARTERS)
    engine.run(images[:2], maps[:2], schedule, readouts={"p": ("probability", 1)})
    with pytest.raises(InvalidParameterError, match=r"for image 2 at step 1 \(steps"):
        engine.run(images, maps, schedule, readouts={"p": ("probability", 1)})
    with pytest.raises(InvalidParameterError, match="for image 2 unperturbed"):
        PerturbationEngine(nan_model(images, image=2, changed=0), mean=MEAN, std=STD).clean_logits(images)
    with pytest.raises(InvalidParameterError, match="for image 1 unperturbed"):
        PerturbationEngine(nan_model(images, image=1, changed=0), batch_size=2).forward(images)


def test_infinite_logits_are_refused_too():
    images = random_images(2)
    model = LinearModel().eval()
    with torch.no_grad():
        model.bias[0] = float("inf")
    with pytest.raises(InvalidParameterError, match="for images 0, 1 unperturbed;"):
        PerturbationEngine(model).forward(images)


# -- a cached result never outlives the weights it was computed with -----------------------------------


def scale_through_data(model):
    model.weight.data.mul_(2)


def copy_through_data(model):
    model.weight.data.copy_(-model.weight.data)


def assign_data(model):
    model.weight.data = model.weight.data * 3


def shift_buffer_through_data(model):
    model.bias.data.add_(5.0)


@pytest.mark.parametrize("edit", [scale_through_data, copy_through_data, assign_data, shift_buffer_through_data])
def test_cache_is_dropped_when_weights_change_through_data(edit):
    model = LinearModel().eval()
    images, maps, schedule = random_images(2), random_maps(2), FractionSchedule(QUARTERS)
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    before = engine.run(images, maps, schedule)["logits"]
    edit(model)
    after = engine.run(images, maps, schedule)["logits"]
    fresh = PerturbationEngine(model, mean=MEAN, std=STD, cache_size=0).run(images, maps, schedule)["logits"]
    assert not torch.equal(fresh, before)
    assert torch.equal(after, fresh)
    assert torch.equal(engine.clean_logits(images), model(images).detach())


def test_a_function_wrapping_a_module_is_not_cached():
    model = LinearModel().eval()
    images, maps, schedule = random_images(2), random_maps(2), FractionSchedule(QUARTERS)
    engine = PerturbationEngine(lambda x: model(x), mean=MEAN, std=STD)
    before = engine.run(images, maps, schedule)["logits"]
    with torch.no_grad():
        model.weight.mul_(2)
    after = engine.run(images, maps, schedule)["logits"]
    fresh = PerturbationEngine(model, mean=MEAN, std=STD, cache_size=0).run(images, maps, schedule)["logits"]
    assert not torch.equal(fresh, before)
    assert torch.equal(after, fresh)
    assert not engine.caching


def test_cache_still_hits_while_the_weights_are_unchanged():
    model = LinearModel().eval()
    images, maps, schedule = random_images(2), random_maps(2), FractionSchedule(QUARTERS)
    engine = PerturbationEngine(model, mean=MEAN, std=STD)
    first = engine.run(images, maps, schedule)["logits"]
    forwarded = engine.forwarded
    assert forwarded == 2 + 2 * 3
    assert torch.equal(engine.run(images, maps, schedule)["logits"], first)
    engine.clean_logits(images)
    assert engine.forwarded == forwarded
    # after an edit the cache refills once, then hits again
    model.weight.data.mul_(2)
    engine.run(images, maps, schedule)
    assert engine.forwarded == 2 * forwarded
    engine.run(images, maps, schedule)
    assert engine.forwarded == 2 * forwarded
    assert engine.caching


def test_content_hash_sees_any_one_element_and_only_content():
    from xaikit.protocols.engine import _content_hash

    values = torch.randn(200_003, generator=torch.Generator().manual_seed(0))  # several hash blocks and a tail
    base = int(_content_hash(values))
    assert int(_content_hash(values.clone())) == base
    for position in (0, 70_000, 200_002):
        edited = values.clone()
        edited[position] = torch.nextafter(edited[position], torch.tensor(float("inf")))  # one ulp
        assert int(_content_hash(edited)) != base
    swapped = values.clone()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert int(_content_hash(swapped)) != base
    transposed = values[:-3].view(4, -1).t()
    for other in (torch.tensor([True, False]), transposed, values.double(), values.half(), torch.randn(3, dtype=torch.cfloat)):
        _content_hash(other)  # every dtype and layout can be hashed
    assert int(_content_hash(transposed)) == int(_content_hash(transposed.contiguous()))


# -- curves need two points; fractions must increase ---------------------------------------------------


def test_box_sensitivity_refuses_one_box_size():
    model = LinearModel().eval()
    with pytest.raises(InvalidParameterError, match=r"sizes \(48,\) make no curve: give at least two box sizes"):
        BoxSensitivity(model, sizes=(48,))
    with pytest.raises(InvalidParameterError, match="at least two box sizes"):
        ClassDiscrimination(model, sizes=(48,))


def test_box_sensitivity_refuses_sizes_that_collapse_on_small_images():
    # at 224 px sides 8 and 16 are 0.6 and 1.1 px on 16 px images: both one pixel, a curve of zero width
    box = BoxSensitivity(LinearModel().eval(), sizes=(8, 16), n_boxes=3)
    with pytest.raises(InvalidParameterError, match=r"repeated box sides \(1, 1\) on 16x16 images.*reference_size"):
        box(random_images(2), 1, random_maps(2))


def test_perturbation_auc_refuses_fractions_that_do_not_increase():
    curves = torch.tensor([[1.0, 1.0, 0.0]])
    with pytest.raises(InvalidParameterError, match="strictly increasing"):
        perturbation_auc([0.9, 0.5, 0.0], curves)
    with pytest.raises(InvalidParameterError, match="strictly increasing"):
        perturbation_auc([0.0, 0.5, 0.5], curves, "mean")
    with pytest.raises(InvalidParameterError, match="strictly increasing"):
        perturbation_auc([0.0, float("nan"), 0.5], curves)
    assert perturbation_auc([0.0, 0.5, 0.9], curves).tolist() == pytest.approx([70.0])


def test_perturbation_auc_refuses_one_point_curves():
    with pytest.raises(InvalidParameterError, match=r"\[0.5\] make no curve.*convention 'mean'"):
        perturbation_auc([0.5], torch.ones(2, 1))
    with pytest.raises(InvalidParameterError, match="make no curve"):
        perturbation_auc([0.0], torch.ones(2, 1), "trapezoid_start_at_one")
    with pytest.raises(InvalidParameterError, match="fractions is empty"):
        perturbation_auc([], torch.ones(2, 0), "mean")
    with pytest.raises(InvalidParameterError, match="one share per step"):
        perturbation_auc(0.5, torch.ones(2, 1))
    assert perturbation_auc([0.5], torch.tensor([[1.0], [0.0]]), "mean").tolist() == [100.0, 0.0]


def test_perturbation_refuses_one_fraction_for_a_trapezoid():
    model = LinearModel().eval()
    with pytest.raises(InvalidParameterError, match=r"fractions \(0.5,\) make no curve.*auc='mean'"):
        Perturbation(model, fractions=(0.5,), mean=MEAN, std=STD)
    result = Perturbation(model, fractions=(0.5,), auc="mean", mean=MEAN, std=STD)(random_images(2), [0, 1], random_maps(2))
    assert result.auc == pytest.approx(100 * float(result.correct.double().mean()))


def test_aopc_and_lodds_name_both_shapes_when_they_do_not_match():
    for score in (aopc, lodds):
        with pytest.raises(InvalidParameterError, match=r"\(3,\) and perturbed_.*\(2, 4\) do not match"):
            score(torch.rand(3), torch.rand(2, 4))
        with pytest.raises(InvalidParameterError, match=r"\(2, 4\) and perturbed_.*\(2,\) do not match"):
            score(torch.rand(2, 4), torch.rand(2))
        with pytest.raises(InvalidParameterError, match="no perturbation steps"):
            score(torch.rand(2), torch.rand(2, 0))
    assert aopc(torch.tensor([0.9]), torch.tensor([[0.5, 0.3]])).tolist() == pytest.approx([0.5])


# -- empty inputs ----------------------------------------------------------------------------------------


def test_segmentation_refuses_an_empty_batch_like_perturbation():
    maps, masks = torch.rand(0, 4, 4), torch.zeros(0, SIZE, SIZE, dtype=torch.long)
    with pytest.raises(InvalidParameterError, match="no images to score"):
        segmentation_stats(maps, masks)
    with pytest.raises(InvalidParameterError, match="no images to score"):
        Segmentation()(maps, masks)
    with pytest.raises(InvalidParameterError, match="no images to score"):
        Perturbation(LinearModel().eval(), mean=MEAN, std=STD)(random_images(0), [], random_maps(0))
    with pytest.raises(InvalidParameterError, match="no pixels"):
        segmentation_stats(torch.rand(2, 0, 0), torch.zeros(2, 0, 0, dtype=torch.long))


def test_pooling_refuses_statistics_of_no_images_or_of_unequal_lengths():
    stats = segmentation_stats(torch.rand(2, 4, 4), torch.randint(0, 2, (2, SIZE, SIZE)))
    empty = {name: values[:0] for name, values in stats.items()}
    with pytest.raises(InvalidParameterError, match="no images"):
        pool_segmentation([empty, empty])
    with pytest.raises(InvalidParameterError, match="different numbers of images"):
        pool_segmentation({**stats, "ap": stats["ap"][:1]})
    assert pool_segmentation([stats, empty]).mean_ap == pytest.approx(float(stats["ap"].mean()))


def test_mask_schedule_and_compactness_refuse_empty_inputs():
    with pytest.raises(InvalidParameterError, match="hold no steps"):
        MaskSchedule(torch.zeros(0, SIZE, SIZE, dtype=torch.bool))
    with pytest.raises(InvalidParameterError, match="hold no scores"):
        compactness(torch.rand(2, 0))


def test_mass_inside_and_pointing_game_refuse_maps_without_a_batch_axis_or_pixels():
    for score in (mass_inside, pointing_game):
        with pytest.raises(InvalidParameterError, match=r"batches \(B, H, W\).*maps\[None\]"):
            score(torch.rand(SIZE), torch.ones(SIZE))
        with pytest.raises(InvalidParameterError, match="with pixels"):
            score(torch.rand(2, 0), torch.ones(2, 0))
