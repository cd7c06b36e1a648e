"""ATTCAT: attentive class activation tokens (Qiang et al., NeurIPS 2022), as in reference-spec section 4.5."""

from __future__ import annotations

import torch

from .base import Explainer, register


@register
class AttCAT(Explainer):
    """``ATTCAT_j = sum_l (sum_d h_l[j, d] * dy/dh_l[j, d]) * mean_h mean_i A_l[h, i, j]``.

    h_l are the tokens entering block l (the residual stream), A_l its attention
    probabilities (after softmax) and y the explained score (the raw logit of the
    target class). The attention weight of token j is the mean of its *column* over
    all heads and all queries, not the class-token row, as in the authors'
    ``generate_TransCAM``. Signed, not clamped, not normalised; patch tokens only
    (the prefix tokens' scores are dropped after the sum). Per-image means, so a batch
    gives the maps of its images one at a time. One forward and one gradient pass.
    """

    name = "attcat"
    title = "ATTCAT"
    paper = "qiang2022attcat"
    paper_names = {"tokentm": "ATTCAT"}
    signed = True
    needs_class_token = False
    records = ("input", "attn")
    grads = ("input",)

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        total = None
        for blk in recorder.blocks:
            class_activation = (blk.get("input") * blk.grad("input")).sum(dim=-1)  # (B, N)
            attention = blk.get("attn").mean(dim=(1, 2))  # heads and queries -> (B, N) over keys j
            term = class_activation * attention
            total = term if total is None else total + term
        return total[:, recorder.num_prefix_tokens :]
