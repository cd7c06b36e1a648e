"""Conservative LRP, ATTCAT and AttnLRP (reference-spec section 4.5), pinned down without golden outputs.

* conservation: with every bias zero, the modified-gradient rules that conserve
  make the token relevances at the input of block 0 sum to the explained logit;
* an explicit forward pass of the timm ViT written here, with the rules applied by
  hand (detach tricks) or with lxt's own rule functions, gives the same maps;
* lxt's CP-LRP map of a torchvision ViT (lxt's only ViT map) equals ours on the
  same weights, and our Gamma rule equals zennit's Gamma as lxt runs it;
* ATTCAT equals its formula computed from an explicit forward pass;
* the model is left exactly as it was, also after an exception.

The lxt/zennit tests are skipped when those packages are missing (test-only dependencies).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from torch import nn

import xaikit
from xaikit.errors import InvalidParameterError, UnsupportedModelError
from xaikit.rules.modified_gradient import (
    ModifiedGradient,
    all_linear,
    identity_rule,
    xai_transformers_gamma,
    zennit_gamma,
)

from conftest import SMALL_VIT_KINDS, small_vit

LRP_METHODS = ("conservative_lrp", "attnlrp")
ALL_METHODS = ("conservative_lrp", "attnlrp", "attcat")


def images_for(model, batch=3, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=generator).to(dtype)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases, LayerNorm scales and layer scales (timm initialises them to 0, 1 and tiny)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) or name.endswith("gamma"):
                param.copy_(1 + 0.2 * noise)
    return model


def zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
    return model


def assert_maps_close(ours, reference, rtol=1e-7):
    scale = reference.abs().max().item()
    assert scale > 0, "degenerate test: the reference map is all zero"
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * scale)


# -- an explicit timm ViT forward pass with the rules written out -----------------------------------
@dataclass
class Rules:
    """The rule primitives an explicit forward pass uses."""

    stop: Callable  # t -> t with no gradient
    scale: Callable  # (t, f) -> t with gradient times f
    identity: Callable  # (fn, x) -> fn(x) with gradient fn(x) / x
    layer_norm: Callable  # (module, x) -> LayerNorm with sigma detached


def _hand_layer_norm(module, x):
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).add(module.eps).sqrt().detach()
    return (x - mean) / std * module.weight + module.bias


def _zero_with_gradient(t):
    """An exact zero whose gradient with respect to t is 1."""
    return t - t.detach()


HAND_RULES = Rules(
    stop=lambda t: t.detach(),
    scale=lambda t, f: t.detach() + _zero_with_gradient(t) * f,
    identity=lambda fn, x: fn(x).detach() + _zero_with_gradient(x) * (fn(x) / (x + 1e-10)).detach(),
    layer_norm=_hand_layer_norm,
)


def explicit_forward(model, images, *, attention=None, rules=HAND_RULES, layer_norm=False, identity=False, gamma=0.0):
    """logits, block inputs h_l (h_0 a leaf) and attention probabilities of a timm ViT, written out.

    attention: None (plain), "cp" (q, k stopped) or "attnlrp" (q, k, v gradients / 4, 4, 2).
    layer_norm / identity: apply the LayerNorm / activation rule. gamma: Ali et al.'s
    ``zp * (z / zp).detach()`` on qkv, proj, fc1, fc2.
    """

    def norm(module, x):
        if isinstance(module, nn.Identity):
            return x
        return rules.layer_norm(module, x) if layer_norm else F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)

    def linear(module, x):
        z = F.linear(x, module.weight, module.bias)
        if gamma == 0:
            return z
        zp = F.linear(x, module.weight + gamma * module.weight.clamp(min=0), module.bias + gamma * module.bias.clamp(min=0))
        return z.detach() + _zero_with_gradient(zp) * (z / zp).detach()  # Ali et al.: zp * (z / zp).detach()

    def layer_scale(module, x):
        return x * module.gamma if isinstance(module, LayerScale) else x

    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    h = tokens.requires_grad_()
    inputs, attentions = [], []
    for blk in model.blocks:
        inputs.append(h)
        attn = blk.attn
        batch, n, _ = h.shape
        qkv = linear(attn.qkv, norm(blk.norm1, h)).reshape(batch, n, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
        if attention == "cp":
            q, k = rules.stop(q), rules.stop(k)
        elif attention == "attnlrp":
            q, k, v = rules.scale(q, 0.25), rules.scale(k, 0.25), rules.scale(v, 0.5)
        probabilities = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attentions.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, n, -1)
        h = h + layer_scale(blk.ls1, linear(attn.proj, mixed))
        mlp = blk.mlp
        hidden = linear(mlp.fc1, norm(blk.norm2, h))
        hidden = rules.identity(mlp.act, hidden) if identity else mlp.act(hidden)
        h = h + layer_scale(blk.ls2, linear(mlp.fc2, hidden))
    features = norm(model.norm, h)
    prefix = model.num_prefix_tokens
    if getattr(model, "head_dist", None) is not None:  # DeiT distilled, eval: mean of both heads
        logits = (model.head(features[:, 0]) + model.head_dist(features[:, 1])) / 2
    else:
        pooled = features[:, 0] if model.global_pool == "token" else features[:, prefix:].mean(dim=1)
        logits = model.head(norm(model.fc_norm, pooled))
    return logits, inputs, attentions


def explicit_relevance(model, images, classes, **rules):
    """sum_d E0 * dy/dE0 at the patch tokens, from `explicit_forward` with these rules."""
    logits, inputs, _ = explicit_forward(model, images, **rules)
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), inputs[0])
    relevance = (inputs[0] * grad).sum(-1)[:, model.num_prefix_tokens :]
    return relevance.reshape(len(images), *xaikit.introspection.token_grid(model)).detach()


def model_kinds():
    return [*SMALL_VIT_KINDS, "qk_norm"]


def make_model(kind):
    model = small_vit("plain", qk_norm=True) if kind == "qk_norm" else small_vit(kind)
    return randomise(model.double())


# -- lxt, loaded without its Hugging Face model maps ---------------------------------------------
@pytest.fixture(scope="module")
def lxt():
    """lxt 2.1's efficient rules and torchvision ViT map.

    ``lxt/efficient/__init__.py`` imports lxt's maps for Hugging Face models, hence
    ``transformers`` (slow, and lxt 2.1 breaks with transformers 5). The rules used here
    live in torch-only files (``rules.py``, ``patches.py``, ``zennit_patches.py``,
    ``models/vit_torch.py``), loaded from the installed package without that ``__init__``.
    """
    spec = importlib.util.find_spec("lxt")
    if spec is None or importlib.util.find_spec("zennit") is None:
        pytest.skip("lxt and zennit are not installed (test-only dependencies)")
    root = Path(spec.submodule_search_locations[0]) / "efficient"
    added = []
    if "lxt.efficient" not in sys.modules:
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [str(root)]
        sys.modules["lxt.efficient"] = package
        added.append("lxt.efficient")
    try:
        loaded = {}
        for name in ("rules", "patches", "zennit_patches"):
            full = f"lxt.efficient.{name}"
            added += [] if full in sys.modules else [full]
            loaded[name] = importlib.import_module(full)
        vit_spec = importlib.util.spec_from_file_location("_lxt_vit_torch", root / "models" / "vit_torch.py")
        loaded["vit_torch"] = importlib.util.module_from_spec(vit_spec)
        vit_spec.loader.exec_module(loaded["vit_torch"])
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(**loaded)


def lxt_rules(lxt):
    return Rules(
        stop=lxt.rules.stop_gradient,
        scale=lambda t, f: lxt.rules.divide_gradient(t, round(1 / f)),
        identity=lxt.rules.identity_rule_implicit,
        layer_norm=lambda module, x: lxt.patches.layer_norm_forward(module, x),
    )


@pytest.fixture
def patched_classes():
    """Restore classes that lxt/zennit monkey-patch globally, whatever the test does."""
    import zennit.core
    from torchvision.models import vision_transformer as tv

    saved = []
    for cls in (tv.nn.GELU, tv.nn.LayerNorm, tv.nn.MultiheadAttention, zennit.core.BasicHook):
        saved.append((cls, dict(vars(cls))))
    yield
    for cls, attributes in saved:
        for name in set(vars(cls)) - set(attributes):
            delattr(cls, name)
        for name in ("forward", "backward"):
            if name in attributes:
                setattr(cls, name, attributes[name])


# -- conservation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, params, rtol",
    [
        ("conservative_lrp", {}, 1e-7),
        # Ali et al.'s gamma has no stabiliser: z / zp is large where zp nears 0, which
        # magnifies the identity rule's 1e-10 shift (gamma 0.1: 2e-8, gamma 0.3: 2e-6).
        ("conservative_lrp", {"gamma": 0.1}, 1e-6),
        ("attnlrp", {}, 1e-7),
        ("attnlrp", {"gamma": 0.25}, 1e-4),  # zennit's 1e-6 stabiliser
    ],
)
@pytest.mark.parametrize("layer_scale", [False, True])
def test_conserving_rules_sum_to_the_logit_with_zero_biases(method, params, rtol, layer_scale):
    """No prefix token (average pooling), so the patch tokens hold all the relevance at block 0."""
    extra = {"init_values": 0.5} if layer_scale else {}
    model = randomise(small_vit("plain", class_token=False, global_pool="avg", **extra).double())
    images = images_for(model, seed=4)
    classes = torch.tensor([1, 5, 3])
    explainer = xaikit.get_method(method).create(model, **params)
    with_biases = explainer.attribute(images, classes).sum(dim=(1, 2))
    logits = model(images).gather(1, classes[:, None]).squeeze(1)
    assert ((with_biases - logits).abs() > 1e-3 * logits.abs()).all()  # biases take their share
    zero_biases(model)
    maps = explainer.attribute(images, classes)
    logits = model(images).gather(1, classes[:, None]).squeeze(1)
    assert logits.abs().min() > 1e-3
    torch.testing.assert_close(maps.sum(dim=(1, 2)), logits, rtol=rtol, atol=0)


@pytest.mark.parametrize("method, params", [("conservative_lrp", {"activation_rule": "gradient"}), ("attnlrp", {"variant": "attnlrp"})])
def test_non_conserving_rules_do_not_sum_to_the_logit(method, params):
    """The plain GELU gradient and AttnLRP's softmax rule absorb relevance (so the test above can fail)."""
    model = zero_biases(randomise(small_vit("plain", class_token=False, global_pool="avg").double()))
    images = images_for(model, seed=4)
    classes = torch.tensor([1, 5, 3])
    maps = xaikit.get_method(method).create(model, **params).attribute(images, classes)
    logits = model(images).gather(1, classes[:, None]).squeeze(1)
    assert ((maps.sum(dim=(1, 2)) - logits).abs() > 1e-3 * logits.abs()).any()


# -- an explicit forward pass with the rules by hand -------------------------------------------------
@pytest.mark.parametrize("kind", model_kinds())
@pytest.mark.parametrize(
    "method, params, rules, rtol",
    [
        ("conservative_lrp", {}, dict(attention="cp", layer_norm=True, identity=True), 1e-7),
        ("conservative_lrp", {"gamma": 0.3}, dict(attention="cp", layer_norm=True, identity=True, gamma=0.3), 1e-7),
        ("conservative_lrp", {"activation_rule": "gradient"}, dict(attention="cp", layer_norm=True), 1e-7),
        ("attnlrp", {}, dict(attention="cp", layer_norm=True, identity=True), 1e-7),
        ("attnlrp", {"variant": "attnlrp"}, dict(attention="attnlrp", layer_norm=True, identity=True), 1e-7),
    ],
)
def test_equals_an_explicit_forward_with_the_rules_by_hand(kind, method, params, rules, rtol):
    model = make_model(kind)
    images = images_for(model)
    classes = torch.tensor([0, 3, 6])
    ours = xaikit.get_method(method).create(model, **params).attribute(images, classes)
    assert_maps_close(ours, explicit_relevance(model, images, classes, **rules), rtol=rtol)


def test_explicit_forward_reproduces_the_model():
    for kind in model_kinds():
        model = make_model(kind)
        images = images_for(model)
        expected = model(images)
        logits, _, _ = explicit_forward(model, images, attention="attnlrp", layer_norm=True, identity=True)
        torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-12)
        logits, _, _ = explicit_forward(model, images, attention="cp", layer_norm=True, identity=True, gamma=0.3)
        torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["demo-cifar10-vit", "demo-shapes-vit"])
def test_demo_models_equal_the_explicit_forward(name):
    model = xaikit.load_model(name).double()
    images = images_for(model, batch=2)
    classes = model(images).argmax(dim=1)
    for variant in ("cp", "attnlrp"):
        ours = xaikit.get_method("attnlrp").create(model, variant=variant).attribute(images)
        expected = explicit_relevance(model, images, classes, attention=variant, layer_norm=True, identity=True)
        assert_maps_close(ours, expected)
    ours = xaikit.get_method("attcat").create(model).attribute(images)
    assert_maps_close(ours, explicit_attcat(model, images, classes))


def test_conservative_lrp_is_cp_lrp_at_its_defaults():
    """Both detach q, k and LayerNorm sigma and use the identity rule on GELU and LRP-0 on Linear."""
    model = make_model("registers")
    images = images_for(model)
    torch.testing.assert_close(
        xaikit.explain(model, images, "conservative_lrp"), xaikit.explain(model, images, "attnlrp", variant="cp"), rtol=0, atol=0
    )
    assert not torch.allclose(
        xaikit.explain(model, images, "conservative_lrp", gamma=0.5), xaikit.explain(model, images, "attnlrp", gamma=0.5)
    )


# -- lxt as the reference --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", model_kinds())
@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_equals_an_explicit_forward_with_lxt_rule_functions(lxt, kind, variant):
    model = make_model(kind)
    images = images_for(model)
    classes = torch.tensor([2, 2, 4])
    ours = xaikit.get_method("attnlrp").create(model, variant=variant).attribute(images, classes)
    expected = explicit_relevance(model, images, classes, attention=variant, layer_norm=True, identity=True, rules=lxt_rules(lxt))
    assert_maps_close(ours, expected)


def timm_to_torchvision(model):
    """A torchvision ViT with the weights of a plain timm ViT (class token, LayerNorm eps 1e-6)."""
    from torchvision.models.vision_transformer import VisionTransformer

    attn = model.blocks[0].attn
    tv = VisionTransformer(
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        num_layers=len(model.blocks),
        num_heads=attn.num_heads,
        hidden_dim=model.embed_dim,
        mlp_dim=model.blocks[0].mlp.fc1.out_features,
        num_classes=model.num_classes,
    ).to(model.pos_embed.dtype)
    state = {
        "class_token": model.cls_token,
        "conv_proj.weight": model.patch_embed.proj.weight,
        "conv_proj.bias": model.patch_embed.proj.bias,
        "encoder.pos_embedding": model.pos_embed,
        "encoder.ln.weight": model.norm.weight,
        "encoder.ln.bias": model.norm.bias,
        "heads.head.weight": model.head.weight,
        "heads.head.bias": model.head.bias,
    }
    for i, blk in enumerate(model.blocks):
        pairs = {
            "ln_1": blk.norm1, "ln_2": blk.norm2, "self_attention.out_proj": blk.attn.proj, "mlp.0": blk.mlp.fc1, "mlp.3": blk.mlp.fc2
        }
        for tv_name, module in pairs.items():
            state[f"encoder.layers.encoder_layer_{i}.{tv_name}.weight"] = module.weight
            state[f"encoder.layers.encoder_layer_{i}.{tv_name}.bias"] = module.bias
        state[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"] = blk.attn.qkv.weight
        state[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"] = blk.attn.qkv.bias
    tv.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return tv.eval()


def test_cp_lrp_equals_lxt_on_a_torchvision_vit(lxt, patched_classes):
    """lxt's own ViT map (``vit_torch.cp_LRP``, globally patched torchvision classes) on the same weights."""
    torch.manual_seed(0)
    import timm

    model = randomise(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5).double().eval())
    tv = timm_to_torchvision(model)
    images = images_for(model)
    classes = torch.tensor([0, 4, 2])
    torch.testing.assert_close(tv(images), model(images), rtol=1e-9, atol=1e-12)
    ours = {m: xaikit.get_method(m).create(model).attribute(images, classes) for m in LRP_METHODS}

    # lxt.efficient.monkey_patch(vision_transformer) applies exactly this map (core.py)
    for target, patch in lxt.vit_torch.cp_LRP.items():
        assert patch(target)
    entry = {}
    tv.encoder.dropout.register_forward_hook(lambda module, args, output: entry.setdefault("tokens", output))
    logits = tv(images)
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), entry["tokens"])
    expected = (entry["tokens"] * grad).sum(-1)[:, 1:].reshape(3, 4, 4).detach()
    for method in LRP_METHODS:
        assert_maps_close(ours[method], expected)


@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("gamma", [0.25, 1.0])
def test_gamma_rule_equals_zennit_gamma_as_lxt_runs_it(lxt, patched_classes, layer, gamma):
    """One layer: lxt's patched zennit hooks turn Gamma into gradient x input form."""
    import zennit.rules
    from zennit.composites import LayerMapComposite

    torch.manual_seed(0)
    if layer == "linear":
        module, x = nn.Linear(6, 5).double(), torch.randn(4, 7, 6, dtype=torch.float64)
    else:
        module, x = nn.Conv2d(3, 5, 4, stride=4).double(), torch.randn(2, 3, 8, 12, dtype=torch.float64)
    upstream = torch.randn_like(module(x))

    x_ours = x.clone().requires_grad_()
    output = zennit_gamma(gamma)(module, (x_ours,), module(x_ours))
    torch.testing.assert_close(output, module(x), rtol=0, atol=0)  # the forward value is untouched
    (ours,) = torch.autograd.grad((output * upstream).sum(), x_ours)

    lxt.zennit_patches.monkey_patch_zennit()
    composite = LayerMapComposite([((nn.Linear, nn.Conv2d), zennit.rules.Gamma(gamma))])
    x_ref = x.clone().requires_grad_()
    with composite.context(module):
        (reference,) = torch.autograd.grad((module(x_ref) * upstream).sum(), x_ref)
    assert_maps_close(ours * x, reference * x)


# -- ATTCAT --------------------------------------------------------------------------------------------
def explicit_attcat(model, images, classes):
    """sum_l (sum_d h_l * dy/dh_l) * mean_h mean_i A_l[h, i, j], from `explicit_forward` and plain gradients."""
    logits, inputs, attentions = explicit_forward(model, images)
    grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), inputs)
    total = 0
    for h, g, a in zip(inputs, grads, attentions):
        total = total + (h * g).sum(-1) * a.mean(dim=1).mean(dim=1)
    total = total[:, model.num_prefix_tokens :]
    return total.reshape(len(images), *xaikit.introspection.token_grid(model)).detach()


@pytest.mark.parametrize("kind", model_kinds())
def test_attcat_equals_its_formula(kind):
    model = make_model(kind)
    images = images_for(model)
    classes = torch.tensor([1, 0, 6])
    ours = xaikit.get_method("attcat").create(model).attribute(images, classes)
    assert_maps_close(ours, explicit_attcat(model, images, classes))


def test_attcat_uses_attention_columns_not_the_class_token_row():
    model = make_model("plain")
    images = images_for(model)
    classes = torch.tensor([1, 0, 6])
    logits, inputs, attentions = explicit_forward(model, images)
    grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), inputs)
    cls_row = sum((h * g).sum(-1) * a.mean(dim=1)[:, 0] for h, g, a in zip(inputs, grads, attentions))[:, 1:]
    ours = xaikit.get_method("attcat").create(model).attribute(images, classes)
    assert not torch.allclose(ours.flatten(1), cls_row, rtol=1e-3)


# -- any timm ViT, batches, targets --------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("kind", [*SMALL_VIT_KINDS, "dynamic"])
def test_batched_equals_one_image_at_a_time(method, kind):
    model = randomise(small_vit(kind))
    images = images_for(model, batch=3, dtype=torch.float32)
    targets = [0, 5, 2]
    batched = xaikit.explain(model, images, method, targets=targets)
    single = torch.cat([xaikit.explain(model, images[i : i + 1], method, targets=targets[i]) for i in range(3)])
    assert batched.shape == (3, *xaikit.introspection.token_grid(model)) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all() and batched.abs().amax() > 0
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6 * batched.abs().max().item())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_target_class_matters_and_callable_targets_work(method):
    model = make_model("deit_distilled")
    images = images_for(model)
    first, second = (xaikit.get_method(method).create(model).attribute(images, c) for c in (0, 1))
    assert not torch.allclose(first, second)
    via_callable = xaikit.get_method(method).create(model).attribute(images, lambda logits: logits[:, 0])
    torch.testing.assert_close(via_callable, first, rtol=0, atol=0)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_works_without_a_class_token(method):
    model = small_vit("registers", class_token=False, global_pool="avg")
    maps = xaikit.explain(model, images_for(model, dtype=torch.float32), method)
    assert maps.shape == (3, 4, 4) and torch.isfinite(maps).all()


def test_one_forward_and_one_gradient_pass_and_no_parameter_gradient():
    model = small_vit("plain")
    images = images_for(model, dtype=torch.float32)
    model(images).logsumexp(1).sum().backward()  # the caller's own gradients
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    reached = []
    handles = [p.register_hook(lambda grad, name=name: reached.append(name)) for name, p in model.named_parameters()]
    counts = {"forward": 0, "backward": 0}
    handles.append(model.register_forward_pre_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1)))
    handles.append(model.head.register_full_backward_hook(lambda *a: counts.__setitem__("backward", counts["backward"] + 1)))
    try:
        for method, params in [("conservative_lrp", {"gamma": 0.2}), ("attnlrp", {"gamma": 0.2}), ("attnlrp", {"variant": "attnlrp"}), ("attcat", {})]:
            counts.update(forward=0, backward=0)
            xaikit.explain(model, images, method, **params)
            assert counts == {"forward": 1, "backward": 1}, method
    finally:
        for handle in handles:
            handle.remove()
    assert reached == []
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), name


# -- the model is left as it was ---------------------------------------------------------------------
def hook_state(model):
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs")
    return [(name, kind, dict(getattr(module, kind))) for name, module in model.named_modules() for kind in kinds]


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("fails", [False, True])
def test_model_is_restored_exactly(method, fails):
    model = small_vit("registers")
    model.blocks[1].attn.fused_attn = True
    model.blocks[0].attn.fused_attn = False
    user_hook = model.blocks[0].norm1.register_forward_hook(lambda *a: None)  # a caller's own hook stays
    model.train()
    images = images_for(model, dtype=torch.float32)
    hooks, fused = hook_state(model), [blk.attn.fused_attn for blk in model.blocks]
    training = [m.training for m in model.modules()]
    with torch.no_grad():
        model.eval()
        before = model(images)
        model.train()

    def failing_target(logits):
        raise RuntimeError("target failed")

    explainer = xaikit.get_method(method).create(model)
    if fails:
        with pytest.raises(RuntimeError, match="target failed"):
            explainer(images, failing_target)
    else:
        explainer(images)
    assert hook_state(model) == hooks
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert [m.training for m in model.modules()] == training
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)
    user_hook.remove()
    assert all(not hooks for _, _, hooks in hook_state(model))


def test_rules_leave_the_forward_values_untouched():
    model = make_model("registers")
    images = images_for(model)
    plain = model(images)
    for attention in ("cp", "attnlrp"):
        for linear in (None, zennit_gamma(0.5)):
            rules = ModifiedGradient(model, attention=attention, linear_rule=linear, linear_layers=all_linear(model))
            with rules:
                torch.testing.assert_close(model(images), plain, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_exact_zeros_give_no_nan(dtype):
    """Zero inputs (x + 1e-10 rounds to 0 in float16) and zero gamma denominators: finite values and gradients."""
    x = torch.tensor([[0.0, 0.5, -2.0], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    activation, linear = nn.GELU(), nn.Linear(3, 2, bias=False).to(dtype)
    rules = [(activation, identity_rule), (linear, xai_transformers_gamma(0.5)), (linear, zennit_gamma(0.5))]
    for module, rule in rules:
        output = rule(module, (x,), module(x))
        assert torch.equal(output, module(x))
        (grad,) = torch.autograd.grad(output.sum(), x)
        assert torch.isfinite(grad).all()


# -- bad settings and unsupported models ---------------------------------------------------------------
@pytest.mark.parametrize(
    "method, params, message",
    [
        ("attnlrp", {"variant": "lrp"}, "variant must be one of 'cp', 'attnlrp'"),
        ("attnlrp", {"gamma": -0.1}, "gamma must be a finite number >= 0"),
        ("attnlrp", {"gamma": float("nan")}, "gamma must be"),
        ("conservative_lrp", {"gamma": True}, "gamma must be"),
        ("conservative_lrp", {"activation_rule": "relu"}, "activation_rule must be one of 'identity', 'gradient'"),
        ("attcat", {"gamma": 0.1}, "has no parameter 'gamma'"),
    ],
)
def test_bad_settings(method, params, message):
    with pytest.raises(InvalidParameterError, match=message):
        xaikit.explain(small_vit(), torch.randn(1, 3, 64, 64), method, **params)


@pytest.mark.parametrize("method", LRP_METHODS)
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(class_token=False, global_pool="map"), "attention-pooling head"),
        (dict(mlp_layer=__import__("timm").layers.SwiGLU), "gated MLPs are not covered"),
        (dict(norm_layer=__import__("timm").layers.RmsNorm), "normalises with RmsNorm"),
    ],
)
def test_unsupported_parts_are_refused(method, overrides, message):
    model = small_vit("plain", **overrides)
    with pytest.raises(UnsupportedModelError, match=message):
        xaikit.explain(model, torch.randn(1, 3, 64, 64), method)
