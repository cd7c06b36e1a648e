"""Token ablation map, the CDAM paper's ablation baseline (the authors' ``token_ablation_map``).

``S_i = f_c(x) - f_c(x without patch token i)``, where "without" means what the
authors' ``MyVisionTransformer.forward(x, remove=[i])`` does: token i is REMOVED from
the sequence (not zeroed) after the position embedding is added, and the shorter
sequence runs through the blocks, the final norm and the head. Signed, token level.
"""

from __future__ import annotations

import torch
from torch import nn

from ..introspection import token_grid
from ..targets import Target, check_targets, resolve_targets
from . import input_gradients
from .base import Explainer, eval_mode, register


def kept_indices(num_prefix_tokens: int, num_patches: int, device: torch.device) -> torch.Tensor:
    """(P, N-1): row i lists the token positions left when patch token i is removed."""
    positions = torch.arange(num_prefix_tokens + num_patches - 1, device=device)
    removed = num_prefix_tokens + torch.arange(num_patches, device=device)
    return positions[None, :] + (positions[None, :] >= removed[:, None]).long()


def sequences_per_chunk(model: nn.Module, images: torch.Tensor) -> int:
    """How many shortened sequences one forward chunk (no autograd graph) takes."""
    tokens, dim, heads, hidden = input_gradients.sequence_shape(model, tuple(images.shape[-2:]))
    per_sequence = (6 * tokens * dim + 2 * tokens * hidden + 2 * heads * tokens * tokens) * images.element_size()
    return max(1, input_gradients.CHUNK_BYTES // per_sequence)


@register
class TokenAblation(Explainer):
    """``f_c(x) - f_c(x with patch token i removed after the position embedding)`` per patch token.

    The reference's token removal (``MyVisionTransformer.forward(x, remove=[i])``): the
    token leaves the sequence, the prefix tokens (class, distillation, registers) stay.
    The embedded tokens are computed once per image; all B x P shortened sequences run
    through ``blocks``, ``norm`` and ``forward_head`` in large chunks (no gradients).
    f_c is the raw logit of the target class (None: the prediction on the full image),
    or a callable target's score, called on the logits (B, C) of the images with the
    same token removed. Signed, (B, gh, gw).
    """

    name = "token_ablation"
    title = "Token ablation"
    paper = "zeiler2014visualizing"
    signed = True
    needs_class_token = False

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Maps (B, gh, gw) in the model's dtype; the model runs in eval mode, its flags are restored."""
        images = self._check_images(images)
        check_targets(targets, images.shape[0])
        model, batch = self.model, images.shape[0]
        gh, gw = token_grid(model, tuple(images.shape[-2:]))
        captured: list[torch.Tensor] = []
        # norm_pre's output: the tokens after patch embedding, position embedding, pos_drop and patch_drop
        handle = model.norm_pre.register_forward_hook(lambda module, args, output: captured.append(output))
        with eval_mode(model), torch.no_grad():
            try:
                logits = model(images.detach())
            finally:
                handle.remove()
            full, classes = resolve_targets(targets, logits)
            embedded = captured[-1]
            patches = gh * gw
            kept = kept_indices(int(model.num_prefix_tokens), patches, embedded.device)
            # pairs (patch i, image b) in patch-major order: pair = i * B + b
            pairs = patches * batch
            step = sequences_per_chunk(model, images)
            ablated_scores, ablated_logits = [], []
            for start in range(0, pairs, step):
                pair = torch.arange(start, min(pairs, start + step), device=embedded.device)
                token, image = pair // batch, pair % batch
                sequences = embedded[image[:, None], kept[token]]
                out = model.forward_head(model.norm(model.blocks(sequences)))
                if classes is None:
                    ablated_logits.append(out)
                else:
                    ablated_scores.append(out.gather(1, classes[image][:, None]).squeeze(1))
            if classes is None:  # callable target: one call per removed token, on that copy's (B, C) logits
                per_token = torch.cat(ablated_logits).view(patches, batch, -1)
                ablated = torch.stack([resolve_targets(targets, copy)[0] for copy in per_token])
            else:
                ablated = torch.cat(ablated_scores).view(patches, batch)
            scores = full[None, :] - ablated  # (P, B)
        return scores.transpose(0, 1).reshape(batch, gh, gw)
