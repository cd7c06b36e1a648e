"""The astrocytic linear layer of ViTA (Echevarrieta-Catalan et al., CVPRW 2025) on any timm ViT.

``with xaikit.astrocytes(model):`` wraps ``model.blocks[block].attn.proj`` (the linear
layer at the end of the first self-attention block) with the paper's Eqs. 1-9, as
reference-spec section 6.2 writes the loop. With x the input of ``proj`` (B, N, D_in),
W its weight and b its bias::

    z  = x @ W.T                    y(0) = z + b           A = 0, M = 1
    for t in 1..k:
        A = clamp(A + (+1 where y(t-1)[:, 0] >= phi else -1), -tau, tau)   # class token's output
        m = alpha where A >= tau, beta where A <= -tau, 1 elsewhere
        M = M * m
        y(t) = z * M + b            # x (M W)^T + b: row i of W scaled by M_i
    s = mean_j ||y(0)_j|| / mean_j ||y(k)_j||   # per image, over all tokens j
    output = y(k) * s

The activity counters A and the modulation M are per image and per output unit, and
start afresh at every forward pass, so a batch gives what its images give one at a
time. The network is deterministic in eval mode, so iterating the input k times through
the blocks before ``proj`` would give the same x each time: the loop above is that
iteration. The class token is row 0 in every timm ViT that has one (after it come DeiT's
distillation token and DINOv2's registers); a model without a class token is refused.

The layer is a forward hook on the unchanged ``proj`` module (registered first, so every
other hook, e.g. an explainer's recorder, sees the astrocytic output). Methods that read
``proj.weight`` directly (relevance rules, TokenTM's transformation) run, but see the
unmodulated weight there. Leaving the context, also through an exception, removes the hook:
the model is the same object with the same modules, parameters and fused-attention flags
(which the layer never touches), and gives the same outputs bit for bit.
"""

from __future__ import annotations

import math
import numbers
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InvalidParameterError
from .introspection import check_vit

__all__ = ["AstrocyteSettings", "AstrocyteTrace", "AstrocyteWarning", "Astrocytes", "astrocytes", "astrocytic_linear",
           "check_settings", "wrapped_blocks"]

#: the `proj` layers currently wrapped (a second wrapping would modulate twice)
_WRAPPED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class AstrocyteWarning(UserWarning):
    """A method explains a model inside `astrocytes` but reads a wrapped layer's weights itself, so its relevance
    through that layer does not follow the astrocytic modulation."""


def wrapped_blocks(model: nn.Module) -> list[int]:
    """The blocks of `model` whose ``attn.proj`` is inside an `astrocytes` context now."""
    return [index for index, block in enumerate(getattr(model, "blocks", ()))
            if getattr(getattr(block, "attn", None), "proj", None) in _WRAPPED]


@dataclass(frozen=True)
class AstrocyteSettings:
    """The paper's five settings: iterations k, threshold tau, activity level phi, gains alpha (excite) and beta
    (inhibit). The defaults are the paper's Table 1 row for Grad-CAM / SSIM."""

    k: int = 6
    tau: float = 3
    phi: float = -0.5
    alpha: float = 1.5
    beta: float = 0.05

    def __post_init__(self) -> None:
        values = _validated(self.k, self.tau, self.phi, self.alpha, self.beta)
        for name, value in zip(("k", "tau", "phi", "alpha", "beta"), values):
            object.__setattr__(self, name, value)


def _real(name: str, value: object, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidParameterError(f"{name} must be a finite real number ({rule}); got {value!r}")
    return float(value)


def check_settings(k: object, tau: object, phi: object, alpha: object, beta: object) -> AstrocyteSettings:
    """The settings, validated: k >= 0 an integer, tau >= 1, phi finite, alpha >= 1 >= beta > 0.

    Raises `InvalidParameterError` naming the setting and its valid range.
    """
    return AstrocyteSettings(k, tau, phi, alpha, beta)


def _validated(k: object, tau: object, phi: object, alpha: object, beta: object) -> tuple[int, float, float, float, float]:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise InvalidParameterError(
            f"k (the number of astrocytic iterations) must be an integer >= 0 (0 leaves the layer unchanged); got {k!r}"
        )
    tau = _real("tau", tau, "the activity threshold, tau >= 1")
    if tau < 1:
        raise InvalidParameterError(
            f"tau (the activity threshold) must be >= 1: the counters move by 1 per iteration; got {tau!r}"
        )
    phi = _real("phi", phi, "the activity level the class token's output is compared with")
    alpha = _real("alpha", alpha, "the excitation gain, alpha >= 1")
    beta = _real("beta", beta, "the inhibition gain, 0 < beta <= 1")
    if alpha < 1:
        raise InvalidParameterError(f"alpha (the excitation gain) must be >= 1 (alpha >= 1 >= beta > 0); got {alpha!r}")
    if not 0 < beta <= 1:
        raise InvalidParameterError(
            f"beta (the inhibition gain) must be in (0, 1] (alpha >= 1 >= beta > 0); got {beta!r}"
        )
    return int(k), tau, phi, alpha, beta


@dataclass
class AstrocyteTrace:
    """What the layer did in one forward pass, detached, for images b and output units i.

    ``class_output``: (k + 1, B, D_out) the class token's output y(t)[:, 0] for t = 0..k (before the
    rescaling); ``activity``: (k, B, D_out) the counters A after iteration t = 1..k; ``modulation``:
    (k, B, D_out) the product M after iteration t; ``norm_before`` / ``norm_after``: (B,) the mean token
    norms of y(0) and y(k); ``scale``: (B,) their ratio s.
    """

    class_output: torch.Tensor
    activity: torch.Tensor
    modulation: torch.Tensor
    norm_before: torch.Tensor
    norm_after: torch.Tensor
    scale: torch.Tensor


def _mean_token_norm(y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(y, dim=-1).mean(dim=-1)


def astrocytic_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    settings: AstrocyteSettings,
    *,
    trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, AstrocyteTrace]:
    """The astrocytic layer's output (B, N, D_out) for the input `x` (B, N, D_in) of a linear layer with
    `weight` (D_out, D_in) and `bias` (D_out,) or None; row 0 of the tokens is the class token.

    The loop of the module doc, differentiable in `x`, `weight` and `bias` (A and M are piecewise
    constant). With `trace`, also the `AstrocyteTrace` of the pass. The modulation is accumulated
    in at least float32 (beta^k underflows in half precision); the output has `x`'s dtype.
    """
    if x.ndim != 3 or x.shape[1] < 1:
        raise InvalidParameterError(
            f"the astrocytic layer takes tokens (B, N, D) with the class token in row 0; got {tuple(x.shape)}"
        )
    z = nn.functional.linear(x, weight)
    standard = z if bias is None else z + bias
    compute = torch.promote_types(standard.dtype, torch.float32)
    shift = 0 if bias is None else bias.to(compute)
    z_compute = z.to(compute)
    current = standard
    activity = torch.zeros(x.shape[0], z.shape[-1], dtype=compute, device=z.device)
    modulation = torch.ones_like(activity)
    one, alpha, beta = (torch.tensor(value, dtype=compute, device=z.device) for value in (1.0, settings.alpha, settings.beta))
    records: list[tuple[torch.Tensor, ...]] = []
    class_outputs = [standard[:, 0].detach()]
    for _ in range(settings.k):
        step = torch.where(current[:, 0].detach() >= settings.phi, one, -one)
        activity = (activity + step).clamp(-settings.tau, settings.tau)
        gain = torch.where(activity >= settings.tau, alpha, torch.where(activity <= -settings.tau, beta, one))
        modulation = modulation * gain
        current = z_compute * modulation[:, None, :] + shift
        if trace:
            records.append((activity, modulation))
            class_outputs.append(current[:, 0].detach())
    before = _mean_token_norm(standard.to(compute))
    after = _mean_token_norm(current.to(compute)) if settings.k else before
    # an all-zero output cannot be rescaled (0/0): it stays zero (s = 1)
    scale = before / torch.where(after == 0, torch.ones_like(after), after)
    output = (current * scale[:, None, None]).to(standard.dtype)
    if not trace:
        return output
    empty = torch.zeros(0, *activity.shape, dtype=compute, device=z.device)
    recorded = AstrocyteTrace(
        class_output=torch.stack(class_outputs),
        activity=torch.stack([a for a, _ in records]) if records else empty,
        modulation=torch.stack([m for _, m in records]) if records else empty.clone(),
        norm_before=before.detach(),
        norm_after=after.detach(),
        scale=scale.detach(),
    )
    return output, recorded


class Astrocytes:
    """The context manager `astrocytes` returns; see the module doc.

    Attributes: ``settings`` (`AstrocyteSettings`), ``block`` (the wrapped block's index, >= 0), ``layer``
    (the wrapped ``proj`` module), ``trace`` (the `AstrocyteTrace` of the last forward pass inside the
    context, None before the first).
    """

    def __init__(self, model: nn.Module, settings: AstrocyteSettings, block: int) -> None:
        self.model = model
        self.settings = settings
        self.block = block
        self.layer = model.blocks[block].attn.proj
        self.trace: AstrocyteTrace | None = None
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        result, self.trace = astrocytic_linear(args[0], module.weight, module.bias, self.settings, trace=True)
        return result

    def __enter__(self) -> "Astrocytes":
        if self.layer in _WRAPPED:
            raise InvalidParameterError(
                f"blocks[{self.block}].attn.proj of this model is already inside xaikit.astrocytes: a second "
                "wrapping would modulate it twice; leave the outer context first (one astrocytic layer at a time)"
            )
        # prepended: the other hooks on proj (recorders, relevance rules) see the astrocytic output
        self._handle = self.layer.register_forward_hook(self._hook, prepend=True)
        _WRAPPED.add(self.layer)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        _WRAPPED.discard(self.layer)


def check_block(model: nn.Module, block: object) -> int:
    """`block` as an index >= 0 into ``model.blocks`` (negative ones count from the end), or an error naming the range."""
    depth = len(model.blocks)
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or not -depth <= block < depth:
        raise InvalidParameterError(
            f"block must be an integer from 0 to {depth - 1} (this model has {depth} blocks; -{depth} to -1 count "
            f"from the end); got {block!r}. The paper wraps block 0"
        )
    return int(block) % depth


def check_astrocyte_model(model: nn.Module) -> None:
    """Raise unless `model` is a timm ViT whose row 0 is a class token (the counters read its output)."""
    check_vit(model)
    if getattr(model, "cls_token", None) is None:
        raise InvalidParameterError(
            "the astrocytic layer reads the class token's output (row 0), but this model has no class token "
            "(class_token=False); use a ViT with a class token (timm's default)"
        )


def astrocytes(
    model: nn.Module,
    k: int = 6,
    tau: float = 3,
    phi: float = -0.5,
    alpha: float = 1.5,
    beta: float = 0.05,
    block: int = 0,
) -> Astrocytes:
    """Context manager: inside it, ``model.blocks[block].attn.proj`` is ViTA's astrocytic linear layer.

    ``with xaikit.astrocytes(model, k=6, tau=3, phi=-0.5, alpha=1.5, beta=0.05): maps = xaikit.explain(model, x)``.
    The defaults are the paper's Table 1 row for Grad-CAM / SSIM; k = 0, or alpha = beta = 1, leaves the
    outputs as they are. Settings are checked here (k >= 0 an integer, tau >= 1, alpha >= 1 >= beta > 0,
    block in range) with errors naming the valid range. Returns an `Astrocytes` (its ``trace`` is what
    the layer did in the last forward pass).
    """
    check_astrocyte_model(model)
    settings = check_settings(k, tau, phi, alpha, beta)
    return Astrocytes(model, settings, check_block(model, block))
