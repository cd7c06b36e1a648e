"""The CDAM benchmarks (Brocki, Binda, Chung): MIF/LIF fidelity, box sensitivity and class discrimination.

All three run on the batched `PerturbationEngine`: settings go to ``__init__``,
data to ``__call__(images, targets, maps)`` (like `Perturbation`), and every
result holds per-image values and the aggregate. The paper's evaluation code is
not public (reference-spec §2.9); every choice it leaves open is a setting
whose default and reason are given here and in the class docstrings.

Shared conventions:

- **Target.** The curves read the **raw logit** of the target class (no
  softmax, no division by the clean logit). ``targets=None`` takes the class
  the model predicts on the clean image (the paper's X_val); class indices
  (one int or one per image) give the annotated classes (X_multi).
- **Replacement.** Pixels are replaced by a Gaussian-blurred copy of the image
  (``replacement="blur"``): sigma 14 px at 224 px (the paper), scaled with the
  image side (sigma * H / `reference_size` down the rows, * W / `reference_size`
  along them); ``kernel_size=None`` takes 2 * ceil(3 sigma) + 1 taps (85 at
  224; the paper does not say), reflect padding (torchvision). ``blur_space``
  ``"normalised"`` (default) blurs the model's input, ``"pixel"`` un-normalises
  to [0, 1], blurs and normalises again; the blur is linear with weights
  summing to 1, so both agree to float rounding (the setting exists to make
  that checkable). Any replacement of the engine (a value in [0, 1], one per
  channel, images, a callable) may be given instead, e.g. ``0.0`` (black) as in
  the authors' earlier fidelity code.
- **Ranking.** Token maps are upsampled to pixels with ``upsample_mode``
  (default ``"nearest"``: the CDAM authors upsample their maps by nearest
  neighbour x patch size, §2.3); ties (all pixels of a token) go in raster
  order, the engine's rule, in both orders. Pixel maps are used as they are.
- **Maps** are token maps (B, gh, gw), pixel maps (B, H, W), or a callable
  ``maps(images, classes)`` such as an `xaikit.Explainer`, called with the
  target classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidParameterError
from ..imaging import UPSAMPLE_MODES
from ..targets import resolve_targets
from .engine import BoxSchedule, FractionSchedule, PerturbationEngine, Replacement, check_fractions, gaussian_blur

#: Box sides in pixels at `reference_size` (224): one ViT-S/8 patch up to half the image side.
DEFAULT_BOX_SIZES: tuple[int, ...] = tuple(range(8, 113, 8))
BLUR_SPACES = ("normalised", "pixel")


# -- shared settings ---------------------------------------------------------------------------


class _BlurredProtocol:
    """Settings every CDAM benchmark shares: the engine, the replacement and the map upsampling."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        sigma: float = 14.0,
        reference_size: int = 224,
        kernel_size: int | None = None,
        blur_space: str = "normalised",
        replacement: Replacement | str = "blur",
        upsample_mode: str = "nearest",
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        engine: PerturbationEngine | None = None,
    ) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise InvalidParameterError(f"sigma must be a positive number (pixels at reference_size); got {sigma!r}")
        if isinstance(reference_size, bool) or not isinstance(reference_size, int) or reference_size < 1:
            raise InvalidParameterError(f"reference_size must be a positive int (pixels); got {reference_size!r}")
        if kernel_size is not None and (
            isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0
        ):
            raise InvalidParameterError(f"kernel_size must be None (2 * ceil(3 sigma) + 1) or a positive odd int; got {kernel_size!r}")
        if blur_space not in BLUR_SPACES:
            raise InvalidParameterError(
                f"blur_space must be 'normalised' (blur the model input) or 'pixel' (blur in [0, 1] image space); got {blur_space!r}"
            )
        if isinstance(replacement, str) and replacement != "blur":
            raise InvalidParameterError(
                f"replacement must be 'blur' (the paper), a value in [0, 1], one per channel, images or a callable; got {replacement!r}"
            )
        if upsample_mode not in UPSAMPLE_MODES:
            raise InvalidParameterError(f"unknown upsampling mode {upsample_mode!r}; valid modes are {', '.join(UPSAMPLE_MODES)}")
        if engine is None:
            engine = PerturbationEngine(model, batch_size=batch_size, mean=mean, std=std)
        elif engine.model is not model:
            raise InvalidParameterError("the shared engine runs another model: give the engine's own model")
        if isinstance(replacement, str) and blur_space == "pixel" and engine.mean is None:
            raise InvalidParameterError(
                "blur_space='pixel' needs the model's input normalisation: pass mean= and std= (the model is not a "
                "timm model with a data config), or blur in the normalised space"
            )
        self.model = model
        self.engine = engine
        self.sigma = float(sigma)
        self.reference_size = reference_size
        self.kernel_size = kernel_size
        self.blur_space = blur_space
        self.replacement = replacement
        self.upsample_mode = upsample_mode

    def _settings(self) -> dict:
        """The shared settings, to build a sibling protocol on the same engine."""
        return dict(
            sigma=self.sigma,
            reference_size=self.reference_size,
            kernel_size=self.kernel_size,
            blur_space=self.blur_space,
            replacement=self.replacement,
            upsample_mode=self.upsample_mode,
            engine=self.engine,
        )

    def _replacement_for(self, images: torch.Tensor) -> Replacement:
        """The blurred copies of `images` (normalised space), or the replacement as given."""
        if not isinstance(self.replacement, str):  # "blur" is the only string allowed
            return self.replacement
        blur = dict(sigma=self.sigma, reference_size=self.reference_size, kernel_size=self.kernel_size)
        if self.blur_space == "normalised":
            return gaussian_blur(images, **blur)
        channels = images.shape[1]
        if self.engine.mean.numel() != channels:
            raise InvalidParameterError(f"mean/std have {self.engine.mean.numel()} channels but the images {channels}")
        mean = self.engine.mean.to(device=images.device, dtype=images.dtype).view(1, channels, 1, 1)
        std = self.engine.std.to(device=images.device, dtype=images.dtype).view(1, channels, 1, 1)
        return (gaussian_blur(images * std + mean, **blur) - mean) / std

    def _classes(self, targets, images: torch.Tensor, name: str = "targets") -> tuple[torch.Tensor, torch.Tensor]:
        """The target class per image and the clean logits (from the engine's cache when seen before)."""
        if callable(targets) and not isinstance(targets, torch.Tensor):
            raise InvalidParameterError(
                f"{name}: the CDAM benchmarks read the raw logit of a class, so give class indices (one int or one per "
                "image) or None for the predicted class, not a score callable"
            )
        logits = self.engine.clean_logits(images)
        _, classes = resolve_targets(targets, logits)
        return classes, logits

    def _pixel_maps(self, maps, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if callable(maps) and not isinstance(maps, torch.Tensor):
            maps = maps(images, classes)
        return self.engine._check_maps(maps, images, mode=self.upsample_mode)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu()


# -- fidelity (MIF / LIF) ------------------------------------------------------------------------


@dataclass
class FidelityResult:
    """MIF and LIF curves and their areas (CPU tensors, float64 values).

    - ``x`` (S,): percent of the pixels replaced at each step; ``counts`` (S,)
      the pixel counts;
    - ``targets`` (B,): the class whose logit is read; ``clean_logit`` (B,);
    - ``mif`` / ``lif`` (B, S): the raw target logit after replacing the most /
      least important pixels first (step 0 is the clean image);
    - ``a_mif_per_image``, ``a_lif_per_image``, ``a_lif_minus_mif_per_image``
      (B,): trapezoidal areas over ``x``; ``a_mif``, ``a_lif``,
      ``a_lif_minus_mif``: their means over the images (= the areas of the
      mean curves, the paper's "curves averaged over samples").
    """

    x: torch.Tensor
    counts: torch.Tensor
    targets: torch.Tensor
    clean_logit: torch.Tensor
    mif: torch.Tensor
    lif: torch.Tensor
    a_mif_per_image: torch.Tensor
    a_lif_per_image: torch.Tensor
    a_lif_minus_mif_per_image: torch.Tensor
    a_mif: float
    a_lif: float
    a_lif_minus_mif: float

    @property
    def mif_curve(self) -> torch.Tensor:
        return self.mif.mean(0)

    @property
    def lif_curve(self) -> torch.Tensor:
        return self.lif.mean(0)

    def summary(self) -> dict[str, float]:
        """The paper's columns: A_MIF (lower is better), A_LIF and A_LIF-MIF (higher is better)."""
        return {"A_MIF": self.a_mif, "A_LIF": self.a_lif, "A_LIF-MIF": self.a_lif_minus_mif}


class Fidelity(_BlurredProtocol):
    """CDAM's fidelity: replace pixels most-important-first (MIF) and least-important-first (LIF).

    At each step the top-ranked pixels (MIF: highest map values first; LIF:
    lowest first) are replaced in all channels by the blurred copy, and the raw
    logit of the target class is read. Areas are trapezoidal over x = percent
    of the pixels replaced, with the raw logit on y: a logit that stays at 10
    gives an area near 1000, the magnitudes of the paper's Tables 1 and S1
    (A_LIF about 1000-1500); the authors' earlier code divided by the clean
    logit, which would give areas below about 100, so the paper does not.
    ``A_LIF-MIF = A_LIF - A_MIF`` (the paper's Table 1: 1038 - 404 = 632).

    Settings (defaults and why):

    - `step` = 0.05: the pixel counts are ``range(0, H*W, int(H*W*step))``,
      the authors' earlier fidelity code (``arange(0, H*W, int(H*W*0.05))``,
      21 steps at 224 px, the last at 99.97 %); the paper gives no step.
      `fractions` (increasing shares in [0, 1]) replaces `step` with explicit
      steps, ``int(H*W*f)`` pixels each.
    - `sigma` = 14 at `reference_size` = 224 (the paper), `kernel_size` = None,
      `blur_space` = ``"normalised"``, `replacement` = ``"blur"``,
      `upsample_mode` = ``"nearest"``: see the module docstring.
    - `batch_size` = 64 perturbed copies per forward; `mean`/`std` the model's
      normalisation (timm models give their own); `engine` shares another
      protocol's engine and cache (its model, batch size and mean/std apply).

    Call with images (B, C, H, W) normalised, targets (None = predicted class,
    an int, or B class indices) and maps. Returns a `FidelityResult`.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        step: float = 0.05,
        fractions: Sequence[float] | None = None,
        sigma: float = 14.0,
        reference_size: int = 224,
        kernel_size: int | None = None,
        blur_space: str = "normalised",
        replacement: Replacement | str = "blur",
        upsample_mode: str = "nearest",
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        engine: PerturbationEngine | None = None,
    ) -> None:
        if fractions is not None:
            fractions = check_fractions(fractions)
            if len(fractions) < 2:
                raise InvalidParameterError(f"fractions {fractions} make no curve: give at least two steps")
        elif isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
            raise InvalidParameterError(f"step must be a share of the pixels in (0, 1), e.g. 0.05; got {step!r}")
        super().__init__(
            model, sigma=sigma, reference_size=reference_size, kernel_size=kernel_size, blur_space=blur_space,
            replacement=replacement, upsample_mode=upsample_mode, batch_size=batch_size, mean=mean, std=std, engine=engine,
        )
        self.step = float(step)
        self.fractions = fractions

    def counts(self, pixels: int) -> tuple[int, ...]:
        """The numbers of pixels replaced at each step for images of `pixels` pixels."""
        if self.fractions is not None:
            counts = tuple(int(pixels * f) for f in self.fractions)
            if any(b <= a for a, b in zip(counts, counts[1:])):
                raise InvalidParameterError(
                    f"fractions {self.fractions} give repeated pixel counts {counts} on {pixels}-pixel images: use fewer steps"
                )
            return counts
        stride = int(pixels * self.step)
        if stride < 1:
            raise InvalidParameterError(f"step {self.step} is less than one pixel of a {pixels}-pixel image: use a larger step")
        return tuple(range(0, pixels, stride))

    def __call__(self, images: torch.Tensor, targets, maps) -> FidelityResult:
        images = self.engine._check_images(images)
        classes, logits = self._classes(targets, images)
        return self._run(images, classes, logits, self._pixel_maps(maps, images, classes), self._replacement_for(images))

    def _run(self, images, classes, clean_logits, pixel_maps, replacement) -> FidelityResult:
        pixels = images.shape[-2] * images.shape[-1]
        counts = self.counts(pixels)
        readouts = {"logit": ("logit", classes)}
        curves = {
            order: self.engine.run(images, pixel_maps, FractionSchedule(counts=counts, order=order), replacement=replacement,
                                   readouts=readouts)["logit"].double().cpu()
            for order in ("positive", "negative")
        }
        x = torch.tensor(counts, dtype=torch.float64) * (100.0 / pixels)
        mif, lif = curves["positive"], curves["negative"]
        a_mif = torch.trapezoid(mif, x, dim=1)
        a_lif = torch.trapezoid(lif, x, dim=1)
        return FidelityResult(
            x=x,
            counts=torch.tensor(counts),
            targets=_cpu(classes),
            clean_logit=_cpu(clean_logits.gather(1, classes[:, None]).squeeze(1)).double(),
            mif=mif,
            lif=lif,
            a_mif_per_image=a_mif,
            a_lif_per_image=a_lif,
            a_lif_minus_mif_per_image=a_lif - a_mif,
            a_mif=float(a_mif.mean()),
            a_lif=float(a_lif.mean()),
            a_lif_minus_mif=float((a_lif - a_mif).mean()),
        )


# -- box sensitivity -----------------------------------------------------------------------------


@dataclass
class BoxSensitivityResult:
    """Box sensitivity per image and box size (CPU tensors, float64 values).

    - ``sizes`` (K,): box sides in pixels on these images; ``x`` (K,): the
      same in percent of the image side (the x-axis of ``A_box``);
    - ``targets``, ``clean_logit`` (B,);
    - ``boxes`` (B, K, n, 3): (top, left, side) of every box;
      ``importance`` (B, K, n): the map summed over the box's pixels;
      ``drop`` (B, K, n): clean logit minus the logit with the box blurred;
    - ``r_per_image`` (B, K): Pearson r of importance and drop over the n
      boxes, 0 where it is undefined; ``undefined`` (B, K): True there (the
      map's box sums or the logits do not vary over the boxes);
    - ``f_box`` (K,): the mean of ``r_per_image`` over images (the curve);
    - ``a_box_per_image`` (B,) and ``a_box``: trapezoidal areas over ``x``.
    """

    sizes: torch.Tensor
    x: torch.Tensor
    targets: torch.Tensor
    clean_logit: torch.Tensor
    boxes: torch.Tensor
    importance: torch.Tensor
    drop: torch.Tensor
    r_per_image: torch.Tensor
    undefined: torch.Tensor
    f_box: torch.Tensor
    a_box_per_image: torch.Tensor
    a_box: float

    def summary(self) -> dict[str, float]:
        """The paper's column A_box (higher is better)."""
        return {"A_box": self.a_box}


def box_sums(pixel_maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sum of each map over boxes: maps (B, H, W), boxes (B, N, 3) (top, left, side) -> (B, N) float64.

    Summed-area table in float64, so that a constant map gives box sums equal
    to about 1e-13 relative.
    """
    table = F.pad(pixel_maps.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    top, left, side = boxes.long().unbind(-1)
    image = torch.arange(pixel_maps.shape[0], device=pixel_maps.device)[:, None]
    bottom, right = top + side, left + side
    return table[image, bottom, right] - table[image, top, right] - table[image, bottom, left] + table[image, top, left]


def pearson(a: torch.Tensor, b: torch.Tensor, undefined: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson r over the last axis, with 0 where `undefined` (or either side has zero variance); and that mask."""
    a, b = a.double(), b.double()
    a_centred = a - a.mean(-1, keepdim=True)
    b_centred = b - b.mean(-1, keepdim=True)
    a_norm = a_centred.square().sum(-1).sqrt()
    b_norm = b_centred.square().sum(-1).sqrt()
    flat = (a_norm == 0) | (b_norm == 0)
    undefined = flat if undefined is None else (undefined | flat)
    r = (a_centred * b_centred).sum(-1) / torch.where(undefined, 1.0, a_norm * b_norm)
    return torch.where(undefined, 0.0, r).clamp(-1.0, 1.0), undefined


def _is_constant(values: torch.Tensor, tolerance: float) -> torch.Tensor:
    """True where `values` (..., n) vary by at most `tolerance` times their largest magnitude (std vs max |v|)."""
    values = values.double()
    return values.std(-1, unbiased=False) <= tolerance * values.abs().amax(-1)


class BoxSensitivity(_BlurredProtocol):
    """CDAM's box sensitivity: does the importance inside a box predict what blurring the box costs?

    For each image and box side s, `n_boxes` random s x s boxes (uniform
    positions inside the image, seeded) are blurred one at a time; the drop of
    the raw target logit, f(x) - f(x_box), is paired with the map summed over
    the box's pixels, and Pearson's r over the boxes gives f_box(s) for the
    image. ``A_box`` is the trapezoidal area of r over x = the box side in
    percent of the image side, per image and averaged over images.

    Undefined r: when the map's box sums do not vary over the boxes (a
    constant map) or the logit does not react to any box, r is 0/0. It is
    recorded in ``undefined`` and **counted as r = 0** in the curve and areas:
    a map that cannot order the boxes gets chance-level credit, the same as a
    random map in expectation, and cannot raise its average by being skipped.
    "Does not vary" means a population std at most `tolerance` (1e-6) times
    the largest magnitude (of the box sums, or of the box logits), so float
    rounding of a constant does not pass for a signal.

    Settings (defaults and why; the paper gives none of them):

    - `sizes` = 8, 16, ..., 112: box sides in pixels at `reference_size` (224),
      at least two and distinct after scaling (A_box is an area over them),
      scaled to the images and rounded; from one ViT-S/8 patch to half the image
      side (larger boxes have few distinct positions). On this x-axis A_box is at
      most 46.4; the paper's values (up to about 13) would be a mean r of about
      0.3. The paper's x-axis unit is unknown.
    - `n_boxes` = 100 (the paper); `seed` = 0: `BoxSchedule`'s generator (the
      same boxes for the same batch size, image size and seed, so every map of a
      batch meets the same boxes and their forwards come from the engine's cache).
    - `tolerance` = 1e-6; the blur and upsampling settings as in `Fidelity`.

    The boxes do not depend on the map: scoring several methods on the same
    images through one engine forwards the boxes once. Returns a
    `BoxSensitivityResult`.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        sizes: Sequence[int] = DEFAULT_BOX_SIZES,
        n_boxes: int = 100,
        seed: int = 0,
        tolerance: float = 1e-6,
        sigma: float = 14.0,
        reference_size: int = 224,
        kernel_size: int | None = None,
        blur_space: str = "normalised",
        replacement: Replacement | str = "blur",
        upsample_mode: str = "nearest",
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        engine: PerturbationEngine | None = None,
    ) -> None:
        super().__init__(
            model, sigma=sigma, reference_size=reference_size, kernel_size=kernel_size, blur_space=blur_space,
            replacement=replacement, upsample_mode=upsample_mode, batch_size=batch_size, mean=mean, std=std, engine=engine,
        )
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise InvalidParameterError(f"sizes must be a sequence of box sides in pixels; got {sizes!r}") from None
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= reference_size for s in sizes):
            raise InvalidParameterError(
                f"sizes must be box sides in pixels at reference_size, ints in 1..{reference_size}; got {sizes}"
            )
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise InvalidParameterError(f"sizes must be strictly increasing (the x-axis of A_box); got {sizes}")
        if len(sizes) < 2:
            raise InvalidParameterError(f"sizes {sizes} make no curve: give at least two box sizes")
        self.sizes = sizes
        self.n_boxes = _positive_int("n_boxes (a correlation needs at least 3 boxes)", n_boxes, 3)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidParameterError(f"seed must be an int; got {seed!r}")
        self.seed = seed
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise InvalidParameterError(f"tolerance must be a number in [0, 1); got {tolerance!r}")
        self.tolerance = float(tolerance)

    def pixel_sizes(self, height: int, width: int) -> tuple[int, ...]:
        """Box sides in pixels on `height` x `width` images (`sizes` scaled by min(H, W) / reference_size)."""
        side = min(height, width)
        return tuple(max(1, min(side, round(s * side / self.reference_size))) for s in self.sizes)

    def __call__(self, images: torch.Tensor, targets, maps) -> BoxSensitivityResult:
        images = self.engine._check_images(images)
        classes, logits = self._classes(targets, images)
        return self._run(images, classes, logits, self._pixel_maps(maps, images, classes), self._replacement_for(images))

    def _run(self, images, classes, clean_logits, pixel_maps, replacement) -> BoxSensitivityResult:
        batch, _, height, width = images.shape
        sizes = self.pixel_sizes(height, width)
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            # sizes that round to one side are segments of zero width in A_box (all of them: A_box = 0)
            raise InvalidParameterError(
                f"sizes {self.sizes} give repeated box sides {sizes} on {height}x{width} images: use fewer sizes, "
                f"or a smaller reference_size (the sizes are in pixels at reference_size {self.reference_size})"
            )
        schedule = BoxSchedule(sizes, self.n_boxes, seed=self.seed)
        # the engine binds the same schedule to the same batch: these are the boxes it blurs
        boxes = schedule.bind(None, batch, (height, width), images.device).boxes
        logits = self.engine.run(images, None, schedule, replacement=replacement, readouts={"logit": ("logit", classes)})["logit"]
        shape = (batch, len(sizes), self.n_boxes)
        box_logits = logits.double().view(shape)
        clean = clean_logits.gather(1, classes[:, None]).double()
        drop = clean[:, :, None] - box_logits
        importance = box_sums(pixel_maps, boxes).view(shape)
        flat = _is_constant(importance, self.tolerance) | _is_constant(box_logits, self.tolerance)
        r, undefined = pearson(importance, drop, flat)
        side = min(height, width)
        x = torch.tensor(sizes, dtype=torch.float64) * (100.0 / side)
        r, undefined = r.cpu(), undefined.cpu()
        a_box = torch.trapezoid(r, x, dim=1)
        return BoxSensitivityResult(
            sizes=torch.tensor(sizes),
            x=x,
            targets=_cpu(classes),
            clean_logit=_cpu(clean.squeeze(1)),
            boxes=_cpu(boxes).view(*shape, 3),
            importance=_cpu(importance),
            drop=_cpu(drop),
            r_per_image=r,
            undefined=undefined,
            f_box=r.mean(0),
            a_box_per_image=a_box,
            a_box=float(a_box.mean()),
        )


# -- class discrimination ------------------------------------------------------------------------


@dataclass
class ClassDiscriminationResult:
    """Fidelity and box sensitivity of the maps of the correct class c and of another class c'.

    Every curve reads the logit of c. ``fidelity`` and ``box`` use the maps of
    c (the correctness scores of the paper's Table 1 on X_multi); ``other_fidelity`` and
    ``other_box`` the maps of c'.

    - ``delta_curve`` (B, S): (f_LIF - f_MIF) - (f_LIF' - f_MIF');
      ``a_delta_lif_minus_mif_per_image`` (B,) and ``a_delta_lif_minus_mif``:
      its area, = A_LIF-MIF(c) - A_LIF-MIF(c');
    - ``delta_box`` (B, K): f_box - f_box'; ``a_delta_box_per_image`` (B,) and
      ``a_delta_box``: its area, = A_box(c) - A_box(c').

    A class-independent map (the same for c and c') scores 0 on both.
    """

    targets: torch.Tensor
    other_targets: torch.Tensor
    fidelity: FidelityResult
    other_fidelity: FidelityResult
    box: BoxSensitivityResult
    other_box: BoxSensitivityResult
    delta_curve: torch.Tensor
    a_delta_lif_minus_mif_per_image: torch.Tensor
    a_delta_lif_minus_mif: float
    delta_box: torch.Tensor
    a_delta_box_per_image: torch.Tensor
    a_delta_box: float

    def summary(self) -> dict[str, float]:
        """The paper's Table 2 columns (both higher is better)."""
        return {"A_Δ(LIF-MIF)": self.a_delta_lif_minus_mif, "A_Δbox": self.a_delta_box}


class ClassDiscrimination:
    """CDAM's class discrimination on images holding two classes c and c' (X_multi).

    The maps of c and the maps of c' each go through `Fidelity` and
    `BoxSensitivity`, both reading the raw logit of c: a class-discriminative
    method ranks c's evidence first only in c's map, so its c'-map curves barely
    move f_c. ``A_Δ(LIF-MIF)`` is the area of
    (f_LIF - f_MIF) - (f_LIF' - f_MIF'), ``A_Δbox`` the area of f_box - f_box'
    (reference-spec §2.9).

    Settings: those of `Fidelity` (`step`, `fractions`) and `BoxSensitivity`
    (`sizes`, `n_boxes`, `seed`, `tolerance`), and the shared ones (`sigma`,
    `reference_size`, `kernel_size`, `blur_space`, `replacement`,
    `upsample_mode`, `batch_size`, `mean`, `std`, `engine`), with the same
    defaults. Both protocols run on one engine (``self.engine``), so the box
    forwards of the c' maps come from the cache.

    Call with images, `targets` (c: B class indices or one int), `other_targets`
    (c', each different from c), `maps` (of c) and `other_maps` (of c'); a
    callable `maps` (e.g. an `xaikit.Explainer`) is called with c, and with c'
    for the other maps when `other_maps` is None. Returns a
    `ClassDiscriminationResult`.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        step: float = 0.05,
        fractions: Sequence[float] | None = None,
        sizes: Sequence[int] = DEFAULT_BOX_SIZES,
        n_boxes: int = 100,
        seed: int = 0,
        tolerance: float = 1e-6,
        sigma: float = 14.0,
        reference_size: int = 224,
        kernel_size: int | None = None,
        blur_space: str = "normalised",
        replacement: Replacement | str = "blur",
        upsample_mode: str = "nearest",
        batch_size: int = 64,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        engine: PerturbationEngine | None = None,
    ) -> None:
        self.fidelity = Fidelity(
            model, step=step, fractions=fractions, sigma=sigma, reference_size=reference_size, kernel_size=kernel_size,
            blur_space=blur_space, replacement=replacement, upsample_mode=upsample_mode, batch_size=batch_size,
            mean=mean, std=std, engine=engine,
        )
        self.box = BoxSensitivity(model, sizes=sizes, n_boxes=n_boxes, seed=seed, tolerance=tolerance, **self.fidelity._settings())
        self.model = model
        self.engine = self.fidelity.engine

    def __call__(self, images: torch.Tensor, targets, other_targets, maps, other_maps=None) -> ClassDiscriminationResult:
        protocol = self.fidelity
        images = self.engine._check_images(images)
        if targets is None or other_targets is None:
            raise InvalidParameterError(
                "class discrimination needs both classes of every image: targets (c) and other_targets (c'), as class indices"
            )
        classes, logits = protocol._classes(targets, images, "targets")
        other_classes, _ = protocol._classes(other_targets, images, "other_targets")
        same = (classes == other_classes).nonzero().flatten().tolist()
        if same:
            raise InvalidParameterError(
                f"other_targets equal targets for images {same[:10]}: c' must be another class present in the image"
            )
        if other_maps is None:
            if isinstance(maps, torch.Tensor) or not callable(maps):
                raise InvalidParameterError("give other_maps (the maps of c'), or a callable maps(images, classes) for both")
            other_maps = maps
        pixel_maps = protocol._pixel_maps(maps, images, classes)
        other_pixel_maps = protocol._pixel_maps(other_maps, images, other_classes)
        replacement = protocol._replacement_for(images)
        # every run reads the logit of c, whichever class the maps explain
        fidelity = protocol._run(images, classes, logits, pixel_maps, replacement)
        other_fidelity = protocol._run(images, classes, logits, other_pixel_maps, replacement)
        box = self.box._run(images, classes, logits, pixel_maps, replacement)
        other_box = self.box._run(images, classes, logits, other_pixel_maps, replacement)
        delta_curve = (fidelity.lif - fidelity.mif) - (other_fidelity.lif - other_fidelity.mif)
        a_delta = torch.trapezoid(delta_curve, fidelity.x, dim=1)
        delta_box = box.r_per_image - other_box.r_per_image
        a_delta_box = torch.trapezoid(delta_box, box.x, dim=1)
        return ClassDiscriminationResult(
            targets=_cpu(classes),
            other_targets=_cpu(other_classes),
            fidelity=fidelity,
            other_fidelity=other_fidelity,
            box=box,
            other_box=other_box,
            delta_curve=delta_curve,
            a_delta_lif_minus_mif_per_image=a_delta,
            a_delta_lif_minus_mif=float(a_delta.mean()),
            delta_box=delta_box,
            a_delta_box_per_image=a_delta_box,
            a_delta_box=float(a_delta_box.mean()),
        )
