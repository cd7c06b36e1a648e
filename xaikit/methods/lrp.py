"""Chefer et al.'s LRP (``ViT_orig_LRP``): full LRP down to the pixels, and partial LRP.

Both run the ``layers_lrp`` rules of `xaikit.rules.chefer` (reference-spec 4.4)
from the one-hot of the explained class. `CheferRelevance` is the shared base of
the explainers that open a `CheferLRP` context around the base class's forward
pass (Transformer Attribution uses it too, with the ``layers_ours`` rules).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..rules.chefer import CheferLRP, check_lrp_model, start_relevance
from ..targets import Target
from .base import Explainer, register


class CheferRelevance(Explainer):
    """Base of the explainers reading Chefer's LRP relevance.

    The `CheferLRP` hooks record the single forward pass that `Explainer.attribute`
    runs; `token_scores` then propagates relevance (no autograd graph is needed).
    Targets: a class index gives the reference's one-hot start relevance; a
    callable gives the gradient of its score with respect to the logits.
    """

    reads_layer_weights = True

    accepts_feature_targets = False  # the rules start at the linear classifier head
    relevance_in_float32 = True

    #: "layers_lrp" or "layers_ours"
    rules: ClassVar[str]
    signed = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        check_lrp_model(model, pixels=self.resolution == "pixel")
        self._lrp: CheferLRP | None = None
        self._targets: Target = None

    def first_block(self) -> int:
        """The lowest block whose attention relevance the method reads."""
        return 0

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        lrp = CheferLRP(self.model, self.rules, first_block=self.first_block(), pixels=self.resolution == "pixel")
        with lrp:
            self._lrp, self._targets = lrp, targets
            try:
                return super().attribute(images, targets)
            finally:
                self._lrp, self._targets = None, None

    def start(self, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """The relevance at the logits (B, C)."""
        return start_relevance(self._targets, logits, classes)


@register
class LRP(CheferRelevance):
    """Chefer's full LRP (``ViT_orig_LRP``, method "full"): relevance of every pixel.

    ``layers_lrp`` rules down through every block, the position-embedding Add
    (its share dropped, as the class token's) and the z^B rule of the patch
    embedding with each image's own min and max; summed over the colour
    channels. Signed and unnormalised, at the input resolution: (B, H, W).
    """

    name = "lrp"
    title = "LRP"
    paper = "bach2015lrp"
    paper_names = {"tokentm": "LRP"}
    rules = "layers_lrp"
    signed = True
    resolution = "pixel"

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        return self._lrp.pixel_relevance(self.start(logits, classes))


@register
class PartialLRP(CheferRelevance):
    """Chefer's partial LRP (``ViT_orig_LRP``, method "last_layer"; Voita et al.'s head relevance).

    ``mean_h clamp(R_attn, 0)[cls, patches]`` of the last block, where R_attn is
    the ``layers_lrp`` relevance of its attention probabilities. Only the last
    block is visited, and in it only the class token's row carries relevance.
    DeiT-distilled: the class-token row, which holds the class head's half of
    the start relevance (the distillation head's half is in the distillation
    token's row).
    """

    name = "partial_lrp"
    title = "Partial LRP"
    paper = "voita2019heads"
    paper_names = {"cdam": "Partial LRP"}
    rules = "layers_lrp"

    def first_block(self) -> int:
        return len(self.model.blocks) - 1

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        last = len(self.model.blocks) - 1
        relevance = self._lrp.attention_relevance(self.start(logits, classes))[last]
        return relevance[:, :, 0].clamp(min=0).mean(dim=1)[:, recorder.num_prefix_tokens :]
