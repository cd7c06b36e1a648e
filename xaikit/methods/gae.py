"""Generic Attention-model Explainability (GAE; Chefer, Gur & Wolf, ICCV 2021)."""

from __future__ import annotations

import torch

from .base import Explainer, register
from .propagation import class_token_row


@register
class GAE(Explainer):
    """Class-token row of R, where ``R = I`` and, block by block,
    ``R += mean_h(clamp(dA * A, 0)) @ R``; dA is the gradient of the target score.

    No start-layer skip and no normalisation, as in the reference code.
    """

    name = "gae"
    title = "GAE"
    paper = "chefer2021gae"
    paper_names = {"tokentm": "GAE", "cdam": "Rel. Prop."}
    records = ("attn",)
    grads = ("attn",)

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        mixers = [(blk.grad("attn") * blk.get("attn")).clamp(min=0).mean(dim=1) for blk in recorder.blocks]
        return class_token_row(mixers, row_normalise=False)[:, recorder.num_prefix_tokens :]
