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
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import DataIntegrityError, DataUnavailableError, InvalidParameterError
from ._checks import check_count

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
    "ImageSelection",
    "sample_imagenet_val",
    "sample_x_val",
    "same_object_by_name",
    "select_x_multi",
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
    """The first `n` validation images (sorted by file name; ``None``: all) under `root`, as RGB PIL images.

    The folder is checked first (:func:`check_imagenet_val`). With ``labels="real"`` the ReaL
    label sets are returned too, and images whose ReaL list is empty are skipped.
    """
    if n is not None:
        n = check_count("load_imagenet_val", "n", n, " (the number of images) or None (all of them)")
    _check_labels_kind(labels)
    index = check_imagenet_val(root)
    files, real_sets = _candidates(index, labels)
    return _load(index, files[:n], real_sets[:n] if real_sets is not None else None)


def _sample_positions(count: int, n: int, seed: int) -> np.ndarray:
    """`n` of `count` positions, drawn with numpy.random.default_rng(seed) without replacement, sorted."""
    return np.sort(np.random.default_rng(int(seed)).choice(count, size=int(n), replace=False))


def sample_imagenet_val(
    n: int, seed: int = 0, *, root: str | os.PathLike | None = None, labels: str = "original"
) -> LabelledImages:
    """A seeded random sample of `n` validation images (without replacement), in file order.

    The sample is drawn with ``numpy.random.default_rng(seed)`` from the sorted image files
    present (with ``labels="real"``, from those with a non-empty ReaL list), so the same folder,
    `n` and `seed` always give the same images. This is X_val of the CDAM chapter, loaded
    (:func:`sample_x_val` gives the same images by path).
    """
    for name, value in (("n", n), ("seed", seed)):
        check_count("sample_imagenet_val", name, value)
    selection = sample_x_val(n, seed, root=root, labels=labels)
    return _load(check_imagenet_val(selection.root), selection.files, selection.real_labels)


# -- the CDAM chapter's image sets ------------------------------------------------------------


@dataclass(frozen=True)
class ImageSelection:
    """Validation images chosen by a rule, by path (nothing loaded; see `load_images`).

    ``files`` and ``paths`` (sorted by file name), ``labels`` (the original ILSVRC2012 label of
    each), ``class_names`` (standard order), ``real_labels`` (the ReaL label sets, where the rule
    used them). For X_multi also ``classes`` (c, the class to explain and whose logit is read) and
    ``other_classes`` (c', another object of the image).
    """

    root: Path
    files: list[str]
    paths: list[Path]
    labels: list[int]
    class_names: tuple[str, ...]
    real_labels: list[tuple[int, ...]] | None = None
    classes: list[int] | None = None
    other_classes: list[int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def load_images(self) -> list:
        """The images as RGB PIL images, in order (clear error for an unreadable file)."""
        return _load(check_imagenet_val(self.root), self.files, self.real_labels).images


def _selection(index: ImageNetValFolder, files: list[str], **fields) -> ImageSelection:
    """An `ImageSelection` of `files` (in order) of the checked folder `index`."""
    return ImageSelection(
        root=index.root, files=files, paths=[index.root / "images" / name for name in files],
        labels=[index.labels_by_file[name] for name in files], class_names=index.class_names, **fields,
    )


def sample_x_val(
    n: int = 1000, seed: int = 0, *, root: str | os.PathLike | None = None, labels: str = "original"
) -> ImageSelection:
    """X_val of the CDAM paper: a seeded random sample of `n` validation images, by path.

    Defaults: ``n=1000`` (the paper) and ``seed=0`` (the paper's seed is unknown). The draw is
    ``numpy.random.default_rng(seed).choice`` over the sorted image files present (with
    ``labels="real"``, those with a non-empty ReaL list), without replacement, returned in file
    order: the images of ``sample_imagenet_val(n, seed)``. The paper explains and reads the class
    the model predicts on these images, so no class is chosen here.
    """
    _check_labels_kind(labels)
    for name, value in (("n", n), ("seed", seed)):
        check_count("sample_x_val", name, value)
    index = check_imagenet_val(root)
    files, real_sets = _candidates(index, labels)
    if n > len(files):
        raise InvalidParameterError(
            f"cannot sample {n} images: {index.root / 'images'} holds {len(files)} eligible images"
            + (" (with a non-empty ReaL label list)" if labels == "real" else "")
            + ". Ask for fewer, or point to the full validation set."
        )
    chosen = _sample_positions(len(files), n, seed)
    return _selection(
        index, [files[i] for i in chosen],
        real_labels=[real_sets[i] for i in chosen] if real_sets is not None else None,
    )


def _plural_to_singular(word: str) -> str:
    """English plural to singular, enough for class names: glasses -> glass, boxes -> box, shades -> shade."""
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@functools.cache
def _class_head_words() -> tuple[frozenset[str], ...]:
    """Per class of the standard order, the last word of each of its WordNet lemmas, singular and lower-case."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    heads = []
    for index in range(info.num_classes()):
        lemmas = [lemma.strip() for lemma in info.index_to_description(index).split(",") if lemma.strip()]
        heads.append(frozenset(_plural_to_singular(re.split(r"[\s\-]+", lemma.lower())[-1]) for lemma in lemmas))
    return tuple(heads)


def same_object_by_name(c: int, other: int) -> bool:
    """Whether ImageNet classes `c` and `other` name the same kind of object: the default X_multi filter.

    True when a lemma (WordNet name) of one class and a lemma of the other end in the same word,
    compared singular and lower-case: notebook computer / laptop computer, sunglass / sunglasses,
    maillot / maillot, missile / projectile, missile, tabby cat / tiger cat, golden retriever /
    Labrador retriever, Windsor tie / bow tie. The lemmas are timm's copy of ImageNet's WordNet
    names (``timm.data.ImageNetInfo``, offline).

    Why this rule: the paper drops pairs whose class *names* mean the same object (cosine similarity
    of OpenAI text embeddings above an unstated threshold, not reproducible offline), and no WordNet
    hierarchy is available offline here (nltk's corpus needs a download; timm ships the ImageNet
    synsets' lemmas and glosses, not their hypernyms), so the names are compared directly. Known
    misses: siblings with unrelated names (Shetland sheepdog / collie, beagle / English foxhound,
    monitor / screen). Known over-matches: generic last words (CD player / ballplayer, baseball
    player; sandbar / space bar). A hierarchy-based rule can be passed to `select_x_multi` as
    ``same_object``.
    """
    heads = _class_head_words()
    for value in (c, other):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < len(heads):
            raise InvalidParameterError(f"same_object_by_name takes ImageNet class indices 0..{len(heads) - 1}; got {value!r}")
    return c == other or bool(heads[c] & heads[other])


def _pick_pair(original: int, real_set: tuple[int, ...], same_object) -> tuple[int, int] | None:
    """(c, c') of one image, or None when every other ReaL label names the same object as c."""
    c = original if original in real_set else real_set[0]
    for other in real_set:
        if other != c and not same_object(c, other):
            return c, other
    return None


def select_x_multi(
    n: int | None = 1000,
    seed: int = 0,
    *,
    root: str | os.PathLike | None = None,
    same_object: Callable[[int, int], bool] | None = None,
) -> ImageSelection:
    """X_multi of the CDAM paper: validation images with two objects, and the two classes (c, c').

    Rule, per image present in the folder (sorted by file name):

    1. its ReaL label set (timm's copy of real.json) has at least two labels;
    2. c = the original ILSVRC2012 label (``val.txt``) when it is among the ReaL labels (the object
       the image was collected for), else the first ReaL label;
    3. c' = the first other ReaL label (in real.json's order) that does not name the same object as
       c, by ``same_object(c, c')`` (default `same_object_by_name`; see there why and its known
       misses); images without such a label are dropped.

    Then `n` of the eligible images are drawn with ``numpy.random.default_rng(seed)`` without
    replacement and returned in file order (``n=None``: all of them). Defaults: ``n=1000`` (the
    paper), ``seed=0`` (unknown in the paper). Which pair the paper used for images with more than
    two labels is unknown; the rule above is ours. Returns an `ImageSelection` with ``classes``
    (c) and ``other_classes`` (c').
    """
    if n is not None:
        check_count("select_x_multi", "n", n)
    check_count("select_x_multi", "seed", seed)
    if same_object is None:
        same_object = same_object_by_name
    elif not callable(same_object):
        raise InvalidParameterError(
            f"same_object must be a callable (c, c') -> bool, or None for same_object_by_name; got {same_object!r}"
        )
    index = check_imagenet_val(root)
    files, real_sets = _candidates(index, "real")
    eligible = []
    for position, (name, real_set) in enumerate(zip(files, real_sets)):
        if len(real_set) >= 2:
            pair = _pick_pair(index.labels_by_file[name], real_set, same_object)
            if pair is not None:
                eligible.append((position, pair))
    if n is None:
        n = len(eligible)
    if n > len(eligible):
        raise InvalidParameterError(
            f"cannot select {n} images: {index.root / 'images'} holds {len(eligible)} images with two ReaL labels that "
            "name different objects. Ask for fewer, or point to the full validation set."
        )
    chosen = [eligible[i] for i in _sample_positions(len(eligible), n, seed)]
    return _selection(
        index, [files[position] for position, _ in chosen],
        real_labels=[real_sets[position] for position, _ in chosen],
        classes=[pair[0] for _, pair in chosen],
        other_classes=[pair[1] for _, pair in chosen],
    )
