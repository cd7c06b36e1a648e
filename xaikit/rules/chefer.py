"""Chefer et al.'s LRP rules (CVPR 2021) on timm Vision Transformers.

The reference code (hila-chefer/Transformer-Explainability) re-implements the
ViT with LRP-aware layers. Here the same rules run on an unmodified timm model:
`CheferLRP` is a context manager that, for the duration of one call, hooks the
timm modules the rules need (each Linear's input, and output where a rule reads
it; the attention probabilities; the residual branches after LayerScale; the
final norm; the head; the patch embedding) and records one forward pass. Its
``attention_relevance`` / ``input_relevance`` / ``pixel_relevance`` then walk the
model backwards, applying to each module the rule of its kind (the functions
below). timm computes softmax, both attention matmuls and the residual adds
functionally inside ``Block``/``Attention.forward``, so those rules read the
recorded operands (q, k, v from the qkv output, A, the block input and branch
outputs) instead of patching ``forward``. On exit every hook is removed and
``fused_attn`` restored, also after an exception: nothing is monkey-patched and
no parameter or ``.grad`` is touched.

Two rule sets, as in the reference (`RuleSet`):

* ``layers_ours`` (``ViT_LRP``, used by Transformer Attribution): Linear is
  alpha1-beta0 with one shared denominator (conserves the relevance); the
  residual Add is the z-rule followed by a rescaling of each branch to
  ``sum(R) * |S_a| / (|S_a| + |S_b|)`` (sums per image).
* ``layers_lrp`` (``ViT_orig_LRP``, used by full and partial LRP): Linear with
  separate denominators for ``x+ W+`` and ``x- W-`` (each Linear roughly doubles
  the relevance) and the plain signed z-rule for Add.

Common to both (reference-spec section 4.4): relevance starts as the one-hot
of the explained class (1.0, not the logit); biases take no relevance;
LayerNorm, GELU, softmax and dropout pass relevance unchanged; both matmuls
of attention use the bilinear z-rule and each operand gets half (``Q K^T``
without the 1/sqrt(d) scale); the class-token pooling and the residual split
(Clone) use their z-rules; the patch embedding uses z^B with each image's own
min and max; the position embedding's share is dropped. ``safe_divide`` adds
1e-9 to every denominator and maps a zero denominator to a zero quotient.

Choices for layouts the reference does not have:

* LayerScale (``ls1``/``ls2``, DINOv2, DeiT-3) is a per-channel scaling, a
  diagonal linear map without bias; LRP-0 on it passes the relevance through
  unchanged, so it is treated like LayerNorm's affine part (identity). The
  alpha1-beta0 Linear rule would instead drop the relevance of every channel
  whose input sign differs from its scale's sign.
* q/k norms, the attention output norm (``scale_norm``) and the MLP's inner
  norm are norms: identity. Any elementwise MLP activation is identity, as GELU.
* DeiT with a distillation token averages two heads, ``(head(x_cls) +
  head_dist(x_dist)) / 2``: the start relevance is split equally, half to each
  head (the mean weighs them equally; splitting in proportion to the two
  logits would divide by their sum, which can vanish). Both pooled tokens then
  carry relevance; read-outs of "the class token's row" read row 0.
* Register tokens are ordinary prefix tokens: attention passes relevance to
  them and on; they are never pooled.
* Per-image semantics in a batch: every sum of the reference (the Add
  rescaling, the z^B bounds) is taken per image, so a batch gives the same
  relevance as one image at a time.

The rules read only recorded tensors and the modules' weights: each is the
reference's ``gradprop`` (a gradient of Z) written out as matrix products, so
relevance needs no autograd graph and runs under ``torch.no_grad()``, batched.
Two exact shortcuts: rows that carry no relevance (all but the pooled tokens,
until the last block's attention) are skipped, and the shared Linear
denominator reuses the layer's forward output. In float64 the methods match
the reference's float64 outputs to about 1e-10; float32 LRP is ill-conditioned
(reference-spec 4.4: the reference's own float32 and float64 runs differ by up
to 1.7 relative), so float32 maps are only as good as that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError, UnsupportedModelError
from ..introspection import ModelHooks, check_vit
from ..targets import Target, resolve_targets

#: the stabiliser of the reference's ``safe_divide`` and z^B rule
EPSILON = 1e-9


@dataclass(frozen=True)
class RuleSet:
    """One of the reference's two rule files (``modules/layers_ours.py`` or ``modules/layers_lrp.py``)."""

    name: str
    #: Linear: one denominator ``x+ W+ + x- W-`` (conserving) instead of one per half
    shared_linear_denominator: bool
    #: Add: rescale the z-rule's two shares to the branch proportions (per image)
    rescaled_add: bool


LAYERS_OURS = RuleSet("layers_ours", shared_linear_denominator=True, rescaled_add=True)
LAYERS_LRP = RuleSet("layers_lrp", shared_linear_denominator=False, rescaled_add=False)
RULE_SETS = {rules.name: rules for rules in (LAYERS_OURS, LAYERS_LRP)}


# -- the rules ---------------------------------------------------------------------------
def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """The reference's ``safe_divide``: ``a / (b + 1e-9)``, 0 where ``b == 0``.

    Its ``b.clamp(min=eps) + b.clamp(max=eps)`` is exactly ``b + eps`` whatever the
    sign of b; a shifted denominator that is exactly 0 becomes eps.
    """
    shifted = denominator + EPSILON
    shifted.masked_fill_(shifted == 0, EPSILON)
    return (numerator / shifted).masked_fill_(denominator == 0, 0)


def linear_rule(
    relevance: torch.Tensor,
    inputs: torch.Tensor,
    weight: torch.Tensor,
    rules: RuleSet,
    output: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha1-beta0 through ``inputs @ weight.T`` (bias excluded); relevance (..., out) -> (..., in).

    Both halves of the denominator are sums of products of one sign (``x+ W+ >= 0``,
    ``x- W- >= 0``): a zero one means every product in it is zero, so its relevance
    vanishes whatever the quotient, and ``R / (Z + eps)`` gives what safe_divide gives.
    With the layer's forward `output` (and `bias`), the shared denominator of
    ``layers_ours`` takes one matrix product instead of two:
    ``x+ W+ + x- W- = (x W + |x| |W|) / 2``.
    """
    positive_w, negative_w = weight.clamp(min=0), weight.clamp(max=0)
    positive_x, negative_x = inputs.clamp(min=0), inputs.clamp(max=0)
    if rules.shared_linear_denominator:
        if output is None:
            z = _add_linear(F.linear(positive_x, positive_w), negative_x, negative_w)
        else:
            z = _add_linear(output, inputs.abs(), weight.abs(), beta=0.5, alpha=0.5)
            if bias is not None:
                z.sub_(bias, alpha=0.5)
            z.clamp_(min=0)  # rounding of x W + |x| |W| must not push a zero below 0
        s_positive = s_negative = relevance / z.add_(EPSILON)
    else:
        s_positive = relevance / F.linear(positive_x, positive_w).add_(EPSILON)
        s_negative = relevance / F.linear(negative_x, negative_w).add_(EPSILON)
    return torch.addcmul(positive_x.mul_(s_positive @ positive_w), negative_x, s_negative @ negative_w)


def _add_linear(
    z: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, beta: float = 1, alpha: float = 1
) -> torch.Tensor:
    """``beta * z + alpha * inputs @ weight.T`` in one matrix product (addmm)."""
    flat = torch.addmm(
        z.reshape(-1, z.shape[-1]), inputs.reshape(-1, inputs.shape[-1]), weight.T, beta=beta, alpha=alpha
    )
    return flat.reshape(z.shape)


def add_rule(
    relevance: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rules: RuleSet
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of the two summands of ``a + b`` (B, ..., D); the rescaling sums per image."""
    scaled = safe_divide(relevance, a + b)
    relevance_a, relevance_b = a * scaled, b * scaled
    if rules.rescaled_add:
        dims = tuple(range(1, relevance.ndim))
        sum_a, sum_b = relevance_a.sum(dims, keepdim=True), relevance_b.sum(dims, keepdim=True)
        total = relevance.sum(dims, keepdim=True)
        both = sum_a.abs() + sum_b.abs()
        relevance_a.mul_(safe_divide(safe_divide(sum_a.abs(), both) * total, sum_a))
        relevance_b.mul_(safe_divide(safe_divide(sum_b.abs(), both) * total, sum_b))
    return relevance_a, relevance_b


def clone_rule(relevance_1: torch.Tensor, relevance_2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The residual split ``x -> (x, x)``: ``x * (R1 / x + R2 / x)``."""
    return safe_divide(relevance_1 + relevance_2, x).mul_(x)


def attention_values_rule(
    relevance: torch.Tensor, attn: torch.Tensor, values: torch.Tensor, product: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear z-rule for ``attn @ values`` (B, H, n, N) x (B, H, N, d), each operand halved.

    `product` is ``attn @ values`` if the forward pass already computed it.
    """
    product = attn @ values if product is None else product
    half = safe_divide(relevance, product).div_(2)  # halving is exact: done on the small factor
    return attn * (half @ values.transpose(-2, -1)), values * (attn.transpose(-2, -1) @ half)


def query_key_rule(
    relevance: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear z-rule for the unscaled ``queries @ keys^T`` (B, H, n, d) x (B, H, N, d), each operand halved."""
    half = safe_divide(relevance, queries @ keys.transpose(-2, -1)).div_(2)
    return queries * (half @ keys), keys * (half.transpose(-2, -1) @ queries)


def zbeta_rule(relevance: torch.Tensor, pixels: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """z^B through the patch-embedding convolution, bounds = each image's own min and max.

    `relevance` (B, D, gh, gw) at the convolution's output -> (B, C, H, W).
    """
    positive_w, negative_w = conv.weight.clamp(min=0), conv.weight.clamp(max=0)
    low = pixels.amin(dim=(1, 2, 3), keepdim=True).expand_as(pixels)
    high = pixels.amax(dim=(1, 2, 3), keepdim=True).expand_as(pixels)
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    z = (
        F.conv2d(pixels, conv.weight, **geometry)
        - F.conv2d(low, positive_w, **geometry)
        - F.conv2d(high, negative_w, **geometry)
        + EPSILON
    )
    scaled = relevance / z  # plain division, as the reference

    def transpose(weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(pixels.shape, weight, scaled, **geometry)

    return pixels * transpose(conv.weight) - low * transpose(positive_w) - high * transpose(negative_w)


# -- where the rules start --------------------------------------------------------------
def start_relevance(targets: Target, logits: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """The relevance at the logits (B, C): the one-hot of each image's class (1.0, as the reference).

    For a callable target it is the gradient of the score with respect to the logits,
    which is that one-hot when the score is one logit.
    """
    logits = logits.detach()
    if classes is None and not callable(targets):
        _, classes = resolve_targets(targets, logits)
    if classes is not None:
        return F.one_hot(classes, logits.shape[1]).to(logits.dtype)
    with torch.enable_grad():
        free = logits.clone().requires_grad_(True)
        scores, _ = resolve_targets(targets, free)
        (relevance,) = torch.autograd.grad(scores.sum(), free)
    return relevance


# -- the model -------------------------------------------------------------------------
def check_lrp_model(model: nn.Module, pixels: bool = False) -> None:
    """Raise `UnsupportedModelError` unless Chefer's rules know every module of `model`."""
    from timm.layers import Attention, LayerScale, Mlp
    from timm.models.vision_transformer import Block

    check_vit(model)
    name = type(model).__qualname__
    if getattr(model, "cls_token", None) is None:
        raise InvalidParameterError(
            f"Chefer's LRP starts at the class token that the head reads, but this {name} has none "
            "(class_token=False); explain a model with a class token"
        )
    if getattr(model, "attn_pool", None) is not None or getattr(model, "global_pool", "token") != "token":
        raise UnsupportedModelError(
            f"Chefer's LRP follows the class-token pooling of the reference ViT; this {name} pools with "
            f"global_pool={getattr(model, 'global_pool', None)!r}. Use a model with global_pool='token'."
        )
    heads = [model.head] + ([model.head_dist] if _is_distilled(model) else [])
    if not all(type(head) is nn.Linear for head in heads):
        raise UnsupportedModelError(
            f"Chefer's LRP starts at a linear classifier head; this {name}'s head is "
            f"{type(model.head).__qualname__} (num_classes=0?). Create the model with num_classes > 0."
        )
    for i, blk in enumerate(model.blocks):
        problems = []
        if type(blk).forward is not Block.forward:
            problems.append(f"block {type(blk).__qualname__} (not timm's pre-norm Block)")
        if type(blk.attn).forward is not Attention.forward or getattr(blk.attn, "gate", None) is not None:
            problems.append(f"attention {type(blk.attn).__qualname__} (not timm's ungated Attention)")
        mlp = blk.mlp
        if not isinstance(mlp, Mlp) or type(mlp).forward is not Mlp.forward or type(mlp.fc1) is not nn.Linear:
            problems.append(f"MLP {type(blk.mlp).__qualname__} (not timm's Mlp of two Linear layers)")
        for part in ("ls1", "ls2"):
            if not isinstance(getattr(blk, part), (nn.Identity, LayerScale)):
                problems.append(f"{part} {type(getattr(blk, part)).__qualname__}")
        if problems:
            raise UnsupportedModelError(
                f"Chefer's LRP rules cover timm's standard ViT block (pre-norm Block, Attention, Mlp, "
                f"LayerScale); block {i} of this {name} has " + ", ".join(problems) + ". Explain this model "
                "with a method that needs no relevance rules (e.g. gae, rollout) or use a standard ViT/DeiT."
            )
    if pixels and type(model.patch_embed.proj) is not nn.Conv2d:
        raise UnsupportedModelError(
            f"full LRP ends with the z^B rule of a convolutional patch embedding; this {name} embeds "
            f"patches with {type(model.patch_embed.proj).__qualname__}. Use partial_lrp or "
            "transformer_attribution, which stop at the attention maps."
        )


def _is_distilled(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None and isinstance(getattr(model, "head_dist", None), nn.Module)


class CheferLRP(ModelHooks):
    """Context manager running Chefer's LRP rules on a timm ViT; see the module doc.

    Parameters
    ----------
    model: a timm ``VisionTransformer`` (plain, DeiT-distilled, with registers, any grid).
    rules: ``"layers_ours"`` (Transformer Attribution) or ``"layers_lrp"`` (full/partial LRP),
        or a `RuleSet`.
    first_block: the lowest block whose tensors are recorded; relevance can be taken down to
        that block's attention (``attention_relevance``). 0 is needed for ``pixel_relevance``.
    pixels: also record the patch embedding, for ``pixel_relevance``.

    Usage::

        with CheferLRP(model, "layers_lrp", pixels=True) as lrp:
            logits = model(images)
            maps = lrp.pixel_relevance(start_relevance(None, logits))
    """

    def __init__(self, model: nn.Module, rules: RuleSet | str, *, first_block: int = 0, pixels: bool = False) -> None:
        check_lrp_model(model, pixels=pixels)
        if isinstance(rules, str):
            if rules not in RULE_SETS:
                raise InvalidParameterError(f"unknown rule set {rules!r}; valid rule sets are {', '.join(RULE_SETS)}")
            rules = RULE_SETS[rules]
        depth = len(model.blocks)
        if not 0 <= first_block < depth or (pixels and first_block != 0):
            raise InvalidParameterError(
                f"first_block must be in [0, {depth - 1}] (0 for pixel relevance); got {first_block!r}"
            )
        self.model = model
        self.rules = rules
        self.first_block = first_block
        self.pixels = pixels
        self.distilled = _is_distilled(model)
        #: pooled tokens: the class token (and DeiT's distillation token), the first rows
        self.pooled = 2 if self.distilled else 1
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.records: dict[str, torch.Tensor] = {}
        self.blocks: dict[int, dict[str, torch.Tensor]] = {}
        self._image_size: tuple[int, int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_fused: list[tuple[nn.Module, bool]] = []

    def _clear(self) -> None:
        self.records, self.blocks = {}, {}

    # -- recording ------------------------------------------------------------------
    def _install_hooks(self) -> None:
        model = self.model
        hook = self._handles.append
        hook(model.register_forward_pre_hook(self._start_forward))
        hook(model.norm.register_forward_hook(self._saver(self.records, "features", "output")))
        hook(model.head.register_forward_hook(self._saver(self.records, "head", "input")))
        if self.distilled:
            hook(model.head_dist.register_forward_hook(self._saver(self.records, "head_dist", "input")))
        if self.pixels:
            hook(model.patch_embed.proj.register_forward_hook(self._saver(self.records, "pixels", "input")))
            hook(model.patch_embed.register_forward_hook(self._saver(self.records, "patch_tokens", "output")))
            if model.pos_embed is not None:
                hook(model.pos_drop.register_forward_hook(self._saver(self.records, "embedded", "input")))
        for i in range(self.first_block, len(model.blocks)):
            blk = model.blocks[i]
            store = self.blocks.setdefault(i, {})
            points = [
                (blk, "input", "input"),
                (blk.attn.qkv, "qkv_in", "input"),
                (blk.attn.qkv, "qkv_out", "output"),
                (blk.attn.attn_drop, "attn", "output"),
                (blk.attn.proj, "proj_in", "input"),
                (blk.ls1, "attn_out", "output"),
                (blk.mlp.fc1, "fc1_in", "input"),
                (blk.mlp.fc2, "fc2_in", "input"),
                (blk.ls2, "mlp_out", "output"),
            ]
            if self.rules.shared_linear_denominator:  # the outputs save a product in linear_rule
                points += [(blk.attn.proj, "proj_out", "output"), (blk.mlp.fc1, "fc1_out", "output"),
                           (blk.mlp.fc2, "fc2_out", "output")]
            for module, name, which in points:
                hook(module.register_forward_hook(self._saver(store, name, which)))

    def _start_forward(self, module: nn.Module, args: tuple) -> None:
        self.records.clear()
        for store in self.blocks.values():
            store.clear()
        self._image_size = tuple(args[0].shape[-2:])

    @staticmethod
    def _saver(store: dict[str, torch.Tensor], name: str, which: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            store[name] = (args[0] if which == "input" else output).detach()

        return hook

    def _get(self, store: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name not in store:
            raise RuntimeError(
                f"CheferLRP recorded no {name!r}: run the model on a batch inside the `with` block "
                "(with the blocks and pixels you ask relevance for) first"
            )
        return store[name]

    # -- relevance ------------------------------------------------------------------
    def attention_relevance(self, start: torch.Tensor) -> dict[int, torch.Tensor]:
        """Relevance of each recorded block's attention probabilities, {block: (B, H, N, N)}.

        `start` (B, C) is the relevance at the logits (`start_relevance`). This is the
        reference's ``get_attn_cam()``: signed, per head, after the A.V halving. The
        walk stops at ``first_block``'s attention.
        """
        return self._propagate(start, through_first_block=False)[1]

    def input_relevance(self, start: torch.Tensor) -> torch.Tensor:
        """Relevance of the tokens entering block ``first_block``, (B, N, D)."""
        return self._propagate(start, through_first_block=True)[0]

    def pixel_relevance(self, start: torch.Tensor) -> torch.Tensor:
        """Relevance of the input pixels summed over channels, (B, H, W): the reference's "full" LRP."""
        if not self.pixels:
            raise RuntimeError("open CheferLRP with pixels=True to take relevance down to the pixels")
        with torch.no_grad():
            return self._embedding(self.input_relevance(start))

    @torch.no_grad()
    def _propagate(
        self, start: torch.Tensor, through_first_block: bool
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        relevance = self.pooled_relevance(start)
        # Until the last block's attention only the pooled rows carry relevance: the
        # rules are row-wise there, so the other rows are skipped (they would be 0).
        rows: int | None = self.pooled
        attention: dict[int, torch.Tensor] = {}
        for i in reversed(range(self.first_block, len(self.model.blocks))):
            stop = i == self.first_block and not through_first_block
            relevance, attention[i] = self._block(i, relevance, rows, stop)
            rows = None
        return relevance, attention

    @torch.no_grad()
    def pooled_relevance(self, start: torch.Tensor) -> torch.Tensor:
        """Relevance at the final norm's output rows that the head reads, (B, pooled, D)."""
        start = start.to(self._get(self.records, "head").dtype)
        if start.ndim != 2 or start.shape[1] != self.model.head.out_features:
            raise InvalidParameterError(
                f"start relevance must be (B, {self.model.head.out_features}); got {tuple(start.shape)}"
            )
        features = self._get(self.records, "features")
        heads = [(self.model.head, "head")] + ([(self.model.head_dist, "head_dist")] if self.distilled else [])
        share = start / len(heads)  # DeiT-distilled: each head gets half (module doc)
        pooled = []
        for row, (head, name) in enumerate(heads):
            # head_drop, fc_norm and the final norm pass relevance unchanged
            at_token = linear_rule(share, self._get(self.records, name), head.weight, self.rules)
            token = features[:, row]
            pooled.append(token * safe_divide(at_token, token))  # IndexSelect z-rule
        return torch.stack(pooled, dim=1)

    def _block(
        self, index: int, relevance: torch.Tensor, rows: int | None, stop: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Relevance through one block: at its input, and at its attention probabilities."""
        blk, store, rules = self.model.blocks[index], self.blocks[index], self.rules
        attn_module = blk.attn

        def get(name: str) -> torch.Tensor:
            tensor = self._get(store, name)
            return tensor if rows is None or name == "attn" or name.startswith("qkv") else tensor[:, :rows]

        def linear(relevance: torch.Tensor, module: nn.Linear, name: str) -> torch.Tensor:
            output = get(f"{name}_out") if rules.shared_linear_denominator else None
            return linear_rule(relevance, get(f"{name}_in"), module.weight, rules, output=output, bias=module.bias)

        x, attn_out, mlp_out = get("input"), get("attn_out"), get("mlp_out")
        mid = x + attn_out  # the residual stream between the two branches, as the forward computed it
        # x = mid + ls2(mlp(norm2(mid))); ls2, the activation, dropouts and norms: identity
        relevance_mid, relevance_mlp = add_rule(relevance, mid, mlp_out, rules)
        relevance_mlp = linear(relevance_mlp, blk.mlp.fc2, "fc2")
        relevance_mlp = linear(relevance_mlp, blk.mlp.fc1, "fc1")
        relevance_mid = clone_rule(relevance_mid, relevance_mlp, mid)
        # mid = x + ls1(attn(norm1(x)))
        relevance_skip, relevance_attn_out = add_rule(relevance_mid, x, attn_out, rules)
        relevance_context = linear(relevance_attn_out, attn_module.proj, "proj")

        batch, tokens = get("qkv_out").shape[:2]
        heads, head_dim = attn_module.num_heads, attn_module.head_dim
        qkv = get("qkv_out").reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        queries, keys, values = attn_module.q_norm(qkv[0]), attn_module.k_norm(qkv[1]), qkv[2]
        attn = get("attn")
        n = tokens if rows is None else rows

        def per_head(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(batch, n, heads, head_dim).transpose(1, 2)

        # without a scale_norm, proj's input is the forward's attn @ v, heads concatenated
        product = per_head(get("proj_in")) if isinstance(attn_module.norm, nn.Identity) else None
        relevance_rows, relevance_values = attention_values_rule(
            per_head(relevance_context), attn[:, :, :n], values, product=product
        )
        relevance_attn = relevance_rows if rows is None else _pad_rows(relevance_rows, tokens)
        if stop:
            return None, relevance_attn
        # softmax and attn_drop: identity; the scores are the unscaled q k^T
        relevance_queries, relevance_keys = query_key_rule(relevance_rows, queries[:, :, :n], keys)
        if rows is not None:
            relevance_queries = _pad_rows(relevance_queries, tokens)
        relevance_qkv = torch.stack([relevance_queries, relevance_keys, relevance_values])  # (3, B, H, N, d)
        relevance_qkv = relevance_qkv.permute(1, 3, 0, 2, 4).reshape(batch, tokens, 3 * heads * head_dim)
        relevance_norm1 = linear(relevance_qkv, attn_module.qkv, "qkv")
        full_x = self._get(store, "input")
        if rows is not None:
            relevance_skip = _pad_rows(relevance_skip, tokens, dim=1)
        return clone_rule(relevance_skip, relevance_norm1, full_x), relevance_attn

    def _embedding(self, relevance: torch.Tensor) -> torch.Tensor:
        """From the first block's input to the pixels: position-embedding Add, then z^B."""
        model = self.model
        # norm_pre, patch_drop and pos_drop pass relevance unchanged; the prefix tokens and
        # the position embedding's share are dropped, as the reference drops CLS's
        patches = relevance[:, self.num_prefix_tokens :]
        tokens = self._get(self.records, "patch_tokens")
        batch, dim = tokens.shape[0], tokens.shape[-1]
        grid = tokens.shape[1:-1] if tokens.ndim == 4 else None  # dynamic_img_size gives NHWC
        tokens = tokens.reshape(batch, -1, dim)
        if model.pos_embed is not None:
            embedded = self._get(self.records, "embedded")[:, -tokens.shape[1] :]
            patches = tokens * safe_divide(patches, embedded)
        pixels, conv = self._get(self.records, "pixels"), model.patch_embed.proj
        gh, gw = grid if grid is not None else _conv_output_size(conv, pixels.shape[-2:])
        patches = patches.transpose(1, 2).reshape(batch, dim, gh, gw)  # patch_embed.norm: identity
        height, width = self._image_size
        # dynamic_img_pad pads right and bottom: crop back to the image
        return zbeta_rule(patches, pixels, conv).sum(dim=1)[:, :height, :width]


def _conv_output_size(conv: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of `conv`'s output for inputs of `size`."""
    geometry = zip(size, conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    return tuple((length + 2 * pad - dil * (kern - 1) - 1) // step + 1 for length, pad, dil, kern, step in geometry)


def _pad_rows(relevance: torch.Tensor, tokens: int, dim: int = 2) -> torch.Tensor:
    """Zero rows below the first ``relevance.shape[dim]`` (the rows that carried no relevance)."""
    shape = list(relevance.shape)
    shape[dim] = tokens
    padded = relevance.new_zeros(shape)
    padded.narrow(dim, 0, relevance.shape[dim]).copy_(relevance)
    return padded
