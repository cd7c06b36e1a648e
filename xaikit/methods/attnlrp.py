"""AttnLRP and CP-LRP (Achtibat et al., ICML 2024) on timm ViTs, as in reference-spec section 4.5.

Not in the TokenTM paper: xaikit's addition.
"""

from __future__ import annotations

from torch import nn

from ..errors import InvalidParameterError
from ..rules.modified_gradient import (
    ATTENTION_RULES,
    ModifiedGradient,
    all_linear,
    check_gamma,
    zennit_gamma,
)
from .base import register
from .conservative_lrp import BlockInputRelevance


@register
class AttnLRP(BlockInputRelevance):
    """AttnLRP / CP-LRP in the efficient gradient x input form of ``lxt`` 2.1.

    Rules for the backward pass (instance-level forward hooks, nothing
    monkey-patched): every LayerNorm with its standard deviation detached; the MLP
    activation with the identity rule (gradient ``f(x) / (x + 1e-10)``); attention as
    set by `variant`; Linear and Conv2d layers with the plain gradient (LRP-0; the
    bias absorbs its share) or zennit's Gamma rule. The map is
    ``sum_d E0 * dy/dE0`` at the tokens entering block 0, y the raw logit; signed.

    Parameters
    ----------
    variant: ``"cp"`` (default, what lxt ships for ViTs): q and k are detached, so the
        attention probabilities are constants (CP-LRP inside attention). ``"attnlrp"``:
        the gradients of q and k are divided by 4 and that of v by 2, and the softmax
        keeps its gradient (AttnLRP's uniform rule for the two matmuls).
    gamma: 0 (default) is the plain gradient. gamma > 0 applies zennit's Gamma rule
        (as lxt runs it, in gradient x input form) to every Linear layer: ``attn.qkv``,
        ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` and the head(s), as lxt's ViT example
        does with a zennit composite on ``nn.Linear`` (the patch embedding's Conv2d lies
        before block 0 and does not change the map). Unlike lxt's torchvision ViT, whose
        ``nn.MultiheadAttention`` never calls its projections as modules so that a
        composite skips them, the attention projections get the rule too.
    """

    name = "attnlrp"
    title = "AttnLRP"
    paper = "achtibat2024attnlrp"

    def __init__(self, model: nn.Module, variant: str = "cp", gamma: float = 0.0) -> None:
        super().__init__(model)
        if variant not in ATTENTION_RULES:
            raise InvalidParameterError(
                f"method {self.name!r}: variant must be one of {', '.join(map(repr, ATTENTION_RULES))}; got {variant!r}"
            )
        self.variant = variant
        self.gamma = check_gamma(self.name, gamma)

    def rules(self) -> ModifiedGradient:
        return ModifiedGradient(
            self.model,
            attention=self.variant,
            layer_norm=True,
            activation="identity",
            linear_rule=zennit_gamma(self.gamma) if self.gamma > 0 else None,
            linear_layers=all_linear(self.model),
            method=self.name,
        )
