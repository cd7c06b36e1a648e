"""TokenTM and the random floor.

TokenTM has no reference code, so it is pinned down here by: a hand-computed case (a
3-token, 2-block ViT with 1 or 2 heads, with and without layer scale) recomputed in plain
float64 NumPy straight from the spec's pseudo-code, full N x N matrices, explicit loops
over heads, attention gradients by finite differences; the ablation structure (``af`` with
logit gradients is GAE times 2^blocks); the class-token-row propagation against the full
matrix product, for every depth; and the fast per-head formulas against the naive ones.
"""

from __future__ import annotations

from decimal import Decimal, getcontext
from functools import lru_cache, partial

import numpy as np
import pytest
import torch
from scipy.special import erf
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import xaikit
from xaikit.errors import InvalidParameterError, UnsupportedModelError
from xaikit.methods.tokentm import GRADIENTS, TokenTM, probability_gradient_score, transformed_head_statistics

from conftest import SMALL_VIT_KINDS, small_vit


# -- the hand-computed case ---------------------------------------------------------
@lru_cache
def tiny_vit(heads: int, layer_scale: bool) -> nn.Module:
    """img 4x8, patch 4: a 1x2 grid, 3 tokens with the class token; depth 2, dim 8."""
    torch.manual_seed(10 * heads + layer_scale)
    model = VisionTransformer(
        img_size=(4, 8), patch_size=4, embed_dim=8, depth=2, num_heads=heads, mlp_ratio=2, qkv_bias=True,
        num_classes=3, init_values=0.5 if layer_scale else None, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.double().eval()


def tiny_images() -> torch.Tensor:
    return torch.randn(2, 3, 4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def numpy_weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * weight + bias


def numpy_forward(P, image, heads, depth=2, perturb=None):
    """Logits and every intermediate of the tiny ViT; `perturb` = (block, head, i, j, delta) adds
    delta to one attention probability (for finite differences)."""
    dim = P["cls_token"].shape[-1]
    head_dim = dim // heads
    patches = [image[:, 0:4, 4 * c : 4 * c + 4].reshape(-1) for c in range(2)]  # row-major 1x2 grid
    embedded = [P["patch_embed.proj.weight"].reshape(dim, -1) @ p + P["patch_embed.proj.bias"] for p in patches]
    x = np.stack([P["cls_token"][0, 0], *embedded]) + P["pos_embed"][0]
    trace = {"E0": x.copy(), "blocks": []}
    for b in range(depth):
        pre = f"blocks.{b}."
        gamma1 = P.get(pre + "ls1.gamma", np.ones(dim))
        gamma2 = P.get(pre + "ls2.gamma", np.ones(dim))
        E = x
        Z = layer_norm(E, P[pre + "norm1.weight"], P[pre + "norm1.bias"])
        qkv = Z @ P[pre + "attn.qkv.weight"].T + P[pre + "attn.qkv.bias"]
        q, k, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
        A, V, outputs = [], [], []
        for h in range(heads):
            s = slice(h * head_dim, (h + 1) * head_dim)
            scores = q[:, s] @ k[:, s].T / np.sqrt(head_dim)
            a = np.exp(scores - scores.max(1, keepdims=True))
            a = a / a.sum(1, keepdims=True)
            if perturb is not None and perturb[:2] == (b, h):
                a = a.copy()
                a[perturb[2], perturb[3]] += perturb[4]
            A.append(a)
            V.append(v[:, s])
            outputs.append(a @ v[:, s])
        attn_out = gamma1 * (np.concatenate(outputs, 1) @ P[pre + "attn.proj.weight"].T + P[pre + "attn.proj.bias"])
        E2 = E + attn_out
        Z2 = layer_norm(E2, P[pre + "norm2.weight"], P[pre + "norm2.bias"])
        hidden = Z2 @ P[pre + "mlp.fc1.weight"].T + P[pre + "mlp.fc1.bias"]
        hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
        mlp_out = gamma2 * (hidden @ P[pre + "mlp.fc2.weight"].T + P[pre + "mlp.fc2.bias"])
        x = E2 + mlp_out
        trace["blocks"].append(dict(E=E, Z=Z, A=A, V=V, E2=E2, Z2=Z2, mlp_out=mlp_out, gamma1=gamma1))
    if depth == len([k for k in P if k.endswith("norm1.weight")]):
        x = layer_norm(x, P["norm.weight"], P["norm.bias"])
        trace["logits"] = x[0] @ P["head.weight"].T + P["head.bias"]
    return trace


def numpy_score(P, image, heads, target, gradient, perturb=None):
    logits = numpy_forward(P, image, heads, perturb=perturb)["logits"]
    if gradient == "logit":
        return logits[target]
    p = np.exp(logits - logits.max())
    return (p / p.sum())[target]


def numpy_attention_gradients(P, image, heads, target, gradient, step=1e-6):
    """G^h = d score / d A^h by central differences, every block and head."""
    G = []
    for b in range(2):
        per_head = []
        for h in range(heads):
            g = np.zeros((3, 3))
            for i in range(3):
                for j in range(3):
                    up = numpy_score(P, image, heads, target, gradient, (b, h, i, j, step))
                    down = numpy_score(P, image, heads, target, gradient, (b, h, i, j, -step))
                    g[i, j] = (up - down) / (2 * step)
            per_head.append(g)
        G.append(per_head)
    return G


def numpy_layer_weights(P, blk, b, heads, variant="full", input_tokens="residual", transformed="per_head", domain="all"):
    """diag(W^h) of the MHSA layer (one per head) and diag(W) of the FFN layer, Eq. 12-13."""
    def length(x):
        return np.sqrt((x**2).sum(-1))

    def weights(E, transformed_tokens):
        if variant == "af":
            return np.ones(3)
        ratio = length(transformed_tokens) / length(E)
        if variant == "af_l":
            return ratio
        cos = (E * transformed_tokens).sum(-1) / (length(E) * length(transformed_tokens))
        normaliser = np.exp(cos).sum() if domain == "all" else np.exp(cos[1:]).sum()
        return ratio * np.exp(cos) / normaliser

    E = blk["Z"] if input_tokens == "normed" else blk["E"]
    W_proj = P[f"blocks.{b}.attn.proj.weight"]
    head_dim = W_proj.shape[1] // heads
    if transformed == "per_head":
        attn_w = []
        for h in range(heads):
            Et_h = blk["gamma1"] * (blk["V"][h] @ W_proj[:, h * head_dim : (h + 1) * head_dim].T)  # v^h W_proj,h^T
            attn_w.append(weights(E, Et_h))
    else:
        Et = blk["gamma1"] * (np.concatenate(blk["V"], 1) @ W_proj.T + P[f"blocks.{b}.attn.proj.bias"])
        attn_w = [weights(E, Et)] * heads
    E2 = blk["Z2"] if input_tokens == "normed" else blk["E2"]
    return attn_w, weights(E2, blk["mlp_out"])


def numpy_tokentm(P, image, heads, target, variant="full", gradient="probability", depth=None, **choices):
    """The spec's pseudo-code (§3.2), with full 3x3 matrices."""
    depth = depth or 2
    trace = numpy_forward(P, image, heads)
    G = numpy_attention_gradients(P, image, heads, target, gradient)
    relu = partial(np.maximum, 0)
    if variant == "baseline":
        b = depth - 1
        return sum(relu(G[b][h]) * trace["blocks"][b]["A"][h] for h in range(heads))[0, 1:] / heads
    I = np.eye(3)
    C = I.copy() if variant == "af" else np.diag(np.sqrt((trace["E0"] ** 2).sum(-1)))  # Eq. 18
    for b in range(depth):
        blk = trace["blocks"][b]
        attn_w, ffn_w = numpy_layer_weights(P, blk, b, heads, variant, **choices)
        U = I.copy()
        for h in range(heads):
            U += relu(G[b][h]) * (blk["A"][h] @ np.diag(attn_w[h])) / heads  # Eq. 14-15
        C = U @ C  # Eq. 19
        C = (I + np.diag(ffn_w)) @ C  # Eq. 16-17
    return C[0, 1:]


TINY_SETUPS = [(1, False), (2, False), (2, True)]
CONFIGURATIONS = [
    {},
    {"variant": "af_l"},
    {"variant": "af"},
    {"variant": "baseline"},
    {"gradient": "logit"},
    {"depth": 1},
    {"variant": "baseline", "depth": 1},
    {"input_tokens": "normed"},
    {"transformed_tokens": "shared"},
    {"necc_domain": "patches"},
]
CHOICE_NAMES = {"input_tokens": "input_tokens", "transformed_tokens": "transformed", "necc_domain": "domain"}


def test_numpy_reference_is_the_timm_model():
    for heads, layer_scale in TINY_SETUPS:
        model = tiny_vit(heads, layer_scale)
        images = tiny_images()
        with torch.no_grad():
            logits = model(images).numpy()
        P = numpy_weights(model)
        for i in range(2):
            np.testing.assert_allclose(numpy_forward(P, images[i].numpy(), heads)["logits"], logits[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads, layer_scale", TINY_SETUPS)
@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_hand_computed_case(heads, layer_scale, config):
    model = tiny_vit(heads, layer_scale)
    images = tiny_images()
    targets = [0, 2]
    maps = TokenTM.create(model, **config).attribute(images, targets)
    assert maps.shape == (2, 1, 2) and maps.dtype == torch.float64
    P = numpy_weights(model)
    choices = {CHOICE_NAMES[k]: v for k, v in config.items() if k in CHOICE_NAMES}
    settings = {k: v for k, v in config.items() if k not in CHOICE_NAMES}
    for i, target in enumerate(targets):
        expected = numpy_tokentm(P, images[i].numpy(), heads, target, **settings, **choices)
        np.testing.assert_allclose(maps[i].flatten().numpy(), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("heads, layer_scale", TINY_SETUPS)
@pytest.mark.parametrize(
    "choices",
    [{}, {"input_tokens": "normed"}, {"transformed_tokens": "shared"}, {"necc_domain": "patches"}, {"variant": "af_l"}],
)
def test_hand_computed_layer_weights(heads, layer_scale, choices):
    """Eq. 12-13 on their own: the diagonal of W per head (MHSA) and for the FFN, block by block."""
    model = tiny_vit(heads, layer_scale)
    images = tiny_images()
    explainer = TokenTM.create(model, **choices)
    with xaikit.ViTRecorder(model, record=explainer.records) as recorder, torch.no_grad():
        model(images)
        ours = [explainer.token_weights(record, model.blocks[record.index], 1) for record in recorder.blocks]
    P = numpy_weights(model)
    numpy_choices = {CHOICE_NAMES[k]: v for k, v in choices.items() if k in CHOICE_NAMES}
    for i in range(2):
        trace = numpy_forward(P, images[i].numpy(), heads)
        for b, (attn_w, ffn_w) in enumerate(ours):
            expected_attn, expected_ffn = numpy_layer_weights(
                P, trace["blocks"][b], b, heads, choices.get("variant", "full"), **numpy_choices
            )
            np.testing.assert_allclose(attn_w[i].expand(heads, 3).numpy(), np.stack(expected_attn), rtol=1e-10)
            np.testing.assert_allclose(ffn_w[i].numpy(), expected_ffn, rtol=1e-10)


# -- structure: GAE, full products, depth ------------------------------------------------
@pytest.fixture(scope="module")
def demo_model():
    return xaikit.load_model("demo-cifar10-vit")


@lru_cache
def cached_vit(kind: str, depth: int = 2) -> nn.Module:
    """small_vit(kind), built once per module: only for tests that leave the model as it is."""
    return small_vit(kind, depth=depth)


def model_and_images(kind, batch=3):
    model = cached_vit(kind)
    h, w = model.patch_embed.img_size
    return model, torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", [*SMALL_VIT_KINDS, "demo"])
def test_af_with_logit_gradient_is_gae_times_two_to_the_depth(kind, demo_model):
    if kind == "demo":
        model, images = demo_model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    else:
        model, images = model_and_images(kind)
    gae = xaikit.explain(model, images, "gae", targets=1)
    tokentm = xaikit.explain(model, images, "tokentm", targets=1, variant="af", gradient="logit")
    assert gae.abs().max() > 0
    torch.testing.assert_close(tokentm, gae * 2 ** len(model.blocks), rtol=1e-5, atol=0)


def full_matrix_tokentm(model, images, targets, depth, **settings):
    """C = F_n U_n ... F_1 U_1 C⁰ as (B, N, N) matrices, from a recorder run of our own."""
    explainer = TokenTM.create(model, depth=depth, **settings)
    with xaikit.ViTRecorder(model, record=explainer.records, grads=("attn",)) as recorder:
        logits = model(images)
        probs = logits.softmax(1)
        recorder.backprop(probs[torch.arange(len(images)), targets].sum())
        prefix = recorder.num_prefix_tokens
        with torch.no_grad():
            E0 = recorder.blocks[0].get("input")
            batch, tokens, _ = E0.shape
            eye = torch.eye(tokens).expand(batch, tokens, tokens)
            C = torch.diag_embed(E0.norm(dim=-1))
            for record in recorder.blocks[:depth]:
                attn_w, ffn_w = explainer.token_weights(record, model.blocks[record.index], prefix)
                A, G = record.get("attn"), record.grad("attn")
                U = eye + (G.clamp(min=0) * (A @ torch.diag_embed(attn_w))).mean(1)
                C = (eye + torch.diag_embed(ffn_w)) @ U @ C
    return C[:, 0, prefix:]


@pytest.mark.parametrize("kind", ["plain", "registers"])
@pytest.mark.parametrize("variant", ["full", "af_l"])
def test_class_token_row_equals_full_product_for_every_depth(kind, variant):
    model = cached_vit(kind, depth=3)
    h, w = model.patch_embed.img_size
    images = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([2, 5])
    for depth in (1, 2, 3):
        ours = xaikit.explain(model, images, "tokentm", targets=targets, variant=variant, depth=depth).flatten(1)
        expected = full_matrix_tokentm(model, images, targets, depth, variant=variant)
        torch.testing.assert_close(ours, expected.float(), rtol=1e-4, atol=1e-12)
    # depth=None is every block
    torch.testing.assert_close(
        xaikit.explain(model, images, "tokentm", targets=targets, variant=variant),
        xaikit.explain(model, images, "tokentm", targets=targets, variant=variant, depth=3),
    )


def test_depth_changes_the_map_but_not_the_gradient_source():
    """depth=n keeps the full model's gradients: it is not TokenTM of a model cut after n blocks."""
    model, images = model_and_images("plain")
    assert not torch.allclose(xaikit.explain(model, images, "tokentm", depth=1), xaikit.explain(model, images, "tokentm"))
    cut = small_vit("plain")
    cut.blocks = cut.blocks[:1]
    assert not torch.allclose(xaikit.explain(model, images, "tokentm", depth=1), xaikit.explain(cut, images, "tokentm"))


def test_fast_head_statistics_equal_the_naive_ones():
    model = small_vit("registers")  # layer scale
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.copy_(torch.rand_like(block.ls1.gamma) + 0.5)
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(6))
    with xaikit.ViTRecorder(model, record=("input", "values", "attn", "attn_out")) as recorder, torch.no_grad():
        model(images)
    block, record = model.blocks[1], recorder.blocks[1]
    E, v, A = record.get("input"), record.get("values"), record.get("attn")
    heads, head_dim = v.shape[1], v.shape[-1]
    W, gamma = block.attn.proj.weight.detach(), block.ls1.gamma.detach()
    naive = torch.stack([gamma * (v[:, h] @ W[:, h * head_dim : (h + 1) * head_dim].T) for h in range(heads)], 1)
    # The per-head transformed tokens, mixed by attention, plus the projection bias, are what ls1 adds.
    added = torch.einsum("bhij,bhjd->bid", A, naive) + gamma * block.attn.proj.bias.detach()
    torch.testing.assert_close(added, record.get("attn_out"), rtol=1e-4, atol=1e-6)
    lengths, dots = transformed_head_statistics(E, v, (W * gamma[:, None]).T)
    torch.testing.assert_close(lengths, naive.norm(dim=-1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(dots, (E.unsqueeze(1) * naive).sum(-1), rtol=1e-4, atol=1e-6)


def test_probability_gradient_is_exact_even_when_the_probability_rounds_to_one():
    rows, classes = [[30.0, 0.0, -5.0, 1.0], [0.3, -0.2, 1.1, 0.0]], [0, 1]
    getcontext().prec = 60  # the exact gradient p_c (e_c - p), to 60 digits
    reference = []
    for row, c in zip(rows, classes):
        exps = [Decimal(x).exp() for x in row]
        p = [e / sum(exps) for e in exps]
        reference.append([float(p[c] * ((k == c) - p[k])) for k in range(len(row))])
    reference = torch.tensor(reference, dtype=torch.float64)
    logits64 = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor(classes)
    (ours64,) = torch.autograd.grad(probability_gradient_score(logits64, classes).sum(), logits64)
    torch.testing.assert_close(ours64, reference, rtol=1e-13, atol=0)
    logits32 = logits64.detach().float().requires_grad_()
    (ours32,) = torch.autograd.grad(probability_gradient_score(logits32, classes).sum(), logits32)
    torch.testing.assert_close(ours32, reference.float(), rtol=1e-5, atol=0)
    (naive32,) = torch.autograd.grad(logits32.softmax(1)[torch.arange(2), classes].sum(), logits32)
    assert naive32[0, 0] == 0 and reference[0, 0] > 0  # what the closed form avoids


def test_gradient_choice_matters_and_probability_is_the_default():
    model, images = model_and_images("plain")
    default = xaikit.explain(model, images, "tokentm")
    torch.testing.assert_close(default, xaikit.explain(model, images, "tokentm", gradient="probability"))
    assert not torch.allclose(default, xaikit.explain(model, images, "tokentm", gradient="logit"))
    # a callable target is its own score
    torch.testing.assert_close(
        xaikit.explain(model, images, "tokentm", targets=lambda logits: logits[:, 3], gradient="probability"),
        xaikit.explain(model, images, "tokentm", targets=3, gradient="logit"),
    )


# -- any timm ViT --------------------------------------------------------------------
@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
def test_batched_equals_one_at_a_time(kind):
    model, images = model_and_images(kind)
    targets = [0, 3, 6]
    batched = xaikit.explain(model, images, "tokentm", targets=targets)
    single = torch.cat([xaikit.explain(model, images[i : i + 1], "tokentm", targets=t) for i, t in enumerate(targets)])
    gh, gw = model.patch_embed.grid_size
    assert batched.shape == (3, gh, gw) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all() and (batched >= 0).all() and (batched.flatten(1).max(1).values > 0).all()
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6 * float(batched.max()))
    assert not torch.allclose(batched, xaikit.explain(model, images, "tokentm", targets=1), rtol=1e-3, atol=0)


def test_demo_model(demo_model):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    for variant in ("full", "af_l", "af", "baseline"):
        maps = xaikit.explain(demo_model, images, "tokentm", variant=variant)
        assert maps.shape == (3, 8, 8) and torch.isfinite(maps).all() and (maps >= 0).all()
        assert (maps.flatten(1).max(1).values > 0).all()


def test_one_forward_one_gradient_pass_and_no_parameter_gradient():
    model, images = model_and_images("plain", batch=2)
    passes = []
    handles = [
        model.register_forward_pre_hook(lambda *a: passes.append("forward")),
        model.head.register_full_backward_hook(lambda *a: passes.append("backward")),
    ]
    touched = []
    for name, p in model.named_parameters():
        handles.append(p.register_hook(lambda grad, name=name: touched.append(name)))
    try:
        xaikit.explain(model, images, "tokentm")
    finally:
        for handle in handles:
            handle.remove()
    assert passes == ["forward", "backward"] and touched == []
    assert all(p.grad is None for p in model.parameters())


def test_model_without_class_token_is_refused():
    model = small_vit("plain", class_token=False, global_pool="avg")
    with pytest.raises(InvalidParameterError, match="reads the class token, but this model has none"):
        xaikit.explain(model, torch.randn(1, 3, 64, 64), "tokentm")


def test_block_structures_it_cannot_split_are_refused():
    model = small_vit("plain", scale_attn_norm=True)
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(UnsupportedModelError, match="block 0 does not fit: its attention normalises"):
        xaikit.explain(model, images, "tokentm")
    assert xaikit.explain(model, images, "tokentm", variant="af").shape == (1, 4, 4)  # needs only A and G


@pytest.mark.parametrize(
    "params, message",
    [
        ({"variant": "AF"}, "variant must be one of 'full', 'af_l', 'af', 'baseline'; got 'AF'"),
        ({"gradient": "loss"}, "gradient must be one of 'probability', 'logit'"),
        ({"depth": 0}, r"depth must be None \(all blocks\) or an int in \[1, 2\]; got 0"),
        ({"depth": 3}, r"int in \[1, 2\]; got 3"),
        ({"depth": True}, "got True"),
        ({"input_tokens": "pre_ln"}, "input_tokens must be one of 'residual', 'normed'"),
        ({"transformed_tokens": "heads"}, "transformed_tokens must be one of 'per_head', 'shared'"),
        ({"necc_domain": "tokens"}, "necc_domain must be one of 'all', 'patches'"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(InvalidParameterError, match=message):
        xaikit.explain(cached_vit("plain"), torch.randn(1, 3, 64, 64), "tokentm", **params)


def test_bad_targets_are_refused_for_both_gradients():
    model, images = model_and_images("plain", batch=1)
    for gradient in GRADIENTS:
        with pytest.raises(InvalidParameterError, match="target class 7 is out of range: the model has 7 classes"):
            xaikit.explain(model, images, "tokentm", targets=7, gradient=gradient)
    maps = xaikit.explain(model, images, "tokentm", depth=np.int64(1))
    torch.testing.assert_close(maps, xaikit.explain(model, images, "tokentm", depth=1))


# -- random ----------------------------------------------------------------------------
def test_random_is_a_seeded_uniform_floor_without_a_forward_pass():
    model, images = model_and_images("deit_distilled", batch=5)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        maps = xaikit.explain(model, images, "random")
    finally:
        handle.remove()
    assert calls == []
    assert maps.shape == (5, 4, 4) and maps.dtype == torch.float32 and ((maps >= 0) & (maps < 1)).all()
    expected = np.random.default_rng(0).random((5, 4, 4))
    torch.testing.assert_close(maps, torch.from_numpy(expected).float())
    # class- and image-independent, reproducible, seed-dependent
    torch.testing.assert_close(maps, xaikit.explain(model, -images, "random", targets=[1, 2, 3, 4, 5]))
    assert not torch.allclose(maps, xaikit.explain(model, images, "random", seed=1))
    torch.testing.assert_close(maps, xaikit.explain(model, images, "random", batch_size=2))
    assert not torch.allclose(maps[0], maps[1])


def test_random_works_on_any_grid_and_without_class_token():
    maps = xaikit.explain(cached_vit("non_square"), torch.randn(2, 3, 48, 80), "random", seed=3)
    assert maps.shape == (2, 3, 5)
    pooled = small_vit("plain", class_token=False, global_pool="avg")
    assert xaikit.explain(pooled, torch.randn(1, 3, 64, 64), "random").shape == (1, 4, 4)
    with pytest.raises(InvalidParameterError, match="seed"):
        xaikit.explain(pooled, torch.randn(1, 3, 64, 64), "random", seed=-1)
    with pytest.raises(InvalidParameterError, match="one integer class index per image"):
        xaikit.explain(pooled, torch.randn(2, 3, 64, 64), "random", targets=[1, 2, 3])
