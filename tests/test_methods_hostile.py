"""Issue 13, Foundation IV: the methods, targets and concepts under a hostile try-out."""

import copy

import pytest
import torch

import xaikit
from xaikit.errors import InvalidParameterError

from conftest import small_vit

METHODS = xaikit.list_methods()
#: the methods that propagate relevance (Chefer's LRP family and the modified-gradient LRPs of xaikit/rules)
RELEVANCE_METHODS = ("lrp", "partial_lrp", "transformer_attribution", "conservative_lrp", "attnlrp")


def fast_settings(method: str) -> dict:
    """Smoke-size settings; the sampling methods get a fresh seeded generator, so two calls draw the same noise."""
    settings = {
        "smooth_cdam": dict(n_samples=2, generator=torch.Generator().manual_seed(0)),
        "smoothgrad": dict(n_samples=2, generator=torch.Generator().manual_seed(0)),
        "integrated_cdam": dict(n_steps=3),
        "integrated_gradients": dict(n_steps=2),
    }
    return settings.get(method, {})


@pytest.fixture(scope="module")
def model():
    return small_vit("plain")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def map_shape(method: str, batch: int) -> tuple[int, int, int]:
    return (batch, 64, 64) if xaikit.get_method(method).resolution == "pixel" else (batch, 4, 4)


# -- empty batch ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_empty_maps_for_an_empty_batch(model, method):
    empty = torch.zeros(0, 3, 64, 64)
    for batch_size in (None, 2):
        maps = xaikit.explain(model, empty, method, batch_size=batch_size, **fast_settings(method))
        assert maps.shape == map_shape(method, 0) and maps.dtype == torch.float32


def test_an_empty_batch_still_has_its_inputs_checked(model):
    with pytest.raises(InvalidParameterError, match=r"shape \(B, 3, H, W\)"):
        xaikit.explain(model, torch.zeros(0, 1, 64, 64), "lrp")
    with pytest.raises(InvalidParameterError, match="out of range"):
        xaikit.explain(model, torch.zeros(0, 3, 64, 64), "lrp", targets=99)


# -- frozen parameters ---------------------------------------------------------------------------
def frozen(head_trainable: bool):
    """The model of the `model` fixture with every parameter frozen, or (the CDAM linear probe) all but the head."""
    model = small_vit("plain").requires_grad_(False)
    model.head.requires_grad_(head_trainable)
    return model


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_frozen_models_as_unfrozen_ones_without_parameter_gradients(model, images, method):
    expected = xaikit.explain(model, images, method, targets=[1, 4], **fast_settings(method))
    for head_trainable in (False, True):
        probe = frozen(head_trainable)
        maps = xaikit.explain(probe, images, method, targets=[1, 4], **fast_settings(method))
        torch.testing.assert_close(maps, expected)
        assert all(p.grad is None for p in probe.parameters())
        assert [p.requires_grad for p in probe.parameters()] == [head_trainable and n.startswith("head.")
                                                                 for n, _ in probe.named_parameters()]


# -- half precision --------------------------------------------------------------------------------
def relative_error(maps: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest per-image max |maps - exact| / max |exact|."""
    return float(((maps.double() - exact).abs().amax(dim=(1, 2)) / exact.abs().amax(dim=(1, 2))).max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", RELEVANCE_METHODS)
def test_relevance_of_half_precision_models_is_as_accurate_as_float32_and_leaves_the_model_as_it_was(method, dtype):
    model = small_vit("plain").to(dtype)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    targets = [1, 4]
    # the same weights and images in float64 (exact) and float32: half precision, cast up, loses nothing
    exact = xaikit.get_method(method).create(copy.deepcopy(model).double()).attribute(images.double(), targets)
    float32_error = relative_error(xaikit.explain(copy.deepcopy(model).float(), images.float(), method, targets), exact)
    for param in model.parameters():  # a caller's own gradients, to be left alone
        param.grad = torch.full_like(param, 0.5)
    before = {name: (tensor, tensor.clone(), tensor.grad) for name, tensor in model.named_parameters()}

    maps = xaikit.explain(model, images, method, targets)

    # Full LRP is ill-conditioned even in float32 (reference-spec 4.4: about 2e-2 here; 1e-6 for the
    # modified-gradient LRPs): the maps must be as good as float32's, where bfloat16 and float16 are off by
    # up to 130 % and 350 %.
    assert relative_error(maps, exact) <= 2 * float32_error + 1e-6
    for name, param in model.named_parameters():
        data, values, grad = before[name]
        assert param.dtype == dtype and param.data.data_ptr() == data.data_ptr() and torch.equal(param, values)
        assert param.grad is grad and param.grad.dtype == dtype and bool((grad == 0.5).all())


def test_half_precision_model_is_restored_after_an_exception(images):
    model = small_vit("plain").to(torch.bfloat16)
    before = {name: tensor.data.data_ptr() for name, tensor in model.named_parameters()}

    def failing(logits):
        assert logits.dtype == torch.float32  # the relevance pass runs in float32
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        xaikit.explain(model, images, "transformer_attribution", failing)
    assert {name: tensor.data.data_ptr() for name, tensor in model.named_parameters()} == before
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# -- concept targets ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_concept_target_refuses_a_non_finite_vector(bad):
    vector = torch.ones(192)
    vector[3] = bad
    with pytest.raises(InvalidParameterError, match="concept vector holds 1 NaN or infinite values of 192"):
        xaikit.ConceptTarget(vector)


def test_concept_target_refuses_features_of_a_broken_model(images):
    model = small_vit("plain")
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(InvalidParameterError, match="concept vector holds 1 NaN"):
        xaikit.concept_target(model, images)


def test_concept_target_tells_to_add_a_batch_axis_to_one_normalised_image(model, images):
    with pytest.raises(InvalidParameterError, match=r"batch axis.*concept_images\[None\].*unsqueeze\(0\)"):
        xaikit.concept_target(model, images[0])
    one = xaikit.concept_target(model, images[:1])  # with the batch axis it works
    assert one.vector.shape == (192,)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_concept_target_refuses_bad_batch_sizes(model, images, batch_size):
    with pytest.raises(InvalidParameterError, match=rf"batch_size must be a positive int; got {batch_size!r}\. It is how many"):
        xaikit.concept_target(model, images, batch_size=batch_size)


def test_concept_target_batch_size_does_not_change_the_vector(model, images):
    torch.testing.assert_close(xaikit.concept_target(model, images, batch_size=1).vector,
                               xaikit.concept_target(model, images).vector)


# -- smooth_cdam noise bank -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 1, 17, 1), (2, 1, 1, 192), (2, 2, 1, 192)])
def test_smooth_cdam_takes_only_the_documented_noise_shapes(model, images, shape):
    with pytest.raises(InvalidParameterError, match=r"shape \(n_samples, 1 or B, N, D\) = \(2, 1 or 2, 17, 192\)"):
        xaikit.explain(model, images, "smooth_cdam", n_samples=2, noise=torch.randn(shape))


def test_smooth_cdam_shared_and_per_image_noise_banks_work(model, images):
    shared = torch.randn(2, 1, 17, 192, generator=torch.Generator().manual_seed(0))
    per_image = shared.expand(2, 2, 17, 192).clone()
    maps = xaikit.explain(model, images, "smooth_cdam", n_samples=2, noise=shared)
    torch.testing.assert_close(xaikit.explain(model, images, "smooth_cdam", n_samples=2, noise=per_image), maps)
    assert not torch.allclose(maps, xaikit.explain(model, images, "cdam"))


# -- target ranges ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("targets", [999, 7, -1, [0, 999], torch.tensor([3, 7])])
def test_every_method_refuses_classes_the_model_does_not_have(model, images, method, targets):
    with pytest.raises(InvalidParameterError, match=r"out of range: the model has 7 classes \(0\.\.6\)"):
        xaikit.explain(model, images, method, targets, **fast_settings(method))


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "random"])
def test_class_independent_methods_take_every_class_of_the_head(model, images, method):
    maps = [xaikit.explain(model, images, method, targets) for targets in (None, 0, 6, [6, 0])]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0])


def test_class_range_follows_a_replaced_head_and_is_unknown_without_one(images):
    probe = small_vit("plain")
    probe.head = torch.nn.Linear(192, 3)  # a linear probe of 3 classes on a 7-class model
    with pytest.raises(InvalidParameterError, match="the model has 3 classes"):
        xaikit.explain(probe, images, "rollout", targets=5)
    headless = small_vit("plain", num_classes=0)
    assert xaikit.explain(headless, images, "rollout", targets=100).shape == (2, 4, 4)


# -- method objects instead of names ----------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda model: xaikit.get_method("smooth_cdam"),
                                  lambda model: xaikit.get_method("smooth_cdam")(model, n_samples=4)])
def test_explain_tells_to_pass_the_method_name_and_settings_as_keywords(model, images, make):
    with pytest.raises(InvalidParameterError, match=(
        r"explainer (class|instance) SmoothCDAM.*pass method='smooth_cdam' and its settings as keywords: "
        r"xaikit\.explain\(model, images, method='smooth_cdam', n_samples=\.\.\., noise_level=\.\.\."
    )):
        xaikit.explain(model, images, method=make(model))


def test_an_unregistered_explainer_class_is_told_to_register(model, images):
    class Mine(xaikit.Explainer):
        name = "mine"

    with pytest.raises(InvalidParameterError, match=r"explainer class .*Mine.*register it under a name"):
        xaikit.explain(model, images, method=Mine)
