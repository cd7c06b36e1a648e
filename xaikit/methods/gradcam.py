"""Grad-CAM and Grad-CAM++ through pytorch-grad-cam, as the CDAM paper's GradCAM baseline.

The library's ViT recipe (reference-spec 5): target layer ``model.blocks[-1].norm1``
(the LayerNorm-ed tokens entering the last attention), a reshape transform that drops
the prefix tokens (class token, DeiT's distillation token, registers:
``model.num_prefix_tokens``) and lays the patch tokens out on the model's grid
(`xaikit.introspection.token_grid`, any shape) as channels-first feature maps.

The maps are the library's token-level CAM, ``cam.get_cam_image(...)`` on the
activations and gradients the library's own hooks stored, i.e. ``sum_k w_k A_k`` with
its ``get_cam_weights`` (Grad-CAM: spatial mean of the gradient; Grad-CAM++: its alpha
weights), before the library's ReLU, min-max and resize to the input size. Signed,
(B, gh, gw). The library's picture is ``scale_cam_image(relu(map), (W, H))``.

Unlike ``cam(input_tensor, targets)``, which calls ``loss.backward()`` (writing every
parameter's ``.grad``) and ``model.zero_grad()``, the gradient is taken with
``torch.autograd.grad`` on the target layer's output only, which fires the library's
gradient hook: the same numbers, and a caller's ``.grad`` stays as it was. The loss is
the library's: ``sum(ClassifierOutputTarget(c)(logits_i))`` over the images, or, for a
callable target, the sum of its scores.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..introspection import token_grid
from ..targets import Target, resolve_targets
from .base import Explainer, eval_mode, register
from .input_gradients import prepare_gradient_call


class TokensToFeatureMaps:
    """pytorch-grad-cam's ViT ``reshape_transform`` for any prefix-token count and grid.

    (B, prefix + gh*gw, D) -> drop the prefix tokens -> (B, gh, gw, D) -> (B, D, gh, gw).
    """

    def __init__(self, num_prefix_tokens: int, grid: tuple[int, int]) -> None:
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        patches = tokens[:, self.num_prefix_tokens :, :]
        return patches.reshape(tokens.size(0), gh, gw, tokens.size(2)).transpose(2, 3).transpose(1, 2)


class LibraryCAM(Explainer):
    """Base of the pytorch-grad-cam explainers; `cam_class` names the library's CAM class
    (imported on first use: the library takes seconds to import)."""

    cam_class: ClassVar[str]
    signed = True
    needs_class_token = False

    def target_layer(self) -> nn.Module:
        return self.model.blocks[-1].norm1

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Token-level CAMs (B, gh, gw) in the model's dtype; hooks removed and model flags restored after."""
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        images = prepare_gradient_call(self, images, targets)
        grid = token_grid(self.model, tuple(images.shape[-2:]))
        layer = self.target_layer()
        reshape = TokensToFeatureMaps(self.model.num_prefix_tokens, grid)
        live: list[torch.Tensor] = []
        with eval_mode(self.model):  # the CAM's constructor calls model.eval(); eval_mode restores the flags
            cam_class = getattr(pytorch_grad_cam, self.cam_class)
            cam = cam_class(model=self.model, target_layers=[layer], reshape_transform=reshape)

            def attach(module, args, output):
                if not output.requires_grad:  # frozen parameters before the layer: its output still needs a gradient
                    output = output.detach().requires_grad_(True)
                live.append(output)
                return output

            # prepended: the library's hooks, which register its gradient hook only on a tensor requiring grad, see it
            handle = layer.register_forward_hook(attach, prepend=True)
            try:
                with torch.enable_grad():
                    logits = cam.activations_and_grads(images)
                    if callable(targets):
                        cam_targets = None
                        loss = resolve_targets(targets, logits)[0].sum()
                    else:
                        classes = resolve_targets(targets, logits.detach())[1]
                        cam_targets = [ClassifierOutputTarget(int(c)) for c in classes.tolist()]
                        loss = sum([target(output) for target, output in zip(cam_targets, logits)])
                    # fires the library's tensor hook on the layer output (its stored, reshaped gradient)
                    torch.autograd.grad(loss, live[-1:])
                store = cam.activations_and_grads
                activations = store.activations[0].cpu().data.numpy()
                grads = store.gradients[0].cpu().data.numpy()
                raw = cam.get_cam_image(images, layer, cam_targets, activations, grads, eigen_smooth=False)
            finally:
                handle.remove()
                cam.activations_and_grads.release()
        return torch.from_numpy(raw).to(device=images.device, dtype=images.dtype)


@register
class GradCAMExplainer(LibraryCAM):
    """Grad-CAM (pytorch-grad-cam ``GradCAM``) on ``blocks[-1].norm1``: ``sum_k w_k A_k``,
    w_k = mean over the patches of d score / d A_k. Token level, signed, before the
    library's ReLU/min-max/resize."""

    name = "gradcam"
    title = "Grad-CAM"
    paper = "selvaraju2017gradcam"
    paper_names = {"cdam": "GradCAM", "vita": "Grad-CAM"}
    cam_class = "GradCAM"


@register
class GradCAMPlusPlusExplainer(LibraryCAM):
    """Grad-CAM++ (pytorch-grad-cam ``GradCAMPlusPlus``) on ``blocks[-1].norm1``:
    w_k = sum over patches of relu(g) * alpha, alpha = g^2 / (2 g^2 + sum(A_k) g^3 + 1e-6)
    (0 where g = 0), with the library's operation order. Token level, signed, before the
    library's ReLU/min-max/resize. Numerically fragile where the alpha denominator nearly
    cancels (raw logit gradients, no exp)."""

    name = "gradcam_pp"
    title = "Grad-CAM++"
    paper = "chattopadhay2018gradcampp"
    paper_names = {"vita": "Grad-CAM++"}
    cam_class = "GradCAMPlusPlus"
