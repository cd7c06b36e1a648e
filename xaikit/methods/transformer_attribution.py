"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidParameterError
from .base import register
from .lrp import CheferRelevance
from .propagation import class_token_row


@register
class TransformerAttribution(CheferRelevance):
    """Class-token row of ``prod_l (I + mean_h clamp(dA_l * R_l, 0))`` over blocks ``start_layer..L-1``.

    R_l is the ``layers_ours`` LRP relevance of block l's attention probabilities
    (``ViT_LRP``, alpha = 1, started from the one-hot of the class); dA_l the
    gradient of the target logit. No row normalisation, as the reference.
    `start_layer` skips the first blocks: 0 is the reference default, 1 the value
    of Chefer's segmentation and perturbation scripts. Rows are those of the
    class token (DeiT-distilled too, as the reference's read-out and the other
    rollout-like methods here).
    """

    name = "transformer_attribution"
    title = "Transformer Attribution"
    paper = "chefer2021transformer"
    paper_names = {"tokentm": "Trans. Attr."}
    rules = "layers_ours"
    records = ("attn",)
    grads = ("attn",)

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        super().__init__(model)
        depth = len(model.blocks)
        if not isinstance(start_layer, int) or isinstance(start_layer, bool) or not 0 <= start_layer < depth:
            raise InvalidParameterError(f"start_layer must be an int in [0, {depth - 1}]; got {start_layer!r}")
        self.start_layer = start_layer

    def first_block(self) -> int:
        return self.start_layer

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        relevance = self._lrp.attention_relevance(self.start(logits, classes))
        mixers = [
            (recorder.blocks[i].grad("attn") * relevance[i]).clamp(min=0).mean(dim=1)
            for i in range(self.start_layer, len(recorder.blocks))
        ]
        return class_token_row(mixers, row_normalise=False)[:, recorder.num_prefix_tokens :]
