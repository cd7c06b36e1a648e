"""Record what happens inside a timm Vision Transformer.

`ViTRecorder` is a context manager that hooks every block of a timm
`VisionTransformer` (plain ViT, DeiT with a distillation token, DINOv2 with
register tokens, any grid) and records, per block and for the whole batch:

==============  ===============  =================================================
name            shape            what
==============  ===============  =================================================
``input``       (B, N, D)        residual stream entering the block
``norm1``       (B, N, D)        ``norm1`` output (tokens entering attention)
``attn``        (B, H, N, N)     attention probabilities ``A`` (after softmax)
``values``      (B, H, N, d_h)   per-head value vectors ``v``
``attn_out``    (B, N, D)        attention branch added to the residual (after
                                 ``proj`` and layer scale)
``norm2``       (B, N, D)        ``norm2`` output (the MLP input)
``mlp_out``     (B, N, D)        MLP branch added to the residual (after layer
                                 scale)
==============  ===============  =================================================

Names listed in ``grads`` also get their gradient recorded:
``recorder.backprop(score)`` takes ``torch.autograd.grad`` of a scalar score with
respect to exactly those tensors (``record.grads["attn"]`` is dscore/dA), so no
parameter gradient is computed and no ``.grad`` is touched. A user's own
``score.backward()`` inside the context records them too. While the context is open
timm's fused attention is switched off (it never materialises ``A``); on exit
every hook is removed and ``fused_attn`` is restored, also after an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .errors import InvalidParameterError, UnsupportedModelError

#: recorded name -> (module of the block whose output is recorded, what it is)
HOOK_POINTS = {
    "input": ("(block input)", "residual stream entering the block"),
    "norm1": ("norm1", "LayerNorm-ed tokens entering attention"),
    "attn": ("attn.attn_drop", "attention probabilities A after softmax"),
    "values": ("attn.qkv", "per-head value vectors v (a slice of the qkv output)"),
    "attn_out": ("ls1", "attention branch added to the residual (after proj and layer scale)"),
    "norm2": ("norm2", "LayerNorm-ed tokens entering the MLP"),
    "mlp_out": ("ls2", "MLP branch added to the residual (after layer scale)"),
}
RECORDABLE = tuple(HOOK_POINTS)


def _submodule(block: nn.Module, path: str) -> nn.Module:
    module = block
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass
class BlockRecord:
    """What one block computed in the last forward (and backward) pass."""

    index: int
    input: torch.Tensor | None = None
    norm1: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    values: torch.Tensor | None = None
    attn_out: torch.Tensor | None = None
    norm2: torch.Tensor | None = None
    mlp_out: torch.Tensor | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """The recorded tensor `name`, with a clear error if it was not recorded."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(
                f"block {self.index}: {name!r} was not recorded; open the recorder with "
                f"record=(..., {name!r}) and run a forward pass first"
            )
        return value

    def grad(self, name: str) -> torch.Tensor:
        """The gradient of `name`, with a clear error if no backward pass recorded it."""
        if name not in self.grads:
            raise RuntimeError(
                f"block {self.index}: no gradient of {name!r}; open the recorder with "
                f"grads=(..., {name!r}) and call recorder.backprop(score) (or score.backward()) on a score of the model output"
            )
        return self.grads[name]


def check_vit(model: nn.Module) -> None:
    """Raise `UnsupportedModelError` unless `model` is a timm ViT xaikit can hook."""
    from timm.models.vision_transformer import VisionTransformer

    found = f"{type(model).__module__}.{type(model).__qualname__}"
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            "xaikit explains timm Vision Transformers (timm.models.vision_transformer."
            f"VisionTransformer or a subclass such as DeiT's VisionTransformerDistilled); got {found}. "
            "Create the model with xaikit.load_model(name) or timm.create_model('vit_...')."
        )
    from timm.layers import PatchEmbed

    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, PatchEmbed):
        stem = (
            " (a CNN backbone before the transformer, as in timm's hybrid vit_*_r50_* / vit_*_r26_* models)"
            if hasattr(patch_embed, "backbone") else ""
        )
        raise UnsupportedModelError(
            f"{found} embeds its images with {type(patch_embed).__qualname__}{stem}; xaikit reads the patch grid "
            "and the input channels from a plain patch embedding (timm.layers.PatchEmbed, one strided convolution "
            "over the pixels), so it cannot explain this model. Use a plain ViT such as vit_base_patch16_224."
        )
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        missing = [
            part
            for part in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2")
            if not hasattr(block, part)
        ]
        missing += [part for part in ("qkv", "attn_drop", "proj") if attn is not None and not hasattr(attn, part)]
        if missing:
            raise UnsupportedModelError(
                f"block {i} of {found} ({type(block).__qualname__}, attention "
                f"{type(attn).__qualname__}) lacks {', '.join(missing)}; xaikit hooks timm's standard "
                "Block/Attention (norm1, attn.qkv, attn.attn_drop, attn.proj, ls1, norm2, mlp, ls2)."
            )


def token_grid(model: nn.Module, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (gh, gw) patch grid of `model` for images of size `image_hw`."""
    patch_embed = model.patch_embed
    if image_hw is not None and getattr(model, "dynamic_img_size", False):
        return tuple(int(s) for s in patch_embed.dynamic_feat_size(image_hw))
    return tuple(int(s) for s in patch_embed.grid_size)


class ModelHooks:
    """Hooks on a model for the duration of a ``with`` block.

    Subclasses set ``self.model``, ``self._handles`` and ``self._saved_fused`` (both empty
    lists) in ``__init__`` and implement `_install_hooks`. On entering, timm's fused
    attention is switched off when `unfuse_attention` (it hides the attention
    probabilities); on leaving, also after an exception, every hook is removed, the fused
    flags are restored and `_clear` drops what the subclass recorded.
    """

    unfuse_attention: bool = True

    def __enter__(self):
        try:
            if self.unfuse_attention:
                self._saved_fused = [
                    (blk.attn, blk.attn.fused_attn) for blk in self.model.blocks if hasattr(blk.attn, "fused_attn")
                ]
                for attn, _ in self._saved_fused:
                    attn.fused_attn = False
            self._install_hooks()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _install_hooks(self) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        """Drop the subclass's recordings (nothing by default)."""

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for attn, fused in self._saved_fused:
            attn.fused_attn = fused
        self._saved_fused = []
        self._clear()


class ViTRecorder(ModelHooks):
    """Context manager recording per-block tensors of a timm ViT; see the module doc.

    Parameters
    ----------
    model: a timm ``VisionTransformer``.
    record: names from ``RECORDABLE`` to keep (default: all).
    grads: names whose gradients to keep after ``backprop(score)`` (default: none).
    detach: store detached activations (default) so records do not hold the graph.
    """

    def __init__(
        self,
        model: nn.Module,
        record: Iterable[str] = RECORDABLE,
        grads: Iterable[str] = (),
        detach: bool = True,
    ) -> None:
        check_vit(model)
        self.model = model
        self.record = tuple(record)
        self.grad_names = tuple(grads)
        for name in (*self.record, *self.grad_names):
            if name not in RECORDABLE:
                raise InvalidParameterError(f"cannot record {name!r}; recordable tensors are {', '.join(RECORDABLE)}")
        self.detach = detach
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid = token_grid(model)
        self.blocks: list[BlockRecord] = []
        #: the live (graph-attached) tensors whose gradients are recorded, in forward order
        self.grad_tensors: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_fused: list[tuple[nn.Module, bool]] = []

    # -- hooks ----------------------------------------------------------------------
    def _install_hooks(self) -> None:
        model = self.model
        self._handles.append(model.register_forward_pre_hook(self._start_forward))
        for i, blk in enumerate(model.blocks):
            self._handles.append(blk.register_forward_pre_hook(self._saver(i, "input", from_input=True)))
            for name, (path, _) in HOOK_POINTS.items():
                if name != "input" and (name in self.record or name in self.grad_names):
                    self._handles.append(_submodule(blk, path).register_forward_hook(self._saver(i, name)))

    def _start_forward(self, module: nn.Module, args: tuple) -> None:
        images = args[0]
        self.grid = token_grid(self.model, tuple(images.shape[-2:]))
        self.blocks = [BlockRecord(i) for i in range(len(self.model.blocks))]
        self.grad_tensors = []

    def _saver(self, index: int, name: str, from_input: bool = False):
        def hook(module: nn.Module, args: tuple, output=None) -> None:
            tensor = args[0] if from_input else output
            # Values are a slice of the qkv output; its gradient is sliced the same way.
            select = self._value_slicer(index) if name == "values" else (lambda t: t)
            record = self.blocks[index]
            if name in self.record:
                setattr(record, name, select(tensor.detach() if self.detach else tensor))
            if name in self.grad_names and tensor.requires_grad:
                tensor.register_hook(self._grad_saver(record, name, select))
                self.grad_tensors.append(tensor)

        return hook

    def _value_slicer(self, index: int):
        attn = self.model.blocks[index].attn

        def values(qkv: torch.Tensor) -> torch.Tensor:
            batch, tokens, _ = qkv.shape
            # timm packs qkv as (3, heads, head_dim) along the last axis.
            return qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)[:, :, 2].transpose(1, 2)

        return values

    @staticmethod
    def _grad_saver(record: BlockRecord, name: str, select):
        def hook(grad: torch.Tensor) -> None:
            record.grads[name] = select(grad.detach())

        return hook

    # -- gradients ------------------------------------------------------------------
    def backprop(self, score: torch.Tensor) -> None:
        """Record the gradients of the scalar `score` with respect to the ``grads`` tensors only.

        ``torch.autograd.grad`` on the recorded tensors: no parameter gradient is
        computed (about half the work of ``score.backward()``) and no ``.grad`` is
        written, so a caller's own gradients are left exactly as they were.
        """
        self._require_forward()
        if not self.grad_tensors:
            raise InvalidParameterError(
                "no recorded tensor requires grad: open the recorder with grads=(...) and run the forward "
                "pass with gradients enabled (not under torch.no_grad() or torch.inference_mode())"
            )
        torch.autograd.grad(score, self.grad_tensors)

    # -- access ---------------------------------------------------------------------
    def stacked(self, name: str, grad: bool = False) -> torch.Tensor:
        """Tensor `name` (or its gradient) of every block stacked on a new axis 0: (L, B, ...)."""
        self._require_forward()
        return torch.stack([blk.grad(name) if grad else blk.get(name) for blk in self.blocks])

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    def _require_forward(self) -> None:
        if not self.blocks:
            raise RuntimeError("nothing recorded yet: run the model on a batch inside the `with` block first")


def describe(model: nn.Module) -> dict[str, object]:
    """The facts about a timm ViT that explanations depend on."""
    check_vit(model)
    attn = model.blocks[0].attn
    return {
        "class": type(model).__name__,
        "input size": tuple(model.patch_embed.img_size),
        "patch size": tuple(model.patch_embed.patch_size),
        "token grid (gh, gw)": token_grid(model),
        "prefix tokens": int(model.num_prefix_tokens),
        "register tokens": int(getattr(model, "num_reg_tokens", 0)),
        "tokens N": int(model.num_prefix_tokens) + int(np.prod(token_grid(model))),
        "blocks": len(model.blocks),
        "heads": attn.num_heads,
        "embedding dim D": model.embed_dim,
        "head dim": attn.head_dim,
        "layer scale": type(model.blocks[0].ls1).__name__ != "Identity",
        "classes": model.num_classes,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
