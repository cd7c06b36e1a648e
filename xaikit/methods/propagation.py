"""Class-token rows of products of per-layer token-mixing matrices.

Rollout, GAE, Transformer Attribution and TokenTM are written as products
``R = M_L ... M_1`` of N x N matrices of which only the class-token row is
read. Carrying that row from the last layer back to the first,
``v = e_cls^T M_L``, then ``v M_{L-1}``, ..., costs O(N^2) per layer instead
of O(N^3) and gives the same numbers.
"""

from __future__ import annotations

from typing import Sequence

import torch


def class_token_row(mixers: Sequence[torch.Tensor], *, row_normalise: bool, row: int = 0) -> torch.Tensor:
    """Row `row` of ``M_L ... M_1`` with ``M_l = (C_l + I)``, optionally row-normalised.

    `mixers` holds the C_l, each (B, N, N), in block order (first block first).
    With ``row_normalise`` each M_l is divided by its row sums (attention rollout);
    without it M_l = I + C_l (GAE's ``R += C_l @ R``). Returns (B, N).
    """
    batch, tokens, _ = mixers[0].shape
    v = torch.zeros(batch, tokens, dtype=mixers[0].dtype, device=mixers[0].device)
    v[:, row] = 1
    for mixer in reversed(mixers):
        if row_normalise:
            v = v / (mixer.sum(dim=-1) + 1)
        v = v + torch.bmm(v.unsqueeze(1), mixer).squeeze(1)
    return v
