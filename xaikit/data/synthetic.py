"""Seeded synthetic images with ground truth, for when the papers' real data cannot be had.

Three generators, all numpy-only and deterministic:

* :func:`make_shapes` -- one object of one of the ten :data:`SHAPE_CLASSES` per image
  (default 32x32 RGB), with its label, exact pixel mask and a human-like importance map.
* :func:`make_pairs` -- two non-overlapping objects of two *different* classes per image
  (default 64x64 RGB), each with its own label, mask and importance map.
* :func:`make_nodules` -- CT-like grey crops of lung nodules (default 64x64) whose look is
  driven by the eight LIDC-IDRI biomarkers (:data:`LIDC_BIOMARKERS`), with a nodule mask
  and a malignancy label derived from the biomarkers by a documented rule
  (:func:`malignancy_score`).

Determinism
    Image ``i`` is drawn from its own generator ``np.random.default_rng([seed, i])``, so it
    depends only on ``(seed, i, parameters)``: the same call gives byte-identical arrays,
    the first ``k`` images of ``n > k`` equal those of ``n = k``, and other seeds give other
    images.

Shapes rules
    Every shape fits in a circle of radius ``r = u * size`` with ``u`` uniform in
    ``scale_range`` (default 0.22-0.40, i.e. 7-12.8 px at 32 px), is rotated uniformly at
    random (disk and ring are rotation invariant) and is placed uniformly at random with at
    least one pixel of background around it. Classes are drawn uniformly.
    The background is a base colour plus low-frequency colour noise, a linear colour
    gradient and sinusoidal stripes of random orientation and period. Contrast is built
    in with a random polarity: on a dark background (all channels <= 0.5) the object is a
    flat colour with every channel >= 0.55 and one channel >= 0.85; the bright polarity is
    the same picture inverted (``1 - x``). Bounded pixel noise (+-0.04) is added to the
    whole image. Colour is independent of class, so colour alone cannot solve the task.
    The mask is rasterised first (``skimage.draw``, pixel centres inside the shape, no
    anti-aliasing) and the object is painted through it, so the mask is exactly the set of
    object pixels, and on every image the object's pixels are separated from all
    background pixels in brightest channel (bright objects) or darkest channel (dark ones).
    The importance map is the mask blurred with a Gaussian of ``importance_sigma`` pixels
    (default ``size / 16``), divided by its maximum: float32 in [0, 1] with maximum 1, like
    the blurred click maps of ClickMe.

Pairs rules
    As shapes, on a square background of ``size`` pixels a side (64 by default), with two
    objects of two different classes. Each object fits in a circle whose radius is between
    0.12 and 0.20 of the side by default, and the two circles are at least 2 pixels apart,
    so the objects' masks never touch. Both objects are bright on a dark background or dark
    on a bright one, each in its own colour. Each object has its own mask and importance
    map; object 0 and object 1 are in no particular order.

Nodule rules (LIDC-IDRI rating scales; pixel scale ``mm_per_pixel``, default 0.8 mm)
    Intensities are built in Hounsfield units (HU) and shown through a lung window (level
    -600 HU, width 1500 HU): -1350 HU and below show as black (0), 150 HU and above as
    white (255). Background: lung tissue at about -850 HU with slow variation across the
    crop, one to three short, thin, blurred vessels (between -700 and -450 HU) and CT noise
    (standard deviation 20 HU, added to every pixel, nodule included). Each nodule draws
    its biomarkers independently of one another:

    ==============  =========================  ==================================================
    biomarker       drawn                      rendered as
    ==============  =========================  ==================================================
    subtlety        1 to 5, equally likely     contrast: the nodule's HU excess over the lung
                                               tissue is multiplied by a factor from 0.3 (1,
                                               extremely subtle) to 1.0 (5, obvious), linearly
    calcification   6 with probability 0.7,    6 = absent (LIDC coding); 1 popcorn (3 to 5
                    else 1 to 5                small blobs), 2 laminated (a ring), 3 solid
                                               (whole body), 4 non-central blob, 5 central
                                               blob; calcified pixels at +400 HU (scaled by
                                               the contrast)
    sphericity      1 to 5, equally likely     ratio of the minor to the major axis from 0.35
                                               (1, linear) to 1.0 (5, round), linearly; random
                                               orientation
    margin          1 to 5, equally likely     edge ramp: the opacity rises linearly from the
                                               boundary over w pixels, from w = 1 (5, sharp)
                                               to w = 1 + min(6, 0.8 times the minor
                                               semi-axis) (1, poorly defined)
    lobulation      1 to 5, equally likely     the boundary's radius times
                                               1 + 0.06 (L - 1) cos(k phi), with k = 3, 4 or
                                               5 lobes
    spiculation     1 to 5, equally likely     2 (S - 1) thin radial spikes (-300 HU, or +20 HU
                                               if the texture is 5) at opacity 0.8, of length
                                               (0.25 + 0.1 (S - 1)) times the major semi-axis,
                                               plus 2 pixels
    texture         1 to 5, equally likely     from 1, ground glass (-600 HU), to 5, solid
                                               (+20 HU): a solid core filling the fraction
                                               (T - 1) / 4 of the radius inside a ground-glass
                                               rim
    diameter (mm)   3 to 30 mm, uniform on a   length of the major axis = diameter /
                    log scale                  mm_per_pixel (minor semi-axis at least 1 pixel)
    ==============  =========================  ==================================================

    The ratings are integers (stored as float64); the nodule is centred, moved by up to 5 %
    of ``size`` either way; spikes may be cut by the crop's border. The mask is the nodule's
    body plus its spikes, and only mask pixels differ from the nodule-free image.

    Malignancy (:func:`malignancy_score`): ``p = sigmoid(z)`` with
    ``z = 0.7 + 2.0 ln(diameter / 10 mm) + 0.6 (spiculation - 3) + 0.5 (lobulation - 3)
    + 0.5 (3 - margin) - 2.0 c``, where c is 1 for a calcified nodule (calcification other
    than 6) and 0 otherwise; subtlety, sphericity and texture have no effect. The label is 1
    (malignant) when p is at least 0.5 (``label_rule="threshold"``, the default), or is drawn
    as 1 with probability p from the image's own generator (``label_rule="bernoulli"``).
    About half the nodules are malignant under the default ranges.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage import draw

from xaikit.errors import InvalidParameterError

from ._checks import check_count

__all__ = [
    "LIDC_BIOMARKERS",
    "MALIGNANCY_WEIGHTS",
    "NODULE_CLASSES",
    "SHAPE_CLASSES",
    "NoduleSet",
    "PairsSet",
    "ShapesSet",
    "importance_from_masks",
    "make_nodules",
    "make_pairs",
    "make_shapes",
    "malignancy_score",
]

SHAPE_CLASSES: tuple[str, ...] = (
    "disk",
    "ring",
    "square",
    "triangle",
    "cross",
    "star",
    "bar",
    "crescent",
    "diamond",
    "arrow",
)

LIDC_BIOMARKERS: tuple[str, ...] = (
    "subtlety",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "diameter",
)

NODULE_CLASSES: tuple[str, ...] = ("benign", "malignant")

#: Terms of the malignancy logit ``z`` (see the module docstring and :func:`malignancy_score`).
MALIGNANCY_WEIGHTS: dict[str, float] = {
    "bias": 0.7,
    "log_diameter_over_10mm": 2.0,
    "spiculation_minus_3": 0.6,
    "lobulation_minus_3": 0.5,
    "3_minus_margin": 0.5,
    "calcification_present": -2.0,
}

CALCIFICATION_ABSENT = 6


# --------------------------------------------------------------------------- datasets


def _check_leading(name: str, n: int, **arrays: np.ndarray | None) -> None:
    for key, arr in arrays.items():
        if arr is not None and arr.shape[0] != n:
            raise InvalidParameterError(
                f"{name}.{key} has {arr.shape[0]} rows but images has {n}; "
                "build the set from arrays of equal length."
            )


@dataclass(frozen=True)
class _ObjectImages:
    """Images of shape objects with their labels, masks and importance maps."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    importance: np.ndarray | None
    class_names: tuple[str, ...] = SHAPE_CLASSES
    seed: int = 0

    def __post_init__(self) -> None:
        _check_leading(
            type(self).__name__, len(self.images), labels=self.labels, masks=self.masks,
            importance=self.importance,
        )

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ShapesSet(_ObjectImages):
    """Output of :func:`make_shapes`.

    images: uint8 (n, H, W, 3) RGB; labels: int64 (n,) indices into ``class_names``;
    masks: bool (n, H, W), exactly the object's pixels; importance: float32 (n, H, W) in
    [0, 1] with maximum 1 per image, or None when not requested.
    """


@dataclass(frozen=True)
class PairsSet(_ObjectImages):
    """Output of :func:`make_pairs`.

    images: uint8 (n, H, W, 3) RGB; labels: int64 (n, 2), two distinct classes per image;
    masks: bool (n, 2, H, W), disjoint; importance: float32 (n, 2, H, W) or None.
    """


@dataclass(frozen=True)
class NoduleSet:
    """Output of :func:`make_nodules`.

    images: uint8 (n, H, W) grey (lung window; :meth:`rgb` gives (n, H, W, 3) copies);
    masks: bool (n, H, W) nodule body and spikes; importance: float32 (n, H, W) or None;
    biomarkers: float64 (n, 8), columns named by ``biomarker_names``; labels: int64 (n,)
    0 benign / 1 malignant; malignancy_score: float64 (n,) in (0, 1).
    """

    images: np.ndarray
    masks: np.ndarray
    importance: np.ndarray | None
    biomarkers: np.ndarray
    labels: np.ndarray
    malignancy_score: np.ndarray
    biomarker_names: tuple[str, ...] = LIDC_BIOMARKERS
    class_names: tuple[str, ...] = NODULE_CLASSES
    mm_per_pixel: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        _check_leading(
            "NoduleSet", len(self.images), masks=self.masks, importance=self.importance,
            biomarkers=self.biomarkers, labels=self.labels,
            malignancy_score=self.malignancy_score,
        )

    def __len__(self) -> int:
        return len(self.images)

    def rgb(self) -> np.ndarray:
        """Return a new uint8 (n, H, W, 3) array with the grey image in all three channels."""
        return np.repeat(self.images[..., None], 3, axis=-1)


# --------------------------------------------------------------------------- validation


def _check_size(size: object, minimum: int, why: str, other_fix: str = "") -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise InvalidParameterError(f"size must be an integer, got {size!r}.")
    if size < minimum:
        raise InvalidParameterError(
            f"size={size} is too small: {why}; pass size >= {minimum}{other_fix}."
        )
    return int(size)


def _check_range(name: str, value: object, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{name} must be a pair (low, high) of numbers, got {value!r}."
        ) from None
    if not (low <= lo <= hi <= high) or not math.isfinite(lo + hi):
        raise InvalidParameterError(
            f"{name}={value!r} is invalid: need {low} <= low <= high <= {high}."
        )
    return lo, hi


def _check_shape_geometry(
    scale_range: object, max_scale: float, size: object, min_size: int, also_needed: str = ""
) -> tuple[float, float, int]:
    """(low, high, size) for the shape generators, whose smallest radius must span 3 px."""
    lo, hi = _check_range("scale_range", scale_range, 0.0, max_scale)
    if lo <= 0:
        raise InvalidParameterError(f"scale_range={scale_range!r}: low must be > 0.")
    size = _check_size(size, max(min_size, math.ceil(3.0 / lo)),
                       f"the smallest shape (radius {lo} * size) must be >= 3 px wide{also_needed}")
    return lo, hi, size


def _check_sigma(sigma: object, size: int) -> float:
    if sigma is None:
        return size / 16.0
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise InvalidParameterError(
            f"importance_sigma must be a number > 0 (pixels) or None, got {sigma!r}."
        )
    return float(sigma)


# --------------------------------------------------------------------------- shapes

_SQRT_HALF = math.sqrt(0.5)


def _regular_star(points: int, inner: float) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Polygon vertices (x, y) in a unit frame, all within the unit circle.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * _SQRT_HALF,
    "triangle": np.array(
        [[math.cos(a), math.sin(a)] for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    ),
    "cross": np.array(
        [[0.3, 0.95], [0.3, 0.3], [0.95, 0.3], [0.95, -0.3], [0.3, -0.3], [0.3, -0.95],
         [-0.3, -0.95], [-0.3, -0.3], [-0.95, -0.3], [-0.95, 0.3], [-0.3, 0.3], [-0.3, 0.95]]
    ),
    "star": _regular_star(5, 0.42),
    "bar": np.array([[-0.95, -0.28], [0.95, -0.28], [0.95, 0.28], [-0.95, 0.28]]),
    "diamond": np.array([[-1.0, 0.0], [0.0, -0.55], [1.0, 0.0], [0.0, 0.55]]),
    "arrow": np.array(
        [[-0.97, -0.22], [0.1, -0.22], [0.1, -0.6], [0.97, 0.0], [0.1, 0.6], [0.1, 0.22],
         [-0.97, 0.22]]
    ),
}
_RING_INNER = 0.55  # hole radius / outer radius: the hole is >= 7 px across at 32 px
_CRESCENT_CUT = (0.5, 0.85)  # offset and radius of the disk cut out of the unit disk


def _shape_mask(name: str, size: int, cy: float, cx: float, r: float, theta: float) -> np.ndarray:
    """Rasterise one shape (pixel centres inside it) centred at (cy, cx), radius r, angle theta."""
    mask = np.zeros((size, size), bool)
    shape = (size, size)
    if name in ("disk", "ring", "crescent"):
        mask[draw.disk((cy, cx), r, shape=shape)] = True
        if name == "ring":
            mask[draw.disk((cy, cx), _RING_INNER * r, shape=shape)] = False
        elif name == "crescent":
            offset, radius = _CRESCENT_CUT
            cut = (cy + offset * r * math.sin(theta), cx + offset * r * math.cos(theta))
            mask[draw.disk(cut, radius * r, shape=shape)] = False
        return mask
    xy = _POLYGONS[name]
    cos, sin = math.cos(theta), math.sin(theta)
    x = r * (xy[:, 0] * cos - xy[:, 1] * sin) + cx
    y = r * (xy[:, 0] * sin + xy[:, 1] * cos) + cy
    mask[draw.polygon(y, x, shape=shape)] = True
    return mask


def _bilinear_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) matrix that linearly interpolates `knots` samples onto `size` pixels."""
    pos = (np.arange(size) + 0.5) / size * (knots - 1)
    left = np.minimum(np.floor(pos).astype(int), knots - 2)
    frac = pos - left
    out = np.zeros((size, knots))
    out[np.arange(size), left] = 1 - frac
    out[np.arange(size), left + 1] = frac
    return out


class _Canvas:
    """Per-size constants shared by every image of one call."""

    def __init__(self, size: int):
        self.size = size
        self.upsample = _bilinear_matrix(size, 4)
        grid = (np.arange(size) + 0.5) / size - 0.5
        self.yy, self.xx = np.meshgrid(grid, grid, indexing="ij")


def _textured_background(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """Dark textured RGB background, every value in [0, 0.5]."""
    base = rng.uniform(0.1, 0.35, 3)
    knots = rng.uniform(-1, 1, (4, 4, 3))
    # Per-channel M @ K @ M.T, as (3, size, size) then channels last.
    noise = (canvas.upsample @ knots.transpose(2, 0, 1) @ canvas.upsample.T).transpose(1, 2, 0)
    noise_amp = rng.uniform(0.02, 0.08)
    grad_angle, stripe_angle = rng.uniform(0, 2 * np.pi, 2)
    grad_colour = rng.uniform(-0.07, 0.07, 3)
    period_px = rng.uniform(4.0, 12.0)
    stripe_amp = rng.uniform(0.0, 0.07)
    phase = rng.uniform(0, 2 * np.pi)
    along_grad = canvas.xx * math.cos(grad_angle) + canvas.yy * math.sin(grad_angle)
    along_stripe = canvas.xx * math.cos(stripe_angle) + canvas.yy * math.sin(stripe_angle)
    stripes = np.sin(2 * np.pi * along_stripe * canvas.size / period_px + phase)
    image = (
        base
        + noise_amp * noise
        + along_grad[..., None] * grad_colour
        + (stripe_amp * stripes)[..., None]
    )
    return np.clip(image, 0.0, 0.5)


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    """Bright colour: all channels >= 0.55 and one >= 0.85, so it stands out on [0, 0.5]."""
    colour = rng.uniform(0.55, 1.0, 3)
    colour[rng.integers(3)] = rng.uniform(0.85, 1.0)
    return colour


def _finish(rng: np.random.Generator, image: np.ndarray, dark_objects: bool) -> np.ndarray:
    image = image + rng.uniform(-0.04, 0.04, image.shape)
    if dark_objects:
        image = 1.0 - image
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _render_shapes(
    rng: np.random.Generator, canvas: _Canvas, labels: np.ndarray, radii: np.ndarray,
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    size = canvas.size
    image = _textured_background(rng, canvas)
    dark_objects = bool(rng.integers(2))
    masks = np.zeros((len(labels), size, size), bool)
    for k, (label, r, (cy, cx)) in enumerate(zip(labels, radii, centres)):
        theta = rng.uniform(0, 2 * np.pi)
        masks[k] = _shape_mask(SHAPE_CLASSES[label], size, cy, cx, r, theta)
        image[masks[k]] = _object_colour(rng)
    return _finish(rng, image, dark_objects), masks


def importance_from_masks(masks: np.ndarray, sigma: float, *, chunk: int = 4096) -> np.ndarray:
    """Blur bool masks (..., H, W) with a Gaussian of `sigma` px; each map scaled to max 1.

    All-False masks give all-zero maps. Returns float32 of the same shape.
    """
    masks = np.asarray(masks, bool)
    if masks.ndim < 2:
        raise InvalidParameterError(f"masks must have shape (..., H, W), got {masks.shape}.")
    if not sigma > 0:
        raise InvalidParameterError(f"sigma must be > 0 pixels, got {sigma!r}.")
    flat = masks.reshape(-1, *masks.shape[-2:])
    out = np.empty(flat.shape, np.float32)
    for start in range(0, len(flat), chunk):  # chunks bound the float64 working memory
        block = ndimage.gaussian_filter(
            flat[start:start + chunk].astype(np.float64), sigma=(0, sigma, sigma),
            mode="constant",
        )
        peak = block.max(axis=(1, 2), keepdims=True)
        out[start:start + chunk] = np.divide(block, peak, out=np.zeros_like(block),
                                             where=peak > 0)
    return out.reshape(masks.shape)


def make_shapes(
    n: int,
    *,
    size: int = 32,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.22, 0.40),
    importance_sigma: float | None = None,
    with_importance: bool = True,
) -> ShapesSet:
    """Generate `n` images with one object of one of :data:`SHAPE_CLASSES` each.

    scale_range: radius of the shape's enclosing circle, as a fraction of `size`
    (at most 0.45; the smallest radius must be >= 3 px). importance_sigma: Gaussian
    blur in pixels for the importance map (default ``size / 16``). with_importance=False
    skips the importance maps (saves 4 bytes per pixel for large training sets).
    Rules: see the module docstring.
    """
    n = check_count("make_shapes", "n", n, " (the number of images)")
    seed = check_count("make_shapes", "seed", seed)
    lo, hi, size = _check_shape_geometry(scale_range, 0.45, size, 16)
    sigma = _check_sigma(importance_sigma, size)
    canvas = _Canvas(size)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    labels = np.empty(n, np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        labels[i] = rng.integers(len(SHAPE_CLASSES))
        r = rng.uniform(lo, hi) * size
        # Keep one pixel of background between the shape and the border.
        cy, cx = rng.uniform(r + 1, size - 1 - r, 2)
        images[i], mask = _render_shapes(rng, canvas, labels[i:i + 1], np.array([r]),
                                         np.array([[cy, cx]]))
        masks[i] = mask[0]
    importance = importance_from_masks(masks, sigma) if with_importance else None
    return ShapesSet(images, labels, masks, importance, SHAPE_CLASSES, seed)


_PAIR_GAP_PX = 2.0


def make_pairs(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.12, 0.20),
    importance_sigma: float | None = None,
    with_importance: bool = True,
) -> PairsSet:
    """Generate `n` images with two non-overlapping objects of two different classes each.

    scale_range: enclosing-circle radius as a fraction of `size` (at most 0.22 so that two
    objects always fit; the smallest radius must be >= 3 px). Other arguments as in
    :func:`make_shapes`. Rules: see the module docstring.
    """
    n = check_count("make_pairs", "n", n, " (the number of images)")
    seed = check_count("make_pairs", "seed", seed)
    lo, hi, size = _check_shape_geometry(scale_range, 0.22, size, 32, " and two shapes must fit side by side")
    sigma = _check_sigma(importance_sigma, size)
    canvas = _Canvas(size)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, 2, size, size), bool)
    labels = np.empty((n, 2), np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        labels[i] = rng.choice(len(SHAPE_CLASSES), 2, replace=False)
        radii = rng.uniform(lo, hi, 2) * size
        # Rejection sampling; radius <= 0.22 * size makes opposite corners always feasible,
        # so the loop ends quickly (a few tries on average).
        while True:
            centres = np.stack([rng.uniform(r + 1, size - 1 - r, 2) for r in radii])
            if np.hypot(*(centres[0] - centres[1])) >= radii.sum() + _PAIR_GAP_PX:
                break
        images[i], masks[i] = _render_shapes(rng, canvas, labels[i], radii, centres)
    importance = importance_from_masks(masks, sigma) if with_importance else None
    return PairsSet(images, labels, masks, importance, SHAPE_CLASSES, seed)


# --------------------------------------------------------------------------- nodules

_WINDOW_LOW_HU, _WINDOW_WIDTH_HU = -1350.0, 1500.0  # lung window: level -600, width 1500
_PARENCHYMA_HU = -850.0
_GROUND_GLASS_HU, _SOLID_HU, _CALCIUM_HU, _SPIKE_HU = -600.0, 20.0, 400.0, -300.0
_NOISE_HU = 20.0


def malignancy_score(biomarkers: np.ndarray) -> np.ndarray:
    """Malignancy probability ``sigmoid(z)`` from an (n, 8) table ordered as LIDC_BIOMARKERS.

    ``z = 0.7 + 2.0 ln(diameter / 10 mm) + 0.6 (spiculation - 3) + 0.5 (lobulation - 3)
    + 0.5 (3 - margin) - 2.0 [calcification != 6]`` (weights in MALIGNANCY_WEIGHTS).
    """
    table = np.asarray(biomarkers, np.float64)
    if table.ndim != 2 or table.shape[1] != len(LIDC_BIOMARKERS):
        raise InvalidParameterError(
            f"biomarkers must have shape (n, {len(LIDC_BIOMARKERS)}) ordered as "
            f"LIDC_BIOMARKERS, got {table.shape}."
        )
    col = {name: table[:, k] for k, name in enumerate(LIDC_BIOMARKERS)}
    if np.any(col["diameter"] <= 0):
        raise InvalidParameterError("diameter must be > 0 mm in every row.")
    w = MALIGNANCY_WEIGHTS
    z = (
        w["bias"]
        + w["log_diameter_over_10mm"] * np.log(col["diameter"] / 10.0)
        + w["spiculation_minus_3"] * (col["spiculation"] - 3)
        + w["lobulation_minus_3"] * (col["lobulation"] - 3)
        + w["3_minus_margin"] * (3 - col["margin"])
        + w["calcification_present"] * (col["calcification"] != CALCIFICATION_ABSENT)
    )
    return 1.0 / (1.0 + np.exp(-z))


def _draw_biomarkers(rng: np.random.Generator, diameter_mm: tuple[float, float]) -> np.ndarray:
    subtlety, sphericity, margin, lobulation, spiculation, texture = rng.integers(1, 6, 6)
    calcification = CALCIFICATION_ABSENT if rng.random() < 0.7 else rng.integers(1, 6)
    diameter = math.exp(rng.uniform(math.log(diameter_mm[0]), math.log(diameter_mm[1])))
    values = dict(subtlety=subtlety, calcification=calcification, sphericity=sphericity,
                  margin=margin, lobulation=lobulation, spiculation=spiculation,
                  texture=texture, diameter=diameter)
    return np.array([values[name] for name in LIDC_BIOMARKERS], np.float64)


def _lung_background(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    size = canvas.size
    knots = rng.uniform(-1, 1, (4, 4))
    hu = _PARENCHYMA_HU + 40.0 * (canvas.upsample @ knots @ canvas.upsample.T)
    vessels = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        # A short straight vessel segment through a random point, drawn as a thin polygon.
        angle = rng.uniform(0, np.pi)
        (py, px), half_len = rng.uniform(0, size, 2), rng.uniform(0.1, 0.35) * size
        half_width = rng.uniform(0.4, 1.0)
        dy, dx = math.sin(angle), math.cos(angle)
        along = np.array([-half_len, half_len, half_len, -half_len])
        across = np.array([-1, -1, 1, 1]) * half_width
        rows, cols = draw.polygon(py + along * dy + across * dx, px + along * dx - across * dy,
                                  shape=(size, size))
        vessels[rows, cols] = np.maximum(vessels[rows, cols],
                                         rng.uniform(-700, -450) - _PARENCHYMA_HU)
    return hu + ndimage.gaussian_filter(vessels, 0.8)


def _calcified_region(rng: np.random.Generator, kind: int, body: np.ndarray, rho: np.ndarray,
                      centre: tuple[float, float], minor_px: float) -> np.ndarray:
    size = body.shape[0]
    region = np.zeros_like(body)
    cy, cx = centre

    def blob(distance_frac: float, radius_px: float) -> None:
        angle = rng.uniform(0, 2 * np.pi)
        at = (cy + distance_frac * minor_px * math.sin(angle),
              cx + distance_frac * minor_px * math.cos(angle))
        region[draw.disk(at, max(1.0, radius_px), shape=(size, size))] = True

    if kind == 1:  # popcorn
        for _ in range(rng.integers(3, 6)):
            blob(rng.uniform(0.0, 0.6), 0.2 * minor_px)
    elif kind == 2:  # laminated
        region |= (rho >= 0.35) & (rho <= 0.5)
    elif kind == 3:  # solid
        region |= rho <= 0.85
    elif kind == 4:  # non-central
        blob(0.5, 0.3 * minor_px)
    elif kind == 5:  # central
        region |= rho <= 0.35
    region &= body
    if not region.any():  # tiny nodules: keep at least the centre pixel calcified
        region[int(cy), int(cx)] = True
    return region


def _render_nodule(rng: np.random.Generator, canvas: _Canvas, markers: np.ndarray,
                   mm_per_pixel: float) -> tuple[np.ndarray, np.ndarray]:
    m = dict(zip(LIDC_BIOMARKERS, markers))
    size = canvas.size
    background = _lung_background(rng, canvas)

    major = m["diameter"] / mm_per_pixel / 2
    minor = max(1.0, major * (0.35 + 0.1625 * (m["sphericity"] - 1)))
    orientation, lobe_phase = rng.uniform(0, 2 * np.pi, 2)
    lobes = rng.integers(3, 6)
    jitter = rng.uniform(-0.05, 0.05, 2) * size
    # Pixel-centred so the centre pixel is always inside the nodule.
    cy, cx = np.floor(size / 2 + jitter) + 0.5

    def boundary_radius(phi: np.ndarray) -> np.ndarray:
        u = phi - orientation
        ellipse = major * minor / np.hypot(minor * np.cos(u), major * np.sin(u))
        return ellipse * (1 + 0.06 * (m["lobulation"] - 1) * np.cos(lobes * (phi - lobe_phase)))

    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    phi = np.arctan2(ys - cy, xs - cx)
    rho = np.hypot(ys - cy, xs - cx) / boundary_radius(phi)  # 1 on the nodule boundary
    body = rho <= 1.0

    spikes = np.zeros_like(body)
    for angle in rng.uniform(0, 2 * np.pi, int(2 * (m["spiculation"] - 1))):
        start = 0.85 * float(boundary_radius(np.array(angle)))
        end = start / 0.85 + (0.25 + 0.1 * (m["spiculation"] - 1)) * major + 2.0
        # A thin quad tapering from 1 px to 0.3 px half-width, so it stays connected.
        along = np.array([start, end, end, start])
        across = np.array([-1.0, -0.3, 0.3, 1.0])
        sy = cy + along * math.sin(angle) + across * math.cos(angle)
        sx = cx + along * math.cos(angle) - across * math.sin(angle)
        spikes[draw.polygon(sy, sx, shape=(size, size))] = True
    spikes &= ~body

    contrast = 0.3 + 0.175 * (m["subtlety"] - 1)
    solid_core = rho <= (m["texture"] - 1) / 4
    target = np.where(solid_core, _SOLID_HU, _GROUND_GLASS_HU)
    if m["calcification"] != CALCIFICATION_ABSENT:
        calcified = _calcified_region(rng, int(m["calcification"]), body, rho, (cy, cx), minor)
        target = np.where(calcified, _CALCIUM_HU, target)
    ramp_px = 1.0 + (5 - m["margin"]) / 4 * min(6.0, 0.8 * minor)
    opacity = np.clip(ndimage.distance_transform_edt(body) / ramp_px, 0.0, 1.0)
    # Spikes are fibrous strands: soft-tissue partial volume, solid in solid nodules.
    opacity = np.where(spikes, 0.8, opacity)
    target = np.where(spikes, _SOLID_HU if m["texture"] == 5 else _SPIKE_HU, target)

    hu = background + contrast * opacity * (target - _PARENCHYMA_HU)
    # Noise is added to every pixel; pixels outside the mask equal the nodule-free image.
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 0.7)
    hu = hu + _NOISE_HU * noise / noise.std()
    grey = (hu - _WINDOW_LOW_HU) / _WINDOW_WIDTH_HU * 255
    return np.round(np.clip(grey, 0, 255)).astype(np.uint8), body | spikes


def make_nodules(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    mm_per_pixel: float = 0.8,
    diameter_mm: tuple[float, float] = (3.0, 30.0),
    label_rule: Literal["threshold", "bernoulli"] = "threshold",
    importance_sigma: float | None = None,
    with_importance: bool = True,
) -> NoduleSet:
    """Generate `n` CT-like lung-nodule crops driven by the LIDC biomarkers.

    mm_per_pixel: in-plane pixel spacing (LIDC scans: about 0.5-1 mm). diameter_mm:
    range of the log-uniform diameter draw; the largest nodule body must fit in the crop
    (diameter_mm[1] / mm_per_pixel <= 0.85 * size). label_rule: "threshold" (label =
    score >= 0.5) or "bernoulli" (label ~ Bernoulli(score)). Rules: see the module docstring.
    """
    n = check_count("make_nodules", "n", n, " (the number of images)")
    seed = check_count("make_nodules", "seed", seed)
    if isinstance(mm_per_pixel, bool) or not isinstance(mm_per_pixel, numbers.Real) \
            or not 0 < mm_per_pixel < math.inf:
        raise InvalidParameterError(
            f"mm_per_pixel must be a number > 0, got {mm_per_pixel!r}; LIDC uses about 0.5-1."
        )
    d_lo, d_hi = _check_range("diameter_mm", diameter_mm, 1.0, 100.0)
    if label_rule not in ("threshold", "bernoulli"):
        raise InvalidParameterError(
            f"label_rule must be 'threshold' or 'bernoulli', got {label_rule!r}."
        )
    largest_px = d_hi / mm_per_pixel
    size = _check_size(size, max(24, math.ceil(largest_px / 0.85)),
                       f"a {d_hi} mm nodule at {mm_per_pixel} mm/px is {largest_px:.1f} px "
                       "wide and must fill at most 85 % of the crop",
                       ", lower diameter_mm[1] or raise mm_per_pixel")
    sigma = _check_sigma(importance_sigma, size)
    canvas = _Canvas(size)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    biomarkers = np.empty((n, len(LIDC_BIOMARKERS)), np.float64)
    label_draws = np.empty(n)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        biomarkers[i] = _draw_biomarkers(rng, (d_lo, d_hi))
        label_draws[i] = rng.random()  # drawn under both rules so images do not depend on it
        images[i], masks[i] = _render_nodule(rng, canvas, biomarkers[i], float(mm_per_pixel))
    score = malignancy_score(biomarkers)
    labels = (score >= 0.5) if label_rule == "threshold" else (label_draws < score)
    importance = importance_from_masks(masks, sigma) if with_importance else None
    return NoduleSet(images, masks, importance, biomarkers, labels.astype(np.int64), score,
                     LIDC_BIOMARKERS, NODULE_CLASSES, float(mm_per_pixel), seed)
