"""One batched perturbation engine behind every perturbation protocol.

The engine takes normalised images (B, C, H, W), explanation maps, a schedule
(which pixels each step replaces), a replacement (what they become) and
readouts (what to keep of the logits). It forwards every perturbed copy,
images x steps, through the model in chunks of `batch_size` under
`torch.no_grad()` (chunks cut across images and steps; Python loops only over
chunks, and over images only to hash them for the cache), and returns the
readouts at every step as (B, S, ...) tensors.

Conventions, stated once:

- Ranking is per pixel: token maps are upsampled to the image size first
  (bilinear, align_corners=False, as the reference ranks its x16 upsampled
  maps). Ties are broken by a stable sort, so equal pixels go in raster order
  (row by row) in both orders; a constant map therefore removes the same
  pixels in the positive and the negative order.
- Step k of a fraction schedule replaces the floor(H*W*f_k) top-ranked pixels
  in all channels (Chefer's ``int(224*224*step)``).
- Replacement values are composed in the normalised space of the images. A
  constant given in [0, 1] image space (0 = black, the reference) becomes
  (c - mean) / std per channel, which is the same as un-normalising, setting
  the pixels and normalising again, without rounding the kept pixels.
- Copies that replace nothing (fraction 0) are the clean images: they are
  forwarded once each, as the clean forward the readouts may need anyway.
- Results are cached by content: an image whose pixels, map, schedule,
  replacement and readout classes were seen before (class-independent maps
  explained for two classes, or a prediction that equals the label) is not
  forwarded again. The cache is emptied when the content of the model's
  parameters or buffers changes (however it was edited: optimiser steps,
  ``p.data`` writes, `load_state_dict`) or any submodule's train/eval mode
  changes. Only an ``nn.Module`` is cached: the weights behind another
  callable (a function wrapping a module) cannot be seen, so its every copy
  is forwarded.
- Logits that are NaN or infinite are an error naming the images and steps
  that gave them: a NaN row's top-1 class is 0, so every score read from it
  would be a number without meaning.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import InvalidParameterError
from ..imaging import UPSAMPLE_MODES, upsample

#: Chefer's perturbation steps, with the unperturbed image as step 0.
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(10))
ORDERS = ("positive", "negative")
READOUT_KINDS = ("logits", "logit", "probability", "log_probability", "correct", "prediction")

Replacement = Union[float, Sequence[float], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


# -- schedules ---------------------------------------------------------------------------------


class Schedule:
    """Which pixels each perturbation step replaces. Subclasses implement `bind`."""

    #: the schedule ranks the explanation maps (else maps are not needed)
    needs_maps: bool = True

    def bind(self, maps: torch.Tensor | None, batch: int, size: tuple[int, int], device: torch.device) -> "BoundSchedule":
        raise NotImplementedError


class BoundSchedule:
    """A schedule bound to one batch: builds the masks of any (image, step) pairs on demand."""

    num_steps: int

    def masks(self, image_index: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """Bool (n, H, W) masks, True where the pixel is replaced, for n (image, step) pairs."""
        raise NotImplementedError

    def removes_nothing(self) -> torch.Tensor:
        """Bool (B, S): the pairs whose copy is the clean image."""
        raise NotImplementedError

    def key(self, image: int) -> bytes:
        """What identifies image `image`'s masks, besides its map, for the result cache."""
        raise NotImplementedError


def check_fractions(fractions) -> tuple[float, ...]:
    """Validated perturbation fractions: a non-empty, strictly increasing sequence in [0, 1]."""
    try:
        values = tuple(float(f) for f in (fractions.tolist() if hasattr(fractions, "tolist") else fractions))
    except (TypeError, ValueError):
        raise InvalidParameterError(f"fractions must be a sequence of numbers in [0, 1]; got {fractions!r}") from None
    if not values:
        raise InvalidParameterError("fractions is empty: give the shares of pixels to replace, e.g. 0, 0.1, ..., 0.9")
    if any(not (0.0 <= f <= 1.0) for f in values):
        raise InvalidParameterError(f"fractions must lie in [0, 1] (shares of the image); got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise InvalidParameterError(f"fractions must be strictly increasing; got {values}")
    return values


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise InvalidParameterError(
            f"order must be 'positive' (most relevant pixels first) or 'negative' (least relevant first); got {order!r}"
        )
    return order


class FractionSchedule(Schedule):
    """Replace the top-ranked share `fractions[k]` of the pixels at step k (default 0, 0.1, ..., 0.9).

    ``order="positive"`` removes the most relevant pixels first, ``"negative"``
    the least relevant first. `counts` (one pixel count per step, increasing)
    replaces `fractions` for protocols that step by pixel counts (e.g. the
    CDAM authors' ``arange(0, H*W, int(H*W*0.05))``).
    """

    def __init__(self, fractions: Sequence[float] | None = None, order: str = "positive", *, counts: Sequence[int] | None = None) -> None:
        self.order = check_order(order)
        if counts is None and fractions is None:
            fractions = DEFAULT_FRACTIONS
        if counts is not None:
            if fractions is not None:
                raise InvalidParameterError("give fractions or counts, not both")
            counts = tuple(counts)
            if not counts or any(not isinstance(c, int) or c < 0 for c in counts) or any(b <= a for a, b in zip(counts, counts[1:])):
                raise InvalidParameterError(f"counts must be strictly increasing non-negative ints; got {counts}")
            self.fractions, self.counts = None, counts
        else:
            self.fractions, self.counts = check_fractions(fractions), None

    def step_counts(self, pixels: int) -> tuple[int, ...]:
        if self.counts is not None:
            if self.counts[-1] > pixels:
                raise InvalidParameterError(f"counts go up to {self.counts[-1]} but the images have {pixels} pixels")
            return self.counts
        return tuple(int(pixels * f) for f in self.fractions)

    def bind(self, maps, batch, size, device):
        return _BoundFractions(self, maps, size)


class _BoundFractions(BoundSchedule):
    def __init__(self, schedule: FractionSchedule, maps: torch.Tensor, size: tuple[int, int]) -> None:
        self.size = size
        flat = maps.flatten(1)
        order = torch.sort(flat, dim=1, descending=schedule.order == "positive", stable=True).indices
        # rank[b, p] = position of pixel p in image b's removal order
        self.rank = torch.empty_like(order, dtype=torch.int32)
        positions = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32).expand_as(order)
        self.rank.scatter_(1, order, positions)
        counts = schedule.step_counts(flat.shape[1])
        self.counts = torch.tensor(counts, device=flat.device, dtype=torch.int32)
        self.num_steps = len(counts)
        self.batch = flat.shape[0]
        self._key = repr(("fractions", schedule.order, counts)).encode()

    def masks(self, image_index, step_index):
        return (self.rank[image_index] < self.counts[step_index][:, None]).view(-1, *self.size)

    def removes_nothing(self):
        return (self.counts == 0).expand(self.batch, -1)

    def key(self, image):
        return self._key


class BoxSchedule(Schedule):
    """Random square boxes: `boxes_per_size` boxes of each side length in `sizes` (pixels) per image.

    Step s of image b replaces box ``boxes[b, s]`` = (top, left, side), drawn
    uniformly inside the image from a generator seeded with `seed` (the same
    boxes for the same batch size, image size and seed). Used for CDAM's box
    sensitivity; the maps are not needed. `bound.boxes` holds the boxes.
    """

    needs_maps = False

    def __init__(self, sizes: Sequence[int], boxes_per_size: int = 100, *, seed: int = 0) -> None:
        sizes = tuple(sizes)
        if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise InvalidParameterError(f"box sizes must be positive ints (pixels); got {sizes}")
        if not isinstance(boxes_per_size, int) or boxes_per_size < 1:
            raise InvalidParameterError(f"boxes_per_size must be a positive int; got {boxes_per_size!r}")
        self.sizes, self.boxes_per_size, self.seed = sizes, boxes_per_size, seed

    def bind(self, maps, batch, size, device):
        height, width = size
        if max(self.sizes) > min(height, width):
            raise InvalidParameterError(f"box size {max(self.sizes)} does not fit in {height}x{width} images")
        generator = torch.Generator().manual_seed(self.seed)
        sides = torch.tensor(self.sizes).repeat_interleave(self.boxes_per_size).expand(batch, -1)
        top = (torch.rand(sides.shape, generator=generator) * (height - sides + 1)).long()
        left = (torch.rand(sides.shape, generator=generator) * (width - sides + 1)).long()
        return _BoundBoxes(torch.stack([top, left, sides], -1).to(device), size)


class _BoundBoxes(BoundSchedule):
    def __init__(self, boxes: torch.Tensor, size: tuple[int, int]) -> None:
        self.boxes, self.size = boxes, size
        self.num_steps = boxes.shape[1]

    def masks(self, image_index, step_index):
        top, left, side = self.boxes[image_index, step_index].unbind(-1)
        rows = torch.arange(self.size[0], device=self.boxes.device)
        cols = torch.arange(self.size[1], device=self.boxes.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
        return in_rows[:, :, None] & in_cols[:, None, :]

    def removes_nothing(self):
        return torch.zeros(self.boxes.shape[:2], dtype=torch.bool, device=self.boxes.device)

    def key(self, image):
        return self.boxes[image].cpu().numpy().tobytes()


class MaskSchedule(Schedule):
    """Explicit masks: bool (S, H, W) shared by all images, or (B, S, H, W); True = replaced."""

    needs_maps = False

    def __init__(self, masks: torch.Tensor) -> None:
        if not isinstance(masks, torch.Tensor) or masks.ndim not in (3, 4):
            shape = tuple(masks.shape) if hasattr(masks, "shape") else type(masks).__name__
            raise InvalidParameterError(f"masks must be a bool tensor (S, H, W) or (B, S, H, W); got {shape}")
        if masks.shape[-3] == 0:
            raise InvalidParameterError(f"masks {tuple(masks.shape)} hold no steps: give at least one mask per image")
        self.masks = masks.bool()

    def bind(self, maps, batch, size, device):
        masks = self.masks if self.masks.ndim == 4 else self.masks.expand(batch, *self.masks.shape)
        if masks.shape[0] != batch or tuple(masks.shape[2:]) != tuple(size):
            raise InvalidParameterError(
                f"masks {tuple(self.masks.shape)} do not fit {batch} images of {size[0]}x{size[1]} pixels"
            )
        return _BoundMasks(masks.to(device))


class _BoundMasks(BoundSchedule):
    def __init__(self, masks: torch.Tensor) -> None:
        self.all_masks = masks
        self.num_steps = masks.shape[1]

    def masks(self, image_index, step_index):
        return self.all_masks[image_index, step_index]

    def removes_nothing(self):
        return ~self.all_masks.flatten(2).any(2)

    def key(self, image):
        return hashlib.blake2b(self.all_masks[image].cpu().numpy().tobytes(), digest_size=16).digest()


# -- replacements ------------------------------------------------------------------------------


def gaussian_blur(images: torch.Tensor, sigma: float = 14.0, *, reference_size: int = 224, kernel_size: int | None = None) -> torch.Tensor:
    """A Gaussian-blurred copy of `images` (B, C, H, W), to use as a replacement (CDAM's MIF/LIF).

    `sigma` is given for `reference_size`-pixel images (CDAM: sigma 14 at 224)
    and scaled to the images: sigma_y = sigma * H / reference_size, sigma_x =
    sigma * W / reference_size. The kernel is 2 * ceil(3 sigma) + 1 taps per
    axis (85 at sigma 14) unless `kernel_size` is given, capped at the odd size
    the reflect padding allows. Implemented with
    torchvision.transforms.functional.gaussian_blur (reflect padding). The blur
    is linear and its weights sum to 1, so blurring normalised images equals
    blurring in [0, 1] space and normalising.
    """
    from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
        raise InvalidParameterError("gaussian_blur takes float images (B, C, H, W)")
    if not sigma > 0:
        raise InvalidParameterError(f"sigma must be positive; got {sigma!r}")
    height, width = images.shape[-2:]
    sigmas = [sigma * width / reference_size, sigma * height / reference_size]  # torchvision: (x, y)
    kernel = []
    for axis, (s, extent) in enumerate(zip(sigmas, (width, height))):
        taps = kernel_size if kernel_size is not None else 2 * math.ceil(3 * s) + 1
        if taps % 2 == 0 or taps < 1:
            raise InvalidParameterError(f"kernel_size must be a positive odd int; got {taps}")
        kernel.append(min(taps, 2 * (extent - 1) + 1))
    return tv_gaussian_blur(images, kernel_size=kernel, sigma=sigmas)


# -- readouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readout:
    """What to keep of the logits of each perturbed copy.

    `kind` is one of ``"logits"`` (all of them, (C,) per copy), ``"logit"``
    (the raw logit of a class), ``"probability"`` and ``"log_probability"``
    (softmax of a class), ``"correct"`` (top-1 prediction equals the class) or
    ``"prediction"`` (the top-1 class). `classes` is needed for the class
    readouts: an int, B class indices, or ``"predicted"`` for the clean
    image's top-1 class.
    """

    kind: str
    classes: object = None

    def __post_init__(self) -> None:
        if self.kind not in READOUT_KINDS:
            raise InvalidParameterError(f"unknown readout {self.kind!r}; valid readouts are {', '.join(READOUT_KINDS)}")
        needs = self.kind in ("logit", "probability", "log_probability", "correct")
        if needs and self.classes is None:
            raise InvalidParameterError(f"readout {self.kind!r} needs classes: an int, B class indices or 'predicted'")
        if isinstance(self.classes, str) and self.classes != "predicted":
            raise InvalidParameterError(f"readout classes must be class indices or 'predicted'; got {self.classes!r}")

    def apply(self, logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "logits":
            return logits
        if self.kind == "prediction":
            return logits.argmax(1)
        if self.kind == "correct":
            return logits.argmax(1) == classes
        if self.kind == "logit":
            picked = logits
        elif self.kind == "probability":
            picked = logits.softmax(1)
        else:
            picked = logits.log_softmax(1)
        return picked.gather(1, classes[:, None]).squeeze(1)


def _as_readout(spec) -> Readout:
    if isinstance(spec, Readout):
        return spec
    if isinstance(spec, str):
        return Readout(spec)
    if isinstance(spec, tuple) and len(spec) == 2:
        return Readout(*spec)
    raise InvalidParameterError(f"a readout is a Readout, a kind name or a (kind, classes) pair; got {spec!r}")


@dataclass
class EngineResult:
    """Readouts at every step, (B, S, ...) per name, with the clean logits and the classes read."""

    outputs: dict[str, torch.Tensor]
    clean_logits: torch.Tensor | None
    classes: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]


# -- the engine --------------------------------------------------------------------------------


def _hash(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return repr((str(tensor.dtype), tuple(tensor.shape))).encode() + tensor.detach().contiguous().cpu().numpy().tobytes()


# The model's weights are hashed where they lie, once per engine call: on a GPU that takes
# milliseconds, where copying a ViT-B's 344 MB to the CPU and hashing them with blake2b takes
# about 1.5 s (either way takes about as long on one CPU core).
_BITS_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_HASH_BLOCK = 1 << 16


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _odd_weights(start: int, count: int, device: torch.device) -> torch.Tensor:
    """Odd pseudo-random int64 weights: splitmix64 of the positions start, ..., start + count - 1."""

    def shifted(z: torch.Tensor, bits: int) -> torch.Tensor:  # a logical shift: torch shifts int64 arithmetically
        return (z >> bits) & ((1 << (64 - bits)) - 1)

    z = torch.arange(start + 1, start + count + 1, device=device, dtype=torch.int64) * _as_int64(0x9E3779B97F4A7C15)
    z = (z ^ shifted(z, 30)) * _as_int64(0xBF58476D1CE4E5B9)
    z = (z ^ shifted(z, 27)) * _as_int64(0x94D049BB133111EB)
    return (z ^ shifted(z, 31)) | 1


@lru_cache(maxsize=8)
def _block_weights(device: torch.device) -> torch.Tensor:
    return _odd_weights(0, _HASH_BLOCK, device)


def _content_hash(tensor: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of a tensor's bits, computed on its device (a 0-dim int64 tensor).

    The sum of the bits of each element times an odd pseudo-random weight,
    modulo 2**64 (int64 arithmetic wraps): changing any one element always
    changes it, and changes of several elements that do not depend on the
    weights cancel with a chance of at most about 2**-32.
    """
    bits = tensor.detach()
    if bits.is_complex():
        bits = torch.view_as_real(bits)
    bits = bits.reshape(-1).view(_BITS_OF_SIZE[bits.element_size()]).to(torch.int64)
    weights = _block_weights(bits.device)
    full = bits.numel() - bits.numel() % _HASH_BLOCK
    tail = bits[full:]
    block_sums = torch.cat([
        (bits[:full].view(-1, _HASH_BLOCK) * weights).sum(1),
        (tail * weights[: tail.numel()]).sum().view(1),
    ])
    return (block_sums * _odd_weights(_HASH_BLOCK, block_sums.numel(), bits.device)).sum()


def _listing(values: Sequence[int]) -> str:
    return ", ".join(map(str, values[:10])) + (f" (+{len(values) - 10} more)" if len(values) > 10 else "")


def _nonfinite_error(images: Sequence[int], steps: Sequence[int] | None) -> InvalidParameterError:
    """The error for NaN or infinite logits of these images (at these steps of the schedule; None: unperturbed)."""
    if steps is None:
        where = f"image{'s' if len(images) > 1 else ''} {_listing(images)} unperturbed"
    else:
        steps_of: dict[int, list[int]] = {}
        for image, step in zip(images, steps):
            steps_of.setdefault(image, []).append(step)
        where = " and ".join(
            f"image {image} at step{'s' if len(found) > 1 else ''} {_listing(found)}"
            for image, found in list(steps_of.items())[:10]
        ) + (f" (+{len(steps_of) - 10} more images)" if len(steps_of) > 10 else "")
    counted = "" if steps is None else " (steps of the schedule counted from 0)"
    return InvalidParameterError(
        f"the model returned NaN or infinite logits for {where}{counted}; no score can be read from them (a NaN "
        "row's top-1 class is 0). Check the model's weights and dtype (float16 overflows above 65504) and the "
        "images and replacement for NaN or infinite pixels"
    )


class PerturbationEngine:
    """Forward perturbed copies of images in large batches and keep chosen readouts.

    `model` is any callable mapping normalised images (n, C, H, W) to logits
    (n, num_classes); an nn.Module's parameters set the device and dtype the
    images are moved to. `mean` and `std` are the model's input normalisation
    (C values each), needed for constant replacements given in [0, 1] image
    space; for a timm model they default to its data config. `batch_size`
    copies are forwarded at a time. Results of up to `cache_size` images are
    kept (least recently used dropped first) while the content of the model's
    parameters and buffers stays the same; 0 turns the cache off, and so does
    a model that is not an nn.Module (its weights cannot be seen). Attributes
    that are not tensors are not seen either: call `clear_cache` after
    changing one that changes the outputs. NaN or infinite logits are an error.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        upsample_mode: str = "bilinear",
        cache_size: int = 100_000,
    ) -> None:
        if not callable(model):
            raise InvalidParameterError(f"model must be callable (images -> logits); got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be a positive int; got {batch_size!r}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise InvalidParameterError(f"unknown upsampling mode {upsample_mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")
        if (mean is None) != (std is None):
            raise InvalidParameterError("give both mean and std, or neither")
        if mean is None and isinstance(model, nn.Module) and getattr(model, "pretrained_cfg", None):
            from ..imaging import mean_std

            mean, std = mean_std(model)
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
            std = torch.as_tensor(std, dtype=torch.float64).flatten()
            if mean.shape != std.shape or bool((std <= 0).any()):
                raise InvalidParameterError(f"mean {mean.tolist()} and std {std.tolist()} must have one value per channel, std > 0")
        self.model = model
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self.upsample_mode = upsample_mode
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidParameterError(f"cache_size must be a non-negative int (0 turns the cache off); got {cache_size!r}")
        self.cache_size = cache_size
        self._store: OrderedDict[object, dict[str, torch.Tensor]] = OrderedDict()
        self._fingerprint = None
        #: copies forwarded through the model so far (clean images included)
        self.forwarded = 0

    # -- helpers -----------------------------------------------------------------------------
    def _placement(self, images: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        if isinstance(self.model, nn.Module):
            param = next(self.model.parameters(), None)
            if param is not None:
                return param.device, param.dtype
        return images.device, images.dtype

    @property
    def caching(self) -> bool:
        """Whether results are cached: a cache size above 0 and a model whose weights the engine can see."""
        return self.cache_size > 0 and isinstance(self.model, nn.Module)

    def _model_fingerprint(self):
        # The content, not the tensors' version counters: a write through `p.data` bumps no counter.
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        hashes = [_content_hash(t) for t in tensors]  # queued on the device, then read at once
        return (
            id(self.model),
            tuple(m.training for m in self.model.modules()),
            tuple((t.dtype, tuple(t.shape), t.device, int(h)) for t, h in zip(tensors, hashes)),
        )

    def clear_cache(self) -> None:
        self._store.clear()

    def _check_images(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point or images.ndim != 4:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise InvalidParameterError(
                f"images must be normalised float images (B, C, H, W) (see xaikit.preprocess); got {shape}"
            )
        if images.shape[0] == 0:
            raise InvalidParameterError("images is an empty batch: there are no images to score; give at least one image")
        if isinstance(self.model, nn.Module) and self.model.training:
            raise InvalidParameterError("the model is in training mode (dropout would perturb its outputs): call model.eval()")
        device, dtype = self._placement(images)
        return images.detach().to(device=device, dtype=dtype)

    def _check_maps(self, maps, images: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Checked pixel maps (B, H, W); token maps are upsampled with `mode` (default: the engine's)."""
        if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
            shape = tuple(maps.shape) if hasattr(maps, "shape") else type(maps).__name__
            raise InvalidParameterError(f"maps must be a tensor of token maps (B, gh, gw) or pixel maps (B, H, W); got {shape}")
        batch, _, height, width = images.shape
        if maps.shape[0] != batch:
            raise InvalidParameterError(f"{maps.shape[0]} maps for {batch} images: give one map per image")
        if maps.shape[1] > height or maps.shape[2] > width:
            raise InvalidParameterError(
                f"maps {tuple(maps.shape[1:])} are larger than the images ({height}, {width}): give token or pixel maps"
            )
        maps = maps.detach().to(images.device)
        if not maps.dtype.is_floating_point:
            maps = maps.float()
        bad = ~torch.isfinite(maps).flatten(1).all(1)
        if bool(bad.any()):
            raise InvalidParameterError(
                f"maps of images {bad.nonzero().flatten().tolist()[:10]} hold NaN or inf, which cannot be ranked; "
                "fix the method, or replace them on purpose with torch.nan_to_num"
            )
        if tuple(maps.shape[1:]) != (height, width):
            maps = upsample(maps, (height, width), mode=mode or self.upsample_mode)
        return maps

    def _replacement(self, replacement: Replacement, images: torch.Tensor) -> tuple[torch.Tensor, Callable[[int], bytes]]:
        """The replacement in normalised space, broadcastable to (B, C, H, W), and its per-image cache key."""
        channels = images.shape[1]
        if callable(replacement) and not isinstance(replacement, torch.Tensor):
            replacement = replacement(images)
            if not isinstance(replacement, torch.Tensor):
                raise InvalidParameterError("a replacement callable must return a tensor of images like its input")
        if isinstance(replacement, torch.Tensor) and replacement.ndim >= 3:
            if replacement.ndim == 3:
                replacement = replacement[None]
            if replacement.shape[1:] != images.shape[1:] or replacement.shape[0] not in (1, images.shape[0]):
                raise InvalidParameterError(
                    f"replacement images {tuple(replacement.shape)} must match the images {tuple(images.shape)} "
                    "(or be one image (C, H, W)), in the same normalised space"
                )
            replacement = replacement.detach().to(device=images.device, dtype=images.dtype)
            if replacement.shape[0] == 1:
                key = _tensor_bytes(replacement[0])
                return replacement, lambda i: key
            return replacement, lambda i: _tensor_bytes(replacement[i])
        try:
            values = torch.as_tensor(replacement, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(
                f"replacement must be a value in [0, 1], one per channel, a tensor of images or a callable; got {replacement!r}"
            ) from None
        if values.numel() == 1:
            values = values.expand(channels)
        if values.numel() != channels or bool(((values < 0) | (values > 1)).any()):
            raise InvalidParameterError(
                f"a constant replacement is one value in [0, 1] image space (0 = black) or one per channel "
                f"({channels}); got {values.tolist()}"
            )
        if self.mean is None:
            raise InvalidParameterError(
                "a constant replacement in [0, 1] image space needs the model's input normalisation: pass mean= and "
                "std= (the model is not a timm model with a data config)"
            )
        if self.mean.numel() != channels:
            raise InvalidParameterError(f"mean/std have {self.mean.numel()} channels but the images {channels}")
        normalised = ((values - self.mean) / self.std).to(device=images.device, dtype=images.dtype).view(1, channels, 1, 1)
        key = repr(("constant", values.tolist())).encode()
        return normalised, lambda i: key

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InvalidParameterError(f"the model must return logits (n, num_classes) for n images; it returned {shape}")
        self.forwarded += batch.shape[0]
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of unperturbed images, forwarded in chunks of `batch_size` without gradients."""
        images = self._check_images(images)
        return self._forward_clean(images, list(range(len(images))))

    def _forward_clean(self, images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Logits of checked images; `indices` are their positions in the caller's batch, for the error."""
        with torch.no_grad():
            logits = torch.cat([self._forward(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)])
        nonfinite = (~torch.isfinite(logits).all(1)).nonzero().flatten().tolist()
        if nonfinite:
            raise _nonfinite_error([indices[i] for i in nonfinite], None)
        return logits

    # -- running -----------------------------------------------------------------------------
    def run(
        self,
        images: torch.Tensor,
        maps: torch.Tensor | None,
        schedule: Schedule,
        *,
        replacement: Replacement = 0.0,
        readouts: Mapping[str, Readout | str | tuple] | None = None,
    ) -> EngineResult:
        """Readouts of every perturbed copy.

        `images` (B, C, H, W) normalised; `maps` (B, gh, gw) or (B, H, W), or
        None for a schedule that does not rank maps; `schedule` a
        `FractionSchedule`, `BoxSchedule` or `MaskSchedule`; `replacement` a
        value in [0, 1] image space (0 = black) or one per channel, images in
        the normalised space (B or 1, C, H, W) such as ``gaussian_blur(images)``,
        or a callable building them from the images. `readouts` maps a name to
        a `Readout` (or a kind, or a (kind, classes) pair); default all logits.
        Returns an `EngineResult` with one (B, S, ...) tensor per readout.
        """
        images, maps, bound = self._bind(images, maps, schedule)
        batch = images.shape[0]
        replacement, replacement_key = self._replacement(replacement, images)
        readouts = {name: _as_readout(spec) for name, spec in (readouts or {"logits": "logits"}).items()}
        empty = bound.removes_nothing().to(images.device)

        with torch.no_grad():
            self._sync_cache()
            image_keys = self._image_keys(images)
            needs_clean = bool(empty.any()) or any(isinstance(r.classes, str) for r in readouts.values())
            clean_logits = self._clean_logits(images, image_keys) if needs_clean else None
            classes = {name: self._classes(r, clean_logits, batch, images.device) for name, r in readouts.items()}
            if clean_logits is not None:
                self._check_classes_range(classes, clean_logits.shape[1])

            keys = None
            if self.caching:
                keys = self._keys(image_keys, maps if schedule.needs_maps else None, bound, replacement_key, readouts, classes)
            todo, first_of = self._to_compute(keys, batch)
            computed = {}
            if len(todo):
                computed = self._compute(images, bound, replacement, readouts, classes, todo.to(images.device), empty, clean_logits)
            if first_of == list(range(batch)):
                outputs = computed
            else:  # duplicates or cache hits: each image takes its computed or its cached row
                outputs = {
                    name: torch.stack(
                        [computed[name][f] if f >= 0 else self._recall(keys[i])[name].to(images.device) for i, f in enumerate(first_of)]
                    )
                    for name in readouts
                }
            for position, i in enumerate(todo.tolist() if keys is not None else ()):
                # copies, so that a caller editing the returned tensors cannot edit the cache
                self._remember(keys[i], {name: values[position].clone() for name, values in computed.items()})
        return EngineResult(outputs, clean_logits, {n: c for n, c in classes.items() if c is not None})

    def _bind(self, images, maps, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor | None, BoundSchedule]:
        """Checked images and maps, and the schedule bound to them."""
        if not isinstance(schedule, Schedule):
            raise InvalidParameterError(
                f"schedule must be a FractionSchedule, BoxSchedule or MaskSchedule; got {type(schedule).__name__}"
            )
        images = self._check_images(images)
        batch, _, height, width = images.shape
        if schedule.needs_maps:
            if maps is None:
                raise InvalidParameterError(f"{type(schedule).__name__} ranks pixels by the maps: pass maps")
            maps = self._check_maps(maps, images)
        return images, maps, schedule.bind(maps, batch, (height, width), images.device)

    def perturbed_images(
        self, images: torch.Tensor, maps: torch.Tensor | None, schedule: Schedule, *, replacement: Replacement = 0.0
    ) -> torch.Tensor:
        """The perturbed copies `run` would forward, (B, S, C, H, W) in the images' normalised space.

        Nothing is forwarded: this is for pictures of a few steps (keep B and S small, the copies
        take B x S images of memory). ``xaikit.imaging.to_display(model, copies[:, s])`` gives the
        pictures of step s, for `xaikit.viz.perturbation_steps_figure`.
        """
        images, maps, bound = self._bind(images, maps, schedule)
        fill, _ = self._replacement(replacement, images)
        batch, steps = images.shape[0], bound.num_steps
        image_index = torch.arange(batch, device=images.device).repeat_interleave(steps)
        step_index = torch.arange(steps, device=images.device).repeat(batch)
        masks = bound.masks(image_index, step_index)[:, None]
        with torch.no_grad():
            copies = torch.where(masks, fill[image_index] if fill.shape[0] > 1 else fill, images[image_index])
        return copies.reshape(batch, steps, *images.shape[1:])

    def clean_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of unperturbed images like `forward`, but from the cache for images seen before."""
        images = self._check_images(images)
        with torch.no_grad():
            self._sync_cache()
            return self._clean_logits(images, self._image_keys(images))

    def _sync_cache(self) -> None:
        if not self.caching:
            return
        fingerprint = self._model_fingerprint()
        if fingerprint != self._fingerprint:
            self._store.clear()
            self._fingerprint = fingerprint

    def _image_keys(self, images: torch.Tensor) -> list[bytes] | None:
        if not self.caching:
            return None
        on_cpu = images.detach().cpu()  # one transfer, not one per image
        return [_hash(_tensor_bytes(image)) for image in on_cpu]

    def _clean_logits(self, images: torch.Tensor, image_keys: list[bytes] | None) -> torch.Tensor:
        """Logits of the unperturbed images, forwarding only those not seen before."""
        if image_keys is None:
            return self._forward_clean(images, list(range(len(images))))
        known = {key: self._recall(("clean", key)) for key in image_keys}
        missing = {key: i for i, key in enumerate(image_keys) if known[key] is None}  # first occurrence of each
        if missing:
            logits = self._forward_clean(images[list(missing.values())], list(missing.values()))
            for position, key in enumerate(missing):
                known[key] = {"logits": logits[position].clone()}
                self._remember(("clean", key), known[key])
        return torch.stack([known[key]["logits"].to(images.device) for key in image_keys])

    def _recall(self, key):
        entry = self._store.get(key)
        if entry is not None:
            self._store.move_to_end(key)
        return entry

    def _remember(self, key, entry) -> None:
        self._store[key] = entry
        while len(self._store) > self.cache_size:
            self._store.popitem(last=False)

    def _classes(self, readout: Readout, clean_logits, batch: int, device) -> torch.Tensor | None:
        if readout.classes is None:
            return None
        if isinstance(readout.classes, str):  # "predicted"
            return clean_logits.argmax(1)
        classes = torch.as_tensor(readout.classes, device=device)
        if classes.ndim == 0:
            classes = classes.expand(batch)
        if classes.dtype.is_floating_point or classes.dtype == torch.bool or classes.shape != (batch,):
            raise InvalidParameterError(
                f"readout {readout.kind!r}: classes must be one int or {batch} class indices; got {tuple(classes.shape)} {classes.dtype}"
            )
        if bool((classes < 0).any()):
            raise InvalidParameterError(f"readout {readout.kind!r}: negative class index {int(classes.min())}")
        return classes.long()

    @staticmethod
    def _check_classes_range(classes, num_classes: int) -> None:
        for name, c in classes.items():
            if c is not None and bool((c >= num_classes).any()):
                raise InvalidParameterError(f"readout {name!r}: class {int(c.max())} is out of range for {num_classes} classes")

    def _keys(self, image_keys, maps, bound, replacement_key, readouts, classes) -> list[bytes]:
        spec = repr(sorted((name, r.kind) for name, r in readouts.items())).encode()
        class_lists = [(name, c.tolist()) for name, c in sorted(classes.items()) if c is not None]
        map_bytes = maps.detach().cpu() if maps is not None else None
        keys = []
        for i, image_key in enumerate(image_keys):
            parts = [image_key, bound.key(i), replacement_key(i), spec]
            if map_bytes is not None:
                parts.append(_tensor_bytes(map_bytes[i]))
            parts.append(repr([(name, values[i]) for name, values in class_lists]).encode())
            keys.append(_hash(*parts))
        return keys

    def _to_compute(self, keys, batch: int) -> tuple[torch.Tensor, list[int]]:
        """Images to forward (first occurrences of keys not in the cache) and, per image, its row among them."""
        if keys is None:
            return torch.arange(batch), list(range(batch))
        todo, first_of, seen = [], [], {}
        for i, key in enumerate(keys):
            if key in self._store:
                first_of.append(-1)
            elif key in seen:
                first_of.append(seen[key])
            else:
                seen[key] = len(todo)
                first_of.append(len(todo))
                todo.append(i)
        return torch.tensor(todo, dtype=torch.long), first_of

    def _compute(self, images, bound, replacement, readouts, classes, todo, empty, clean_logits) -> dict[str, torch.Tensor]:
        device = images.device
        steps = bound.num_steps
        clean_rows = empty[todo]  # (T, S)
        pairs = (~clean_rows).nonzero()  # (P, 2): row in todo, step
        per_image = replacement.shape[0] > 1
        results: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros(clean_rows.shape, dtype=torch.bool, device=device)  # read once, after the loop

        def store(name: str, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
            if name not in results:
                results[name] = torch.zeros((len(todo), steps, *values.shape[1:]), dtype=values.dtype, device=device)
            results[name][rows, cols] = values

        for start in range(0, len(pairs), self.batch_size):
            rows, cols = pairs[start : start + self.batch_size].unbind(1)
            image_index = todo[rows]
            masks = bound.masks(image_index, cols)[:, None]
            fill = replacement[image_index] if per_image else replacement
            logits = self._forward(torch.where(masks, fill, images[image_index]))
            if start == 0:
                self._check_classes_range(classes, logits.shape[1])
            nonfinite[rows, cols] = ~torch.isfinite(logits).all(1)
            for name, readout in readouts.items():
                store(name, rows, cols, readout.apply(logits, None if classes[name] is None else classes[name][image_index]))
        if bool(nonfinite.any()):
            rows, steps = nonfinite.nonzero().cpu().unbind(1)
            raise _nonfinite_error(todo.cpu()[rows].tolist(), steps.tolist())
        if bool(clean_rows.any()):
            # the copy that replaces nothing is the image itself: read it from the clean forward
            rows, cols = clean_rows.nonzero().unbind(1)
            image_index = todo[rows]
            logits = clean_logits[image_index]
            for name, readout in readouts.items():
                store(name, rows, cols, readout.apply(logits, None if classes[name] is None else classes[name][image_index]))
        return results


# -- speed -------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    maps: torch.Tensor | None,
    *,
    schedule: Schedule | None = None,
    replacement: Replacement = 0.0,
    batch_size: int = 64,
    repeats: int = 3,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
) -> dict[str, float]:
    """Images x steps per second of the engine against plain forwards of the same count.

    Runs the engine (cache off, so everything is forwarded) on `images` and
    `maps` with `schedule` (default: Chefer's 10 fractions, positive order),
    then forwards the same number of unperturbed images in chunks of
    `batch_size`; each is timed `repeats` times after one warm-up and the
    fastest run is kept. Returns ``copies`` (images x steps), ``engine_per_s``,
    ``plain_per_s`` and ``ratio`` (engine / plain; 1 means the perturbation
    costs nothing beyond the forwards).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidParameterError(f"repeats must be a positive int; got {repeats!r}")
    schedule = schedule or FractionSchedule()
    engine = PerturbationEngine(model, batch_size=batch_size, mean=mean, std=std, cache_size=0)
    images = engine._check_images(images)
    device = images.device

    def timed(work) -> float:
        best = math.inf
        for _ in range(repeats + 1):  # the first run warms up
            _synchronize(device)
            start = time.perf_counter()
            work()
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
        return best

    engine_seconds = timed(lambda: engine.run(images, maps, schedule, replacement=replacement))
    copies = engine.forwarded // (repeats + 1)
    plain_inputs = images[torch.arange(copies, device=device) % images.shape[0]]

    def plain() -> None:
        with torch.no_grad():
            for start in range(0, copies, batch_size):
                model(plain_inputs[start : start + batch_size])

    plain_seconds = timed(plain)
    return {
        "copies": copies,
        "engine_per_s": copies / engine_seconds,
        "plain_per_s": copies / plain_seconds,
        "ratio": plain_seconds / engine_seconds,
    }
