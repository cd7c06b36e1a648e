"""CIFAR-10 loaders: the official binary archive and the offline JPEG-folder copy.

Downloaded data is never unpickled: the official *binary* version is parsed with
numpy, the JPEG copy is decoded with Pillow. Decoded JPEG splits are cached as
uncompressed ``.npz`` files (read with ``allow_pickle=False``) under
``<cache>/cifar10/``, keyed by the archive's sha256.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from xaikit.data.manifests import (
    CACHE_DIR_ENV,
    cache_dir,
    cached_path,
    fetch,
    load_manifest,
    safe_extract,
    sha256_of,
)
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError
from xaikit.fileio import atomic_write, make_temp_dir

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_SPLITS",
    "ImageSplit",
    "load_cifar10",
    "read_cifar10_binary",
    "read_cifar10_jpeg",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_SPLITS: tuple[str, ...] = ("train", "test")
JPEG_FOLDER_ENV = "XAIKIT_CIFAR10_JPEG"

_IMAGE_SIDE = 32
_PIXEL_BYTES = 3 * _IMAGE_SIDE * _IMAGE_SIDE
_RECORDS_PER_FILE = 10_000
_BINARY_FOLDER = "cifar-10-batches-bin"
_BINARY_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The offline JPEG copy sits beside the repository: <parent of repo>/shared/data/cifar10-jpeg.
_SHARED_JPEG_FOLDER = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg"


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is elementwise
class ImageSplit:
    """Images with integer labels.

    ``images`` is uint8 ``(N, H, W, 3)`` RGB, ``labels`` int64 ``(N,)`` indexing ``class_names``;
    ``source`` says where the data came from.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise InvalidParameterError(
                f"ImageSplit.images must be a uint8 (N, H, W, 3) RGB array, got {self.images.dtype} "
                f"{self.images.shape}."
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise InvalidParameterError(
                f"ImageSplit.labels must be int64 of shape ({len(self.images)},), got {self.labels.dtype} "
                f"{self.labels.shape}."
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise InvalidParameterError(
                f"ImageSplit.labels must lie in 0..{len(self.class_names) - 1} (one per class name)."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSplit:
        """The images at ``indices``, in that order."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise InvalidParameterError(f"subset indices must lie in 0..{len(self) - 1}.")
        return ImageSplit(self.images[index], self.labels[index], self.class_names, self.source)

    def take(self, n: int, *, seed: int = 0, stratified: bool = True) -> ImageSplit:
        """A deterministic random sample of ``n`` images, kept in dataset order.

        With ``stratified=True`` classes are as balanced as the data allow
        (``n // num_classes`` each, the remainder going to the lowest labels).
        """
        if not isinstance(n, (int, np.integer)) or not 0 <= n <= len(self):
            raise InvalidParameterError(f"take(n) needs 0 <= n <= {len(self)}, got {n!r}.")
        rng = np.random.default_rng(seed)
        if not stratified:
            return self.subset(np.sort(rng.permutation(len(self))[:n]))
        # Rank each image within its class in random order; taking the lowest (rank, label)
        # pairs first gives every class one image before any class gets a second.
        rank_in_class = np.empty(len(self), dtype=np.int64)
        for label in np.unique(self.labels):
            members = np.flatnonzero(self.labels == label)
            rank_in_class[rng.permutation(members)] = np.arange(len(members))
        order = np.lexsort((self.labels, rank_in_class))
        return self.subset(np.sort(order[:n]))


# ----------------------------------------------------------------------------- helpers


def _check_split(split: str) -> None:
    if split not in CIFAR10_SPLITS:
        raise InvalidParameterError(f"Unknown CIFAR-10 split {split!r}; valid splits: {', '.join(CIFAR10_SPLITS)}.")


def _cifar_cache() -> Path:
    return cache_dir() / "cifar10"


@functools.lru_cache(maxsize=32)
def _hash_prefix(resolved: str, size: int, mtime_ns: int) -> str:
    return sha256_of(resolved)[:16]


def _archive_key(archive: Path) -> str:
    """Short content hash of an archive; memoised per (path, size, mtime) to hash big files once."""
    stat = archive.stat()
    return _hash_prefix(str(archive.resolve()), stat.st_size, stat.st_mtime_ns)


def _extract_once(archive: Path, cache: Path | None = None) -> Path:
    """Extract ``archive`` into ``<cache>/extracted`` (default: CIFAR-10's cache) unless an earlier call
    already did; return the folder."""
    final = (cache if cache is not None else _cifar_cache()) / "extracted" / f"{archive.name}-{_archive_key(archive)}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Extract beside the final folder and rename at the end, so an interrupted extraction
    # is never mistaken for a complete one.
    partial = make_temp_dir(final.parent, prefix=f".{archive.name}-")  # umask permissions, not mkdtemp's 0o700
    try:
        safe_extract(archive, partial)
        try:
            partial.rename(final)
        except OSError:
            if not final.is_dir():  # not merely another process finishing first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- binary format


def read_cifar10_binary(folder_or_archive: str | os.PathLike, split: str) -> ImageSplit:
    """Read a split of the official CIFAR-10 *binary* version.

    ``folder_or_archive`` is ``cifar-10-binary.tar.gz`` (extracted into the cache once),
    the folder it was extracted to, or ``cifar-10-batches-bin`` itself. Each record is 1 label byte plus 3072 pixel
    bytes (red, green, blue 32x32 planes); files may hold fewer than the official
    10,000 records, but only whole ones.
    """
    _check_split(split)
    path = Path(folder_or_archive)
    if path.is_file():
        path = _extract_once(path)
    batches = _find_binary_batches(path, split)
    _check_binary_class_names(batches)

    images, labels = [], []
    for filename in _BINARY_FILES[split]:
        file_images, file_labels = _parse_binary_batch(batches / filename)
        images.append(file_images)
        labels.append(file_labels)
    return ImageSplit(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=CIFAR10_CLASSES,
        source=f"CIFAR-10 {split} split, official binary version ({batches})",
    )


def _find_binary_batches(path: Path, split: str) -> Path:
    for candidate in (path / _BINARY_FOLDER, path):
        if candidate.is_dir() and any((candidate / name).is_file() for name in _BINARY_FILES[split]):
            missing = [name for name in _BINARY_FILES[split] if not (candidate / name).is_file()]
            if missing:
                raise DataIntegrityError(
                    f"CIFAR-10 binary folder {candidate} lacks {', '.join(missing)}: the archive is incomplete. "
                    f"Delete the folder and the archive, and download cifar-10-binary.tar.gz again."
                )
            return candidate
    raise DataUnavailableError(
        f"No CIFAR-10 binary {split} files ({', '.join(_BINARY_FILES[split])}) in {path} or {path / _BINARY_FOLDER}. "
        f"Pass cifar-10-binary.tar.gz or the folder it extracts to."
    )


def _check_binary_class_names(batches: Path) -> None:
    meta = batches / "batches.meta.txt"
    if not meta.is_file():
        return
    lines = meta.read_text(encoding="ascii", errors="replace").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    if names != CIFAR10_CLASSES:
        raise DataIntegrityError(
            f"{meta} lists classes {names}, not the CIFAR-10 classes {CIFAR10_CLASSES}: this is not CIFAR-10 "
            f"(CIFAR-100 has its own format). Point xaikit at the CIFAR-10 binary archive."
        )


def _parse_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = parse_cifar_records(
        path, label_classes=(len(CIFAR10_CLASSES),), max_records=_RECORDS_PER_FILE, dataset="CIFAR-10",
        archive="cifar-10-binary.tar.gz",
    )
    return images, labels[:, 0]


def parse_cifar_records(
    path: Path, *, label_classes: tuple[int, ...], max_records: int, dataset: str, archive: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read a file of CIFAR binary records: one byte per label, then the R, G and B 32x32 planes.

    CIFAR-10 records have one label (``label_classes=(10,)``), CIFAR-100 records two: the coarse
    then the fine label (``(20, 100)``). Returns uint8 images ``(N, 32, 32, 3)`` and int64 labels
    ``(N, len(label_classes))``; partial records, too many records and labels out of range raise
    :class:`DataIntegrityError` naming `dataset` and the official `archive`.
    """
    label_bytes = len(label_classes)
    record_bytes = label_bytes + _PIXEL_BYTES
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % record_bytes:
        raise DataIntegrityError(
            f"{path} is {len(raw)} bytes, not a whole number of {record_bytes}-byte {dataset} records "
            f"({label_bytes} label byte{'s' if label_bytes > 1 else ''} + {_PIXEL_BYTES} pixel bytes; official files "
            f"hold at most {max_records} records). "
            f"It is truncated or not {dataset} binary data: delete it and extract or download the archive again."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record_bytes)
    if len(records) > max_records:
        raise DataIntegrityError(
            f"{path} holds {len(records)} records, more than the {max_records} of an official {dataset} file. "
            f"It is not {dataset} binary data; use the official {archive}."
        )
    labels = records[:, :label_bytes].astype(np.int64)
    for column, classes in enumerate(label_classes):
        bad = np.flatnonzero(labels[:, column] >= classes)
        if len(bad):
            raise DataIntegrityError(
                f"{path} record {bad[0]} has label {labels[bad[0], column]}, outside 0..{classes - 1} "
                f"({len(bad)} bad records). The file is corrupted or not {dataset}; extract or download it again."
            )
    # Channel planes (N, 3, 32, 32) -> HWC (N, 32, 32, 3); the copy also makes the array writable.
    planes = records[:, label_bytes:].reshape(-1, 3, _IMAGE_SIDE, _IMAGE_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), labels


# ----------------------------------------------------------------------------- JPEG folders


def read_cifar10_jpeg(folder_or_archive: str | os.PathLike, split: str) -> ImageSplit:
    """Read a split of the JPEG-folder copy of CIFAR-10 (``<split>/<class>/NNNN.jpg``).

    ``folder_or_archive`` is ``<split>.tar.gz``, the folder holding ``train.tar.gz`` and
    ``test.tar.gz``, or a folder with an extracted ``<split>/`` inside. Archives are
    extracted into the cache once and the decoded arrays cached as ``.npz``, so later
    calls only read that file. Labels come from the class folder names.
    """
    _check_split(split)
    path = Path(folder_or_archive)
    if path.is_dir() and (path / f"{split}.tar.gz").is_file():
        path = path / f"{split}.tar.gz"
    if path.is_file():
        return _read_jpeg_archive(path, split)
    if (path / split).is_dir():
        images, labels = _decode_image_folder(path / split)
        return ImageSplit(images, labels, CIFAR10_CLASSES, f"CIFAR-10 {split} split, JPEG folders ({path / split})")
    raise DataUnavailableError(
        f"No CIFAR-10 JPEG {split} data at {path}: expected {split}.tar.gz there, or a {split}/<class>/ folder tree. "
        f"Pass the folder holding train.tar.gz and test.tar.gz (or set {JPEG_FOLDER_ENV} to it)."
    )


def _read_jpeg_archive(archive: Path, split: str) -> ImageSplit:
    key = _archive_key(archive)
    decoded = _cifar_cache() / "decoded" / f"{archive.name}-{key}-{split}.npz"
    source = f"CIFAR-10 {split} split, JPEG re-encoding ({archive})"
    cached = _load_decoded(decoded)
    if cached is not None:
        return ImageSplit(*cached, CIFAR10_CLASSES, source)

    extracted = _extract_once(archive)
    split_folder = extracted / split
    if not split_folder.is_dir():
        found = sorted(p.name for p in extracted.iterdir())
        raise DataIntegrityError(
            f"Archive {archive} has no {split}/ folder (top level: {', '.join(found) or 'empty'}). "
            f"Pass the {split}.tar.gz archive for split={split!r}."
        )
    images, labels = _decode_image_folder(split_folder)
    _save_decoded(decoded, images, labels)
    return ImageSplit(images, labels, CIFAR10_CLASSES, source)


def _decode_image_folder(split_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``<class>/<image>`` files, class by class in label order, files in name order."""
    class_folders = sorted(p for p in split_folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in class_folders if p.name not in CIFAR10_CLASSES]
    if unknown:
        raise DataIntegrityError(
            f"{split_folder} has folder(s) {', '.join(unknown)} that are not CIFAR-10 classes "
            f"({', '.join(CIFAR10_CLASSES)}). Remove them or point xaikit at a CIFAR-10 folder."
        )
    files: list[Path] = []
    labels: list[int] = []
    for folder in sorted(class_folders, key=lambda p: CIFAR10_CLASSES.index(p.name)):
        class_files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        files.extend(class_files)
        labels.extend([CIFAR10_CLASSES.index(folder.name)] * len(class_files))
    if not files:
        raise DataIntegrityError(
            f"No images ({', '.join(_IMAGE_SUFFIXES)}) in the class folders of {split_folder}; "
            f"the archive is empty or has another layout. Expected {split_folder.name}/<class>/NNNN.jpg."
        )

    # Serial on purpose: a 32x32 decode is so short that a thread pool only adds GIL
    # contention (measured on 2 cores: 40-120% slower than this loop).
    images = np.empty((len(files), _IMAGE_SIDE, _IMAGE_SIDE, 3), dtype=np.uint8)
    for index, file in enumerate(files):
        images[index] = _decode_image(file)
    return images, np.asarray(labels, dtype=np.int64)


def _decode_image(file: Path) -> np.ndarray:
    try:
        with Image.open(file, formats=("JPEG", "PNG")) as image:
            if image.size != (_IMAGE_SIDE, _IMAGE_SIDE):
                raise DataIntegrityError(
                    f"{file} is {image.size[0]}x{image.size[1]} pixels, not 32x32: not a CIFAR-10 image. "
                    f"Remove it or use the original archive."
                )
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # Pillow's decode errors
        raise DataIntegrityError(
            f"Cannot decode {file} ({type(err).__name__}: {err}): the file is corrupted or truncated. "
            f"Delete the extracted folder under {_cifar_cache() / 'extracted'} and load again."
        ) from err


def _load_decoded(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (then they are decoded again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            images, labels = saved["images"], saved["labels"]
    except (OSError, ValueError, KeyError, EOFError):
        path.unlink(missing_ok=True)
        return None
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE, 3)
        or labels.dtype != np.int64
        or labels.shape != (len(images),)
    ):
        path.unlink(missing_ok=True)
        return None
    return images, labels


def _save_decoded(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    # Atomic (a crash never leaves a half-written cache file) and readable as the umask allows.
    with atomic_write(path) as handle:
        np.savez(handle, images=images, labels=labels)


# ----------------------------------------------------------------------------- entry point


def load_cifar10(
    split: str = "test",
    *,
    source: str = "auto",
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> ImageSplit:
    """Load a CIFAR-10 split as uint8 HWC RGB images and int64 labels.

    ``source``: ``"jpeg"`` reads the offline JPEG copy (``root``, else ``$XAIKIT_CIFAR10_JPEG``,
    else ``../shared/data/cifar10-jpeg`` beside the repository); ``"binary"`` reads the
    official binary archive (``root``, else downloaded once via the ``cifar10`` manifest);
    ``"auto"`` prefers the JPEG copy when it is present. With ``download=False`` only an
    already cached binary archive is used.
    """
    _check_split(split)
    sources = ("auto", "jpeg", "binary")
    if source not in sources:
        raise InvalidParameterError(f"Unknown CIFAR-10 source {source!r}; valid sources: {', '.join(sources)}.")

    if root is not None:
        root = Path(root)
        if source == "auto":
            jpeg_layout = root.name in ("train.tar.gz", "test.tar.gz") or (root / f"{split}.tar.gz").is_file()
            source = "jpeg" if jpeg_layout or (root / split).is_dir() else "binary"
        reader = read_cifar10_jpeg if source == "jpeg" else read_cifar10_binary
        return reader(root, split)

    if source in ("auto", "jpeg"):
        jpeg_folder = _jpeg_folder(split)
        if jpeg_folder is not None:
            return read_cifar10_jpeg(jpeg_folder, split)
        if source == "jpeg":
            raise DataUnavailableError(
                f"No CIFAR-10 JPEG copy found: {JPEG_FOLDER_ENV} is not set and {_SHARED_JPEG_FOLDER} has no "
                f"{split}.tar.gz. Set {JPEG_FOLDER_ENV} (or pass root=) to the folder holding train.tar.gz and "
                f"test.tar.gz, or use source='binary' to download the official archive."
            )
    return read_cifar10_binary(_binary_archive(download), split)


def _jpeg_folder(split: str) -> Path | None:
    configured = os.environ.get(JPEG_FOLDER_ENV)
    if configured:
        folder = Path(configured).expanduser()
        if not (folder / f"{split}.tar.gz").is_file() and not (folder / split).is_dir():
            # An explicit setting that is wrong should fail loudly, not trigger a 170 MB download.
            raise DataUnavailableError(
                f"{JPEG_FOLDER_ENV}={configured} has no {split}.tar.gz (nor a {split}/ folder). "
                f"Point it at the folder holding train.tar.gz and test.tar.gz, or unset it."
            )
        return folder
    if (_SHARED_JPEG_FOLDER / f"{split}.tar.gz").is_file():
        return _SHARED_JPEG_FOLDER
    return None


def _binary_archive(download: bool) -> Path:
    manifest = load_manifest("cifar10")
    destination = cached_path(manifest)
    both_options = (
        f"Either (1) set {JPEG_FOLDER_ENV} to a folder holding the JPEG copy (train.tar.gz, test.tar.gz), or "
        f"(2) download {manifest.url} ({manifest.size} bytes) and place it at {destination} "
        f"(or set {CACHE_DIR_ENV} to a folder containing cifar10/{manifest.filename})."
    )

    def refuse_download(url: str, output_file: object, pooch_instance: object) -> None:
        stale = (
            f" The file at {destination} has the wrong sha256 (corrupted or another version); replace it."
            if destination.is_file()
            else ""
        )
        raise DataUnavailableError(
            f"CIFAR-10 is not available locally and download=False.{stale} {both_options} "
            f"Or call load_cifar10(..., download=True)."
        )

    try:
        return fetch(manifest, downloader=None if download else refuse_download)
    except DataUnavailableError as err:
        if not download:
            raise
        # fetch already explained the manual download; add the other way to get CIFAR-10.
        raise DataUnavailableError(
            f"{err} Alternatively, set {JPEG_FOLDER_ENV} to a folder holding the CIFAR-10 JPEG copy "
            f"(train.tar.gz, test.tar.gz)."
        ) from err
