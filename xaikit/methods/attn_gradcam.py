"""Grad-CAM on the last attention map, as in Chefer et al.'s baselines (``generate_cam_attn``)."""

from __future__ import annotations

import torch

from .base import Explainer, register


@register
class AttnGradCAM(Explainer):
    """``minmax(clamp(mean_h A_h[cls, patches] * w_h, 0))`` with ``w_h = mean_patches dA_h[cls, patches]``.

    A and dA (gradient of the target logit) are the last block's attention and
    its gradient, restricted to the class token's row and the patch columns.
    Min-max normalised per image, as the reference; where the clamped map is
    constant (e.g. all zeros: every head weight <= 0) the map is all zeros
    instead of the reference's 0/0 = NaN.
    """

    name = "attn_gradcam"
    title = "Grad-CAM on the last attention map"
    paper = "selvaraju2017gradcam"
    paper_names = {"tokentm": "Grad-CAM"}
    records = ("attn",)
    grads = ("attn",)

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        last, prefix = recorder.blocks[-1], recorder.num_prefix_tokens
        attn = last.get("attn")[:, :, 0, prefix:]
        weights = last.grad("attn")[:, :, 0, prefix:].mean(dim=-1, keepdim=True)
        cam = (attn * weights).mean(dim=1).clamp(min=0)
        low, high = cam.amin(dim=1, keepdim=True), cam.amax(dim=1, keepdim=True)
        spread = high - low
        return torch.where(spread > 0, (cam - low) / spread.masked_fill(spread == 0, 1), torch.zeros_like(cam))
