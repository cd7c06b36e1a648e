"""CDAM, Smooth CDAM, Integrated CDAM and concept targets beyond the golden files: any timm ViT layout,
the batched tail against the authors' per-sample loop, the paper variants, and the target mechanism."""

import copy

import numpy as np
import pytest
import torch

import xaikit
from xaikit.methods.cdam import last_block_input, per_sample_cdam

from conftest import SMALL_VIT_KINDS, small_vit

CDAM_FAMILY = ("cdam", "smooth_cdam", "integrated_cdam")


def images_for(model, batch=3, seed=0):
    height, width = model.patch_embed.img_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", SMALL_VIT_KINDS)
@pytest.mark.parametrize("method", CDAM_FAMILY)
def test_every_layout_gives_one_signed_score_per_patch(kind, method):
    model = small_vit(kind)
    params = {"n_samples": 4} if method == "smooth_cdam" else {"n_steps": 4} if method == "integrated_cdam" else {}
    maps = xaikit.explain(model, images_for(model), method, **params)
    gh, gw = model.patch_embed.grid_size
    assert maps.shape == (3, gh, gw) and torch.isfinite(maps).all()
    assert (maps < 0).any() and (maps > 0).any()


def test_smooth_cdam_batched_equals_the_per_sample_loop():
    model = small_vit("plain").double()
    images = images_for(model).double()
    n, level = 6, 0.05
    bank = torch.randn(n, 1, 17, 192, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = xaikit.get_method("smooth_cdam").create(model, n_samples=n, noise_level=level, noise=bank).attribute(images, 2)
    loop = per_sample_cdam(model, images, 2, method="smooth_cdam", n=n, noise_level=level, noise=bank)
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-12)


def test_integrated_cdam_code_variant_equals_the_per_step_loop():
    model = small_vit("plain").double()
    images = images_for(model, batch=2).double()
    n = 5
    ours = xaikit.get_method("integrated_cdam").create(model, n_steps=n).attribute(images, [4, 1])
    loop = per_sample_cdam(model, images, [4, 1], method="integrated_cdam", n=n)
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-12)


def test_generator_noise_is_reproducible_and_independent_of_batching():
    model = small_vit("plain")
    images = images_for(model, batch=4)

    def run(batch_size):
        return xaikit.explain(model, images, "smooth_cdam", n_samples=5, generator=torch.Generator().manual_seed(7), batch_size=batch_size)

    torch.testing.assert_close(run(4), run(4), rtol=0, atol=0)
    torch.testing.assert_close(run(1), run(4), rtol=1e-5, atol=1e-6)
    different = xaikit.explain(model, images, "smooth_cdam", n_samples=5, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(different, run(4))


@pytest.mark.parametrize("space", ["code", "paper"])
def test_smooth_cdam_without_noise_is_cdam(space):
    model = small_vit("registers").double()
    images = images_for(model).double()
    cdam = xaikit.get_method("cdam").create(model).attribute(images)
    smooth = xaikit.get_method("smooth_cdam").create(model, n_samples=3, noise_level=0.0, space=space).attribute(images)
    torch.testing.assert_close(smooth, cdam, rtol=1e-10, atol=1e-12)


def test_integrated_cdam_paper_variant_with_one_step_is_cdam_and_differs_from_the_code_variant():
    model = small_vit("plain").double()
    images = images_for(model).double()
    cdam = xaikit.get_method("cdam").create(model).attribute(images)
    one_step = xaikit.get_method("integrated_cdam").create(model, n_steps=1, space="paper").attribute(images)
    torch.testing.assert_close(one_step, cdam, rtol=1e-10, atol=1e-12)
    paper = xaikit.get_method("integrated_cdam").create(model, n_steps=8, space="paper").attribute(images)
    code = xaikit.get_method("integrated_cdam").create(model, n_steps=8, space="code").attribute(images)
    assert not torch.allclose(paper, code)


def test_all_copies_go_through_the_last_block_in_large_batches():
    model = small_vit("plain")
    calls = {"first": [], "last": []}
    model.blocks[0].register_forward_hook(lambda m, a, out: calls["first"].append(out.shape[0]))
    model.blocks[-1].norm1.register_forward_hook(lambda m, a, out: calls["last"].append(out.shape[0]))
    xaikit.explain(model, images_for(model, batch=4), "smooth_cdam", n_samples=50)
    assert calls["first"] == [4]  # the model up to the last block runs once
    assert sum(calls["last"]) == 4 + 50 * 4 and len(calls["last"]) <= 3  # the clean pass, then all 200 copies


@pytest.mark.parametrize("kind", ["plain", "deit_distilled", "registers"])
def test_the_class_rows_tail_equals_the_whole_last_block(kind):
    """Only the rows the head reads are computed after T; outputs and dscore/dT are those of the full block."""
    from xaikit.methods.cdam import head_rows, run_tail

    model = small_vit(kind).double()
    x_in = last_block_input(model, images_for(model).double())
    outputs, tokens = run_tail(model, x_in)
    (grad,) = torch.autograd.grad(outputs[:, 1].sum(), tokens)
    full_tokens = model.blocks[-1].norm1(x_in).detach().requires_grad_(True)
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, a, out: full_tokens)
    full = model.forward_head(model.norm(model.blocks[-1](x_in)))
    handle.remove()
    (full_grad,) = torch.autograd.grad(full[:, 1].sum(), full_tokens)
    assert head_rows(model) == ([0, 1] if kind == "deit_distilled" else [0])
    torch.testing.assert_close(outputs, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-10, atol=1e-12)
    assert head_rows(small_vit("plain", global_pool="avg", class_token=False)) is None  # every row is read: the full block


def test_no_parameter_gradient_frozen_models_and_training_mode():
    model = small_vit("plain").train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    frozen = small_vit("plain").requires_grad_(False)
    images = images_for(model)
    for method in CDAM_FAMILY:
        xaikit.explain(model, images, method)
        assert model.training and all(bool((p.grad == 1).all()) for p in model.parameters())
        torch.testing.assert_close(xaikit.explain(frozen, images, method, **({"generator": torch.Generator().manual_seed(0)} if method == "smooth_cdam" else {})),
                                   xaikit.explain(small_vit("plain"), images, method, **({"generator": torch.Generator().manual_seed(0)} if method == "smooth_cdam" else {})))


def test_bad_settings_are_refused_clearly():
    model = small_vit("plain")
    with pytest.raises(xaikit.InvalidParameterError, match="space"):
        xaikit.explain(model, images_for(model), "smooth_cdam", space="pre-norm")
    with pytest.raises(xaikit.InvalidParameterError, match="n_samples"):
        xaikit.explain(model, images_for(model), "smooth_cdam", n_samples=0)
    with pytest.raises(xaikit.InvalidParameterError, match=r"shape \(n_samples, 1, N, D\)"):
        xaikit.explain(model, images_for(model), "smooth_cdam", n_samples=2, noise=torch.zeros(3, 1, 17, 192))
    with pytest.raises(xaikit.InvalidParameterError, match="at least 2"):
        xaikit.explain(model, images_for(model), "integrated_cdam", n_steps=1)


# -- concept targets ---------------------------------------------------------------------------


def test_concept_vector_is_the_mean_final_norm_class_token_and_similarities_score_it():
    model = small_vit("plain")
    concept_images = images_for(model, batch=4, seed=5)
    concept = xaikit.concept_target(model, concept_images)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(concept_images), pre_logits=True)
    torch.testing.assert_close(concept.vector, features.mean(0))
    torch.testing.assert_close(concept(features), features @ features.mean(0))
    cosine = xaikit.concept_target(model, concept_images, similarity="cosine")
    torch.testing.assert_close(cosine(3.0 * features), cosine(features))  # scale-free
    distance = xaikit.concept_target(model, concept_images, similarity="neg_l2")
    assert torch.allclose(distance(features.mean(0, keepdim=True)), torch.zeros(1), atol=1e-5)  # the concept itself is closest
    with pytest.raises(xaikit.InvalidParameterError, match="similarity"):
        xaikit.concept_target(model, concept_images, similarity="euclid")


def test_a_folder_of_images_defines_a_concept(tmp_path):
    from PIL import Image

    model = small_vit("plain")
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    for k, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / f"{k}.png")
    from_folder = xaikit.concept_target(model, tmp_path)
    from_arrays = xaikit.concept_target(model, np.stack(pictures))
    torch.testing.assert_close(from_folder.vector, from_arrays.vector)
    (tmp_path / "empty").mkdir()
    with pytest.raises(xaikit.InvalidParameterError, match="no image file"):
        xaikit.concept_target(model, tmp_path / "empty")


@pytest.mark.parametrize("method", ["cdam", "smooth_cdam", "gradcam", "smoothgrad", "input_x_gradient", "gae", "token_ablation"])
def test_gradient_methods_explain_a_concept_score_and_restore_the_head(method):
    model = small_vit("deit_distilled")
    head, head_dist = model.head, model.head_dist
    images = images_for(model, batch=2)
    concept = xaikit.concept_target(model, images_for(model, batch=2, seed=9))
    params = {"n_samples": 2} if method in ("smooth_cdam", "smoothgrad") else {}
    maps = xaikit.explain(model, images, method, concept, **params)
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert model.head is head and model.head_dist is head_dist
    assert not torch.allclose(maps, xaikit.explain(model, images, method, 0, **params))  # not the class-0 map


def test_concept_cdam_is_the_cdam_of_the_similarity_computed_by_hand():
    model = small_vit("plain").double()
    images = images_for(model).double()
    concept = xaikit.concept_target(model, images_for(model, seed=4).double())
    by_hand = xaikit.get_method("cdam").create(model).attribute
    # a callable on the logits cannot see the features: a copy of the model without its head can
    headless = copy.deepcopy(model)
    headless.head = torch.nn.Identity()
    expected = xaikit.get_method("cdam").create(headless).attribute(images, lambda features: features @ concept.vector)
    torch.testing.assert_close(by_hand(images, concept), expected)


def test_relevance_propagation_methods_refuse_feature_targets_and_restore_on_error():
    model = small_vit("plain")
    head = model.head
    concept = xaikit.concept_target(model, images_for(model, batch=2))
    with pytest.raises(xaikit.InvalidParameterError, match="cannot explain a score of the features"):
        xaikit.explain(model, images_for(model), "transformer_attribution", concept)
    with pytest.raises(xaikit.InvalidParameterError):
        xaikit.explain(model, images_for(model)[:, :2], "cdam", concept)  # bad images, after the head swap
    assert model.head is head and not hasattr(model, "_xaikit_scoring_features")
