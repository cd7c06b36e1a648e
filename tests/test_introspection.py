"""ViTRecorder on random-weight timm ViTs of every supported layout."""

import pytest
import torch
from torch import nn

from xaikit import RECORDABLE, ViTRecorder
from xaikit.errors import InvalidParameterError, UnsupportedModelError

from conftest import SMALL_VIT_KINDS, small_vit

EXPECTED = {  # kind: (num_prefix_tokens, grid)
    "plain": (1, (4, 4)),
    "deit_distilled": (2, (4, 4)),
    "registers": (5, (4, 4)),
    "non_square": (1, (3, 5)),
}


def images_for(model, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=generator)


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
def test_records_every_tensor_with_batch_axis(kind):
    model = small_vit(kind)
    x = images_for(model)
    prefix, grid = EXPECTED[kind]
    with ViTRecorder(model) as rec:
        model(x)
    assert rec.num_prefix_tokens == prefix and rec.grid == grid
    tokens = prefix + grid[0] * grid[1]
    assert rec.num_tokens == tokens
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    head_dim = model.blocks[0].attn.head_dim
    assert len(rec.blocks) == len(model.blocks)
    for blk in rec.blocks:
        for name in ("input", "norm1", "attn_out", "norm2", "mlp_out"):
            assert blk.get(name).shape == (3, tokens, dim), name
        assert blk.attn.shape == (3, heads, tokens, tokens)
        assert blk.values.shape == (3, heads, tokens, head_dim)
        torch.testing.assert_close(blk.attn.sum(-1), torch.ones(3, heads, tokens))


@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
def test_recorded_tensors_recompute_the_block(kind):
    """The records are the tensors the block really used: recompute each block from them."""
    model = small_vit(kind)
    with torch.no_grad(), ViTRecorder(model) as rec:
        model(images_for(model))
    for i, (blk, r) in enumerate(zip(model.blocks, rec.blocks)):
        torch.testing.assert_close(r.norm1, blk.norm1(r.input))
        batch, heads, tokens, head_dim = r.values.shape
        mixed = (r.attn @ r.values).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        torch.testing.assert_close(r.attn_out, blk.ls1(blk.attn.proj(mixed)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r.norm2, blk.norm2(r.input + r.attn_out))
        torch.testing.assert_close(r.mlp_out, blk.ls2(blk.mlp(r.norm2)))
        if i + 1 < len(rec.blocks):
            torch.testing.assert_close(rec.blocks[i + 1].input, r.input + r.attn_out + r.mlp_out)


def test_batch_elements_are_independent_and_kept():
    model = small_vit("deit_distilled")
    x = images_for(model, batch=4)
    with torch.no_grad(), ViTRecorder(model) as rec:
        model(x)
        batched = rec.stacked("attn")
        model(x[2:3])
        single = rec.stacked("attn")
    assert batched.shape[1] == 4
    torch.testing.assert_close(batched[:, 2:3], single, rtol=1e-5, atol=1e-6)


def test_gradients_match_autograd():
    model = small_vit("registers")
    x = images_for(model, batch=2)
    with ViTRecorder(model, grads=("attn", "norm1", "values"), detach=False) as rec:
        score = model(x)[:, 3].sum()
        attn_maps = [blk.attn for blk in rec.blocks]
        expected = torch.autograd.grad(score, attn_maps + [rec.blocks[-1].norm1], retain_graph=True)
        score.backward()
    for blk, grad in zip(rec.blocks, expected):
        torch.testing.assert_close(blk.grad("attn"), grad)
    torch.testing.assert_close(rec.blocks[-1].grad("norm1"), expected[-1])
    assert rec.blocks[0].grad("values").shape == rec.blocks[0].values.shape


@pytest.mark.parametrize("fused", [True, False])
def test_model_restored_exactly(fused):
    model = small_vit("plain")
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    x = images_for(model)
    with torch.no_grad():
        before = model(x)
    hooks_before = all_hooks(model)
    with ViTRecorder(model, grads=("attn",)) as rec:
        assert all(blk.attn.fused_attn is False for blk in model.blocks)
        model(x)
    assert rec.blocks[0].attn is not None
    assert [blk.attn.fused_attn for blk in model.blocks] == [fused] * len(model.blocks)
    assert all_hooks(model) == hooks_before == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_model_restored_after_exception():
    model = small_vit("plain")
    with pytest.raises(ZeroDivisionError):
        with ViTRecorder(model):
            model(images_for(model))
            1 / 0
    assert all_hooks(model) == 0
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_dynamic_image_size_grid_follows_the_input():
    model = small_vit("dynamic")
    with torch.no_grad(), ViTRecorder(model, record=("attn",)) as rec:
        model(torch.randn(2, 3, 48, 96))
    assert rec.grid == (3, 6)
    assert rec.blocks[0].attn.shape[-1] == 1 + 18
    assert rec.blocks[0].input is None  # not asked for


def test_missing_records_and_grads_explain_themselves():
    model = small_vit("plain")
    with pytest.raises(RuntimeError, match="nothing recorded"):
        with ViTRecorder(model) as rec:
            rec.stacked("attn")
    with torch.no_grad(), ViTRecorder(model, record=("attn",)) as rec:
        model(images_for(model))
    with pytest.raises(RuntimeError, match="record=.*'norm1'"):
        rec.blocks[0].get("norm1")
    with pytest.raises(RuntimeError, match="grads=.*backward"):
        rec.blocks[0].grad("attn")
    with pytest.raises(InvalidParameterError, match="recordable tensors are"):
        ViTRecorder(model, record=("queries",))
    assert set(RECORDABLE) >= {"input", "norm1", "attn", "values", "attn_out", "norm2", "mlp_out"}


def test_refuses_models_that_are_not_timm_vits():
    with pytest.raises(UnsupportedModelError, match="torch.nn.modules.container.Sequential"):
        ViTRecorder(nn.Sequential(nn.Linear(3, 3)))
    import torchvision

    with pytest.raises(UnsupportedModelError, match="ResNet"):
        ViTRecorder(torchvision.models.resnet18())
    model = small_vit("plain")
    model.blocks[1].attn = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="block 1 .* lacks qkv, attn_drop, proj"):
        ViTRecorder(model)
