"""Chefer's LRP rules and the four Chefer methods: attn_gradcam, transformer_attribution, partial_lrp, lrp.

Golden equivalence: the reference's float32 LRP is ill-conditioned (its own float32 and
float64 runs differ by up to 1.7 relative), so the LRP family is checked against the
float64 goldens with a float64 model; attn_gradcam against both. Relative error =
max |ours - reference| / max |reference| (NaN reference entries compared separately).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaikit
from xaikit.errors import InvalidParameterError, UnsupportedModelError
from xaikit.rules.chefer import (
    LAYERS_LRP,
    LAYERS_OURS,
    CheferLRP,
    add_rule,
    linear_rule,
    safe_divide,
    start_relevance,
    zbeta_rule,
)

from conftest import SMALL_VIT_KINDS, build_golden_model, golden, small_vit

CHEFER_METHODS = ("attn_gradcam", "transformer_attribution", "partial_lrp", "lrp")
TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    ours = ours.detach().cpu().numpy().reshape(reference.shape)
    return float(np.nanmax(np.abs(ours - reference)) / np.nanmax(np.abs(reference)))


def attribute(model, images, method, targets=None, **params):
    return xaikit.get_method(method).create(model, **params).attribute(images, targets)


# (label, method, params, golden key, precisions checked)
CASES = [
    ("attn_gradcam", "attn_gradcam", {}, "attn_gradcam", ("f64", "f32")),
    ("transformer_attribution start 0", "transformer_attribution", {"start_layer": 0},
     "transformer_attribution_start0", ("f64",)),
    ("transformer_attribution start 1", "transformer_attribution", {"start_layer": 1},
     "transformer_attribution_start1", ("f64",)),
    ("partial_lrp", "partial_lrp", {}, "partial_lrp_last_layer", ("f64",)),
]
PRECISIONS = {"f64": (torch.float64, "_f64"), "f32": (torch.float32, "")}


@pytest.fixture(scope="module")
def errors(golden_images) -> dict[tuple[str, str], float]:
    """Relative error per (precision, case); both target columns explained in one batch of 8."""
    found = {}
    for precision, (dtype, suffix) in PRECISIONS.items():
        model, reference = build_golden_model("A", dtype), golden(f"chefer_A{suffix}")
        images = golden_images.to(dtype).repeat(2, 1, 1, 1)  # image i, column j at j * 4 + i
        targets = torch.from_numpy(reference["targets"].T.reshape(-1))
        for label, method, params, key, precisions in CASES:
            if precision not in precisions:
                continue
            ours = attribute(model, images, method, targets, **params)
            expected = reference[key].swapaxes(0, 1).reshape(len(ours), -1)
            nan = torch.from_numpy(np.isnan(expected).all(axis=1))
            if nan.any():  # attn_gradcam: the reference's 0/0 maps; ours must be all zeros
                found[(precision, f"{label}: max |map| where the reference is NaN")] = float(ours[nan].abs().max())
            found[(precision, f"{label} (both class columns)")] = relative_error(ours, expected)
        if precision == "f64":  # full LRP: the predicted class, image 0 only in the float64 file
            found[(precision, "lrp (full, predicted class, image 0)")] = relative_error(
                attribute(model, images[:1], "lrp"), reference["full_lrp_pred_img0"]
            )
    return found


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_golden_equivalence(errors, precision):
    checked = {case: error for (p, case), error in errors.items() if p == precision}
    assert checked
    for case, error in checked.items():
        assert error < TOLERANCE, f"{precision} {case}: relative error {error:.2e}"


def test_attn_gradcam_reference_nan_is_all_zeros(errors, golden_images):
    reference = golden("chefer_A")
    assert np.isnan(reference["attn_gradcam"][0, 0]).all()  # the reference's edge case: all head weights <= 0
    for precision in PRECISIONS:
        assert errors[(precision, "attn_gradcam: max |map| where the reference is NaN")] == 0.0
    maps = attribute(build_golden_model("A"), golden_images[:1], "attn_gradcam", int(reference["targets"][0, 0]))
    assert torch.isfinite(maps).all() and maps.abs().max() == 0


def test_chefer_error_report(errors, capsys):
    """Print the errors quoted in the closing note (the LRP family in float64 only: see the module doc)."""
    with capsys.disabled():
        print("\nChefer methods, relative error vs the reference code (model A):")
        for (precision, case), error in errors.items():
            print(f"  {precision}  {case:<62} {error:.2e}")


# -- layouts, batching ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
def test_every_layout_gives_finite_maps_of_the_right_shape(kind):
    model = small_vit(kind)
    height, width = model.patch_embed.img_size
    gh, gw = model.patch_embed.grid_size
    images = torch.randn(2, 3, height, width)
    for method in CHEFER_METHODS:
        maps = xaikit.explain(model, images, method)
        expected = (2, height, width) if xaikit.get_method(method).resolution == "pixel" else (2, gh, gw)
        assert maps.shape == expected, (kind, method)
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), (kind, method)
        if method == "attn_gradcam":  # min-max normalised; all zeros when every head weight is <= 0
            assert maps.min() >= 0 and maps.max() <= 1, kind
        else:
            assert maps.abs().max() > 0, (kind, method)


def test_demo_model_and_dynamic_image_size():
    model = xaikit.load_model("demo-cifar10-vit")
    images = torch.randn(2, 3, 32, 32)
    for method in CHEFER_METHODS:
        maps = xaikit.explain(model, images, method)
        assert torch.isfinite(maps).all() and maps.shape[-2:] == ((32, 32) if method == "lrp" else (8, 8))
    dynamic = small_vit("dynamic")
    other = torch.randn(1, 3, 48, 80)  # not the 64 x 64 the model was built for
    assert xaikit.explain(dynamic, other, "lrp").shape == (1, 48, 80)
    assert xaikit.explain(dynamic, other, "transformer_attribution").shape == (1, 3, 5)


@pytest.mark.parametrize("kind", ["plain", "deit_distilled", "registers"])
def test_batch_equals_one_image_at_a_time(kind):
    """Per-image semantics: the Add rescaling and the z^B bounds sum over one image, not the batch."""
    model = small_vit(kind).double()
    images = torch.randn(2, 3, *model.patch_embed.img_size, dtype=torch.float64)
    images[1] *= 3  # different ranges: batch-wide z^B bounds would differ from per-image ones
    targets = [1, 4]
    for method in CHEFER_METHODS:
        explainer = xaikit.get_method(method).create(model)
        batched = explainer.attribute(images, targets)
        single = torch.cat([explainer.attribute(images[i : i + 1], targets[i]) for i in range(2)])
        difference, scale = (batched - single).abs().amax(dim=(1, 2)), single.abs().amax(dim=(1, 2))
        assert (difference <= 1e-8 * scale).all(), (kind, method, difference / scale)


def test_no_class_token_is_a_clear_error():
    model = small_vit("plain", class_token=False, global_pool="avg")
    for method in CHEFER_METHODS:
        with pytest.raises(InvalidParameterError, match="class token"):
            xaikit.explain(model, torch.randn(1, 3, 64, 64), method)


def test_unsupported_blocks_and_heads_are_clear_errors():
    import timm
    from timm.layers import SwiGLU

    swiglu = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3, mlp_layer=SwiGLU)
    headless = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0)
    for method in ("transformer_attribution", "partial_lrp", "lrp"):
        with pytest.raises(UnsupportedModelError, match="MLP SwiGLU"):
            xaikit.get_method(method).create(swiglu.eval())
        with pytest.raises(UnsupportedModelError, match="num_classes"):
            xaikit.get_method(method).create(headless.eval())


def test_start_layer_is_checked():
    model = small_vit()
    for bad in (-1, 2, 1.0, "1"):
        with pytest.raises(InvalidParameterError, match="start_layer"):
            xaikit.get_method("transformer_attribution").create(model, start_layer=bad)


def test_resolution_of_each_method():
    resolutions = {name: xaikit.get_method(name).resolution for name in CHEFER_METHODS}
    assert resolutions == {
        "attn_gradcam": "token", "transformer_attribution": "token", "partial_lrp": "token", "lrp": "pixel"
    }
    assert xaikit.get_method("gae").resolution == "token"


def test_upsample_leaves_pixel_maps_of_the_target_size_unchanged():
    maps = xaikit.explain(small_vit(), torch.randn(2, 3, 64, 64), "lrp")
    assert xaikit.upsample(maps, 64) is maps
    assert xaikit.upsample(maps, (32, 16)).shape == (2, 32, 16)


def test_callable_target_equals_the_class_index():
    model = small_vit().double()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for method in CHEFER_METHODS:
        by_index = xaikit.get_method(method).create(model).attribute(images, 3)
        by_score = xaikit.get_method(method).create(model).attribute(images, lambda logits: logits[:, 3])
        torch.testing.assert_close(by_score, by_index, rtol=1e-10, atol=1e-12)


# -- the model is left as it was ------------------------------------------------------------
def _hook_counts(model):
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks")
    return [len(getattr(module, name)) for module in model.modules() for name in names]


@pytest.mark.parametrize("kind", ["plain", "deit_distilled"])
def test_model_is_restored_exactly(kind):
    model = small_vit(kind)
    for block in model.blocks:
        block.attn.fused_attn = True
    model.train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    hooks, training = _hook_counts(model), [m.training for m in model.modules()]
    images = torch.randn(2, 3, 64, 64)
    for method in CHEFER_METHODS:
        xaikit.explain(model, images, method)
        with pytest.raises(InvalidParameterError):  # fails after the forward pass, inside the hooks
            xaikit.explain(model, images, method, targets=99)
    assert _hook_counts(model) == hooks
    assert [m.training for m in model.modules()] == training
    assert all(block.attn.fused_attn for block in model.blocks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_parameter_grads_are_untouched():
    model = small_vit()
    images = torch.randn(2, 3, 64, 64)
    model(images).logsumexp(1).sum().backward()  # a caller's own gradients
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    reached = []
    for name, p in model.named_parameters():
        p.register_hook(lambda grad, name=name: reached.append(name))
    for method in CHEFER_METHODS:
        xaikit.explain(model, images, method)
    assert reached == []  # autograd never computed a parameter gradient
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), name


# -- the rules ------------------------------------------------------------------------------
def test_safe_divide_matches_the_reference_formula():
    def reference(a, b):
        den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
        den = den + den.eq(0).type(den.type()) * 1e-9
        return a / den * b.ne(0).type(b.type())

    b = torch.tensor([0.0, -1e-9, 1e-9, -2.0, 3.0, 1e-12, -1e-12], dtype=torch.float64)
    a = torch.linspace(-1, 2, len(b), dtype=torch.float64)
    torch.testing.assert_close(safe_divide(a, b), reference(a, b), rtol=0, atol=0)


def test_add_rescaling_and_zbeta_bounds_are_per_image():
    """The reference sums over the whole tensor of ONE image; a batch must not mix images."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 6, 4, dtype=torch.float64), torch.randn(2, 6, 4, dtype=torch.float64)
    a[0] += 2  # image 0: the two branch shares have opposite-sign sums, so the rescaling flips one
    relevance = torch.rand(2, 6, 4, dtype=torch.float64)
    batched = add_rule(relevance, a, b, LAYERS_OURS)
    for i in range(2):
        single = add_rule(relevance[i : i + 1], a[i : i + 1], b[i : i + 1], LAYERS_OURS)
        for ours, expected in zip(batched, single):
            torch.testing.assert_close(ours[i : i + 1], expected)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4).double()
    pixels = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pixels[1] *= 3
    relevance = torch.rand(2, 5, 2, 2, dtype=torch.float64)
    batched = zbeta_rule(relevance, pixels, conv)
    for i in range(2):
        torch.testing.assert_close(batched[i : i + 1], zbeta_rule(relevance[i : i + 1], pixels[i : i + 1], conv))


@pytest.mark.parametrize("rules", [LAYERS_OURS, LAYERS_LRP])
def test_linear_rule_matches_its_autograd_definition(rules):
    """The reference's gradprop form: R_x = x+ * grad(Z1, x+, S1) + x- * grad(Z2, x-, S2)."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    relevance = torch.randn(2, 5, 4, dtype=torch.float64)
    px, nx = x.clamp(min=0).requires_grad_(), x.clamp(max=0).requires_grad_()
    z1, z2 = px @ weight.clamp(min=0).T, nx @ weight.clamp(max=0).T
    if rules is LAYERS_OURS:
        s1 = s2 = safe_divide(relevance, z1 + z2)
    else:
        s1, s2 = safe_divide(relevance, z1), safe_divide(relevance, z2)
    expected = px * torch.autograd.grad(z1, px, s1)[0] + nx * torch.autograd.grad(z2, nx, s2)[0]
    torch.testing.assert_close(linear_rule(relevance, x, weight, rules), expected.detach())
    if rules is LAYERS_OURS:  # the one-product form from the layer's own output
        bias = torch.randn(4, dtype=torch.float64)
        output = x @ weight.T + bias
        from_output = linear_rule(relevance, x, weight, rules, output=output, bias=bias)
        torch.testing.assert_close(from_output, expected.detach())


def test_layers_ours_conserves_relevance_and_layers_lrp_doubles_it_at_the_head():
    model = small_vit().double()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with CheferLRP(model, "layers_ours") as lrp:
        start = start_relevance(None, model(images))
        conserved = lrp.input_relevance(start).sum(dim=(1, 2))
    torch.testing.assert_close(conserved, torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=0)
    with CheferLRP(model, "layers_lrp") as lrp:
        start = start_relevance(None, model(images))
        doubled = lrp.pooled_relevance(start).sum(dim=(1, 2))
    torch.testing.assert_close(doubled, torch.full((2,), 2.0, dtype=torch.float64), rtol=1e-6, atol=0)


def test_distilled_heads_share_the_start_relevance_equally():
    model = small_vit("deit_distilled").double()
    with CheferLRP(model, "layers_ours") as lrp:
        start = start_relevance(2, model(torch.randn(2, 3, 64, 64, dtype=torch.float64)))
        pooled = lrp.pooled_relevance(start).sum(dim=-1)  # (B, 2): class and distillation token
    torch.testing.assert_close(pooled, torch.full((2, 2), 0.5, dtype=torch.float64), rtol=1e-6, atol=0)


def test_layer_scale_passes_relevance_like_a_folded_linear_layer():
    """LayerScale is identity for relevance: folding its (positive) gamma into proj/fc2 changes nothing."""
    model = small_vit("registers").double()
    torch.manual_seed(1)
    for block in model.blocks:
        for scale in (block.ls1, block.ls2):
            scale.gamma.data = torch.rand_like(scale.gamma) + 0.5
    folded = small_vit("registers").double()
    folded.load_state_dict(model.state_dict())
    for block in folded.blocks:
        for scale, linear in ((block.ls1, block.attn.proj), (block.ls2, block.mlp.fc2)):
            linear.weight.data *= scale.gamma.data[:, None]
            linear.bias.data *= scale.gamma.data
            scale.gamma.data.fill_(1.0)
    images = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    for method in ("transformer_attribution", "partial_lrp", "lrp"):
        ours = xaikit.get_method(method).create(model).attribute(images, 1)
        reference = xaikit.get_method(method).create(folded).attribute(images, 1)
        assert (ours - reference).abs().max() <= 1e-6 * reference.abs().max(), method
