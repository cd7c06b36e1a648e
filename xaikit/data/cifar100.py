"""CIFAR-100 loader: the official binary archive (``cifar-100-binary.tar.gz``).

The archive holds ``cifar-100-binary/{train,test}.bin`` (records of 1 coarse label byte,
1 fine label byte and 3072 pixel bytes, parsed with numpy by the reader CIFAR-10 uses) and
``fine_label_names.txt`` / ``coarse_label_names.txt`` (the class names in label order).
It is downloaded once through the ``cifar100`` manifest (checked against the published md5)
and extracted into ``<cache>/cifar100/extracted/``. Nothing is unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from xaikit.data.cifar10 import ImageSplit, _extract_once, parse_cifar_records
from xaikit.data.manifests import CACHE_DIR_ENV, cache_dir, cached_path, fetch, load_manifest
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError

__all__ = ["CIFAR100_SPLITS", "Cifar100Split", "load_cifar100", "read_cifar100_binary"]

CIFAR100_SPLITS: tuple[str, ...] = ("train", "test")
NUM_FINE_CLASSES = 100
NUM_COARSE_CLASSES = 20

_BINARY_FOLDER = "cifar-100-binary"
_BINARY_FILES = {"train": "train.bin", "test": "test.bin"}
_OFFICIAL_RECORDS = {"train": 50_000, "test": 10_000}
_NAME_FILES = {"fine": "fine_label_names.txt", "coarse": "coarse_label_names.txt"}


@dataclass(frozen=True, eq=False)
class Cifar100Split(ImageSplit):
    """A CIFAR-100 split: ``labels`` are the fine labels (``class_names`` the 100 fine names);
    ``coarse_labels`` int64 ``(N,)`` index ``coarse_class_names`` (the 20 superclasses).

    ``subset`` and ``take`` (stratified over the fine labels) keep the coarse labels.
    """

    coarse_labels: np.ndarray
    coarse_class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coarse_labels.dtype != np.int64 or self.coarse_labels.shape != (len(self.images),):
            raise InvalidParameterError(
                f"Cifar100Split.coarse_labels must be int64 of shape ({len(self.images)},), got "
                f"{self.coarse_labels.dtype} {self.coarse_labels.shape}."
            )
        if len(self.coarse_labels) and (
            self.coarse_labels.min() < 0 or self.coarse_labels.max() >= len(self.coarse_class_names)
        ):
            raise InvalidParameterError(
                f"Cifar100Split.coarse_labels must lie in 0..{len(self.coarse_class_names) - 1} (one per coarse name)."
            )

    def subset(self, indices: Sequence[int] | np.ndarray) -> Cifar100Split:
        """The images at ``indices``, in that order, with their fine and coarse labels."""
        fine = super().subset(indices)
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Cifar100Split(
            fine.images, fine.labels, fine.class_names, fine.source, self.coarse_labels[index], self.coarse_class_names
        )


def _check_split(split: str) -> None:
    if split not in CIFAR100_SPLITS:
        raise InvalidParameterError(f"Unknown CIFAR-100 split {split!r}; valid splits: {', '.join(CIFAR100_SPLITS)}.")


def read_cifar100_binary(folder_or_archive: str | os.PathLike, split: str) -> Cifar100Split:
    """Read a split of the official CIFAR-100 *binary* version.

    ``folder_or_archive`` is ``cifar-100-binary.tar.gz`` (extracted into the cache once), the
    folder it was extracted to, or ``cifar-100-binary`` itself. Files may hold fewer records
    than the official 50,000 / 10,000, but only whole ones.
    """
    _check_split(split)
    path = Path(folder_or_archive)
    if path.is_file():
        path = _extract_once(path, cache_dir() / "cifar100")
    folder = _find_binary_folder(path, split)
    fine_names = _read_names(folder, "fine", NUM_FINE_CLASSES)
    coarse_names = _read_names(folder, "coarse", NUM_COARSE_CLASSES)
    images, labels = parse_cifar_records(
        folder / _BINARY_FILES[split],
        label_classes=(NUM_COARSE_CLASSES, NUM_FINE_CLASSES),  # the coarse byte comes first
        max_records=_OFFICIAL_RECORDS[split],
        dataset="CIFAR-100",
        archive="cifar-100-binary.tar.gz",
    )
    return Cifar100Split(
        images=images,
        labels=labels[:, 1],
        class_names=fine_names,
        source=f"CIFAR-100 {split} split, official binary version ({folder})",
        coarse_labels=labels[:, 0],
        coarse_class_names=coarse_names,
    )


def _find_binary_folder(path: Path, split: str) -> Path:
    for candidate in (path / _BINARY_FOLDER, path):
        if (candidate / _BINARY_FILES[split]).is_file():
            return candidate
    raise DataUnavailableError(
        f"No CIFAR-100 binary {split} file ({_BINARY_FILES[split]}) in {path} or {path / _BINARY_FOLDER}. "
        f"Pass cifar-100-binary.tar.gz or the folder it extracts to."
    )


def _read_names(folder: Path, kind: str, expected: int) -> tuple[str, ...]:
    file = folder / _NAME_FILES[kind]
    if not file.is_file():
        raise DataIntegrityError(
            f"CIFAR-100 binary folder {folder} lacks {file.name}: the archive is incomplete. "
            f"Delete the folder and the archive, and download cifar-100-binary.tar.gz again."
        )
    names = tuple(line.strip() for line in file.read_text(encoding="ascii", errors="replace").splitlines() if line.strip())
    if len(names) != expected or len(set(names)) != expected:
        raise DataIntegrityError(
            f"{file} lists {len(names)} class names ({len(set(names))} distinct), not the {expected} {kind} classes "
            f"of CIFAR-100: it is not CIFAR-100 data (CIFAR-10 has its own loader). Use cifar-100-binary.tar.gz."
        )
    return names


def load_cifar100(split: str = "test", *, root: str | os.PathLike | None = None, download: bool = True) -> Cifar100Split:
    """Load a CIFAR-100 split as uint8 HWC RGB images, fine labels and coarse labels.

    ``root`` is ``cifar-100-binary.tar.gz`` or the folder it extracts to; without it the
    official archive is downloaded once via the ``cifar100`` manifest (md5-checked). With
    ``download=False`` only an already cached archive is used.
    """
    _check_split(split)
    if root is not None:
        return read_cifar100_binary(root, split)
    return read_cifar100_binary(_binary_archive(download), split)


def _binary_archive(download: bool) -> Path:
    manifest = load_manifest("cifar100")
    destination = cached_path(manifest)

    def refuse_download(url: str, output_file: object, pooch_instance: object) -> None:
        stale = (
            f" The file at {destination} has the wrong md5 (corrupted or another version); replace it."
            if destination.is_file()
            else ""
        )
        raise DataUnavailableError(
            f"CIFAR-100 is not available locally and download=False.{stale} Download {manifest.url} "
            f"({manifest.describe_file()}) and place it at {destination} (or set {CACHE_DIR_ENV} to a folder "
            f"containing cifar100/{manifest.filename}), pass root=, or call load_cifar100(..., download=True)."
        )

    return fetch(manifest, downloader=None if download else refuse_download)
