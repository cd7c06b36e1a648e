"""Raw attention: the class token's attention to each patch in one block, averaged over heads."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidParameterError
from .base import Explainer, integer_setting, register


@register
class RawAttention(Explainer):
    """``mean_h A_layer[cls, patches]`` (Chefer's ``last_layer_attn``; CDAM's "attention map").

    Class-independent; `layer` picks the block (default the last).
    """

    name = "raw_attention"
    title = "Raw attention"
    paper = "caron2021dino"
    paper_names = {"tokentm": "Raw Att.", "cdam": "Attention map"}
    class_specific = False
    records = ("attn",)

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        super().__init__(model)
        depth = len(model.blocks)
        layer = integer_setting(self.name, "layer", layer)
        if not isinstance(layer, int) or not -depth <= layer < depth:
            raise InvalidParameterError(f"layer must be an int in [{-depth}, {depth - 1}]; got {layer!r}")
        self.layer = layer

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        attn = recorder.blocks[self.layer].get("attn")
        # The clamp is a no-op on softmax output; kept to match the reference definition.
        return attn.clamp(min=0).mean(dim=1)[:, 0, recorder.num_prefix_tokens :]
