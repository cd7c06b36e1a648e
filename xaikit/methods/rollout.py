"""Attention rollout (Abnar & Zuidema 2020), as implemented by Chefer et al."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidParameterError
from .base import Explainer, integer_setting, register
from .propagation import class_token_row


@register
class Rollout(Explainer):
    """Class-token row of ``Â_L ... Â_s``, ``Â_l = rownorm(mean_h A_l + I)``.

    Class-independent. `start_layer` skips the first blocks: 0 is the
    reference default, 1 the value of Chefer's segmentation and perturbation
    scripts.
    """

    name = "rollout"
    title = "Attention rollout"
    paper = "abnar2020rollout"
    paper_names = {"tokentm": "Rollout"}
    class_specific = False
    records = ("attn",)

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        super().__init__(model)
        depth = len(model.blocks)
        start_layer = integer_setting(self.name, "start_layer", start_layer)
        if not isinstance(start_layer, int) or not 0 <= start_layer < depth:
            raise InvalidParameterError(f"start_layer must be an int in [0, {depth - 1}]; got {start_layer!r}")
        self.start_layer = start_layer

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        mixers = [blk.get("attn").mean(dim=1) for blk in recorder.blocks[self.start_layer :]]
        return class_token_row(mixers, row_normalise=True)[:, recorder.num_prefix_tokens :]
