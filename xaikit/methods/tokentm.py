"""TokenTM: attention flow aware of token transformations (Wu et al., CVPR 2024).

No official code exists; this follows the paper as written down in
reference-spec §3.2, with every choice §3.3 leaves open exposed as a parameter.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import InvalidParameterError, UnsupportedModelError
from ..introspection import BlockRecord
from ..targets import Target, resolve_targets
from .base import Explainer, register

VARIANTS = ("full", "af_l", "af", "baseline")
GRADIENTS = ("probability", "logit")
INPUT_TOKENS = ("residual", "normed")
TRANSFORMED_TOKENS = ("per_head", "shared")
NECC_DOMAINS = ("all", "patches")


@register
class TokenTM(Explainer):
    """TokenTM: the class-token row of an aggregated, transformation-aware attention flow.

    Each block is two layers, MHSA then FFN. With E the tokens entering a layer and
    Ẽ the tokens it transforms them into, every layer gets the token weights
    ``W = diag( L(Ẽ)/L(E) ⊙ NECC(cos(E, Ẽ)) )`` (Eq. 12-13): L is the Euclidean length
    of each token, cos the cosine of E_j and Ẽ_j, NECC a softmax over tokens.
    Starting from ``C = diag(L(E⁰))`` (Eq. 18, E⁰ the tokens entering block 0),
    block by block:

    - MHSA: ``C ← (I + mean_h[ relu(G^h) ⊙ (A^h W^h) ]) C`` (Eq. 14-15, 19), A^h the
      attention of head h, G^h the gradient of the explained score with respect to A^h;
    - FFN: ``C ← (I + W_ffn) C`` (Eq. 16-17), with Ẽ the MLP branch added to the residual
      and E the residual stream entering the MLP.

    Two updates per block (§3.3.5), the head mean taken after the clamped product
    (§3.3.4). The map is ``C[cls, patches]``, not normalised (upsampling and min-max
    scaling are the protocols' business). Only the class-token row is carried, from the
    last layer back (O(N²) per layer instead of O(N³)); the per-head lengths and
    cosines come from ``‖v Pₕ‖² = v (Pₕ Pₕᵀ) vᵀ`` and ``⟨E, v Pₕ⟩ = ⟨E Pₕᵀ, v⟩``, with
    ``Pₕ = (γ ⊙ W_proj[:, h])ᵀ`` the (d_h, D) block of the layer-scaled output projection
    that acts on head h, so no (B, heads, N, D) tensor is formed. One forward and one
    backward pass per batch.

    Parameters
    ----------
    variant: the rows of the paper's ablation (Table 6).
        ``"full"`` (default): +AF+L+NECC, the method above.
        ``"af_l"``: +AF+L, no NECC: ``W = diag(L(Ẽ)/L(E))``; C starts at diag(L(E⁰)) as
        that is a length term too (our reading).
        ``"af"``: +AF, ``C⁰ = I`` and ``W = I``, so every FFN update is 2I. With
        ``gradient="logit"`` this is GAE times 2^blocks.
        ``"baseline"``: Eq. 8 on one layer, no aggregation: the class-token row of
        ``mean_h relu(G^h) ⊙ A^h`` of the last block used (see `depth`), W = I.
    gradient: the score G is the gradient of (§3.3.3). ``"probability"`` (default, the
        paper): the softmax probability p_c of the target class c; its gradient is taken in closed
        form with respect to the logits, ``p_c (e_c - p)``, so that it does not vanish
        when p_c rounds to 1 in float32. ``"logit"``: the target's logit (GAE's choice).
        A callable target is differentiated as it is, whatever this setting.
    depth: ``None`` (default) aggregates every block; n aggregates only the first n
        blocks (Table 7): the map is the class-token row of C after the updates of
        blocks 0..n-1, with A and G of those blocks and G still the gradient of the
        model's output. With ``variant="baseline"`` it picks the single block used
        (block n-1; default the last).
    input_tokens: what E, the tokens a layer transforms (the ratio's denominator and
        the cosine's partner), is. ``"residual"`` (default, §3.3.1): the residual
        stream, as in the paper's Eq. 4 (the block input for MHSA, the block input plus
        the attention branch for the FFN). ``"normed"``: the LayerNorm-ed tokens the
        layer actually reads (``norm1``/``norm2`` outputs). Either way Ẽ is computed from
        the LayerNorm-ed tokens (that is what the layer does) and C⁰ uses the residual E⁰.
    transformed_tokens: how Ẽ of the MHSA layer is formed. ``"per_head"`` (default,
        §3.3.2): one Ẽ^h per head, ``Ẽ^h = γ ⊙ v^h W_proj,hᵀ`` (the value bias is inside
        v^h; the output-projection bias is added once after the heads are summed, so it
        is left out), hence one W^h per head. ``"shared"``: one Ẽ for all heads,
        ``γ ⊙ proj(v)`` with the projection bias, the attention branch's transformation
        of each token on its own. γ is the layer scale ``ls1`` (1 without one): Ẽ is what
        the layer adds to the residual stream, as Ẽ of the FFN is ``ls2(mlp(·))``.
    necc_domain: the tokens the NECC softmax normalises over. ``"all"`` (default,
        §3.3.6): every token, the class token and any distillation or register tokens
        included. ``"patches"``: ``exp(cos_j) / Σ_{k patch} exp(cos_k)``, the sum over
        patch tokens only (prefix tokens keep their own numerator).

    The block structure must be timm's pre-norm ``Block`` with the standard
    ``Attention`` (no ``scale_norm``, no gate) and ``ls1``/``ls2`` identities or
    ``LayerScale``: DeiT (distillation token), DINOv2 (registers) and the demo models are.
    """

    reads_layer_weights = True

    name = "tokentm"
    title = "TokenTM"
    paper = "wu2024tokentm"
    paper_names = {"tokentm": "TokenTM"}
    grads = ("attn",)

    def __init__(
        self,
        model: nn.Module,
        variant: str = "full",
        gradient: str = "probability",
        depth: int | None = None,
        input_tokens: str = "residual",
        transformed_tokens: str = "per_head",
        necc_domain: str = "all",
    ) -> None:
        super().__init__(model)
        for name, value, valid in (
            ("variant", variant, VARIANTS),
            ("gradient", gradient, GRADIENTS),
            ("input_tokens", input_tokens, INPUT_TOKENS),
            ("transformed_tokens", transformed_tokens, TRANSFORMED_TOKENS),
            ("necc_domain", necc_domain, NECC_DOMAINS),
        ):
            if value not in valid:
                raise InvalidParameterError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
        blocks = len(model.blocks)
        if depth is not None and (
            isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= blocks
        ):
            raise InvalidParameterError(f"depth must be None (all blocks) or an int in [1, {blocks}]; got {depth!r}")
        self.variant = variant
        self.gradient = gradient
        self.depth = blocks if depth is None else int(depth)
        self.input_tokens = input_tokens
        self.transformed_tokens = transformed_tokens
        self.necc_domain = necc_domain
        if variant in ("full", "af_l"):
            _check_block_structure(model)
            normed = ("norm1", "norm2") if input_tokens == "normed" else ()
            self.records = ("input", "attn", "values", "attn_out", "mlp_out", *normed)
        else:
            self.records = ("attn",)

    def target_scores(self, targets: Target, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        scores, classes = resolve_targets(targets, logits)
        if self.gradient == "probability" and classes is not None:
            scores = probability_gradient_score(logits, classes)
        return scores, classes

    def token_scores(self, recorder, logits, classes) -> torch.Tensor:
        prefix = recorder.num_prefix_tokens
        records = recorder.blocks[: self.depth]
        if self.variant == "baseline":
            last = records[-1]
            return _attention_flow(last).mean(dim=1)[:, 0, prefix:]

        attn = records[0].get("attn")
        batch, _, tokens, _ = attn.shape
        # row = e_clsᵀ (F_L U_L ... F_1 U_1), built from the last layer back.
        row = torch.zeros(batch, tokens, dtype=attn.dtype, device=attn.device)
        row[:, 0] = 1
        for record in reversed(records):
            attn_weights = None
            if self.variant == "af":
                row = 2 * row
            else:
                attn_weights, mlp_weights = self.token_weights(record, self.model.blocks[record.index], prefix)
                row = row * (1 + mlp_weights)  # row (I + diag(w))
            # row U = row + mean_h (row (relu(G^h) ⊙ A^h)) diag(w^h): W^h scales the columns, so it is
            # applied to the (B, H, N) products rather than to the (B, H, N, N) matrices.
            mixed = (row[:, None, None, :] @ _attention_flow(record)).squeeze(2)
            if attn_weights is not None:
                mixed = mixed * attn_weights
            row = row + mixed.mean(dim=1)
        if self.variant != "af":
            row = row * records[0].get("input").norm(dim=-1)  # row C⁰, C⁰ = diag(L(E⁰))
        return row[:, prefix:]

    def token_weights(self, record: BlockRecord, block: nn.Module, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Diagonals of W for the block's MHSA layer, (B, heads or 1, N), and FFN layer, (B, N)."""
        normed = self.input_tokens == "normed"
        source = record.get("norm1" if normed else "input")
        values = record.get("values")
        scale = _layer_scale(block.ls1)
        if self.transformed_tokens == "per_head":
            projection = block.attn.proj.weight.t()  # (heads*head_dim, D): row block h is P_h
            if scale is not None:
                projection = projection * scale
            lengths, dots = transformed_head_statistics(source, values, projection)
            attn_weights = self._weights(source.norm(dim=-1).unsqueeze(1), lengths, dots, prefix)
        else:
            proj = block.attn.proj
            transformed = nn.functional.linear(values.transpose(1, 2).flatten(2), proj.weight, proj.bias)
            if scale is not None:
                transformed = transformed * scale
            attn_weights = self._token_weights(source, transformed, prefix).unsqueeze(1)

        mlp_source = record.get("norm2") if normed else record.get("input") + record.get("attn_out")
        mlp_weights = self._token_weights(mlp_source, record.get("mlp_out"), prefix)
        return attn_weights, mlp_weights

    def _token_weights(self, source: torch.Tensor, transformed: torch.Tensor, prefix: int) -> torch.Tensor:
        lengths = transformed.norm(dim=-1)
        dots = (source * transformed).sum(dim=-1)
        return self._weights(source.norm(dim=-1), lengths, dots, prefix)

    def _weights(self, source_lengths, lengths, dots, prefix: int) -> torch.Tensor:
        """``L(Ẽ)/L(E)`` (times ``NECC(cos(E, Ẽ))`` for the full method), per token."""
        tiny = torch.finfo(lengths.dtype).tiny
        ratio = lengths / source_lengths.clamp(min=tiny)
        if self.variant == "af_l":
            return ratio
        cosines = dots / (lengths * source_lengths).clamp(min=tiny)
        if self.necc_domain == "all":
            return ratio * cosines.softmax(dim=-1)
        return ratio * (cosines - cosines[..., prefix:].logsumexp(dim=-1, keepdim=True)).exp()


def transformed_head_statistics(
    source: torch.Tensor, values: torch.Tensor, projection: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths ``‖Ẽ^h_j‖`` and dot products ``⟨E_j, Ẽ^h_j⟩`` of the per-head transformed tokens.

    ``Ẽ^h = v^h P_h`` with P_h the h-th block of `projection` rows: source E (B, N, D),
    values v (B, H, N, d_h), projection (H*d_h, D). Computed as ``v (P_h P_hᵀ) vᵀ`` and
    ``⟨E P_hᵀ, v⟩``, never forming the (B, H, N, D) tensor Ẽ. Returns two (B, H, N).
    """
    heads, head_dim = values.shape[1], values.shape[-1]
    per_head = projection.reshape(heads, head_dim, -1)
    gram = per_head @ per_head.transpose(1, 2)  # (H, d_h, d_h)
    squared_lengths = ((values @ gram) * values).sum(dim=-1)
    projected = (source @ projection.t()).unflatten(-1, (heads, head_dim)).transpose(1, 2)  # E P_hᵀ
    dots = (projected * values).sum(dim=-1)
    return squared_lengths.clamp(min=0).sqrt(), dots


def probability_gradient_score(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-image scores whose gradient is that of ``softmax(logits)[c]``.

    ``∂p_c/∂logits = p_c (e_c - p)``, computed in closed form with the c entry as
    ``p_c Σ_{k≠c} p_k`` (``1 - p_c`` would round to 0 in float32 for a confident
    prediction and leave only the other entries); the score is its (detached) inner
    product with the logits, so back-propagating it back-propagates that gradient.
    """
    with torch.no_grad():
        probs = logits.softmax(dim=1)
        index = classes[:, None]
        target = probs.gather(1, index)
        others = probs.scatter(1, index, 0).sum(dim=1, keepdim=True)
        weights = (-target * probs).scatter(1, index, target * others)
    return (weights * logits).sum(dim=1)


def _attention_flow(record: BlockRecord) -> torch.Tensor:
    """``relu(G) ⊙ A`` per head, (B, H, N, N), as ``clamp(G ⊙ A, 0)`` (the same since A ≥ 0)."""
    return (record.grad("attn") * record.get("attn")).clamp_(min=0)


def _layer_scale(module: nn.Module) -> torch.Tensor | None:
    return module.gamma if isinstance(module, LayerScale) else None


def _check_block_structure(model: nn.Module) -> None:
    for i, block in enumerate(model.blocks):
        problems = []
        if not isinstance(block, Block):
            problems.append(f"it is a {type(block).__qualname__}, not timm's pre-norm Block")
        else:
            attn = block.attn
            if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
                problems.append("its attention normalises the heads' output before proj (scale_norm)")
            if getattr(attn, "gate", None) is not None:
                problems.append("its attention output is gated")
            for name in ("ls1", "ls2"):
                if not isinstance(getattr(block, name), (nn.Identity, LayerScale)):
                    problems.append(f"{name} is a {type(getattr(block, name)).__qualname__}, not Identity or LayerScale")
        if problems:
            raise UnsupportedModelError(
                f"TokenTM splits each block into its residual updates and block {i} does not fit: "
                f"{'; '.join(problems)}. Use a plain ViT/DeiT/DINOv2 timm model, or variant='af' or "
                "'baseline', which need only the attention maps."
            )
