"""xaikit.experiments.vita_maps: the Grad-CAM / Grad-CAM++ pictures ViTA compares, equal to pytorch-grad-cam's
own ``__call__`` on tiny random-weight ViTs, from one forward and one backward, without parameter ``.grad``."""

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tests.conftest import small_vit
from xaikit.errors import InvalidParameterError
from xaikit.experiments.vita_maps import CAM_METHODS, cam_inputs, cam_pictures, cam_pictures_from, opencv_bilinear
from xaikit.introspection import token_grid
from xaikit.methods.gradcam import TokensToFeatureMaps

LIBRARY_CLASSES = {"gradcam": GradCAM, "gradcam_pp": GradCAMPlusPlus}


def _images(model, batch: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=generator)


def _library_pictures(model, images, labels) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's own call, the ViT recipe (reference-spec 5)."""
    grid = token_grid(model, tuple(images.shape[-2:]))
    reshape = TokensToFeatureMaps(model.num_prefix_tokens, grid)
    targets = None if labels is None else [ClassifierOutputTarget(int(c)) for c in labels]
    pictures = {}
    for method, cam_class in LIBRARY_CLASSES.items():
        cam = cam_class(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape)
        pictures[method] = cam(input_tensor=images, targets=targets)
        cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    return pictures


@pytest.mark.parametrize(
    "kind, overrides",
    [("plain", {}), ("plain", {"img_size": 224}), ("deit_distilled", {}), ("registers", {}), ("non_square", {})],
    ids=["plain", "plain-224", "deit_distilled", "registers", "non_square"],
)
def test_pictures_equal_pytorch_grad_cams_call(kind, overrides):
    model = small_vit(kind, **overrides)
    images = _images(model)
    labels = [1, 4, 6]
    size = tuple(images.shape[-2:])
    ours = cam_pictures(model, images, labels, size=size)
    assert all(p.grad is None for p in model.parameters())
    expected = _library_pictures(model, images, labels)
    assert sorted(ours) == sorted(CAM_METHODS)
    for method in CAM_METHODS:
        assert ours[method].shape == (3, *size) and ours[method].dtype == torch.float32
        np.testing.assert_allclose(ours[method].numpy(), expected[method], rtol=0, atol=1e-5, err_msg=method)
        assert float(ours[method].max()) > 0.99  # a picture, min-max normalised; not all zero
    # the ground-truth labels matter: another class gives another picture
    other = cam_pictures(model, images, [0, 0, 0], size=size)
    assert not torch.allclose(other["gradcam"], ours["gradcam"], atol=1e-3)


def test_predicted_class_equals_the_librarys_default_target():
    model = small_vit("plain")
    images = _images(model, seed=1)
    ours = cam_pictures(model, images, size=64, target_class="predicted")
    expected = _library_pictures(model, images, None)
    predicted = model(images).argmax(1)
    by_label = cam_pictures(model, images, predicted, size=64)
    for method in CAM_METHODS:
        np.testing.assert_allclose(ours[method].numpy(), expected[method], rtol=0, atol=1e-5, err_msg=method)
        torch.testing.assert_close(ours[method], by_label[method], rtol=0, atol=0)


def test_one_forward_one_backward_and_no_parameter_grad(monkeypatch):
    model = small_vit("plain")
    for param in model.parameters():
        param.grad = torch.full_like(param, 3.0)  # a caller's gradients stay as they were
    saved = [param.grad.clone() for param in model.parameters()]
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    backwards = []
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        backwards.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    model.train()
    pictures = cam_pictures(model, _images(model), [0, 1, 2], size=224)
    assert (len(forwards), len(backwards)) == (1, 1)
    assert {name: tuple(p.shape) for name, p in pictures.items()} == {m: (3, 224, 224) for m in CAM_METHODS}
    assert model.training  # eval mode only during the call
    for param, before in zip(model.parameters(), saved):
        torch.testing.assert_close(param.grad, before, rtol=0, atol=0)


def test_pictures_from_tokens_with_or_without_prefix():
    model = small_vit("registers")  # class token + 4 registers
    images = _images(model, seed=2)
    activations, gradients, grid = cam_inputs(model, images, [3, 3, 5])
    assert activations.shape[1] == model.num_prefix_tokens + grid[0] * grid[1]
    full = cam_pictures_from(activations, gradients, grid, size=(30, 40))
    prefix = model.num_prefix_tokens
    dropped = cam_pictures_from(activations[:, prefix:], gradients[:, prefix:], grid, size=(30, 40))
    for method in CAM_METHODS:
        assert full[method].shape == (3, 30, 40)
        torch.testing.assert_close(full[method], dropped[method], rtol=0, atol=0)


def test_gradcam_hand_computed_on_a_two_by_one_grid():
    # one image, 2 patches (grid 2 x 1) after a class token, 2 channels
    activations = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, -1.0]]])
    gradients = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [1.0, 2.0]]])
    pictures = cam_pictures_from(activations, gradients, (2, 1), size=(2, 1))
    # Grad-CAM weights: mean gradient per channel = (1, 1); cam = (1 + 2, 3 - 1) = (3, 2) -> min-max (1, 0)
    expected = torch.tensor([[[1.0], [0.0]]]) / (1 + 1e-7)
    torch.testing.assert_close(pictures["gradcam"], expected / (1e-7 + expected.max()), rtol=0, atol=1e-7)
    # Grad-CAM++: channel 0: g = (1, 1), sum A = 4: a = 1 / (2 + 4 + 1e-6) each, w0 = 2 a; channel 1: g = (0, 2),
    # sum A = 1, a = (0, 4 / (8 + 8 + 1e-6)), w1 = 2 * 4 / 16 = 0.5; cam = (w0 * 1 + 0.5 * 2, w0 * 3 - 0.5)
    w0 = 2 / (6 + 1e-6)
    cam = torch.tensor([w0 + 1.0, 3 * w0 - 0.5])  # (1.333, 0.5) -> min-max (1, 0)
    assert cam[0] > cam[1] > 0
    torch.testing.assert_close(pictures["gradcam_pp"], expected / (1e-7 + expected.max()), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "source, target", [((14, 14), (224, 224)), ((4, 7), (64, 80)), ((37, 23), (224, 224)), ((300, 250), (224, 224))]
)
def test_bilinear_resize_is_opencvs_inter_linear(source, target):
    # scale_cam_image resizes with cv2.resize(img, (W, H)), INTER_LINEAR by default
    maps = torch.rand(2, *source, generator=torch.Generator().manual_seed(0))
    expected = np.stack([cv2.resize(m, target[::-1]) for m in maps.numpy()])
    np.testing.assert_allclose(opencv_bilinear(maps, target).numpy(), expected, rtol=0, atol=3e-7)


def test_nowhere_positive_cam_gives_a_zero_picture():
    activations = torch.ones(2, 5, 3)
    gradients = -torch.ones(2, 5, 3)
    pictures = cam_pictures_from(activations, gradients, (2, 2), size=8)
    assert float(pictures["gradcam"].abs().max()) == 0.0


def test_bad_calls_name_the_fix():
    model = small_vit("plain")
    images = _images(model)
    with pytest.raises(InvalidParameterError, match="target_class='predicted'"):
        cam_pictures(model, images)
    with pytest.raises(InvalidParameterError, match="takes no targets"):
        cam_pictures(model, images, [0, 1, 2], target_class="predicted")
    with pytest.raises(InvalidParameterError, match="target_class must be one of label, predicted"):
        cam_pictures(model, images, [0, 1, 2], target_class="gt")
    with pytest.raises(InvalidParameterError, match="out of range"):
        cam_pictures(model, images, [0, 1, 70])
    tokens = torch.zeros(3, 17, 8)
    with pytest.raises(InvalidParameterError, match="at least gh\\*gw = 25 tokens"):
        cam_pictures_from(tokens, tokens, (5, 5))
    with pytest.raises(InvalidParameterError, match="same shape"):
        cam_pictures_from(tokens, tokens[:, 1:], (4, 4))
    with pytest.raises(InvalidParameterError, match="grid must be the patch grid"):
        cam_pictures_from(tokens, tokens, 16)
