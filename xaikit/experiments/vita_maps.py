"""The maps the ViTA chapter compares with human maps: pytorch-grad-cam's Grad-CAM and Grad-CAM++ pictures.

ViTA (reference-spec 6.3) scores the picture ``pytorch_grad_cam.GradCAM(...)(images, targets)`` returns, and
the same for ``GradCAMPlusPlus``, with the library's ViT recipe (spec 5): target layer
``model.blocks[-1].norm1``, a reshape transform that drops the prefix tokens (class token, DeiT's
distillation token, registers) and lays the patch tokens on the model's grid. The library then takes, per
image, ``relu(cam)``, min-max (``cam -= min; cam /= 1e-7 + max``), an OpenCV bilinear resize to the input
size (``cv2.resize`` INTER_LINEAR: half-pixel centres, edge pixels repeated, no antialiasing) and min-max
again (its mean over the one target layer changes nothing). Here the resize is `opencv_bilinear`, torch's
bilinear interpolation (``align_corners=False``), the same interpolation, so the pictures stay batched on
the model's device.

Both pictures come from ONE forward and ONE backward pass: they read the same activations of the target
layer and the same gradients of the target scores with respect to them. The gradient is taken with
``torch.autograd.grad`` on the layer's output only, so no parameter's ``.grad`` is written (the library's
``__call__`` runs ``loss.backward()``).

- `cam_inputs`: the target layer's tokens and their gradients for a batch;
- `cam_pictures_from`: the two pictures from those tokens (what a grid search calls per configuration);
- `cam_pictures`: both steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..imaging import upsample
from ..introspection import token_grid
from ..methods.base import eval_mode
from ..methods.gradcam import GradCAMExplainer, TokensToFeatureMaps
from ..methods.input_gradients import prepare_gradient_call
from ..targets import Target, resolve_targets, scoring_features

#: the pictures `cam_pictures` returns, by xaikit method name
CAM_METHODS = ("gradcam", "gradcam_pp")
#: which class the maps explain: the ground-truth label (Harmonization's ClickMe evaluation) or the prediction
TARGET_CLASSES = ("label", "predicted")
#: pytorch-grad-cam's Grad-CAM++ alpha denominator guard and its min-max guard
_ALPHA_EPSILON = 1e-6
_MIN_MAX_EPSILON = 1e-7


def cam_inputs(
    model: torch.nn.Module, images: torch.Tensor, targets: Target = None, *, target_class: str = "label"
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The tokens of ``model.blocks[-1].norm1``'s output (B, N, D), their gradients (B, N, D) and the grid (gh, gw).

    The gradients are those of the sum over the images of each image's target logit (pytorch-grad-cam's loss
    with ``ClassifierOutputTarget``): with ``target_class="label"`` (the default) `targets` are the
    ground-truth class indices, one per image (or one int for all); with ``target_class="predicted"`` the
    model's own argmax is explained and `targets` must be None. One forward and one backward pass, in eval
    mode (training flags restored after); parameters' ``.grad`` stay as they were. Both tensors are float32,
    detached, on the model's device; the N tokens include the prefix tokens.
    """
    if target_class not in TARGET_CLASSES:
        raise InvalidParameterError(
            f"target_class must be one of {', '.join(TARGET_CLASSES)} (the ground-truth label or the model's "
            f"prediction); got {target_class!r}"
        )
    if target_class == "label" and targets is None:
        raise InvalidParameterError(
            "target_class='label' explains the ground-truth class: give targets, one class index per image "
            "(e.g. the ClickMe labels), or pass target_class='predicted' to explain the model's prediction"
        )
    if target_class == "predicted" and targets is not None:
        raise InvalidParameterError(
            "target_class='predicted' explains the model's own prediction, so it takes no targets: pass "
            "targets=None, or target_class='label' to explain the given classes"
        )
    explainer = GradCAMExplainer(model)  # refuses a model that is not a timm ViT
    explainer.check_inputs(images, targets)
    images = prepare_gradient_call(explainer, images, targets)
    grid = token_grid(model, tuple(images.shape[-2:]))
    layer = explainer.target_layer()
    recorded: list[torch.Tensor] = []

    def record(module, args, output):
        if not output.requires_grad:  # frozen parameters before the layer: its output still needs a gradient
            output = output.detach().requires_grad_(True)
        recorded.append(output)
        return output

    handle = layer.register_forward_hook(record)
    try:
        with eval_mode(model), scoring_features(model, targets), torch.enable_grad():
            logits = model(images)
            scores = resolve_targets(targets, logits)[0]
            (gradients,) = torch.autograd.grad(scores.sum(), recorded[-1:])
    finally:
        handle.remove()
    return recorded[-1].detach().float(), gradients.float(), grid


def _feature_maps(name: str, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) tokens, the first N - gh*gw of them prefix tokens -> (B, D, gh, gw) float32."""
    patches = grid[0] * grid[1]
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[1] < patches:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InvalidParameterError(
            f"{name} must be a tensor of tokens (B, N, D) with at least gh*gw = {patches} tokens for the grid "
            f"{grid}; got {shape}: pass blocks[-1].norm1's output (prefix tokens first) and its gradient"
        )
    prefix = tokens.shape[1] - patches
    return TokensToFeatureMaps(prefix, grid)(tokens.float())


def _min_max(cams: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` without the resize, per image (B, H, W): ``x -= min; x /= 1e-7 + max``."""
    flat = cams.flatten(1)
    shifted = flat - flat.amin(1, keepdim=True)
    return (shifted / (_MIN_MAX_EPSILON + shifted.amax(1, keepdim=True))).reshape(cams.shape)


def opencv_bilinear(maps: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Float32 maps (B, h, w) resized to `size` (an int or (H, W)) as ``cv2.resize(map, (W, H))`` (INTER_LINEAR).

    Torch's bilinear interpolation with ``align_corners=False`` and no antialiasing is OpenCV's INTER_LINEAR
    (half-pixel centres, the edge pixels repeated), up and down. It runs in float64: float32 source
    coordinates drift from OpenCV's by up to 2e-5 of a value when shrinking by a non-integer factor.
    """
    return upsample(maps.double(), size, mode="bilinear").float()


def _picture(cams: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Token CAMs (B, gh, gw) -> the library's picture (B, H, W): ReLU, min-max, bilinear resize, min-max."""
    return _min_max(opencv_bilinear(_min_max(cams.clamp(min=0)), size))


def _check_grid(grid) -> tuple[int, int]:
    if (
        not isinstance(grid, Sequence)
        or len(grid) != 2
        or not all(isinstance(side, (int, np.integer)) and not isinstance(side, bool) and side > 0 for side in grid)
    ):
        raise InvalidParameterError(
            f"grid must be the patch grid (gh, gw), two positive ints (xaikit.introspection.token_grid(model)); "
            f"got {grid!r}"
        )
    return int(grid[0]), int(grid[1])


def cam_pictures_from(
    activations: torch.Tensor, gradients: torch.Tensor, grid: tuple[int, int], size: int | Sequence[int] = 224
) -> dict[str, torch.Tensor]:
    """Grad-CAM and Grad-CAM++ pictures (B, H, W) float32 in [0, 1] from the target layer's tokens.

    `activations` and `gradients` (B, N, D) are ``model.blocks[-1].norm1``'s output tokens and their
    gradients with respect to the summed target logits (`cam_inputs`). The prefix tokens may be included or
    already dropped: the last gh*gw tokens are the patches of the grid (gh, gw), row by row, and any tokens
    before them are dropped, as pytorch-grad-cam's ViT reshape transform drops the class token. `size` is
    the picture's size, an int or (H, W) (the library resizes to the input size; ClickMe's is 224).

    - ``"gradcam"``: ``sum_k w_k A_k`` with ``w_k`` the mean over the patches of the gradient;
    - ``"gradcam_pp"``: ``w_k = sum_ij relu(g) * a``, ``a = g^2 / (2 g^2 + sum_ij(A_k) g^3 + 1e-6)`` (0 where
      g = 0), the library's operation order;

    then the library's picture: ReLU, per-image min-max with its 1e-7 guard, bilinear resize to `size`
    (OpenCV's INTER_LINEAR), min-max again. A CAM that is nowhere positive gives an all-zero picture, as the
    library's.
    """
    grid = _check_grid(grid)
    both_tensors = isinstance(activations, torch.Tensor) and isinstance(gradients, torch.Tensor)
    if both_tensors and activations.shape != gradients.shape:
        raise InvalidParameterError(
            f"activations {tuple(activations.shape)} and gradients {tuple(gradients.shape)} differ: give the "
            "layer's output and its gradient, of the same shape"
        )
    features = _feature_maps("activations", activations, grid)
    grads = _feature_maps("gradients", gradients, grid).to(features.device)
    gradcam_weights = grads.mean(dim=(2, 3))
    squared = grads**2
    cubed = squared * grads
    activation_sums = features.sum(dim=(2, 3))[:, :, None, None]
    alpha = squared / (2 * squared + activation_sums * cubed + _ALPHA_EPSILON)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    gradcam_pp_weights = (grads.clamp(min=0) * alpha).sum(dim=(2, 3))
    pictures = {}
    for method, weights in zip(CAM_METHODS, (gradcam_weights, gradcam_pp_weights)):
        cams = (weights[:, :, None, None] * features).sum(dim=1)
        pictures[method] = _picture(cams, size)
    return pictures


def cam_pictures(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: Target = None,
    size: int | Sequence[int] = 224,
    *,
    target_class: str = "label",
) -> dict[str, torch.Tensor]:
    """{"gradcam": (B, H, W), "gradcam_pp": (B, H, W)}: the pictures pytorch-grad-cam's ``GradCAM`` and
    ``GradCAMPlusPlus`` ``__call__`` return with ``target_layers=[model.blocks[-1].norm1]`` and the ViT
    reshape transform, resized to `size` (224 for ClickMe; the library resizes to the input size).

    `targets` are the ground-truth labels (the default ``target_class="label"``, as Harmonization's ClickMe
    evaluation); ``target_class="predicted"`` explains each image's predicted class instead (targets None).
    Both pictures from one forward and one backward pass (`cam_inputs`, `cam_pictures_from`); no parameter's
    ``.grad`` is written. Float32, on the model's device.
    """
    activations, gradients, grid = cam_inputs(model, images, targets, target_class=target_class)
    return cam_pictures_from(activations, gradients, grid, size)
