"""Input-gradient baselines of the CDAM paper: Integrated Gradients, SmoothGrad, Input x Gradient.

As the CDAM authors' baselines file computes them (reference-spec 2.8): gradients of
the target's raw logit with respect to the normalised input image, reduced to one
value per pixel by the MEAN over the colour channels. Pixel resolution: (B, H, W).

* ``integrated_gradients``: zero baseline in normalised space; the gradients at
  ``(k / n_steps) * x`` for k = 1..n_steps are averaged and multiplied by x (the
  reference also evaluates k = 0, then drops it: alpha = 0 never counts).
* ``smoothgrad``: n_samples gradients at ``x + z * std`` with z standard normal and
  ``std = noise_level * (x.max() - x.min())`` per image; the channel mean of their sum,
  divided by n_samples (plain gradients, not times the input).
* ``input_x_gradient``: ``x * dscore/dx`` (captum's ``InputXGradient``), channel mean.

All steps/samples of a batch go through the model in large chunks, each chunk holding
whole copies of the batch (`CHUNK_BYTES` bounds a chunk's autograd memory; a chunk is
never smaller than one copy of the batch, which ``xaikit.explain(batch_size=...)`` bounds).
Gradients are taken with ``torch.autograd.grad`` on the inputs only: no parameter
gradient is computed and no ``.grad`` is written.

Targets: as everywhere (see `xaikit.targets`). ``None`` explains each image's predicted
class on the clean image (the reference's ``target_idx=pred``), also for its noisy or
scaled copies. A callable target is called on the logits (B, C) of one copy of the
batch at a time, images in the order given, so it sees the same shapes as in a
single-pass method.

IG and SmoothGrad are written out here rather than taken from captum: captum's
``IntegratedGradients`` (``method="riemann_right"``) computes its step sizes and alphas
in float32, so float64 models would lose precision, and captum's ``NoiseTunnel`` draws
one noise level per input tensor (not per image) and cannot take the reference's stored
noise. tests/test_cdam_baselines.py checks that both captum classes give the same
numbers as these functions where they can be compared.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameterError
from ..introspection import token_grid
from ..targets import Target, check_targets, resolve_targets
from .base import Explainer, eval_mode, positive_int, refuse_inference_mode, register

#: upper bound on the autograd memory of one chunk of copies (estimated, see `graph_bytes_per_image`)
CHUNK_BYTES = 2**30


# -- shared helpers (also used by gradcam.py and token_ablation.py) ---------------------------
def prepare_gradient_call(explainer: Explainer, images: torch.Tensor, targets: Target) -> torch.Tensor:
    """Checked images in the model's dtype and device, safe to require grad; refuses inference mode."""
    images = explainer._check_images(images)
    check_targets(targets, images.shape[0])
    refuse_inference_mode(explainer.name)
    if images.is_inference():  # made under inference_mode: a normal copy can require grad
        images = images.clone()
    return images.detach()


def sequence_shape(model: nn.Module, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(tokens N, embedding dim D, heads, MLP width) of `model` for images of size `image_hw`."""
    gh, gw = token_grid(model, image_hw)
    block = model.blocks[0]
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    hidden = fc1.out_features if isinstance(fc1, nn.Linear) else 4 * model.embed_dim
    return int(model.num_prefix_tokens) + gh * gw, int(model.embed_dim), int(block.attn.num_heads), int(hidden)


def graph_bytes_per_image(model: nn.Module, images: torch.Tensor) -> int:
    """A generous estimate of the memory autograd keeps for one image's forward pass."""
    tokens, dim, heads, hidden = sequence_shape(model, tuple(images.shape[-2:]))
    per_block = 10 * tokens * dim + 3 * tokens * hidden + 3 * heads * tokens * tokens
    return (len(model.blocks) * per_block + 3 * images[0].numel()) * images.element_size()


def copies_per_chunk(model: nn.Module, images: torch.Tensor, copies: int) -> int:
    """How many copies of the batch `images` one forward+backward chunk takes (at least 1)."""
    per_copy = max(1, graph_bytes_per_image(model, images) * images.shape[0])
    return int(min(copies, max(1, CHUNK_BYTES // per_copy)))


def copy_scores(targets: Target, logits: torch.Tensor, batch: int, classes: torch.Tensor | None) -> torch.Tensor:
    """Scores (k, B) of k copies of a batch of B images whose logits are stacked copy-major (k*B, C).

    With explained `classes` (B,) the logits are gathered; a callable target is called
    on each copy's logits (B, C) in turn.
    """
    per_copy = logits.reshape(-1, batch, logits.shape[-1])
    if classes is not None:
        index = classes.view(1, batch, 1).expand(per_copy.shape[0], batch, 1)
        return per_copy.gather(2, index).squeeze(2)
    return torch.stack([resolve_targets(targets, copy)[0] for copy in per_copy])


def explained_classes(model: nn.Module, images: torch.Tensor, targets: Target) -> torch.Tensor | None:
    """The class each image is explained for (None for a callable target); None -> predicted on the clean image."""
    if callable(targets):
        return None
    with torch.no_grad():
        probe = images if targets is None else images[:1]
        logits = model(probe)
    if targets is None:
        return logits.argmax(dim=1)
    # resolve_targets checks the class range against the model's outputs
    fake = logits.new_zeros((images.shape[0], logits.shape[1]))
    return resolve_targets(targets, fake)[1]


def check_positive_int(method: str, name: str, value: object) -> int:
    return positive_int(f"{name} of method {method!r}", value)


def check_noise_level(method: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(
            f"noise_level of method {method!r} must be a float >= 0 (a fraction of each image's value range); "
            f"got {value!r}"
        )
    if not math.isfinite(float(value)) or value < 0:
        raise InvalidParameterError(
            f"noise_level of method {method!r} must be a finite float >= 0 (the reference uses 0.15); got {value!r}"
        )
    return float(value)


def check_noise_source(method: str, noise, generator, n_samples: int, layout: str):
    """Checked (generator, noise bank) of a sampling method: at most one of the two; a bank is a float
    tensor/array of standard-normal draws with n_samples on axis 0 and as many axes as `layout`."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidParameterError(
            f"generator of method {method!r} must be a torch.Generator or None; got {type(generator).__name__}"
        )
    if noise is not None and generator is not None:
        raise InvalidParameterError(
            f"method {method!r} got both noise and generator; give the stored noise bank (noise=) or a "
            "generator to draw it, not both"
        )
    if noise is None:
        return generator, None
    if isinstance(noise, np.ndarray):
        noise = torch.from_numpy(noise)
    if not isinstance(noise, torch.Tensor) or not noise.dtype.is_floating_point:
        raise InvalidParameterError(
            f"noise of method {method!r} must be a float tensor or array of standard-normal draws, shape "
            f"{layout}; got {getattr(noise, 'dtype', type(noise).__name__)}"
        )
    if noise.ndim != layout.count(",") + 1 or noise.shape[0] != n_samples:
        raise InvalidParameterError(
            f"noise of method {method!r} must have shape {layout} with n_samples={n_samples} (one standard-normal "
            f"draw per sample, broadcast over the images when the second axis is 1); got {tuple(noise.shape)}"
        )
    if not bool(torch.isfinite(noise).all()):
        raise InvalidParameterError(f"noise of method {method!r} contains NaN or infinite values")
    return None, noise.detach()


def noise_bank(method: str, noise, generator, full: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Standard-normal draws broadcastable to `full` = (n_samples, B, ...): the stored bank, or fresh draws
    made image by image (all of an image's samples at once), so a batch gets the same draws as its
    images one at a time with the same generator."""
    if noise is not None:
        try:
            torch.broadcast_shapes(noise.shape, full)
        except RuntimeError:
            raise InvalidParameterError(
                f"noise of method {method!r} has shape {tuple(noise.shape)}, which does not broadcast to "
                f"(n_samples, B, ...) = {full} for this batch; a per-image bank needs as many images as "
                "the call (do not split it with xaikit.explain(batch_size=...)), or use a shared one (second axis 1)"
            ) from None
        return noise.to(device=like.device, dtype=like.dtype)
    if generator is not None and generator.device != like.device:
        raise InvalidParameterError(
            f"the generator of method {method!r} is on {generator.device} but the model on "
            f"{like.device}; create it there: torch.Generator(device={str(like.device)!r})"
        )
    drawn = torch.empty((full[1], full[0], *full[2:]), dtype=like.dtype, device=like.device)
    for image in drawn:  # image by image into one buffer: no copy to stack them
        image.normal_(generator=generator)
    return drawn.transpose(0, 1)


# -- the explainers -------------------------------------------------------------------------
class InputGradientMethod(Explainer):
    """Base of the pixel-resolution methods reading d score / d input over copies of the batch."""

    signed = True
    needs_class_token = False
    resolution = "pixel"

    def attribute(self, images: torch.Tensor, targets: Target = None) -> torch.Tensor:
        """Maps (B, H, W) in the model's dtype; the model runs in eval mode, its flags are restored."""
        images = prepare_gradient_call(self, images, targets)
        with eval_mode(self.model):
            return self.pixel_scores(images, targets)

    def pixel_scores(self, images: torch.Tensor, targets: Target) -> torch.Tensor:
        raise NotImplementedError

    def gradient_sum(
        self,
        images: torch.Tensor,
        targets: Target,
        copies: int,
        copy_inputs: Callable[[int, int], torch.Tensor],
    ) -> torch.Tensor:
        """Sum over k of d score / d input at ``copy_inputs(k0, k1)[k - k0]``, k = 0..copies-1: (B, C, H, W).

        ``copy_inputs(k0, k1)`` returns copies k0..k1-1 of the batch, (k1-k0, B, C, H, W).
        """
        batch = images.shape[0]
        classes = explained_classes(self.model, images, targets)
        step = copies_per_chunk(self.model, images, copies)
        total = torch.zeros_like(images)
        for k0 in range(0, copies, step):
            k1 = min(copies, k0 + step)
            with torch.enable_grad():
                inputs = copy_inputs(k0, k1).reshape(-1, *images.shape[1:]).detach().requires_grad_(True)
                scores = copy_scores(targets, self.model(inputs), batch, classes)
                (grads,) = torch.autograd.grad(scores.sum(), inputs)
            for copy in grads.view(k1 - k0, *images.shape):  # in order, like the reference's loop
                total += copy
        return total


@register
class IntegratedGradients(InputGradientMethod):
    """Integrated Gradients as the CDAM authors run it (their ``integrated_gradients``).

    Zero baseline in normalised input space; the gradients of the target logit at
    ``(k / n_steps) * x`` for k = 1..n_steps (a right Riemann sum; alpha = 0 is left out)
    are averaged, multiplied by x and averaged over the colour channels. Signed, (B, H, W).
    n_steps: number of steps (the reference: 50).
    """

    name = "integrated_gradients"
    title = "Integrated Gradients"
    paper = "sundararajan2017axiomatic"
    paper_names = {"cdam": "IntGrad"}

    def __init__(self, model: nn.Module, n_steps: int = 50) -> None:
        super().__init__(model)
        self.n_steps = check_positive_int(self.name, "n_steps", n_steps)

    def pixel_scores(self, images, targets):
        n = self.n_steps
        alphas = torch.tensor([k / n for k in range(1, n + 1)], dtype=images.dtype, device=images.device)

        def scaled(k0: int, k1: int) -> torch.Tensor:
            return alphas[k0:k1, None, None, None, None] * images

        average = self.gradient_sum(images, targets, n, scaled) / n
        return (images * average).mean(dim=1)


@register
class SmoothGrad(InputGradientMethod):
    """SmoothGrad as the CDAM authors run it (their ``smoothgrad``): plain gradients, no x input.

    Sample k adds ``z_k * std`` to the image, ``std = noise_level * (x.max() - x.min())``
    per image; the gradients of the target logit are summed over the samples, averaged
    over the colour channels and divided by n_samples. Signed, (B, H, W).

    n_samples: number of noisy copies (the reference: 50).
    noise_level: std as a fraction of each image's value range (the reference: 0.15).
    noise: optional standard-normal bank z, shape (n_samples, 1 or B, C or 1, H or 1,
        W or 1) (e.g. the reference's stored ``smoothgrad_Z_B``); cast to the model's
        dtype. Without it z is drawn with `generator` (default: torch's global RNG),
        image by image, all of an image's samples at once (``torch.randn((n_samples,
        C, H, W))``), so a batch gives the same maps as its images one at a time with the
        same generator, and ``xaikit.explain(batch_size=...)`` does not change them.
    generator: a ``torch.Generator`` on the model's device, for reproducible noise.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    paper = "smilkov2017smoothgrad"
    paper_names = {"cdam": "SmoothGrad"}

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 50,
        noise_level: float = 0.15,
        noise: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model)
        self.n_samples = check_positive_int(self.name, "n_samples", n_samples)
        self.noise_level = check_noise_level(self.name, noise_level)
        self.generator, self.noise = check_noise_source(self.name, noise, generator, self.n_samples, "(n_samples, 1, C, H, W)")

    def pixel_scores(self, images, targets):
        batch = images.shape[0]
        low = images.amin(dim=(1, 2, 3))
        high = images.amax(dim=(1, 2, 3))
        std = (self.noise_level * (high - low)).view(1, batch, 1, 1, 1)
        bank = noise_bank(self.name, self.noise, self.generator, (self.n_samples, *images.shape), images)

        def noisy(k0: int, k1: int) -> torch.Tensor:
            return images + bank[k0:k1] * std

        total = self.gradient_sum(images, targets, self.n_samples, noisy)
        return total.mean(dim=1) / self.n_samples


@register
class InputXGradient(InputGradientMethod):
    """Input x Gradient as the CDAM authors run it (their ``input_times_gradient``).

    ``x * d score / d x`` through captum's ``InputXGradient``, averaged over the colour
    channels (the mean, not the sum). Signed, (B, H, W).
    """

    name = "input_x_gradient"
    title = "Input × Gradient"
    paper = "shrikumar2016blackbox"
    paper_names = {"cdam": "Input×Grad"}

    def pixel_scores(self, images, targets):
        from captum.attr import InputXGradient as CaptumInputXGradient

        batch = images.shape[0]

        def scores(inputs: torch.Tensor) -> torch.Tensor:
            logits = self.model(inputs)
            classes = resolve_targets(targets, logits)[1] if not callable(targets) else None
            return copy_scores(targets, logits, batch, classes).squeeze(0)

        inputs = images.clone().requires_grad_(True)
        with torch.enable_grad():
            attributions = CaptumInputXGradient(scores).attribute(inputs)
        return attributions.detach().mean(dim=1)
