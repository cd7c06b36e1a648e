"""The CDAM family and the CDAM paper's baselines reproduce the authors' reference outputs (tests/golden).

float32 files: relative error below 1e-4; float64 files: below 1e-10 (1e-4 for Grad-CAM++,
whose alpha denominator nearly cancels; see tests/golden/README.md).
Relative error = max |ours - reference| / max |reference|.
"""

import numpy as np
import pytest
import torch

import xaikit
from xaikit.metrics import compactness

from conftest import build_golden_model, golden, golden_attribute as attribute, relative_error






def both_columns(model, images, reference, key, method, **params):
    """Max relative error over the two target columns of a (4, 2, ...) reference array."""
    return max(
        relative_error(attribute(model, images, method, torch.from_numpy(reference["targets"][:, j]), **params), reference[key][:, j])
        for j in (0, 1)
    )


@pytest.mark.parametrize("which", "AB")
def test_cdam(golden_setting, which):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_{which}{suffix}")
    assert both_columns(models[which], images, reference, "cdam_vanilla_raw", "cdam") < tolerance


@pytest.mark.parametrize("which", "AB")
def test_integrated_cdam_code_variant(golden_setting, which):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_{which}{suffix}")
    assert both_columns(models[which], images, reference, "integrated_cdam_raw", "integrated_cdam", n_steps=10) < tolerance


def test_smooth_cdam_with_the_stored_noise_bank(golden_setting):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_B{suffix}")
    bank = torch.from_numpy(golden("noise")["smooth_cdam_Z_B"].astype(np.float64))
    error = both_columns(models["B"], images, reference, "smooth_cdam_raw", "smooth_cdam", n_samples=8, noise_level=0.05, noise=bank)
    assert error < tolerance


@pytest.mark.parametrize("which", "AB")
def test_concept_cdam(golden_setting, which):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_{which}{suffix}")
    concept_images = torch.from_numpy(golden("inputs")["concept_images"]).to(images.dtype)
    concept = xaikit.concept_target(models[which], concept_images)
    assert relative_error(concept.vector, reference["concept_vector"]) < tolerance
    assert relative_error(attribute(models[which], images, "cdam", concept), reference["concept_cdam_raw"]) < tolerance


@pytest.mark.parametrize("which", "AB")
def test_token_ablation(golden_setting, which):
    """Every token removed in turn is one forward per token: model A's 196 tokens for two images, and model
    B's 784 for one image and one class in float32 only (its float64 run alone would take minutes)."""
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_{which}{suffix}")
    if which == "B" and suffix:
        pytest.skip("model B's token ablation is checked in float32 (784 forwards of 785 tokens per image and class)")
    chosen = [0, 1] if which == "A" else [0]
    for column in (0, 1) if which == "A" else (0,):
        targets = torch.from_numpy(reference["targets"][chosen, column])
        ours = attribute(models[which], images[chosen], "token_ablation", targets)
        assert relative_error(ours, reference["token_ablation_raw"][chosen, column]) < tolerance


def test_partial_lrp_and_gae_as_the_cdam_authors_run_them(golden_setting):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"cdam_B{suffix}")
    assert both_columns(models["B"], images, reference, "gae_raw", "gae") < tolerance
    lrp_tolerance = tolerance if suffix else 1e-3  # the reference's own float32 LRP is ill-conditioned
    assert both_columns(models["B"], images, reference, "partial_lrp_raw", "partial_lrp") < lrp_tolerance


@pytest.mark.parametrize("which", "AB")
@pytest.mark.parametrize("method, key", [("gradcam", "gradcam_token_raw"), ("gradcam_pp", "gradcampp_token_raw")])
def test_gradcam_token_level(golden_setting, which, method, key):
    models, images, suffix, tolerance = golden_setting
    reference = golden(f"gradcam_{which}{suffix}")
    # Grad-CAM++'s alpha denominator nearly cancels (the reference README): in float32 the library itself,
    # called the library's way with this torch, differs from the stored output by up to 7.8e-3 on model B
    # (test_gradcam_equals_the_library_call shows ours equals that call exactly); float64 holds 1e-10.
    limit = 1e-2 if method == "gradcam_pp" and not suffix else tolerance
    assert both_columns(models[which], images, reference, key, method) < limit


@pytest.mark.parametrize("method, cam_class", [("gradcam", "GradCAM"), ("gradcam_pp", "GradCAMPlusPlus")])
def test_gradcam_equals_the_library_call(golden_images, method, cam_class):
    """Our token-level CAM is exactly what pytorch-grad-cam computes in its own cam(input, targets) call."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xaikit.methods.gradcam import TokensToFeatureMaps

    model = build_golden_model("B")
    classes = golden("gradcam_B")["targets"][:, 0]
    layer = model.blocks[-1].norm1
    cam = getattr(pytorch_grad_cam, cam_class)(model=model, target_layers=[layer], reshape_transform=TokensToFeatureMaps(1, (28, 28)))
    cam(golden_images, [ClassifierOutputTarget(int(c)) for c in classes])
    store = cam.activations_and_grads
    library = cam.get_cam_image(golden_images, layer, None, store.activations[0].numpy(), store.gradients[0].numpy(), False)
    cam.activations_and_grads.release()
    ours = attribute(model, golden_images, method, torch.from_numpy(classes)).numpy()
    np.testing.assert_array_equal(ours, library)


def test_gradcam_picture_matches_the_library_output(golden_images):
    """The library's 224 x 224 picture (ReLU, min-max, cv2 resize) from our token-level CAM."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    model = build_golden_model("A")
    reference = golden("gradcam_A")
    for j in (0, 1):
        tokens = attribute(model, golden_images, "gradcam", torch.from_numpy(reference["targets"][:, j])).numpy()
        picture = scale_cam_image(scale_cam_image(np.maximum(tokens, 0), (224, 224)), (224, 224))
        assert np.abs(picture - reference["gradcam"][:, j]).max() < 1e-4


@pytest.mark.parametrize("method, key, params", [
    ("integrated_gradients", "intgrad_pred", {"n_steps": 50}),
    ("input_x_gradient", "input_x_grad_pred", {}),
    ("smoothgrad", "smoothgrad_pred", {"n_samples": 2, "noise_level": 0.15}),
])
def test_input_gradient_baselines(golden_images, method, key, params):
    """float32 only: the reference stored these pixel maps in its float32 run alone."""
    reference = golden("cdam_B")
    chosen = torch.from_numpy(reference["input_baselines_image_index"])
    if method == "smoothgrad":
        params = {**params, "noise": torch.from_numpy(golden("noise")["smoothgrad_Z_B"].astype(np.float32))}
    ours = attribute(build_golden_model("B"), golden_images[chosen], method, **params)
    assert relative_error(ours, reference[key]) < 1e-4


def test_integrated_gradients_equals_captum():
    """Our batched IG is captum's IntegratedGradients (right Riemann sum, zero baseline), channel mean."""
    from captum.attr import IntegratedGradients

    model = build_golden_model("B", torch.float64)
    images = torch.from_numpy(golden("inputs")["images"][:2]).double()
    classes = torch.tensor([1, 7])
    ours = attribute(model, images, "integrated_gradients", classes, n_steps=16)
    theirs = IntegratedGradients(model).attribute(images, baselines=0.0, target=classes, n_steps=16, method="riemann_right")
    assert torch.allclose(ours, theirs.mean(dim=1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("which", "AB")
def test_compactness_equals_get_ratio(which):
    reference = golden(f"cdam_{which}_f64")
    pairs = {"CDAM": reference["cdam_vanilla_raw"][:, 0], "IntCDAM": reference["integrated_cdam_raw"][:, 0],
             "AM": reference["attention_map_raw"], "ConceptCDAM": reference["concept_cdam_raw"],
             "TAM": reference["token_ablation_raw"][:, 0]}
    if which == "B":
        pairs["SmoothCDAM"] = reference["smooth_cdam_raw"][:, 0]
    for name, maps in pairs.items():
        np.testing.assert_array_equal(compactness(torch.from_numpy(maps)).numpy(), reference[f"compactness_{name}"], err_msg=name)


def test_compactness_edge_cases():
    maps = torch.tensor([[1.0, 0.04, 0.05, -0.01], [-1.0, -2.0, -0.1, -0.5]])
    # strict <: 0.05 is not below 0.05 * 1; an all-negative map has a negative bound (nothing below it)
    np.testing.assert_allclose(compactness(maps).numpy(), [0.5, 0.0])
    with pytest.raises(xaikit.InvalidParameterError, match="NaN"):
        compactness(torch.tensor([[float("nan"), 1.0]]))
