"""Conservative LRP (Ali et al., ICML 2022), ported to timm ViTs as in reference-spec section 4.5."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidParameterError
from ..rules.modified_gradient import (
    ACTIVATION_RULES,
    ModifiedGradient,
    block_projections,
    check_gamma,
    check_modified_gradient_model,
    xai_transformers_gamma,
)
from ..targets import Target
from .base import Explainer, register


class BlockInputRelevance(Explainer):
    """Base of the modified-gradient LRP methods: gradient x input at the input of block 0.

    The map of token j is ``sum_d E0[j, d] * dy/dE0[j, d]``, E0 the tokens entering
    ``blocks[0]`` (after the position embedding) and y the explained score, computed
    with the rules of `rules` attached (`xaikit.rules.modified_gradient`). Signed,
    unnormalised, patch tokens only. One forward and one gradient pass per batch.
    """

    reads_layer_weights = True

    signed = True
    needs_class_token = False
    records = ("input",)
    grads = ("input",)
    relevance_in_float32 = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        check_modified_gradient_model(model, self.name)

    def rules(self) -> ModifiedGradient:
        """The rules attached for one call."""
        raise NotImplementedError

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        with self.rules():
            return super().attribute(images, targets)

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        first = recorder.blocks[0]
        relevance = (first.get("input") * first.grad("input")).sum(dim=-1)
        return relevance[:, recorder.num_prefix_tokens :]


@register
class ConservativeLRP(BlockInputRelevance):
    """Conservative LRP (Ali et al., ICML 2022) as gradient x input on a modified graph.

    Detached for the backward pass: q and k (so the attention probabilities are
    constants and relevance flows through the values only, the paper's AH rule) and
    the standard deviation of every LayerNorm (the LN rule; mean and affine part
    kept). The MLP activation uses the identity rule (gradient ``f(x)/x``; the
    paper's models have no MLP). Linear layers use the plain gradient (LRP-0, gamma=0,
    the paper's SST-2 setting). The map is ``sum_d E0 * dy/dE0`` at the tokens entering
    block 0, y the raw logit; with all biases zero the relevances of all tokens there
    (prefix tokens included) sum to y.

    Parameters
    ----------
    gamma: gamma of the paper's code on ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and
        ``mlp.fc2``: ``zp * (z / zp).detach()`` with zp computed with ``W + gamma W+``
        and ``b + gamma b+``. 0 (default) is the plain gradient. The patch embedding
        and the head always use the plain gradient.
    activation_rule: ``"identity"`` (default) or ``"gradient"`` (the plain gradient of
        the MLP activation).
    """

    name = "conservative_lrp"
    title = "Conservative LRP"
    paper = "ali2022conservative"
    paper_names = {"tokentm": "Cons. LRP"}

    def __init__(self, model: nn.Module, gamma: float = 0.0, activation_rule: str = "identity") -> None:
        super().__init__(model)
        self.gamma = check_gamma(self.name, gamma)
        if activation_rule not in ACTIVATION_RULES:
            raise InvalidParameterError(
                f"method {self.name!r}: activation_rule must be one of "
                f"{', '.join(map(repr, ACTIVATION_RULES))}; got {activation_rule!r}"
            )
        self.activation_rule = activation_rule

    def rules(self) -> ModifiedGradient:
        return ModifiedGradient(
            self.model,
            attention="cp",
            layer_norm=True,
            activation=self.activation_rule,
            linear_rule=xai_transformers_gamma(self.gamma) if self.gamma > 0 else None,
            linear_layers=block_projections(self.model),
            method=self.name,
        )
