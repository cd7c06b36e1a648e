"""ImageNet validation images from a local folder (ImageNet cannot be redistributed).

Layout (that of ``ILSVRC2012_img_val`` plus the usual label files):
``<root>/images/ILSVRC2012_val_XXXXXXXX.JPEG``, ``<root>/val.txt`` (``<file> <class index>``
for the validation images) and ``<root>/synset_words.txt`` (``<wnid> <names>`` in the
standard 0..999 class order, the order of timm's ImageNet models). ``root`` defaults to
``$XAIKIT_IMAGENET_VAL``, else the offline sample beside the repository. How to obtain the
images is in ``data_manifests/imagenet-val.json`` (registration required, so no download).

The folder is checked before use (:func:`check_imagenet_val`): every line of ``val.txt`` is a
file and a class index in range, and every image in ``images/`` is named in ``val.txt``. A
``val.txt`` naming the official files (``ILSVRC2012_val_XXXXXXXX.JPEG``) claims to label the full
validation set, so it must then list all 50,000 of them with indices 0..999, and
``synset_words.txt`` must name the 1,000 classes. ``images/`` may hold any subset.

Labels: ``"original"`` (the one ILSVRC2012 label of ``val.txt``) or ``"real"``: the ReaL
multi-label re-annotation (Beyer et al., 2020, "Are we done with ImageNet?") from the copy
inside timm (``timm/data/_info/imagenet_real_labels.json``: 50,000 label lists in validation-file
order). 3,163 images have an empty ReaL list (no valid label); with ``labels="real"`` they are
skipped, as timm's ReaL accuracy skips them.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataIntegrityError, DataUnavailableError, InvalidParameterError

__all__ = [
    "IMAGENET_VAL_ENV",
    "IMAGENET_VAL_SIZE",
    "LABEL_KINDS",
    "ImageNetValFolder",
    "LabelledImages",
    "check_imagenet_val",
    "imagenet_val_root",
    "load_imagenet_val",
    "load_real_labels",
    "sample_imagenet_val",
]

IMAGENET_VAL_ENV = "XAIKIT_IMAGENET_VAL"
IMAGENET_VAL_SIZE = 50_000
NUM_CLASSES = 1000
LABEL_KINDS = ("original", "real")
_SHARED_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-val-sample"
_OFFICIAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class LabelledImages:
    """PIL images with their class index, file name, and the data set's class names.

    ``labels`` are the original ILSVRC2012 labels; ``real_labels`` (with ``labels="real"``)
    the ReaL label sets of the same images, each a non-empty tuple of class indices.
    """

    images: list
    labels: list[int]
    files: list[str]
    class_names: tuple[str, ...]
    real_labels: list[tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageNetValFolder:
    """A checked validation folder: its root, the labels of ``val.txt``, the class names,
    the image files present (sorted), and whether ``val.txt`` labels the full validation set."""

    root: Path
    labels_by_file: dict[str, int]
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    full: bool


def _manifest_hint() -> str:
    """How to obtain the validation images, from data_manifests/imagenet-val.json when readable."""
    try:
        from .manifests import load_manifest

        manifest = load_manifest("imagenet-val")
        return f"{manifest.obtain} ({manifest.filename}: {manifest.describe_file()})."
    except Exception:  # the hint must never hide the real error
        return (
            "ImageNet is not redistributable: download ILSVRC2012_img_val.tar after registering at "
            "https://image-net.org, extract it into <root>/images/, add val.txt (<file> <class index>) and "
            f"synset_words.txt (standard class order), and set {IMAGENET_VAL_ENV}=<root>."
        )


def imagenet_val_root(root: str | os.PathLike | None = None) -> Path:
    """The validation folder: `root`, else ``$XAIKIT_IMAGENET_VAL``, else the offline sample."""
    candidates = [Path(root)] if root else [Path(os.environ[IMAGENET_VAL_ENV])] if IMAGENET_VAL_ENV in os.environ else [_SHARED_SAMPLE]
    for folder in candidates:
        if (folder / "images").is_dir() and (folder / "val.txt").is_file() and (folder / "synset_words.txt").is_file():
            return folder
    raise DataUnavailableError(
        f"no ImageNet validation images found at {', '.join(map(str, candidates))} (expected images/, val.txt and "
        f"synset_words.txt there). {_manifest_hint()}"
    )


def _read_val_txt(path: Path) -> dict[str, int]:
    stat = path.stat()
    return dict(_parse_val_txt(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _parse_val_txt(file: str, size: int, mtime_ns: int) -> dict[str, int]:
    """Memoised per (path, size, mtime): a 50,000-line val.txt is parsed once per process."""
    path = Path(file)
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataIntegrityError(
                f"{path} line {number} is {line.strip()!r}, not '<file> <class index>'. Fix or replace val.txt."
            )
        file, label = parts[0], int(parts[1])
        if label >= NUM_CLASSES:
            raise DataIntegrityError(
                f"{path} line {number} gives {file} the class index {label}, outside 0..{NUM_CLASSES - 1}. "
                f"val.txt must use the standard 0..999 class order; fix or replace it."
            )
        if file in labels:
            raise DataIntegrityError(f"{path} names {file} twice (line {number}). Fix or replace val.txt.")
        labels[file] = label
    return labels


def _read_class_names(path: Path) -> tuple[str, ...]:
    names = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2:
            raise DataIntegrityError(f"{path} line {number} is {line.strip()!r}, not '<wnid> <names>'. Fix or replace it.")
        names.append(parts[1].split(",")[0].strip())
    return tuple(names)


@functools.cache
def _official_names() -> frozenset[str]:
    return frozenset(f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, IMAGENET_VAL_SIZE + 1))


def check_imagenet_val(root: str | os.PathLike | None = None) -> ImageNetValFolder:
    """Check the validation folder (see the module docstring) and return what it holds.

    Raises :class:`DataIntegrityError` naming the first problem: a malformed or out-of-range
    line of ``val.txt``, an official-looking ``val.txt`` that does not list exactly the 50,000
    validation files, a ``synset_words.txt`` with too few classes, or an image not named in ``val.txt``.
    """
    folder = imagenet_val_root(root)
    labels_by_file = _read_val_txt(folder / "val.txt")
    class_names = _read_class_names(folder / "synset_words.txt")
    full = any(_OFFICIAL_NAME.fullmatch(name) for name in labels_by_file)
    if full:
        expected = _official_names()
        if len(labels_by_file) != IMAGENET_VAL_SIZE or set(labels_by_file) != expected:
            missing = sorted(expected - set(labels_by_file))
            extra = sorted(set(labels_by_file) - expected)
            raise DataIntegrityError(
                f"{folder / 'val.txt'} names official validation files but lists {len(labels_by_file)} files, not the "
                f"{IMAGENET_VAL_SIZE} of the ILSVRC2012 validation set"
                + (f"; {len(missing)} missing (first {missing[0]})" if missing else "")
                + (f"; {len(extra)} unexpected (first {extra[0]})" if extra else "")
                + ". Use the complete val.txt (one '<file> <class index>' line per validation image)."
            )
        if len(class_names) != NUM_CLASSES:
            raise DataIntegrityError(
                f"{folder / 'synset_words.txt'} names {len(class_names)} classes, not the {NUM_CLASSES} of ImageNet. "
                f"Use the complete synset_words.txt (standard class order)."
            )
    elif labels_by_file and max(labels_by_file.values()) >= len(class_names):
        raise DataIntegrityError(
            f"{folder / 'val.txt'} uses class index {max(labels_by_file.values())} but {folder / 'synset_words.txt'} "
            f"names only {len(class_names)} classes. Use the complete synset_words.txt."
        )
    files = sorted(
        p.name
        for p in (folder / "images").iterdir()
        if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    unnamed = [name for name in files if name not in labels_by_file]
    if unnamed:
        raise DataIntegrityError(
            f"{len(unnamed)} image(s) in {folder / 'images'} are not named in val.txt (first: {unnamed[0]}), so their "
            f"labels are unknown. Remove them, or use the val.txt that belongs to these images."
        )
    return ImageNetValFolder(folder, labels_by_file, class_names, tuple(files), full)


def load_real_labels(path: str | os.PathLike | None = None) -> list[list[int]]:
    """The ReaL label lists of the 50,000 validation images, in validation-file order.

    Default: the copy inside timm (``timm/data/_info/imagenet_real_labels.json``); `path`
    reads another copy of ``real.json`` (github.com/google-research/reassessed-imagenet).
    List ``i`` belongs to ``ILSVRC2012_val_{i+1:08d}.JPEG``; empty lists mean no valid label.
    """
    return [list(labels) for labels in _real_label_table(path)]


def _real_label_table(path: str | os.PathLike | None = None) -> tuple[tuple[int, ...], ...]:
    if path is None:
        import timm

        path = Path(timm.__file__).resolve().parent / "data" / "_info" / "imagenet_real_labels.json"
        if not path.is_file():
            raise DataUnavailableError(
                f"This timm installation has no ReaL labels at {path}. Install timm>=0.9, or download real.json from "
                f"https://github.com/google-research/reassessed-imagenet and pass its path."
            )
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise DataUnavailableError(f"No ReaL labels at {path} ({err}); check the path.") from err
    return _parse_real_labels(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parse_real_labels(file: str, size: int, mtime_ns: int) -> tuple[tuple[int, ...], ...]:
    """Read and check real.json once per process (per path, size and mtime)."""
    path = Path(file)
    try:
        lists = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataIntegrityError(f"Cannot read the ReaL labels {path} ({type(err).__name__}: {err}); replace the file.") from err
    valid = (
        isinstance(lists, list)
        and len(lists) == IMAGENET_VAL_SIZE
        and all(
            isinstance(labels, list)
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES for c in labels)
            for labels in lists
        )
    )
    if not valid:
        raise DataIntegrityError(
            f"{path} is not ReaL's real.json: expected a list of {IMAGENET_VAL_SIZE} lists of class indices "
            f"0..{NUM_CLASSES - 1}. Replace the file."
        )
    return tuple(tuple(labels) for labels in lists)


def _real_labels_of(files: list[str], real: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    sets = []
    for name in files:
        match = _OFFICIAL_NAME.fullmatch(name)
        if match is None:
            raise DataIntegrityError(
                f"ReaL labels are indexed by the official validation file names (ILSVRC2012_val_XXXXXXXX.JPEG), "
                f"but the folder holds {name}. Keep the official names to use labels='real'."
            )
        sets.append(tuple(real[int(match.group(1)) - 1]))
    return sets


def _check_labels_kind(labels: str) -> None:
    if labels not in LABEL_KINDS:
        raise InvalidParameterError(f"labels must be one of {', '.join(map(repr, LABEL_KINDS))}, got {labels!r}")


def _candidates(index: ImageNetValFolder, labels: str) -> tuple[list[str], list[tuple[int, ...]] | None]:
    """The files eligible for `labels` (with labels='real', those with a non-empty ReaL list)."""
    files = list(index.files)
    if labels == "original":
        return files, None
    real_sets = _real_labels_of(files, _real_label_table())
    keep = [i for i, label_set in enumerate(real_sets) if label_set]
    return [files[i] for i in keep], [real_sets[i] for i in keep]


def _load(index: ImageNetValFolder, files: list[str], real_sets: list[tuple[int, ...]] | None) -> LabelledImages:
    images = []
    for name in files:
        try:
            with Image.open(index.root / "images" / name) as image:
                images.append(image.convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataIntegrityError(
                f"Cannot read {index.root / 'images' / name} ({type(err).__name__}: {err}): it is truncated or "
                f"corrupt. Replace it from ILSVRC2012_img_val.tar."
            ) from err
    return LabelledImages(images, [index.labels_by_file[f] for f in files], files, index.class_names, real_sets)


def load_imagenet_val(
    n: int | None = None, *, root: str | os.PathLike | None = None, labels: str = "original"
) -> LabelledImages:
    """The first `n` validation images (sorted by file name) under `root`, as RGB PIL images.

    The folder is checked first (:func:`check_imagenet_val`). With ``labels="real"`` the ReaL
    label sets are returned too, and images whose ReaL list is empty are skipped.
    """
    _check_labels_kind(labels)
    index = check_imagenet_val(root)
    files, real_sets = _candidates(index, labels)
    return _load(index, files[:n], real_sets[:n] if real_sets is not None else None)


def sample_imagenet_val(
    n: int, seed: int = 0, *, root: str | os.PathLike | None = None, labels: str = "original"
) -> LabelledImages:
    """A seeded random sample of `n` validation images (without replacement), in file order.

    The sample is drawn with ``numpy.random.default_rng(seed)`` from the sorted image files
    present (with ``labels="real"``, from those with a non-empty ReaL list), so the same folder,
    `n` and `seed` always give the same images. This is X_val of the CDAM chapter.
    """
    _check_labels_kind(labels)
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidParameterError(f"sample_imagenet_val needs {name} to be a non-negative int; got {value!r}")
    index = check_imagenet_val(root)
    files, real_sets = _candidates(index, labels)
    if n > len(files):
        raise InvalidParameterError(
            f"cannot sample {n} images: {index.root / 'images'} holds {len(files)} eligible images"
            + (" (with a non-empty ReaL label list)" if labels == "real" else "")
            + ". Ask for fewer, or point to the full validation set."
        )
    chosen = np.sort(np.random.default_rng(int(seed)).choice(len(files), size=int(n), replace=False))
    return _load(
        index,
        [files[i] for i in chosen],
        [real_sets[i] for i in chosen] if real_sets is not None else None,
    )
