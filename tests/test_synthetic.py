"""Tests for xaikit.data.synthetic: determinism, ground truth, rules and argument checks."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import hog

from xaikit.data.synthetic import (
    LIDC_BIOMARKERS,
    SHAPE_CLASSES,
    importance_from_masks,
    make_nodules,
    make_pairs,
    make_shapes,
    malignancy_score,
)
from xaikit.errors import InvalidParameterError

GENERATORS = [make_shapes, make_pairs, make_nodules]
ARRAY_FIELDS = ("images", "labels", "masks", "importance")


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(300, seed=5)


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(150, seed=5)


@pytest.fixture(scope="module")
def nodules():
    return make_nodules(400, seed=5)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", GENERATORS)
def test_same_seed_gives_identical_bytes(make):
    a, b = make(6, seed=3), make(6, seed=3)
    for field in ARRAY_FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field


@pytest.mark.parametrize("make", GENERATORS)
def test_image_i_does_not_depend_on_n(make):
    small, large = make(3, seed=7), make(8, seed=7)
    for field in ARRAY_FIELDS:
        assert np.array_equal(getattr(small, field), getattr(large, field)[:3]), field


@pytest.mark.parametrize("make", GENERATORS)
def test_different_seeds_give_different_images(make):
    a, b = make(4, seed=0), make(4, seed=1)
    for i in range(4):
        assert not np.array_equal(a.images[i], b.images[i])
    assert not np.array_equal(a.images[0], a.images[1])


# --------------------------------------------------------------------------- shapes


def test_shapes_arrays_have_documented_shapes_and_dtypes(shapes):
    n = len(shapes)
    assert n == 300
    assert shapes.images.shape == (n, 32, 32, 3) and shapes.images.dtype == np.uint8
    assert shapes.labels.shape == (n,) and shapes.labels.dtype == np.int64
    assert shapes.masks.shape == (n, 32, 32) and shapes.masks.dtype == bool
    assert shapes.importance.shape == (n, 32, 32) and shapes.importance.dtype == np.float32
    assert shapes.class_names == SHAPE_CLASSES and len(set(SHAPE_CLASSES)) == 10
    assert make_shapes(0).images.shape == (0, 32, 32, 3)
    assert make_shapes(2, size=48).images.shape == (2, 48, 48, 3)
    assert make_shapes(3, with_importance=False).importance is None


def _object_separated(image: np.ndarray, mask: np.ndarray) -> bool:
    """Object pixels are all brighter (brightest channel) or all darker (darkest channel)."""
    brightest, darkest = image.max(-1).astype(int), image.min(-1).astype(int)
    inside, outside = mask, ~mask
    bright = brightest[inside].min() > brightest[outside].max()
    dark = darkest[inside].max() < darkest[outside].min()
    return bool(bright or dark)


def test_shape_mask_is_exactly_the_object(shapes):
    for image, mask in zip(shapes.images, shapes.masks):
        assert mask.sum() >= 9
        # A mask pixel too many or too few would break the separation.
        assert _object_separated(image, mask)
        # One pixel of background is kept around every object.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_separation_check_catches_a_wrong_mask(shapes):
    image, mask = shapes.images[0], shapes.masks[0]
    grown = ndimage.binary_dilation(mask)
    shrunk = ndimage.binary_erosion(mask)
    assert not _object_separated(image, grown)
    assert not _object_separated(image, shrunk)


def _peak_near_mask(importance: np.ndarray, mask: np.ndarray, sigma: float) -> bool:
    """The blurred map peaks on the mask or, for rings and crescents, within sigma of it."""
    distance = ndimage.distance_transform_edt(~mask)
    return bool(distance[np.unravel_index(importance.argmax(), importance.shape)] <= sigma)


def test_importance_is_blurred_mask_peaking_inside(shapes):
    sigma = 32 / 16
    for mask, importance in zip(shapes.masks, shapes.importance):
        assert importance.min() >= 0 and importance.max() == pytest.approx(1.0)
        assert _peak_near_mask(importance, mask, sigma)
        assert importance[mask].mean() > 0.5
        far = ndimage.distance_transform_edt(~mask) > 4 * sigma
        assert importance[far].max(initial=0) < 0.01
    assert np.allclose(shapes.importance, importance_from_masks(shapes.masks, sigma))


def test_importance_of_empty_mask_is_zero():
    out = importance_from_masks(np.zeros((2, 8, 8), bool), 1.0)
    assert out.dtype == np.float32 and not out.any()


def test_all_shape_classes_appear_balanced():
    labels = make_shapes(2000, seed=1, with_importance=False).labels
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10
    assert counts.min() >= 150 and counts.max() <= 250  # expected 200, sd about 13


def _ridge_accuracy(features: np.ndarray, labels: np.ndarray, n_train: int) -> float:
    """Train a one-vs-all ridge classifier on the first n_train rows, test on the rest."""
    mean, std = features[:n_train].mean(0), features[:n_train].std(0) + 1e-6
    x = np.c_[(features - mean) / std, np.ones(len(features))]
    targets = np.eye(10)[labels[:n_train]]
    gram = x[:n_train].T @ x[:n_train] + 10.0 * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[:n_train].T @ targets)
    return float(((x[n_train:] @ weights).argmax(1) == labels[n_train:]).mean())


def test_shapes_are_learnable_but_not_from_object_colour():
    data = make_shapes(3000, seed=11, with_importance=False)
    grey = data.images.mean(-1)
    hog_features = np.stack([hog(g, orientations=9, pixels_per_cell=(8, 8),
                                 cells_per_block=(2, 2)) for g in grey])
    assert _ridge_accuracy(hog_features, data.labels, 2200) > 0.3  # chance is 0.1
    colours = np.stack([img[m].mean(0) for img, m in zip(data.images, data.masks)])
    assert _ridge_accuracy(colours, data.labels, 2200) < 0.16


# --------------------------------------------------------------------------- pairs


def test_pairs_have_two_distinct_disjoint_objects(pairs):
    n = len(pairs)
    assert pairs.images.shape == (n, 64, 64, 3) and pairs.images.dtype == np.uint8
    assert pairs.labels.shape == (n, 2) and pairs.labels.dtype == np.int64
    assert pairs.masks.shape == (n, 2, 64, 64) and pairs.masks.dtype == bool
    assert pairs.importance.shape == (n, 2, 64, 64) and pairs.importance.dtype == np.float32
    assert np.all(pairs.labels[:, 0] != pairs.labels[:, 1])
    for image, masks, importance in zip(pairs.images, pairs.masks, pairs.importance):
        assert masks[0].sum() >= 9 and masks[1].sum() >= 9
        # At least 2 px apart, so even the dilated masks do not meet.
        assert not (ndimage.binary_dilation(masks[0]) & masks[1]).any()
        assert _object_separated(image, masks[0] | masks[1])
        for mask, imp in zip(masks, importance):
            assert imp.max() == pytest.approx(1.0) and imp[mask].mean() > 0.4
            assert _peak_near_mask(imp, mask, sigma=64 / 16)


def test_pairs_use_all_classes():
    labels = make_pairs(500, seed=2, with_importance=False).labels
    counts = np.bincount(labels.ravel(), minlength=10)
    assert len(counts) == 10 and counts.min() >= 70 and counts.max() <= 130  # expected 100


# --------------------------------------------------------------------------- nodules


def test_nodule_arrays_have_documented_shapes_and_dtypes(nodules):
    n = len(nodules)
    assert nodules.images.shape == (n, 64, 64) and nodules.images.dtype == np.uint8
    assert nodules.masks.shape == (n, 64, 64) and nodules.masks.dtype == bool
    assert nodules.importance.shape == (n, 64, 64)
    assert nodules.biomarkers.shape == (n, 8) and nodules.biomarkers.dtype == np.float64
    assert nodules.labels.shape == (n,) and nodules.labels.dtype == np.int64
    assert nodules.malignancy_score.shape == (n,)
    assert nodules.biomarker_names == LIDC_BIOMARKERS
    assert LIDC_BIOMARKERS == ("subtlety", "calcification", "sphericity", "margin",
                               "lobulation", "spiculation", "texture", "diameter")
    rgb = nodules.rgb()
    assert rgb.shape == (n, 64, 64, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], nodules.images) for c in range(3))


def test_nodule_biomarkers_lie_in_lidc_ranges(nodules):
    table = dict(zip(LIDC_BIOMARKERS, nodules.biomarkers.T))
    for name in ("subtlety", "sphericity", "margin", "lobulation", "spiculation", "texture"):
        assert set(np.unique(table[name])) == {1, 2, 3, 4, 5}, name
    assert set(np.unique(table["calcification"])) == {1, 2, 3, 4, 5, 6}
    assert 0.6 < np.mean(table["calcification"] == 6) < 0.8
    assert table["diameter"].min() >= 3 and table["diameter"].max() <= 30
    assert np.median(table["diameter"]) == pytest.approx(math.sqrt(3 * 30), rel=0.15)


def test_malignancy_follows_the_documented_rule(nodules):
    d = dict(zip(LIDC_BIOMARKERS, nodules.biomarkers.T))
    z = (0.7 + 2.0 * np.log(d["diameter"] / 10) + 0.6 * (d["spiculation"] - 3)
         + 0.5 * (d["lobulation"] - 3) + 0.5 * (3 - d["margin"])
         - 2.0 * (d["calcification"] != 6))
    expected = 1 / (1 + np.exp(-z))
    assert np.allclose(nodules.malignancy_score, expected)
    assert np.allclose(malignancy_score(nodules.biomarkers), expected)
    assert np.array_equal(nodules.labels, (expected >= 0.5).astype(np.int64))
    assert 0.35 < nodules.labels.mean() < 0.65


def test_bernoulli_labels_change_labels_but_not_images():
    threshold = make_nodules(300, seed=9)
    bernoulli = make_nodules(300, seed=9, label_rule="bernoulli")
    assert np.array_equal(threshold.images, bernoulli.images)
    assert np.array_equal(threshold.malignancy_score, bernoulli.malignancy_score)
    assert not np.array_equal(threshold.labels, bernoulli.labels)
    score = bernoulli.malignancy_score
    assert score[bernoulli.labels == 1].mean() > score[bernoulli.labels == 0].mean() + 0.2


def test_nodule_look_follows_biomarkers(nodules):
    d = dict(zip(LIDC_BIOMARKERS, nodules.biomarkers.T))
    area = nodules.masks.sum(axis=(1, 2))
    assert area.min() >= 1
    assert np.corrcoef(np.log(d["diameter"]), np.log(area))[0, 1] > 0.85
    images = nodules.images.astype(float)
    inside = np.array([img[m].mean() for img, m in zip(images, nodules.masks)])
    outside = np.array([img[~m].mean() for img, m in zip(images, nodules.masks)])
    assert np.mean(inside > outside) > 0.95
    # Denser texture and more obvious subtlety both raise the nodule's brightness.
    excess = inside - outside
    assert np.corrcoef(d["texture"], excess)[0, 1] > 0.3
    assert np.corrcoef(d["subtlety"], excess)[0, 1] > 0.3
    # Spikes are thin, so they add mostly boundary pixels: perimeter / sqrt(area) grows.
    perimeter = area - ndimage.binary_erosion(nodules.masks, np.ones((1, 3, 3))).sum(axis=(1, 2))
    assert np.corrcoef(d["spiculation"], perimeter / np.sqrt(area))[0, 1] > 0.5


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (make_shapes, dict(n=-1)),
        (make_shapes, dict(n=2.5)),
        (make_shapes, dict(n=True)),
        (make_shapes, dict(n=2, seed=-1)),
        (make_shapes, dict(n=2, seed=1.5)),
        (make_shapes, dict(n=2, size=8)),
        (make_shapes, dict(n=2, size=32.0)),
        (make_shapes, dict(n=2, scale_range=(0.3, 0.2))),
        (make_shapes, dict(n=2, scale_range=(0.0, 0.2))),
        (make_shapes, dict(n=2, scale_range=(0.2, 0.6))),
        (make_shapes, dict(n=2, scale_range=0.3)),
        (make_shapes, dict(n=2, importance_sigma=0)),
        (make_pairs, dict(n=2, size=24)),
        (make_pairs, dict(n=2, scale_range=(0.2, 0.3))),
        (make_nodules, dict(n=2, size=32)),
        (make_nodules, dict(n=2, mm_per_pixel=0)),
        (make_nodules, dict(n=2, diameter_mm=(10, 5))),
        (make_nodules, dict(n=2, label_rule="coin")),
    ],
)
def test_bad_arguments_raise_invalid_parameter_error(make, kwargs):
    with pytest.raises(InvalidParameterError):
        make(**kwargs)


def test_malignancy_score_checks_table_shape():
    with pytest.raises(InvalidParameterError, match="LIDC_BIOMARKERS"):
        malignancy_score(np.ones((3, 7)))
