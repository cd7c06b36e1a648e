"""ImageNet-Segmentation (Guillaumin et al., IJCV 2014): ImageNet images with foreground masks.

The file is ``gtsegs_ijcv.mat`` (commonly 4,276 images of 445 classes), a MATLAB v7.3 file,
i.e. HDF5 (optionally behind a 512-byte MATLAB header), read with h5py exactly as the
reference code of Chefer et al. (``data/Imagenet.py``) reads it:

- ``f['/value/img']`` is an (N, 1) array of object references; ``f[f['/value/img'][i, 0]]``
  is a uint8 ``(3, W, H)`` array (MATLAB's column-major ``H x W x 3``), transposed (2, 1, 0)
  to an ``H x W x 3`` RGB image;
- ``f['/value/gt']`` is an (N, 1) array of references to 1x1 cells; the cell's ``[0, 0]``
  element references the ``(W, H)`` mask, transposed (1, 0) to ``H x W`` with values {0, 1}.

Images are read one at a time (the file is large): :class:`ImageNetSegmentation` has
``len``/indexing and :meth:`ImageNetSegmentation.batches`, which applies the reference
transforms: images resized to 224 x 224 without cropping (bilinear, "squash"), ``ToTensor``,
normalised (0.5, 0.5) or with a model's own mean/std; masks resized with NEAREST.

The file is downloaded once through the ``imagenet-seg`` manifest, or read from
``$XAIKIT_IMAGENET_SEG`` (a local copy). Its provider publishes no checksum, so the
copy is checked by trust on first use (see :func:`xaikit.data.manifests.check_recorded_hash`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch
from PIL import Image
from torch import nn

from xaikit.data.manifests import (
    CACHE_DIR_ENV,
    cached_path,
    check_recorded_hash,
    fetch_locally_or_download,
    load_manifest,
)
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError

__all__ = [
    "IMAGENET_SEG_ENV",
    "REFERENCE_MEAN",
    "REFERENCE_SIZE",
    "REFERENCE_STD",
    "ImageNetSegmentation",
    "SegmentationBatch",
    "imagenet_seg_file",
    "transform_images",
    "transform_masks",
]

IMAGENET_SEG_ENV = "XAIKIT_IMAGENET_SEG"
MANIFEST_NAME = "imagenet-seg"
REFERENCE_SIZE = 224
# Chefer et al. normalise with 0.5/0.5 (the statistics of the original ViT-B/16 weights).
REFERENCE_MEAN = (0.5, 0.5, 0.5)
REFERENCE_STD = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- locating the file


def imagenet_seg_file(
    path: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> Path:
    """The local ``gtsegs_ijcv.mat``: `path`, else ``$XAIKIT_IMAGENET_SEG``, else the cached download.

    With ``download=False`` only a copy already in the cache is used. ``verify`` checks the
    copy against the sha256 recorded when xaikit first saw the file (trust on first use: the
    provider publishes no checksum); pass ``verify=False`` for a file that is deliberately not
    the official one (a subset written in the same format).
    """
    manifest = load_manifest(MANIFEST_NAME)
    destination = cached_path(manifest)
    how_to_get = (
        f"Download {manifest.url} (the provider publishes no checksum or size) and either place it at "
        f"{destination} (or set {CACHE_DIR_ENV} to a folder containing {MANIFEST_NAME}/{manifest.filename}), or set "
        f"{IMAGENET_SEG_ENV}=/path/to/{manifest.filename}."
    )
    local = Path(path).expanduser() if path is not None else None
    origin = "the path given"
    if local is None and os.environ.get(IMAGENET_SEG_ENV):
        local, origin = Path(os.environ[IMAGENET_SEG_ENV]).expanduser(), IMAGENET_SEG_ENV
    if local is not None:
        if not local.is_file():
            raise DataUnavailableError(
                f"No ImageNet-Segmentation file at {local} ({origin}): "
                f"{'it is a folder' if local.is_dir() else 'it does not exist'}. {how_to_get}"
            )
        if verify:
            check_recorded_hash(manifest, local)
        return local

    return fetch_locally_or_download(manifest, download=download, what=f"ImageNet-Segmentation ({manifest.filename})",
                                     how_to_get=how_to_get,
                                     hint=f"Or set {IMAGENET_SEG_ENV}=/path/to/{manifest.filename}.")


# ----------------------------------------------------------------------------- transforms


def transform_images(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    model: nn.Module | None = None,
    size: int = REFERENCE_SIZE,
) -> torch.Tensor:
    """The reference image transform: squash-resize (bilinear), ``ToTensor``, normalise.

    `images` are uint8 ``H x W x 3`` arrays of any sizes. Without `model`: ``size x size`` and
    Chefer's 0.5/0.5 normalisation. With `model`: :func:`xaikit.preprocess` with ``squash=True``,
    i.e. the model's input size and its own mean/std, on the model's device.
    """
    if model is not None:
        from xaikit.imaging import preprocess

        return preprocess(model, list(images), squash=True)
    from torchvision import transforms

    _check_size(size)
    transform = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(REFERENCE_MEAN, REFERENCE_STD),
        ]
    )
    return torch.stack([transform(Image.fromarray(np.asarray(image)).convert("RGB")) for image in images])


def transform_masks(masks: Sequence[np.ndarray] | np.ndarray, *, size: int = REFERENCE_SIZE) -> torch.Tensor:
    """The reference label transform: ``Resize((size, size), NEAREST)``, then int64 ``(B, size, size)``."""
    _check_size(size)
    resized = [
        np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((size, size), Image.Resampling.NEAREST))
        for mask in masks
    ]
    return torch.from_numpy(np.stack(resized).astype(np.int64))


def _check_size(size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidParameterError(f"size must be a positive int (pixels per side), got {size!r}")


def _model_side(model: nn.Module) -> int:
    height, width = model.patch_embed.img_size
    if height != width:
        raise InvalidParameterError(
            f"the model's input is {height}x{width}; the ImageNet-Segmentation protocol resizes to a square, "
            f"so use a model with a square input"
        )
    return int(height)


# ----------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class SegmentationBatch:
    """Transformed images ``(B, 3, S, S)``, masks ``(B, S, S)`` int64 in {0, 1}, and their indices."""

    images: torch.Tensor
    masks: torch.Tensor
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


class ImageNetSegmentation:
    """Lazy reader of ``gtsegs_ijcv.mat``: ``ds[i]`` is ``(image, mask)``, read from disk when asked.

    ``image`` is uint8 ``(H, W, 3)`` RGB, ``mask`` uint8 ``(H, W)`` in {0, 1}, at the original size.
    :meth:`batches` yields model-ready batches with the reference transforms. The HDF5 file is
    opened on first access (and again in a forked worker process); use ``with`` or
    :meth:`close` to release it.

    `path`, `download` and `verify` are those of :func:`imagenet_seg_file`.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True):
        self.path = imagenet_seg_file(path, download=download, verify=verify)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            self._length = self._check_layout(self._handle())
        except BaseException:
            self.close()
            raise

    # -- file handling

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not h5py.is_hdf5(self.path):
                raise DataIntegrityError(
                    f"{self.path} is not an HDF5 file (MATLAB v7.3 .mat): it is truncated, another file, or a "
                    f"MATLAB file saved in an older format. Download gtsegs_ijcv.mat again."
                )
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DataIntegrityError(
                    f"Cannot open {self.path} as HDF5 ({err}); it is truncated or corrupted. Download it again."
                ) from err
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close the HDF5 file (it is reopened if the data set is used again)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> ImageNetSegmentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None  # an open HDF5 handle cannot be pickled (DataLoader workers reopen it)
        return state

    def _check_layout(self, handle: h5py.File) -> int:
        def broken(problem: str) -> DataIntegrityError:
            return DataIntegrityError(
                f"{self.path} does not have the layout of gtsegs_ijcv.mat: {problem}. Expected /value/img and "
                f"/value/gt, (N, 1) arrays of object references. Use the official file from the imagenet-seg manifest."
            )

        shapes = {}
        for key in ("/value/img", "/value/gt"):
            if key not in handle or not isinstance(handle[key], h5py.Dataset):
                parent = handle.get("/value")
                found = ", ".join(sorted((parent if isinstance(parent, h5py.Group) else handle).keys())) or "nothing"
                raise broken(f"{key} is missing (found: {found})")
            dataset = handle[key]
            if dataset.dtype != h5py.ref_dtype or dataset.ndim != 2 or dataset.shape[1] != 1:
                raise broken(f"{key} is {dataset.dtype} of shape {dataset.shape}, not object references of shape (N, 1)")
            shapes[key] = dataset.shape[0]
        if shapes["/value/img"] != shapes["/value/gt"]:
            raise broken(f"{shapes['/value/img']} images but {shapes['/value/gt']} masks")
        return shapes["/value/img"]

    # -- access

    def __len__(self) -> int:
        return self._length

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InvalidParameterError(f"ImageNet-Segmentation indices are ints, got {index!r}")
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self._length} images")
        return int(index) % self._length

    def _dereference(self, reference: h5py.Reference, what: str) -> h5py.Dataset:
        handle = self._handle()
        try:
            target = handle[reference]
        except (ValueError, KeyError, TypeError) as err:
            raise DataIntegrityError(f"{self.path}: {what} is a broken object reference ({err}). Download the file again.") from err
        if not isinstance(target, h5py.Dataset):
            raise DataIntegrityError(f"{self.path}: {what} references a group, not an array. Download the file again.")
        return target

    def image(self, index: int) -> np.ndarray:
        """Image `index` as uint8 ``(H, W, 3)`` RGB."""
        i = self._index(index)
        what = f"/value/img[{i}, 0]"
        stored = self._dereference(self._handle()["/value/img"][i, 0], what)
        if stored.ndim != 3 or stored.shape[0] != 3:
            raise DataIntegrityError(
                f"{self.path}: {what} has shape {stored.shape}, not (3, W, H) (an RGB image as MATLAB stores it)."
            )
        pixels = stored[()]
        if pixels.dtype != np.uint8:
            raise DataIntegrityError(f"{self.path}: {what} holds {pixels.dtype} pixels, not uint8.")
        return np.ascontiguousarray(pixels.transpose(2, 1, 0))

    def mask(self, index: int) -> np.ndarray:
        """Foreground mask `index` as uint8 ``(H, W)`` in {0, 1}."""
        i = self._index(index)
        what = f"/value/gt[{i}, 0]"
        cell = self._dereference(self._handle()["/value/gt"][i, 0], what)
        if cell.dtype != h5py.ref_dtype or cell.ndim != 2 or cell.shape[0] < 1 or cell.shape[1] < 1:
            raise DataIntegrityError(
                f"{self.path}: {what} is {cell.dtype} of shape {cell.shape}, not a cell of object references."
            )
        stored = self._dereference(cell[0, 0], f"the [0, 0] element of the cell {what}")
        if stored.ndim != 2:
            raise DataIntegrityError(f"{self.path}: the mask of {what} has shape {stored.shape}, not (W, H).")
        values = stored[()]
        if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
            found = np.unique(values)[:5] if values.dtype.kind in "biuf" else values.dtype
            raise DataIntegrityError(
                f"{self.path}: the mask of {what} holds values other than 0 and 1 ({found}); it is not a foreground mask."
            )
        return np.ascontiguousarray(values.transpose(1, 0).astype(np.uint8))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.image(index), self.mask(index)
        if image.shape[:2] != mask.shape:
            raise DataIntegrityError(
                f"{self.path}: image {index} is {image.shape[0]}x{image.shape[1]} but its mask is "
                f"{mask.shape[0]}x{mask.shape[1]}. The file is corrupted; download it again."
            )
        return image, mask

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in range(len(self)):
            yield self[index]

    def batches(
        self,
        batch_size: int = 16,
        *,
        model: nn.Module | None = None,
        size: int | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> Iterator[SegmentationBatch]:
        """Yield :class:`SegmentationBatch` es of at most `batch_size` images, in `indices` order (default: all).

        Images get the reference transform (:func:`transform_images`): with `model`, its input size
        and mean/std, on its device; without, `size` (default 224) and 0.5/0.5. Masks are
        resized to the same side with NEAREST (:func:`transform_masks`), on the images' device.
        Only one batch of original images is in memory at a time.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be a positive int, got {batch_size!r}")
        if model is not None:
            side = _model_side(model)
            if size is not None and size != side:
                raise InvalidParameterError(
                    f"size={size} conflicts with the model's input size {side}; leave size out when passing a model"
                )
        else:
            side = REFERENCE_SIZE if size is None else size
            _check_size(side)
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        for index in order:
            self._index(int(index))  # fail before any work on a bad index
        for start in range(0, len(order), int(batch_size)):
            chunk = order[start : start + int(batch_size)]
            pairs = [self[int(i)] for i in chunk]
            images = transform_images([image for image, _ in pairs], model=model, size=side)
            masks = transform_masks([mask for _, mask in pairs], size=side).to(images.device)
            yield SegmentationBatch(images, masks, chunk % len(self))
