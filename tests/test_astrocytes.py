"""`xaikit.astrocytes`: ViTA's astrocytic linear layer (issue 15 section 1, reference-spec 6.2), and its row of
`xaikit bench` (issue 15 section 7)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import xaikit
from xaikit.astrocytes import AstrocyteSettings, AstrocyteWarning, astrocytic_linear, check_settings
from xaikit.bench import benchmark
from xaikit.errors import InvalidParameterError

from conftest import SMALL_VIT_KINDS, small_vit

ANY_VIT = SMALL_VIT_KINDS + ("dynamic",)


def images_for(model: nn.Module, n: int = 3, seed: int = 1) -> torch.Tensor:
    size = tuple(model.patch_embed.img_size)
    return torch.randn((n, 3, *size), generator=torch.Generator().manual_seed(seed))


def proj_pass(model: nn.Module, images: torch.Tensor, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of ``blocks[block].attn.proj`` in one forward pass (a hook after the astrocytes' own)."""
    seen = {}

    def keep(module, args, output):
        seen["input"], seen["output"] = args[0].detach(), output.detach()

    handle = model.blocks[block].attn.proj.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["input"], seen["output"]


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("settings, names", [
    (dict(k=-1), ["k", ">= 0"]),
    (dict(k=1.5), ["k", "integer"]),
    (dict(k=True), ["k", "integer"]),
    (dict(tau=0.5), ["tau", ">= 1"]),
    (dict(alpha=0.9), ["alpha", ">= 1", "alpha >= 1 >= beta > 0"]),
    (dict(beta=0.0), ["beta", "(0, 1]"]),
    (dict(beta=1.5), ["beta", "(0, 1]"]),
    (dict(phi=float("nan")), ["phi", "finite"]),
    (dict(alpha="1.5"), ["alpha", "finite real"]),
    (dict(block=2), ["block", "0 to 1", "2 blocks"]),
    (dict(block=-3), ["block", "0 to 1"]),
    (dict(block=0.0), ["block", "integer"]),
])
def test_bad_settings_are_refused_naming_the_valid_range(settings, names):
    model = small_vit("plain")
    with pytest.raises(InvalidParameterError) as caught:
        xaikit.astrocytes(model, **settings)
    assert all(name in str(caught.value) for name in names), str(caught.value)


def test_valid_settings_are_normalised_and_negative_blocks_count_from_the_end():
    model = small_vit("plain")
    astro = xaikit.astrocytes(model, k=4, tau=2, phi=0, alpha=1, beta=1, block=-1)
    assert astro.block == 1 and astro.layer is model.blocks[1].attn.proj
    assert astro.settings == AstrocyteSettings(4, 2.0, 0.0, 1.0, 1.0)
    assert AstrocyteSettings() == check_settings(6, 3, -0.5, 1.5, 0.05)  # the paper's Grad-CAM / SSIM row
    with pytest.raises(InvalidParameterError, match="tau"):
        AstrocyteSettings(tau=0)


def test_a_model_without_a_class_token_is_refused():
    model = small_vit("plain", class_token=False, global_pool="avg")
    with pytest.raises(InvalidParameterError, match="class token"):
        xaikit.astrocytes(model)


# -- known answers ------------------------------------------------------------------------


def test_hand_computed_case_three_units_two_tokens_three_iterations():
    # tokens x = e1 (class token), e2: z = x W^T gives the columns of W. phi = 0, tau = 2, alpha = 2, beta = 0.5.
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 0.0, 0.75], dtype=torch.float64)
    output, trace = astrocytic_linear(x, weight, bias, check_settings(3, 2, 0.0, 2.0, 0.5), trace=True)
    # y(0) class token = z + b = (1, -1, -0.25): signs + - -
    # t=1: A = (1, -1, -1), |A| < tau: m = 1, M = (1, 1, 1), y class = (1, -1, -0.25)
    # t=2: A = (2, -2, -2): m = (2, .5, .5), M = (2, .5, .5), y class = (2, -0.5, -0.5 + 0.75 = 0.25): unit 2 flips
    # t=3: A = (2, -2, -1) (unit 0 and 1 clamped, unit 2 steps up), m = (2, .5, 1), M = (4, .25, .5)
    assert trace.activity[:, 0].tolist() == [[1, -1, -1], [2, -2, -2], [2, -2, -1]]
    assert trace.modulation[:, 0].tolist() == [[1, 1, 1], [2, 0.5, 0.5], [4, 0.25, 0.5]]
    assert trace.class_output[:, 0].tolist() == [[1, -1, -0.25], [1, -1, -0.25], [2, -0.5, 0.25], [4, -0.25, 0.25]]
    # y(3) = z * M + b: class token (4, -0.25, 0.25), token 1: (0*4, 2*.25, 1*.5 + .75) = (0, 0.5, 1.25)
    # y(0) token 1 = (0, 2, 1.75); s = mean norm of y(0) / mean norm of y(3)
    before = (math.sqrt(1 + 1 + 0.0625) + math.sqrt(4 + 1.75**2)) / 2
    after = (math.sqrt(16 + 0.0625 + 0.0625) + math.sqrt(0.25 + 1.25**2)) / 2
    assert trace.norm_before.item() == pytest.approx(before, rel=1e-14)
    assert trace.norm_after.item() == pytest.approx(after, rel=1e-14)
    expected = torch.tensor([[[4.0, -0.25, 0.25], [0.0, 0.5, 1.25]]], dtype=torch.float64) * (before / after)
    torch.testing.assert_close(output, expected, rtol=1e-14, atol=0)


def test_tau_one_applies_a_gain_at_every_iteration():
    x = torch.tensor([[[1.0], [2.0]]])
    weight = torch.tensor([[1.0], [-1.0]])
    _, trace = astrocytic_linear(x, weight, None, check_settings(3, 1, 0.0, 1.5, 0.25), trace=True)
    assert trace.modulation[:, 0].tolist() == [[1.5, 0.25], [2.25, 0.0625], [3.375, 0.015625]]


@pytest.mark.parametrize("kind", ANY_VIT)
def test_k_zero_and_unit_gains_leave_the_outputs_unchanged(kind):
    model = small_vit(kind)
    images = images_for(model)
    with torch.no_grad():
        plain = model(images)
        with xaikit.astrocytes(model, k=0):
            assert torch.equal(model(images), plain)  # s = n / n = 1 exactly
        with xaikit.astrocytes(model, k=8, tau=1, alpha=1, beta=1):
            torch.testing.assert_close(model(images), plain, rtol=1e-5, atol=1e-6)
    # the layer does act (on proj's output: DINOv2's layer scale 1e-5 hides it in the logits); phi = 0 splits
    # the units (with one gain for all and a zero bias, the rescaling would undo the modulation exactly)
    with xaikit.astrocytes(model, k=8, tau=1, phi=0.0, alpha=1.5, beta=0.05):
        modulated = proj_pass(model, images)[1]
    assert not torch.allclose(modulated, proj_pass(model, images)[1], rtol=1e-3, atol=0)


@pytest.mark.parametrize("kind", ANY_VIT)
def test_the_rescaled_output_has_the_unmodulated_mean_token_norm(kind):
    model = small_vit(kind)
    images = images_for(model)
    with xaikit.astrocytes(model, k=6, tau=2, phi=0.0, alpha=1.5, beta=0.05) as astro:
        proj_in, proj_out = proj_pass(model, images)
    layer = model.blocks[0].attn.proj
    standard = nn.functional.linear(proj_in, layer.weight, layer.bias).detach()
    norms = lambda y: torch.linalg.vector_norm(y, dim=-1).mean(dim=-1)  # noqa: E731
    torch.testing.assert_close(norms(proj_out), norms(standard), rtol=1e-5, atol=0)
    assert not torch.allclose(proj_out, standard, atol=1e-3)
    # the counters read row 0, the class token (DeiT's distillation token and the registers come after it)
    torch.testing.assert_close(astro.trace.class_output[0], standard[:, 0], rtol=1e-5, atol=1e-6)
    assert astro.trace.activity.shape == (6, len(images), layer.out_features)


@pytest.mark.parametrize("kind", ["plain", "deit_distilled", "registers"])
def test_a_batch_equals_its_images_one_at_a_time(kind):
    model = small_vit(kind)
    images = images_for(model, n=4)
    with torch.no_grad(), xaikit.astrocytes(model, k=8, tau=1, phi=0.0, alpha=1.5, beta=0.005):
        batch = model(images)
        single = torch.cat([model(image[None]) for image in images])
        again = model(images)
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, batch)  # state is reset at every forward: nothing carries over


def test_gradients_flow_through_the_wrapped_layer():
    # the analytic gradient of the layer, where no counter is at a threshold (M is locally constant)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    settings = check_settings(4, 1, 0.1, 1.5, 0.25)
    assert torch.autograd.gradcheck(lambda *a: astrocytic_linear(*a, settings), (x, weight, bias))
    # and through a whole model: the logits' gradient reaches the wrapped proj and the images
    model = small_vit("plain")
    images = images_for(model).requires_grad_(True)
    proj = model.blocks[0].attn.proj
    with xaikit.astrocytes(model, k=6, tau=2, phi=0.0):
        inside = torch.autograd.grad(model(images).sum(), [proj.weight, images])
    outside = torch.autograd.grad(model(images).sum(), [proj.weight, images])
    for grad, plain in zip(inside, outside):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert not torch.allclose(grad, plain)


# -- restoring the model -----------------------------------------------------------------------


def model_state(model: nn.Module) -> tuple:
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    return list(model.named_modules()), hooks, [blk.attn.fused_attn for blk in model.blocks]


def test_leaving_restores_the_model_bit_for_bit_also_through_an_exception():
    model = small_vit("registers")
    model.blocks[0].attn.fused_attn, model.blocks[1].attn.fused_attn = True, False  # mixed flags stay as they were
    images = images_for(model)
    with torch.no_grad():
        before = model(images)
    state = model_state(model)
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    with xaikit.astrocytes(model):
        pass
    with pytest.raises(RuntimeError, match="inside"):
        with xaikit.astrocytes(model, k=8, tau=1):
            with torch.no_grad():
                model(images)
            raise RuntimeError("failure inside the context")
    assert model_state(model) == state
    assert all(torch.equal(p, parameters[name]) for name, p in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(images), before)
    with xaikit.astrocytes(model):  # usable again after the failure
        pass


def test_a_second_wrapping_of_the_same_layer_is_refused():
    model = small_vit("plain")
    with xaikit.astrocytes(model):
        with pytest.raises(InvalidParameterError, match="already inside"):
            with xaikit.astrocytes(model):
                pass
        with xaikit.astrocytes(model, block=1):  # another block is another layer
            pass
    with xaikit.astrocytes(model):
        pass


# -- every explainer runs inside ---------------------------------------------------------------


def tiny_vit() -> nn.Module:
    """The smallest plain ViT every method runs on (as tests/test_bench.py): 32x32 images, one block."""
    return small_vit("plain", img_size=32, depth=1, embed_dim=48, num_heads=3)


@pytest.mark.parametrize("method", xaikit.list_methods())
def test_every_registered_method_runs_inside_the_context(method):
    model = tiny_vit()
    images = images_for(model, n=2)
    state = model_state(model)
    reads_weights = xaikit.get_method(method).reads_layer_weights
    with xaikit.astrocytes(model, k=6, tau=1, phi=0.0, alpha=1.5, beta=0.05) as astro:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = xaikit.explain(model, images, method)
    assert maps.shape[0] == 2 and torch.isfinite(maps).all()
    # a method whose relevance reads the layer's weights itself says that it does not follow the modulation
    said = [w for w in caught if issubclass(w.category, AstrocyteWarning)]
    assert bool(said) == reads_weights, [str(w.message) for w in said]
    if said:
        assert "blocks[0].attn.proj" in str(said[0].message)
    if not xaikit.get_method(method).floor:
        assert astro.trace is not None  # the method's forward pass went through the astrocytic layer
    assert model_state(model) == state


def test_methods_that_read_layer_weights_are_the_relevance_rules_and_tokentm():
    readers = {name for name in xaikit.list_methods() if xaikit.get_method(name).reads_layer_weights}
    assert readers == {"lrp", "partial_lrp", "transformer_attribution", "conservative_lrp", "attnlrp", "tokentm"}
    model = tiny_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstrocyteWarning)
        xaikit.explain(model, images_for(model, n=1), "lrp")  # outside the context: no warning


def test_bench_times_a_method_inside_the_astrocytes_against_the_same_method():
    model = tiny_vit()
    report = benchmark(model, images_for(model, n=2), ["gradcam", "gae"], repeats=1, astrocytes=dict(k=6, tau=3))
    astro = report["astrocytes"]
    assert astro["settings"] == {"k": 6, "tau": 3.0, "phi": -0.5, "alpha": 1.5, "beta": 0.05, "block": 0}
    assert list(astro["methods"]) == ["gradcam", "gae"]
    for name, entry in astro["methods"].items():
        assert entry["images_per_s"] > 0
        # cost = seconds per batch inside the context / seconds per batch of the same method without it
        assert entry["ratio_to_method"] == pytest.approx(entry["seconds_per_batch"] / report["methods"][name]["seconds_per_batch"])
    assert "astrocytes" not in benchmark(model, images_for(model, n=2), ["gae"], repeats=1)
    assert not model.blocks[0].attn.proj._forward_hooks  # the context was left


def test_bench_command_line_reports_the_astrocytic_cost(tmp_path, capsys):
    from xaikit.bench import main

    out = tmp_path / "bench.json"
    assert main(["--model", "demo-shapes-vit", "--batch-size", "2", "--repeats", "1", "--methods", "gradcam",
                 "--astrocytes", "k=4,beta=0.25", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["astrocytes"]["settings"] == {"k": 4, "tau": 3.0, "phi": -0.5, "alpha": 1.5, "beta": 0.25, "block": 0}
    assert report["astrocytes"]["methods"]["gradcam"]["ratio_to_method"] > 0
    assert "gradcam (astrocytes)" in capsys.readouterr().out
    assert main(["--model", "demo-shapes-vit", "--batch-size", "2", "--methods", "gae", "--astrocytes", "beta=2"]) == 2
    assert "beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "demo-shapes-vit", "--batch-size", "2", "--astrocytes", "gamma=1"])
    assert "k, tau, phi, alpha, beta, block" in capsys.readouterr().err
