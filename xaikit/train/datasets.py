"""Training data: `DATASETS` (data name -> loader of a split) and `load_data` / `load_validation` for a recipe.

CIFAR-10/100, the synthetic shapes and nodules come as uint8 arrays; ImageNet (`ImageFiles`, read on demand as
`LazyImages`) and the LIDC crops (`NoduleCrops`) bring their own augmentation (``augmented``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataIntegrityError, DataUnavailableError, InvalidParameterError
from .recipes import TrainConfig


def _sample(data, split: str, n: int, seed: int = 0):
    """A class-balanced, seeded sample of `n` images of `data` (0: all of them)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidParameterError(f"the number of {split} images must be a whole number >= 0 (0: all), got {n!r}")
    if n == 0 or n == len(data.labels):
        return data
    if n > len(data.labels):
        raise InvalidParameterError(
            f"asked for {n} {split} images, but the {split} split has only {len(data.labels)}; ask for fewer (0: all)"
        )
    return data.take(n, seed=seed)


def _cifar10(split: str, n_train: int = 0, n_test: int = 0, **kwargs):
    from ..data.cifar10 import load_cifar10

    return _sample(load_cifar10(split, **kwargs), split, n_train if split == "train" else n_test)


def _cifar100(split: str, n_train: int = 0, n_test: int = 0, **kwargs):
    from ..data.cifar100 import load_cifar100

    return _sample(load_cifar100(split, **kwargs), split, n_train if split == "train" else n_test)


def _shapes(split: str, n_train: int = 30000, n_test: int = 2000, size: int = 32):
    from ..data.synthetic import make_shapes

    # Train and held-out sets come from different seeds, so no image is shared.
    if split == "train":
        return make_shapes(n_train, size=size, seed=0, with_importance=False)
    return make_shapes(n_test, size=size, seed=1, with_importance=False)


def _pairs(split: str, n_train: int = 16000, n_test: int = 2000, size: int = 32):
    from types import SimpleNamespace

    from ..data.synthetic import make_pairs

    # As for shapes: training seed 0, held-out seed 1; labels (N, 2): the two classes of each image.
    seed = 0 if split == "train" else 1
    pairs = make_pairs(n_train if split == "train" else n_test, size=size, seed=seed, with_importance=False)
    return SimpleNamespace(images=pairs.images, labels=pairs.labels, target_names=pairs.class_names,
                           source=f"synthetic pairs (xaikit.data.synthetic.make_pairs, seed {seed}, {size} x {size})")


def _nodules(split: str, n_train: int = 20000, n_test: int = 2000, size: int = 64, target: str = "malignancy"):
    from types import SimpleNamespace

    from ..data.synthetic import make_nodules

    if target not in ("malignancy", "biomarkers"):
        raise InvalidParameterError(f"nodules: target must be 'malignancy' or 'biomarkers', got {target!r}")
    # As for shapes: training seed 0, held-out seed 1 (load_examples("nodules") draws from seed 1).
    seed = 0 if split == "train" else 1
    nodules = make_nodules(n_train if split == "train" else n_test, size=size, seed=seed, with_importance=False)
    labels = nodules.labels if target == "malignancy" else nodules.biomarkers
    names = nodules.class_names if target == "malignancy" else nodules.biomarker_names
    return SimpleNamespace(images=nodules.rgb(), labels=labels, target_names=names,
                           source=f"synthetic nodules (xaikit.data.synthetic.make_nodules, seed {seed}, "
                                  f"{size} x {size} grey repeated to RGB)")


IMAGENET_TRAIN_ENV = "XAIKIT_IMAGENET_TRAIN"
LIDC_CROPS_ENV = "XAIKIT_LIDC_CROPS"
#: The reference's LIDC split (CDAM, reference-spec §2.10): 15 % test, then 15 % of the rest for validation,
#: each stratified by class: 0.7225 / 0.1275 / 0.15.
LIDC_SPLIT = {"train": 0.7225, "val": 0.1275, "test": 0.15}


class LazyImages:
    """An image set read from files on demand, indexed like an (N, H, W, 3) uint8 array.

    ``images[3]``, ``images[2:5]`` or ``images[index_array]`` read, transform and stack those
    images (in a pool of `workers` threads; PIL decodes outside the GIL); ``len`` and
    ``shape`` need no reading. `load(i)` returns image i as uint8 (H, W, 3) of the fixed `side`.
    """

    def __init__(self, count: int, side: int, load: Callable[[int], np.ndarray], workers: int = 0):
        self._count, self._side, self._load = count, side, load
        self.workers = workers or min(8, os.cpu_count() or 1)

    def __len__(self) -> int:
        return self._count

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self._count, self._side, self._side, 3)

    def map(self, function: Callable, items) -> np.ndarray:
        items = list(items)
        if self.workers > 1 and len(items) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers) as pool:
                arrays = list(pool.map(function, items))
        else:
            arrays = [function(item) for item in items]
        return np.stack(arrays) if arrays else np.zeros((0, self._side, self._side, 3), np.uint8)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.map(self._load, [range(self._count)[key]])[0]
        positions = range(self._count)[key] if isinstance(key, slice) else np.asarray(key).reshape(-1).tolist()
        return self.map(self._load, positions)


def random_resized_crop(image, side: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop(side)`` (bilinear) on a PIL image, drawing from numpy `rng`.

    The same rule: up to 10 tries of an area share in `scale` and a log-uniform aspect ratio in
    `ratio` that fit the image, else the centre crop of the ratio clamped to `ratio`.
    """
    from PIL import Image

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return image.resize((side, side), Image.BILINEAR, box=(left, top, left + w, top + h))


def resize_centre_crop(image, side: int):
    """torchvision's ``Resize(round(side / 0.875), bicubic)`` then ``CenterCrop(side)`` (256 then 224) on a PIL image."""
    from PIL import Image

    short = int(round(side / 0.875))
    width, height = image.size
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    image = image.resize(new, Image.BICUBIC)
    top, left = int(round((new[1] - side) / 2.0)), int(round((new[0] - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def _read_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataIntegrityError(f"cannot read {path} ({type(err).__name__}: {err}): replace or remove it") from err


class ImageFiles:
    """Labelled image files for training (`augmented`: random resized crop and flip) and testing (`images`)."""

    def __init__(self, paths: list[Path], labels, side: int, source: str, workers: int = 0):
        self.paths, self.labels, self.side, self.source = list(paths), np.asarray(labels, np.int64), side, source
        self.images = LazyImages(len(self.paths), side, self._test_image, workers)

    def _test_image(self, position: int) -> np.ndarray:
        return np.asarray(resize_centre_crop(_read_rgb(self.paths[position]), self.side), np.uint8)

    def augmented(self, positions, rng: np.random.Generator) -> np.ndarray:
        """Training images: ``RandomResizedCrop(side)`` and ``RandomHorizontalFlip()``, seeded by `rng`."""
        seeds = rng.integers(0, 2**63, size=len(positions))

        def one(item):
            position, seed = item
            draw = np.random.default_rng(int(seed))
            image = np.asarray(random_resized_crop(_read_rgb(self.paths[position]), self.side, draw), np.uint8)
            return image[:, ::-1] if draw.random() < 0.5 else image

        return self.images.map(one, zip(np.asarray(positions).tolist(), seeds.tolist()))


def _imagenet(split: str, train_root: str | None = None, val_root: str | None = None, img_size: int = 224,
              n_train: int = 0, n_test: int = 0, workers: int = 0):
    """ImageNet: training images from an ImageFolder tree, validation (= val and test) from `xaikit.data.imagenet`.

    train_root: ``<root>/<synset>/<image>`` (torchvision ImageFolder layout; the sorted folder names are
    the class indices, which for the 1,000 synset folders is the standard 0..999 order), default
    ``$XAIKIT_IMAGENET_TRAIN``. val_root: the validation folder of `xaikit.data.imagenet.check_imagenet_val`
    (default ``$XAIKIT_IMAGENET_VAL``). n_train / n_test: seeded samples (0: all).
    """
    from ..data.imagenet import check_imagenet_val

    if split == "train":
        root = train_root or os.environ.get(IMAGENET_TRAIN_ENV)
        if not root or not Path(root).expanduser().is_dir():
            raise DataUnavailableError(
                f"no ImageNet training folder at {root or '(none given)'}: pass data_kwargs train_root or set "
                f"{IMAGENET_TRAIN_ENV} to the ILSVRC2012 train folder in ImageFolder layout (<root>/<synset>/*.JPEG)"
            )
        root = Path(root).expanduser()
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths, labels = [], []
        for index, name in enumerate(classes):
            files = sorted(f for f in (root / name).iterdir()
                           if f.suffix.lower() in (".jpeg", ".jpg", ".png") and not f.name.startswith("."))
            paths += files
            labels += [index] * len(files)
        source = f"ImageNet training images, ImageFolder {root} ({len(classes)} classes)"
        n = n_train
    else:
        index = check_imagenet_val(val_root)
        paths = [index.root / "images" / name for name in index.files]
        labels = [index.labels_by_file[name] for name in index.files]
        source = f"ImageNet validation images {index.root}"
        n = n_test
    if n and n < len(paths):
        keep = np.sort(np.random.default_rng(0).choice(len(paths), n, replace=False))
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return ImageFiles(paths, labels, img_size, source, workers)


def stratified_split(labels, seed: int = 0, test: float = LIDC_SPLIT["test"], val_of_rest: float = 0.15) -> dict:
    """Indices of a stratified train/val/test split: `test` of each class, then `val_of_rest` of the remainder.

    The reference's two stratified ``train_test_split``s (0.15, then 0.15 of the rest) give
    0.7225 / 0.1275 / 0.15 (`LIDC_SPLIT`). Counts per class are rounded; seeded, sorted indices.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_test = int(round(test * len(members)))
        n_val = int(round(val_of_rest * (len(members) - n_test)))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


class NoduleCrops:
    """LIDC crops of one split: `images` the centre axial slices, `augmented` one random view per nodule.

    Grey values are ``lidc.slices`` ([0, 1] from HU clamped to [-1000, 400]) quantised to uint8 and
    repeated over 3 channels, the form every xaikit training set has.
    """

    def __init__(self, cubes: np.ndarray, labels, source: str, target_names=None):
        from ..data import lidc

        self.cubes, self.labels, self.source = cubes, labels, source
        if target_names is not None:
            self.target_names = tuple(target_names)
        self.images = np.stack([self._rgb(lidc.slices(cube, "centre")[0]) for cube in cubes]) if len(cubes) else \
            np.zeros((0, cubes.shape[1], cubes.shape[1], 3), np.uint8)

    @staticmethod
    def _rgb(grey: np.ndarray) -> np.ndarray:
        return np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, axis=-1)

    def augmented(self, positions, rng: np.random.Generator) -> np.ndarray:
        """Training images: a random slice (14..18 of 32) of a random view, as the reference trains."""
        from ..data import lidc

        return np.stack([self._rgb(lidc.slices(self.cubes[i], "random", rng)[rng.integers(3)])
                         for i in np.asarray(positions).tolist()])


def _lidc(split: str, crops: str | None = None, target: str = "malignancy", seed: int = 0):
    """The LIDC cohort's crops (`xaikit.data.lidc.write_cohort_crops`), split stratified by malignancy (`LIDC_SPLIT`).

    crops: the ``.npz`` (default ``$XAIKIT_LIDC_CROPS``), read with `read_cohort_crops` against
    `select_cohort()`. target "malignancy" (0 benign, 1 malignant) or "biomarkers" (the annotators'
    means, columns in the order of `xaikit.data.synthetic.LIDC_BIOMARKERS`). The split is the same
    for both targets (stratified by malignancy, `seed`).
    """
    from ..data import lidc
    from ..data.synthetic import LIDC_BIOMARKERS

    if target not in ("malignancy", "biomarkers"):
        raise InvalidParameterError(f"lidc: target must be 'malignancy' or 'biomarkers', got {target!r}")
    if split not in LIDC_SPLIT:
        raise InvalidParameterError(f"lidc: split must be one of {', '.join(LIDC_SPLIT)}, got {split!r}")
    path = crops or os.environ.get(LIDC_CROPS_ENV)
    if not path:
        raise DataUnavailableError(
            f"no LIDC crops file given: pass data_kwargs crops=PATH or set {LIDC_CROPS_ENV} to the .npz that "
            "xaikit.data.lidc.write_cohort_crops(PATH) writes from the TCIA DICOMs"
        )
    cubes, rows = lidc.read_cohort_crops(Path(path).expanduser())
    malignant = (rows["label"].to_numpy() == "malignant").astype(np.int64)
    chosen = stratified_split(malignant, seed)[split]
    if target == "malignancy":
        labels, names = malignant[chosen], ("benign", "malignant")
    else:
        missing = [name for name in LIDC_BIOMARKERS if name not in rows.columns]
        if missing:
            raise DataIntegrityError(f"the LIDC cohort lacks biomarker column(s) {missing}; rebuild it with select_cohort()")
        labels, names = rows[list(LIDC_BIOMARKERS)].to_numpy(np.float64)[chosen], LIDC_BIOMARKERS
    return NoduleCrops(cubes[chosen], labels, f"LIDC-IDRI crops {path}, {split} split (seed {seed}) of {len(rows)}", names)


#: data name -> function(split, **data_kwargs) returning an object with .images (N,H,W,3) uint8 and .labels
#: ((N,) class indices; for regression recipes an (N, K) table, named by an optional .target_names)
#: A set may instead give .images as a `LazyImages` and train on .augmented(positions, rng) (uint8 batches at the
#: model's size; the set owns its augmentation). Recipes with keep="best-val-loss" also read the split "val".
DATASETS: dict[str, Callable] = {"cifar10": _cifar10, "cifar100": _cifar100, "shapes": _shapes, "pairs": _pairs, "nodules": _nodules,
                                 "imagenet": _imagenet, "lidc": _lidc}


def load_data(config: TrainConfig):
    """The recipe's (training, test) sets; an empty one is refused (InvalidParameterError).

    Missing data raises the loader's DataUnavailableError (what to download, where to put
    it), so calling this first checks a recipe's data before a long run.
    """
    if config.data not in DATASETS:
        raise InvalidParameterError(f"recipe {config.name!r}: unknown data {config.data!r}; known: {', '.join(DATASETS)}")
    train_set = DATASETS[config.data]("train", **config.data_kwargs)
    test_set = DATASETS[config.data]("test", **config.data_kwargs)
    for split, data in (("training", train_set), ("test", test_set)):
        if len(data.labels) == 0:
            raise InvalidParameterError(
                f"recipe {config.name!r}: the {split} set of {config.data!r} with {config.data_kwargs} is empty, "
                "so no step would be trained or measured; give it images"
            )
    return train_set, test_set


def load_validation(config: TrainConfig):
    """The data's "val" split for recipes with ``keep="best-val-loss"`` (else None); an empty one is refused."""
    if config.keep != "best-val-loss":
        return None
    val_set = DATASETS[config.data]("val", **config.data_kwargs)
    if len(val_set.labels) == 0:
        raise InvalidParameterError(f"recipe {config.name!r}: the validation set of {config.data!r} is empty; "
                                    "keep='best-val-loss' needs validation images")
    return val_set
