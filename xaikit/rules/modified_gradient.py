"""LRP as gradient x input on a modified backward pass, for timm Vision Transformers.

Conservative LRP (Ali et al., ICML 2022) and AttnLRP / CP-LRP (Achtibat et al.,
ICML 2024) are both written in the "modified gradient" form of their reference
code: the forward pass is left as it is, but some of its non-linear parts are
treated as constants (detached) or get a rescaled gradient, so that gradient x
input at any layer equals that layer's LRP relevance.

`ModifiedGradient` is a context manager that, for the duration of one call,
attaches forward hooks to an unmodified timm model. Each hook returns its
module's own output *value* unchanged (bit for bit: ``value.detach() +
(s - s.detach())`` adds an exact zero), but with the gradient of a surrogate
``s`` (`gradient_of`). On exit every hook is removed, also after an exception:
nothing is monkey-patched, no parameter is touched and ``fused_attn`` is never
changed (the rules act on q, k and v, so timm's fused attention keeps working).

The rules (reference-spec section 4.5):

* attention (hook on ``attn.qkv``): ``"cp"`` detaches q and k, so the
  attention probabilities A are constants and relevance flows only through v
  (the AH rule of Conservative LRP, CP-LRP's attention); ``"attnlrp"`` divides
  the gradients of q and k by 4 and of v by 2 and keeps the softmax gradient
  (AttnLRP's uniform rule for the two matmuls, as in ``lxt``).
* LayerNorm (every ``nn.LayerNorm`` of the model: norm1, norm2, the final norm,
  fc_norm, q/k norms, ...): ``(x - mean) / stopgrad(sqrt(var + eps)) * w + b``,
  timm's biased variance and eps, with the affine part kept: only sigma is
  detached.
* elementwise MLP activation (hook on ``mlp.act``): the identity rule, whose
  gradient is ``f(x) / (x + 1e-10)`` (``lxt``'s ``identity_rule_implicit``),
  so that gradient x input passes each unit's relevance on unchanged; or the
  plain gradient.
* Linear / Conv2d: the plain gradient (LRP-0; the bias absorbs its share), or
  one of two gamma rules: `xai_transformers_gamma` (the form of Ali et al.'s
  code, ``zp * (z / zp).detach()`` with ``W + gamma W+`` and ``b + gamma b+``)
  or `zennit_gamma` (zennit's sign-aware ``Gamma`` rule as ``lxt`` runs it in
  gradient x input form).

Which tensors conserve what: with every bias zero (Linear, Conv2d and
LayerNorm biases) the ``"cp"`` attention, the detached-sigma LayerNorm, the
identity rule and LRP-0 or the XAI_Transformers gamma make the whole network a
linear function of the tokens entering block 0 whose coefficients are frozen
at their forward values, so the relevances of all tokens there sum to the
explained logit (up to the identity rule's 1e-10). zennit's gamma conserves up
to its 1e-6 stabiliser. AttnLRP's softmax rule is not conservative (the softmax
gradient x input absorbs relevance, like a bias).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError, UnsupportedModelError
from ..introspection import ModelHooks

#: gradient factors (q, k, v) of the attention rules
ATTENTION_RULES: dict[str, tuple[float, float, float]] = {
    "cp": (0.0, 0.0, 1.0),
    "attnlrp": (0.25, 0.25, 0.5),
}
ACTIVATION_RULES = ("identity", "gradient")
#: the identity rule's shift of the denominator, as in lxt
IDENTITY_RULE_EPSILON = 1e-10
#: zennit's default stabiliser of the Gamma rule's denominators
ZENNIT_STABILIZER = 1e-6

Hook = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is exactly 0 (a NaN would reach the forward value)."""
    return numerator / torch.where(denominator == 0, torch.ones_like(denominator), denominator)


def gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, the gradient of `surrogate` in the backward pass.

    ``surrogate - surrogate.detach()`` is an exact zero, so the result equals
    `value` bit for bit.
    """
    return value.detach() + (surrogate - surrogate.detach())


# -- rules (forward hooks) -----------------------------------------------------------
def attention_rule(variant: str) -> Hook:
    """Hook for ``attn.qkv`` applying the ``"cp"`` or ``"attnlrp"`` attention rule."""
    q_factor, k_factor, v_factor = ATTENTION_RULES[variant]

    def hook(module: nn.Module, args: tuple, qkv: torch.Tensor) -> torch.Tensor:
        # timm packs the qkv output as [q | k | v] along the last axis.
        width = qkv.shape[-1] // 3
        if variant == "cp":
            # A real detach (not a zero factor) keeps the softmax out of the backward pass.
            return torch.cat([qkv[..., : 2 * width].detach(), qkv[..., 2 * width :]], dim=-1)
        factors = torch.tensor([q_factor, k_factor, v_factor], dtype=qkv.dtype, device=qkv.device)
        return gradient_of(qkv, qkv * factors.repeat_interleave(width))

    return hook


def layer_norm_rule(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its standard deviation detached (mean and affine part kept)."""
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    with torch.no_grad():
        inv_std = torch.rsqrt(centred.pow(2).mean(dim=dims, keepdim=True) + module.eps)
    surrogate = centred * inv_std
    if module.weight is not None:
        surrogate = surrogate * module.weight
    return gradient_of(output, surrogate)


def identity_rule(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Elementwise activation passing relevance unchanged: gradient ``f(x) / (x + 1e-10)``."""
    x = args[0]
    # (f(0) = 0 for the usual activations, so a zero input gets a zero ratio.)
    return gradient_of(output, x * safe_divide(output, x + IDENTITY_RULE_EPSILON).detach())


def _apply(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


def xai_transformers_gamma(gamma: float) -> Hook:
    """Gamma rule as in Ali et al.'s code: ``zp * (z / zp).detach()``, zp with ``W + gamma W+, b + gamma b+``.

    The gradient is ``(W + gamma W+)^T (g * z / zp)``; with zero biases it conserves exactly.
    The original has no stabiliser; here z / zp is 0 where zp is exactly 0.
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        positive = _apply(
            module,
            args[0],
            weight + gamma * weight.clamp(min=0),
            None if bias is None else bias + gamma * bias.clamp(min=0),
        )
        return gradient_of(output, positive * safe_divide(output, positive).detach())

    return hook


def _zennit_stabilize(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    # zennit.core.stabilize: shift away from zero by epsilon with the sign of x (+ for 0)
    return x + ((x == 0).to(x) + x.sign()) * epsilon


def zennit_gamma(gamma: float) -> Hook:
    """zennit's ``Gamma(gamma)`` rule (zennit 0.5) as lxt runs it in gradient x input form.

    zennit maps the output relevance ``R = g * z`` (g: gradient, z: output) to the input
    relevance with separate positive and negative parts: for outputs z > 0 the
    contributions ``x+ (W + gamma W+)`` and ``x- (W + gamma W-)`` (denominator: their sum
    plus ``b + gamma b+``), for z < 0 ``x+ (W + gamma W-)`` and ``x- (W + gamma W+)``
    (denominator with ``b + gamma b-``); lxt divides the input relevance by
    ``x`` (stabilised by 1e-10) to make it a gradient.
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        with torch.no_grad():
            weight, bias = module.weight, module.bias
            weight_up = weight + gamma * weight.clamp(min=0)
            weight_down = weight + gamma * weight.clamp(max=0)
            bias_up = None if bias is None else bias + gamma * bias.clamp(min=0)
            bias_down = None if bias is None else bias + gamma * bias.clamp(max=0)
            x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
            pos_denominator = _apply(module, x_pos, weight_up, bias_up) + _apply(module, x_neg, weight_down, None)
            neg_denominator = _apply(module, x_pos, weight_down, bias_down) + _apply(module, x_neg, weight_up, None)
            pos_scale = (output > 0).to(output) * output / _zennit_stabilize(pos_denominator, ZENNIT_STABILIZER)
            neg_scale = (output < 0).to(output) * output / _zennit_stabilize(neg_denominator, ZENNIT_STABILIZER)
            x_stable = _zennit_stabilize(x, IDENTITY_RULE_EPSILON)
            pos_part, neg_part = safe_divide(x_pos, x_stable), safe_divide(x_neg, x_stable)
        # gradient wrt x: (x+/x) * (W_up^T (g pos_scale) + W_down^T (g neg_scale)) + (x-/x) * (...)
        x_up, x_down = x * pos_part, x * neg_part
        surrogate = pos_scale * (_apply(module, x_up, weight_up, None) + _apply(module, x_down, weight_down, None))
        surrogate = surrogate + neg_scale * (
            _apply(module, x_up, weight_down, None) + _apply(module, x_down, weight_up, None)
        )
        return gradient_of(output, surrogate)

    return hook


# -- which modules ---------------------------------------------------------------------
def block_projections(model: nn.Module) -> list[nn.Module]:
    """The Linear layers inside the blocks: ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``."""
    return [layer for blk in model.blocks for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)]


def all_linear(model: nn.Module) -> list[nn.Module]:
    """Every ``nn.Linear`` of the model, the head(s) included.

    (The patch embedding's Conv2d lies before the tokens entering block 0, where the
    methods read the relevance, so its rule would not change the map.)
    """
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def check_modified_gradient_model(model: nn.Module, method: str) -> None:
    """Raise `UnsupportedModelError` for parts of a timm ViT the rules do not cover."""
    from timm.layers import Attention, Mlp

    def fail(problem: str) -> None:
        raise UnsupportedModelError(
            f"method {method!r} applies LRP rules to timm's standard ViT parts only (Attention, Mlp with an "
            f"elementwise activation, LayerNorm); this model {problem}. Use a model without it, or a method "
            "that does not need relevance rules (e.g. 'gae')."
        )

    if getattr(model, "attn_pool", None) is not None:
        fail("pools with an attention-pooling head (global_pool='map')")
    norms = [("norm_pre", model.norm_pre), ("norm", model.norm), ("fc_norm", model.fc_norm)]
    norms.append(("patch_embed.norm", getattr(model.patch_embed, "norm", nn.Identity())))
    for i, blk in enumerate(model.blocks):
        if not isinstance(blk.attn, Attention):
            fail(f"has attention of type {type(blk.attn).__qualname__} in block {i}")
        if getattr(blk.attn, "gate", None) is not None:
            fail(f"has a gated attention output in block {i}")
        if not isinstance(blk.mlp, Mlp):
            fail(f"has an MLP of type {type(blk.mlp).__qualname__} in block {i} (gated MLPs are not covered)")
        for name in ("norm1", "norm2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm"):
            module = blk
            for part in name.split("."):
                module = getattr(module, part, nn.Identity())
            norms.append((f"blocks.{i}.{name}", module))
    for name, module in norms:
        if not isinstance(module, (nn.LayerNorm, nn.Identity)):
            fail(f"normalises with {type(module).__qualname__} at {name}")


# -- the context manager ---------------------------------------------------------------
class ModifiedGradient(ModelHooks):
    """Attach the modified-gradient rules to a timm ViT for the duration of a ``with`` block.

    Parameters
    ----------
    model: a timm ``VisionTransformer``.
    attention: ``"cp"`` (detach q and k), ``"attnlrp"`` (gradients of q, k, v divided by
        4, 4, 2) or None (plain gradient).
    layer_norm: detach the standard deviation of every LayerNorm.
    activation: ``"identity"`` (identity rule on ``mlp.act``) or ``"gradient"``.
    linear_rule: a hook such as ``zennit_gamma(0.25)``, attached to every module of
        `linear_layers`; None keeps their plain gradient (LRP-0).
    linear_layers: the Linear/Conv2d modules that get `linear_rule`.
    method: the method's name, for error messages.
    """

    #: the rules act on module outputs (qkv, activations), not on the attention probabilities
    unfuse_attention = False

    def __init__(
        self,
        model: nn.Module,
        *,
        attention: str | None = "cp",
        layer_norm: bool = True,
        activation: str = "identity",
        linear_rule: Hook | None = None,
        linear_layers: Iterable[nn.Module] = (),
        method: str = "modified gradient",
    ) -> None:
        if attention is not None and attention not in ATTENTION_RULES:
            raise InvalidParameterError(
                f"attention rule must be one of {', '.join(map(repr, ATTENTION_RULES))} or None; got {attention!r}"
            )
        if activation not in ACTIVATION_RULES:
            raise InvalidParameterError(
                f"activation rule must be one of {', '.join(map(repr, ACTIVATION_RULES))}; got {activation!r}"
            )
        check_modified_gradient_model(model, method)
        self.model = model
        self.attention = attention
        self.layer_norm = layer_norm
        self.activation = activation
        self.linear_rule = linear_rule
        self.linear_layers = list(linear_layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_fused: list[tuple[nn.Module, bool]] = []

    def _install_hooks(self) -> None:
        add = self._handles.append
        # Linear rules first: the attention rule then acts on the rule's output of qkv.
        if self.linear_rule is not None:
            for layer in self.linear_layers:
                add(layer.register_forward_hook(self.linear_rule))
        if self.attention is not None:
            hook = attention_rule(self.attention)
            for blk in self.model.blocks:
                add(blk.attn.qkv.register_forward_hook(hook))
        if self.layer_norm:
            for module in self.model.modules():
                if isinstance(module, nn.LayerNorm):
                    add(module.register_forward_hook(layer_norm_rule))
        if self.activation == "identity":
            for blk in self.model.blocks:
                add(blk.mlp.act.register_forward_hook(identity_rule))


def check_gamma(method: str, gamma: float) -> float:
    """`gamma` as a float >= 0, or a clear `InvalidParameterError`."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0 or gamma == float("inf"):
        raise InvalidParameterError(
            f"method {method!r}: gamma must be a finite number >= 0 (0 = plain LRP-0 gradient); got {gamma!r}"
        )
    return float(gamma)
