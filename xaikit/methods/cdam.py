"""CDAM: class-discriminative attention maps (Brocki, Binda & Chung), vanilla, Smooth and Integrated.

``S_i = sum_j T_ij * d f / d T_ij`` for each patch token i, where T is the output of the
last block's ``norm1`` (the LayerNorm-ed tokens entering the last attention) and f the
target score (a class logit, or a feature score such as a concept similarity).
Signed, unnormalised; the prefix tokens (class, distillation, registers) are left out
(reference-spec 2.3).

All three run the model up to the last block once, without a graph, and then only the
last block, the final norm and the head with gradients: the Smooth and Integrated
variants put all their perturbed copies of a batch through that tail in large batches
(the authors' ``NewModel``: deep copies of ``blocks[-1]``, ``norm`` and ``head``, called
once per sample). Gradients are taken with ``torch.autograd.grad`` on T only: no
parameter gradient, no ``.grad`` written.

``space`` chooses where the Smooth and Integrated variants perturb (reference-spec 2.5,
2.6): ``"code"`` (default) as the authors' code, on the pre-LayerNorm input of the last
block; ``"paper"`` as the paper's Eqs. 5 and 6, on T itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import token_grid
from ..targets import Target, resolve_targets
from . import input_gradients
from .base import Explainer, eval_mode, register
from .input_gradients import check_noise_level, check_noise_source, check_positive_int, copy_scores, noise_bank, prepare_gradient_call

SPACES = ("code", "paper")


class _Stop(Exception):
    """Ends a forward pass at the last block (its input is all that is needed)."""


def last_block_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The residual stream entering ``model.blocks[-1]`` (B, N, D), without a graph; the last block,
    final norm and head are not run."""
    captured: list[torch.Tensor] = []

    def stop(module, args):
        captured.append(args[0].detach())
        raise _Stop

    handle = model.blocks[-1].register_forward_pre_hook(stop)
    try:
        with torch.no_grad():
            model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def head_rows(model: nn.Module) -> list[int] | None:
    """The token rows of the last block's output the head reads (class token; DeiT: and the distillation
    token), or None when it reads them all (average or attention pooling)."""
    if getattr(model, "attn_pool", None) is not None or getattr(model, "global_pool", "token") != "token":
        return None
    return [0, 1] if isinstance(getattr(model, "head_dist", None), nn.Module) else [0]


def _plain_timm_block(block: nn.Module) -> bool:
    """A timm ``Block`` with timm's ``Attention`` (no gate): `rows_forward` computes exactly what it does."""
    from timm.models.vision_transformer import Attention, Block

    return type(block) is Block and type(block.attn) is Attention and getattr(block.attn, "gate", None) is None


def rows_forward(block: nn.Module, x: torch.Tensor, tokens: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The rows `rows` of ``block(x)`` for a plain timm block, given T = the ``norm1`` output `tokens`.

    Only those rows' queries are attended and only those rows go through the MLP: the other rows
    of the output never reach the head, and T enters through the keys and values of every token,
    so the gradient with respect to T is that of the whole block at a fraction of its cost.
    """
    attn = block.attn
    batch, count, _ = tokens.shape
    # qkv's weight stacks the q, k and v rows: queries only for `rows`, keys and values for every token
    weights_q, weights_k, weights_v = attn.qkv.weight.chunk(3, dim=0)
    bias_q, bias_k, bias_v = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None, None, None)

    def heads(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(batch, values.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)

    q = attn.q_norm(heads(F.linear(tokens[:, rows], weights_q, bias_q)))
    k = attn.k_norm(heads(F.linear(tokens, weights_k, bias_k)))
    v = heads(F.linear(tokens, weights_v, bias_v))
    weights = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    mixed = attn.proj_drop(attn.proj(attn.norm((weights @ v).transpose(1, 2).reshape(batch, len(rows), -1))))
    out = x[:, rows] + block.drop_path1(block.ls1(mixed))
    return out + block.drop_path2(block.ls2(block.mlp(block.norm2(out))))


def run_tail(model: nn.Module, block_input: torch.Tensor, tokens: torch.Tensor | None = None):
    """(outputs, T): the model's outputs from the last block's input (the last block, final norm, head),
    and T, the output of the last block's ``norm1`` as the block used it, attached to the graph.

    tokens: when given, used as the ``norm1`` output instead of ``norm1(block_input)`` (the paper's
    perturbations act on T). For a plain timm block whose head reads only the class (and
    distillation) token, only those rows are computed after T (`rows_forward`).
    """
    block, rows = model.blocks[-1], head_rows(model)
    if rows is not None and _plain_timm_block(block):
        if tokens is None:
            tokens = block.norm1(block_input)
        if not tokens.requires_grad:  # frozen LayerNorm parameters: T still needs a gradient
            tokens = tokens.detach().requires_grad_(True)
        return model.forward_head(model.norm(rows_forward(block, block_input, tokens, rows))), tokens
    used: list[torch.Tensor] = []

    def hook(module, args, output):
        if tokens is not None:
            output = tokens
        elif not output.requires_grad:
            output = output.detach().requires_grad_(True)
        used.append(output)
        return output

    handle = block.norm1.register_forward_hook(hook)
    try:
        outputs = model.forward_head(model.norm(block(block_input)))
    finally:
        handle.remove()
    return outputs, used[0]


def tail_copies_per_chunk(model: nn.Module, block_input: torch.Tensor, copies: int) -> int:
    """How many copies of a batch one forward+backward pass through the last block takes (at least 1)."""
    batch, tokens, dim = block_input.shape
    hidden = getattr(getattr(model.blocks[-1], "mlp", None), "fc1", None)
    hidden = hidden.out_features if isinstance(hidden, nn.Linear) else 4 * dim
    heads = int(model.blocks[-1].attn.num_heads)
    per_sequence = (12 * tokens * dim + 3 * tokens * hidden + 3 * heads * tokens * tokens) * block_input.element_size()
    return int(min(copies, max(1, input_gradients.CHUNK_BYTES // max(1, per_sequence * batch))))


def check_space(method: str, space: object) -> str:
    if space not in SPACES:
        raise InvalidParameterError(
            f"space of method {method!r} must be 'code' (the authors' code: perturb the last block's pre-LayerNorm "
            f"input) or 'paper' (the paper's equations: perturb the LayerNorm-ed tokens); got {space!r}"
        )
    return str(space)


class TailMethod(Explainer):
    """Base of the CDAM family: token maps from T and dscore/dT of the last block's tail."""

    signed = True
    needs_class_token = False

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Maps (B, gh, gw) in the model's dtype; the model runs in eval mode, its flags are restored."""
        images = prepare_gradient_call(self, images, targets)
        grid = token_grid(self.model, tuple(images.shape[-2:]))
        with eval_mode(self.model):
            block_input = last_block_input(self.model, images)
            scores = self.tail_scores(block_input, targets)
        prefix = int(self.model.num_prefix_tokens)
        return scores[:, prefix:].reshape(images.shape[0], *grid)

    def tail_scores(self, block_input: torch.Tensor, targets: Target) -> torch.Tensor:
        """Scores per token, prefix tokens included, (B, N)."""
        raise NotImplementedError

    def explained_classes(self, block_input: torch.Tensor, targets: Target) -> torch.Tensor | None:
        """The class explained in every copy of an image: None -> the prediction on the clean image."""
        if callable(targets):
            return None
        with torch.no_grad():
            outputs, _ = run_tail(self.model, block_input)
        return resolve_targets(targets, outputs)[1]

    def copy_sum(self, block_input: torch.Tensor, targets: Target, copies: int, make_copies, weight=None) -> torch.Tensor:
        """Sum over the copies k of ``sum_j T_k * dscore/dT_k`` (B, N).

        ``make_copies(k0, k1)`` gives copies k0..k1-1 of the batch as ``(block inputs, tokens or None)``,
        each (k1-k0, B, N, D); ``weight(k0, k1, T, grad)`` may replace the product T * grad.
        """
        batch = block_input.shape[0]
        classes = self.explained_classes(block_input, targets)
        step = tail_copies_per_chunk(self.model, block_input, copies)
        total = block_input.new_zeros(block_input.shape[:2])
        for k0 in range(0, copies, step):
            k1 = min(copies, k0 + step)
            inputs, tokens = make_copies(k0, k1)
            with torch.enable_grad():
                flat_tokens = None if tokens is None else tokens.reshape(-1, *tokens.shape[2:]).detach().requires_grad_(True)
                outputs, used = run_tail(self.model, inputs.reshape(-1, *inputs.shape[2:]), flat_tokens)
                scores = copy_scores(targets, outputs, batch, classes)
                (grad,) = torch.autograd.grad(scores.sum(), used)
            products = (used.detach() * grad).sum(dim=-1) if weight is None else weight(k0, k1, used.detach(), grad)
            total += products.view(k1 - k0, batch, -1).sum(dim=0)
        return total


@register
class CDAM(TailMethod):
    """CDAM: ``S_i = T_i . d f / d T_i``, T = output of the last block's ``norm1``; one forward and
    one backward (through the last block only) per batch. Signed, (B, gh, gw)."""

    name = "cdam"
    title = "CDAM"
    paper = "brocki2023cdam"
    paper_names = {"cdam": "CDAM"}

    def tail_scores(self, block_input, targets):
        def clean(k0, k1):
            return block_input[None], None

        return self.copy_sum(block_input, targets, 1, clean)


@register
class SmoothCDAM(TailMethod):
    """Smooth CDAM: the mean of n_samples CDAM maps of noisy copies.

    space="code" (default, the authors' ``concept_map_smoothgrad``): copy k is
    ``x_in + z_k * std``, x_in the pre-LayerNorm input of the last block (all tokens),
    ``std = noise_level * (x_in.max() - x_in.min())`` per image; S^k is the CDAM of that
    copy (T_k = norm1 of it). space="paper" (Eq. 5): ``T_k = T + z_k * std`` with std from
    T's range. n_samples: copies (50); noise_level: std as a fraction of the range (0.05);
    noise: optional standard-normal bank (n_samples, 1 or B, N, D) used instead of fresh
    draws (e.g. the reference's ``smooth_cdam_Z_B``); generator: a ``torch.Generator``
    for the fresh draws (drawn image by image, so a batch equals its images one at a time).
    """

    name = "smooth_cdam"
    title = "Smooth CDAM"
    paper = "brocki2023cdam"
    paper_names = {"cdam": "Smooth CDAM"}

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 50,
        noise_level: float = 0.05,
        noise: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
        space: str = "code",
    ) -> None:
        super().__init__(model)
        self.n_samples = check_positive_int(self.name, "n_samples", n_samples)
        self.noise_level = check_noise_level(self.name, noise_level)
        self.generator, self.noise = check_noise_source(self.name, noise, generator, self.n_samples, "(n_samples, 1, N, D)")
        self.space = check_space(self.name, space)

    def tail_scores(self, block_input, targets):
        if self.space == "code":
            clean = block_input
        else:
            with torch.no_grad():
                clean = self.model.blocks[-1].norm1(block_input)
        batch = clean.shape[0]
        if self.noise is not None and tuple(self.noise.shape[2:]) != tuple(clean.shape[1:]):
            # broadcasting a bank constant over the tokens or features would shift every token's features by one
            # constant, which the LayerNorm removes: plain CDAM under the name of Smooth CDAM
            raise InvalidParameterError(
                f"noise of method {self.name!r} must have shape (n_samples, 1 or B, N, D) = ({self.n_samples}, 1 or "
                f"{batch}, {clean.shape[1]}, {clean.shape[2]}) for these images: one standard-normal draw per sample, "
                f"token (N, prefix tokens included) and feature (D); got {tuple(self.noise.shape)}"
            )
        std = self.noise_level * (clean.flatten(1).amax(dim=1) - clean.flatten(1).amin(dim=1))
        std = std.view(1, batch, 1, 1)
        bank = noise_bank(self.name, self.noise, self.generator, (self.n_samples, *clean.shape), clean)

        def noisy(k0, k1):
            # written into one contiguous buffer: the bank is a transposed view, and a broadcast sum
            # would inherit its layout and be copied again when the copies are flattened
            perturbed = torch.addcmul(clean.expand(k1 - k0, *clean.shape), bank[k0:k1], std,
                                      out=clean.new_empty((k1 - k0, *clean.shape)))
            if self.space == "code":
                return perturbed, None
            return block_input.expand(k1 - k0, *block_input.shape), perturbed

        return self.copy_sum(block_input, targets, self.n_samples, noisy) / self.n_samples


@register
class IntegratedCDAM(TailMethod):
    """Integrated CDAM: CDAM along a straight path from a zero baseline.

    space="code" (default, the authors' ``concept_map_intgrad`` with noise_level 0):
    copy k is ``(k / n_steps) * x_in``, x_in the pre-LayerNorm input of the last block,
    for k = 1..n_steps-1 (the code computes k = 0..n_steps-1 and drops k = 0), and the
    output is the mean of their CDAM maps ``T_k . dscore/dT_k``. space="paper" (Eq. 6):
    ``T_k = (k / n_steps) * T`` for k = 1..n_steps; the mean gradient times T.
    n_steps: path steps (50).
    """

    name = "integrated_cdam"
    title = "Integrated CDAM"
    paper = "brocki2023cdam"
    paper_names = {"cdam": "Integrated CDAM"}

    def __init__(self, model: nn.Module, n_steps: int = 50, space: str = "code") -> None:
        super().__init__(model)
        self.n_steps = check_positive_int(self.name, "n_steps", n_steps)
        self.space = check_space(self.name, space)
        if self.space == "code" and self.n_steps < 2:
            raise InvalidParameterError(
                f"n_steps of method {self.name!r} must be at least 2 with space='code' (its steps are k = 1..n_steps-1)"
            )

    def tail_scores(self, block_input, targets):
        n = self.n_steps
        if self.space == "code":
            alphas = torch.tensor([k / n for k in range(1, n)], dtype=block_input.dtype, device=block_input.device)

            def scaled(k0, k1):
                return alphas[k0:k1, None, None, None] * block_input, None

            return self.copy_sum(block_input, targets, n - 1, scaled) / (n - 1)
        with torch.no_grad():
            tokens = self.model.blocks[-1].norm1(block_input)
        alphas = torch.tensor([k / n for k in range(1, n + 1)], dtype=block_input.dtype, device=block_input.device)

        def scaled_tokens(k0, k1):
            return block_input.expand(k1 - k0, *block_input.shape), alphas[k0:k1, None, None, None] * tokens

        def gradient_times_input(k0, k1, used, grad):  # (T - 0) . grad, T the unscaled tokens
            return (tokens.repeat(k1 - k0, 1, 1) * grad).sum(dim=-1)

        return self.copy_sum(block_input, targets, n, scaled_tokens, gradient_times_input) / n


def _one_image_target(targets: Target, index: int) -> Target:
    """Image `index`'s own target from a batch's targets (a class or a callable applies to every image)."""
    if targets is None or callable(targets) or isinstance(targets, (int, np.integer)):
        return targets
    chosen = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
    return chosen if chosen.ndim == 0 else chosen[index : index + 1]


def per_sample_cdam(model: nn.Module, images: torch.Tensor, targets: Target = None, *, method: str = "smooth_cdam",
                    n: int = 50, noise_level: float = 0.05, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' procedure, image by image and sample by sample (code variant): a reference for the
    batched methods' numbers and speed (``xaikit bench --reference-loops``), not for use.

    As ``concept_map_smoothgrad`` / ``concept_map_intgrad``: ``NewModel`` = deep copies of the last
    block, the final norm and the head; for each image its last-block input x_in, then one forward
    and one backward of NewModel per sample: ``x_in + z_k * std`` (smooth_cdam, z from `noise`
    (n, 1, N, D) or drawn) or ``(k / n) * x_in`` for k = 1..n-1 (integrated_cdam); S^k from hooks on
    NewModel's norm1; the mean over the samples. Maps (B, gh, gw).
    """
    import copy

    if method not in ("smooth_cdam", "integrated_cdam"):
        raise InvalidParameterError(f"method must be 'smooth_cdam' or 'integrated_cdam'; got {method!r}")
    tail = nn.ModuleDict({"block": copy.deepcopy(model.blocks[-1]), "norm": copy.deepcopy(model.norm)})
    prefix, grid = int(model.num_prefix_tokens), token_grid(model, tuple(images.shape[-2:]))
    maps = []
    with eval_mode(model):
        tail.eval()
        for b in range(images.shape[0]):
            x_in = last_block_input(model, images[b : b + 1])
            with torch.no_grad():
                logits = model.forward_head(tail["norm"](tail["block"](x_in)))
            target = _one_image_target(targets, b)
            classes = resolve_targets(target, logits)[1]  # None target: the prediction on the clean image
            std = noise_level * (x_in.max() - x_in.min())
            steps = range(n) if method == "smooth_cdam" else range(1, n)
            total = x_in.new_zeros(x_in.shape[1])
            for k in steps:
                if method == "smooth_cdam":
                    z = noise[k, 0] if noise is not None else torch.randn_like(x_in[0])
                    x = x_in + z.to(x_in) * std
                else:
                    x = (k / n) * x_in
                seen: list[torch.Tensor] = []
                handle = tail["block"].norm1.register_forward_hook(lambda m, a, out: seen.append(out))
                try:
                    with torch.enable_grad():
                        x = x.detach().requires_grad_(True)
                        out = model.forward_head(tail["norm"](tail["block"](x)))
                        score = out[0, classes[0]] if classes is not None else resolve_targets(target, out)[0][0]
                        (grad,) = torch.autograd.grad(score, seen[0])
                finally:
                    handle.remove()
                total += (seen[0].detach() * grad)[0].sum(-1)
            maps.append(total / len(steps))
    return torch.stack(maps)[:, prefix:].reshape(images.shape[0], *grid)
