"""ClickMe (Serre lab) read without TensorFlow, as the Harmonization toolkit reads and preprocesses it.

ClickMe's human feature-importance maps come as TFRecord shards (``../shared/docs/clickme.md``):

- **Framing.** Each record is a little-endian ``uint64`` length, the masked CRC32C of those 8
  bytes (``uint32``), the data, and the masked CRC32C of the data. CRC32C is the Castagnoli CRC
  (computed by ``google-crc32c``), masked as ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod
  2**32. :func:`read_records` checks every CRC; a damaged or cut shard raises
  :class:`~xaikit.errors.DataIntegrityError` naming the file and the record index, never a short
  data set.
- **Records.** The data of each record is a ``tf.train.Example``, decoded here by a minimal
  protobuf reader: Example{features = 1: Features{feature = 1: map<string, Feature>}},
  Feature{bytes_list = 1 | float_list = 2 | int64_list = 3}, each list's values in field 1
  (int64 and float values packed or not). ClickMe's features are ``image`` (a 256x256 RGB JPEG),
  ``heatmap`` (a 256x256 single-channel JPEG) and ``label`` (int64, ImageNet class 0-999).
- **Files.** The 17 validation shards ``val-0`` ... ``val-16`` (manifests ``clickme-val-<i>``; no
  published checksum, so the first copy seen is recorded and later ones must match it). A copy the
  Harmonization toolkit downloaded is found in its Keras cache
  (``~/.keras/datasets/click-me/clickme_val_<i>``); ``$XAIKIT_CLICKME`` names a folder of shards.
- **Human maps.** :func:`human_map` is Harmonization's heatmap preprocessing
  (``parse_clickme_prototype``): bilinear resize to 64x64, its 10x10 Gaussian blur (sigma 10) with
  TensorFlow's 'SAME' zero padding, bilinear resize to 224x224. :func:`blurred_object_maps` blurs
  object masks of any image size the same way (the demo's "human" maps).
- **ViTA's subset.** :func:`select_vita_subset` picks up to 3 distinct images per class.

JPEGs are decoded with Pillow (libjpeg's accurate integer DCT). TensorFlow's ``decode_jpeg``
defaults to the fast integer DCT, so a decoded pixel may differ from TensorFlow's by a grey level
or so; every step after decoding follows TensorFlow's arithmetic.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import google_crc32c
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import pad_same

from xaikit.data._checks import check_count
from xaikit.data.manifests import (
    CACHE_DIR_ENV,
    Downloader,
    cached_path,
    check_recorded_hash,
    fetch_locally_or_download,
    hash_record_path,
    load_manifest,
)
from xaikit.errors import DataIntegrityError, DataUnavailableError, InvalidParameterError
from xaikit.fileio import atomic_write

__all__ = [
    "CLICKME_BASE_URL",
    "CLICKME_ENV",
    "HUMAN_MAP_SIZE",
    "NB_VAL_SHARDS",
    "ClickMeSample",
    "ClickMeSubset",
    "blurred_object_maps",
    "clickme_val_files",
    "decode_clickme",
    "decode_example",
    "encode_example",
    "frame_record",
    "harmonization_kernel",
    "human_map",
    "iter_clickme",
    "load_clickme_val",
    "masked_crc32c",
    "read_payloads",
    "read_records",
    "select_vita_subset",
    "write_records",
]

CLICKME_BASE_URL = "https://storage.googleapis.com/serrelab/prj_harmonization/dataset/click-me"
NB_VAL_SHARDS = 17
CLICKME_ENV = "XAIKIT_CLICKME"
CLICKME_FEATURES = ("image", "heatmap", "label")
# Harmonization's heatmap preprocessing (harmonization/common/blur.py, clickme_dataset.py).
CLICKME_SIDE = 256
HUMAN_MAP_SIZE = 224
BLUR_GRID = 64
BLUR_KERNEL_SIZE = 10
BLUR_SIGMA = 10.0

_CRC_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_UINT64 = 1 << 64


# ----------------------------------------------------------------------------- TFRecord framing


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2**32."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord record: length, masked CRC32C of the length, `data`, masked CRC32C of `data`."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + bytes(data) + _FOOTER.pack(masked_crc32c(data))


def _corrupt(path: Path, index: int, offset: int, problem: str) -> DataIntegrityError:
    return DataIntegrityError(
        f"{path} is damaged at record {index} (counting from 0; byte {offset}): {problem}. The file is corrupted "
        f"or incomplete: delete it and download it again (or take it again from where you copied it)."
    )


def read_payloads(path: str | os.PathLike) -> Iterator[bytes]:
    """The data of each record of the TFRecord file `path`, in order, every CRC checked."""
    path = Path(path)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
    except OSError as err:
        raise DataUnavailableError(f"Cannot read the TFRecord file {path} ({err}); check the path.") from err
    with handle:
        index = offset = 0
        while True:
            header = handle.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise _corrupt(path, index, offset, f"the file ends inside the record's 12-byte header "
                                                    f"({len(header)} bytes left), so it is cut short")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise _corrupt(path, index, offset, "the record's length field fails its CRC32C check")
            left = size - offset - _HEADER.size
            if length + _FOOTER.size > left:
                raise _corrupt(path, index, offset, f"the record announces {length} bytes of data and a 4-byte "
                                                    f"checksum but only {left} bytes follow, so the file is cut short")
            data = handle.read(length)
            footer = handle.read(_FOOTER.size)
            if len(data) < length or len(footer) < _FOOTER.size:
                raise _corrupt(path, index, offset, "the file ended while the record was read, so it is cut short")
            if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                raise _corrupt(path, index, offset, f"the record's {length} bytes of data fail their CRC32C check")
            yield data
            index += 1
            offset += _HEADER.size + length + _FOOTER.size


# ----------------------------------------------------------------------------- tf.train.Example


class _ProtobufError(ValueError):
    """The bytes are not a well-formed tf.train.Example (reported with the file and record)."""


_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3


def _read_varint(buffer: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise _ProtobufError("a varint runs past the end of its message")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift >= 70:
            raise _ProtobufError("a varint is longer than 10 bytes")


def _fields(buffer: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one protobuf message."""
    position, end = 0, len(buffer)
    while position < end:
        key, position = _read_varint(buffer, position)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _ProtobufError("a field has number 0")
        if wire == _WIRE_VARINT:
            value, position = _read_varint(buffer, position)
        elif wire in (_WIRE_FIXED64, _WIRE_FIXED32, _WIRE_LEN):
            if wire == _WIRE_LEN:
                width, position = _read_varint(buffer, position)
            else:
                width = 8 if wire == _WIRE_FIXED64 else 4
            if position + width > end:
                raise _ProtobufError(f"field {field} runs past the end of its message")
            value, position = buffer[position:position + width], position + width
        else:
            raise _ProtobufError(f"field {field} has wire type {wire} (groups or invalid), which tf.train.Example "
                                 f"never uses")
        yield field, wire, value


def _signed64(value: int) -> int:
    return value - _UINT64 if value >= 1 << 63 else value


def _list_values(kind: int, message: memoryview) -> list:
    values: list = []
    for field, wire, value in _fields(message):
        if field != 1:
            continue  # unknown field: ignored, as protobuf does
        if kind == _BYTES_LIST and wire == _WIRE_LEN:
            values.append(bytes(value))
        elif kind == _INT64_LIST and wire == _WIRE_VARINT:
            values.append(_signed64(value))
        elif kind == _INT64_LIST and wire == _WIRE_LEN:  # packed
            position = 0
            while position < len(value):
                item, position = _read_varint(value, position)
                values.append(_signed64(item))
        elif kind == _FLOAT_LIST and wire == _WIRE_FIXED32:
            values.append(struct.unpack("<f", value)[0])
        elif kind == _FLOAT_LIST and wire == _WIRE_LEN and len(value) % 4 == 0:  # packed
            values.extend(struct.unpack(f"<{len(value) // 4}f", value))
        else:
            name = {_BYTES_LIST: "bytes_list", _FLOAT_LIST: "float_list", _INT64_LIST: "int64_list"}[kind]
            raise _ProtobufError(f"a {name} holds a value of wire type {wire}")
    return values


def _feature_value(message: memoryview) -> Any:
    kind, values = None, []
    for field, wire, value in _fields(message):
        if field in (_BYTES_LIST, _FLOAT_LIST, _INT64_LIST):
            if wire != _WIRE_LEN:
                raise _ProtobufError(f"a Feature's field {field} has wire type {wire}, not a message")
            kind, values = field, _list_values(field, value)  # a oneof: the last one set wins
    if len(values) == 1 and kind in (_BYTES_LIST, _INT64_LIST):
        return values[0]
    return values


def decode_example(data: bytes) -> dict[str, Any]:
    """Decode a serialised ``tf.train.Example`` into {feature name: value}.

    A one-element bytes list gives ``bytes``, a one-element int64 list an ``int``; every other
    list (several values, no value, or floats) a Python ``list``. Unknown fields are skipped.
    Malformed bytes raise :class:`ValueError`.
    """
    features: dict[str, Any] = {}
    for field, wire, value in _fields(memoryview(bytes(data))):
        if field != 1 or wire != _WIRE_LEN:
            continue
        for entry_field, entry_wire, entry in _fields(value):
            if entry_field != 1 or entry_wire != _WIRE_LEN:
                continue
            key, feature = "", []
            for part_field, part_wire, part in _fields(entry):
                if part_wire != _WIRE_LEN:
                    raise _ProtobufError(f"a feature map entry's field {part_field} has wire type {part_wire}")
                if part_field == 1:
                    try:
                        key = bytes(part).decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise _ProtobufError(f"a feature name is not UTF-8 ({err})") from err
                elif part_field == 2:
                    feature = _feature_value(part)
            features[key] = feature  # a repeated key: the last wins, as in a protobuf map
    return features


def _varint_bytes(value: int) -> bytes:
    value &= _UINT64 - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint_bytes(field << 3 | _WIRE_LEN) + _varint_bytes(len(payload)) + payload


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _encode_feature(name: str, value: Any) -> bytes:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values:
        return b""  # a Feature with no list set
    if all(isinstance(item, (bytes, bytearray)) for item in values):
        return _length_delimited(_BYTES_LIST, b"".join(_length_delimited(1, bytes(item)) for item in values))
    if all(_is_int(item) for item in values):
        if not all(-(1 << 63) <= int(item) < 1 << 63 for item in values):
            raise InvalidParameterError(f"feature {name!r} holds an integer outside int64; give int64 values")
        packed = b"".join(_varint_bytes(int(item)) for item in values)
        return _length_delimited(_INT64_LIST, _length_delimited(1, packed))
    if all(_is_int(item) or isinstance(item, (float, np.floating)) for item in values):
        packed = struct.pack(f"<{len(values)}f", *(float(item) for item in values))
        return _length_delimited(_FLOAT_LIST, _length_delimited(1, packed))
    raise InvalidParameterError(
        f"feature {name!r} is {value!r}: give bytes, an int, a float, or a list of one of these kinds"
    )


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialise {name: value} as a ``tf.train.Example`` (what ``Example.SerializeToString`` writes).

    A value is ``bytes``, an ``int``, a ``float``, or a list of one of these kinds (int64 values
    packed, as proto3 writes them); an empty list is a Feature with no list set.
    """
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, str(name).encode("utf-8")) +
                          _length_delimited(2, _encode_feature(str(name), value)))
        for name, value in features.items()
    )
    return _length_delimited(1, entries)


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Each record of the TFRecord file `path` as {feature name: value} (see :func:`decode_example`).

    Every CRC is checked; a corrupt, cut or undecodable record raises
    :class:`~xaikit.errors.DataIntegrityError` naming the file and the record index. (A file cut
    exactly between two records is well-formed TFRecord and cannot be told from a shorter one;
    for the ClickMe shards the sha256 recorded at first use catches it.)
    """
    path = Path(path)
    offset = 0
    for index, data in enumerate(read_payloads(path)):
        try:
            yield decode_example(data)
        except _ProtobufError as err:
            raise _corrupt(path, index, offset, f"its data are not a tf.train.Example ({err}), although their "
                                                f"checksum is right, so the file is not a TFRecord of Examples") from err
        offset += _HEADER.size + len(data) + _FOOTER.size


def write_records(path: str | os.PathLike, examples: Iterable[Mapping[str, Any]]) -> Path:
    """Write `examples` ({name: value}, see :func:`encode_example`) as a TFRecord file; return its path.

    The file is written atomically (a temporary file renamed at the end). For tests and the demo.
    """
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        for example in examples:
            handle.write(frame_record(encode_example(example)))
    return path


# ----------------------------------------------------------------------------- ClickMe records


class ClickMeSample(NamedTuple):
    """One ClickMe record decoded: ``image`` uint8 (H, W, 3), ``heatmap`` uint8 (H, W), ``label``."""

    image: np.ndarray
    heatmap: np.ndarray
    label: int


def _decode_picture(data: bytes, where: str, feature: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            mode = picture.mode
            pixels = np.asarray(picture.convert("RGB") if feature == "image" else picture)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataIntegrityError(
            f"{where}: its {feature!r} ({len(data)} bytes) is not a readable JPEG ({type(err).__name__}: {err}). "
            f"The shard is damaged or not a ClickMe shard: download it again."
        ) from err
    if feature == "heatmap" and mode != "L":
        raise DataIntegrityError(
            f"{where}: its 'heatmap' is a {mode} picture, not a single-channel one (Harmonization reshapes it to "
            f"(256, 256, 1)). Use the official ClickMe shards."
        )
    return pixels


def _check_clickme_record(record: Mapping[str, Any], where: str) -> None:
    missing = [name for name in CLICKME_FEATURES if name not in record]
    if missing:
        raise DataIntegrityError(
            f"{where} has no {' or '.join(repr(name) for name in missing)} feature (it has "
            f"{', '.join(map(repr, sorted(record))) or 'none'}); a ClickMe record holds 'image' (JPEG bytes), "
            f"'heatmap' (JPEG bytes) and 'label' (int64). Use the ClickMe validation shards val-0 ... val-16."
        )
    for name, kind, described in (("image", bytes, "JPEG bytes"), ("heatmap", bytes, "JPEG bytes"),
                                  ("label", int, "one int64")):
        if not isinstance(record[name], kind):
            raise DataIntegrityError(
                f"{where}: its {name!r} feature is {type(record[name]).__name__} {_short(record[name])}, not "
                f"{described}. Use the ClickMe validation shards val-0 ... val-16."
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode_clickme(record: Mapping[str, Any], *, where: str = "the record") -> ClickMeSample:
    """Decode a ClickMe record from :func:`read_records` into a :class:`ClickMeSample`.

    `where` names the record in errors (e.g. ``"record 5 of val-3.tfrecords"``). A missing or
    mistyped feature, or an unreadable JPEG, raises :class:`~xaikit.errors.DataIntegrityError`
    (Harmonization would silently use an empty picture or label 0). A grey ``image`` is repeated
    over the three channels; the ``heatmap`` must be single-channel.
    """
    _check_clickme_record(record, where)
    return ClickMeSample(
        _decode_picture(record["image"], where, "image"),
        _decode_picture(record["heatmap"], where, "heatmap"),
        int(record["label"]),
    )


def _labelled_records(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        for index, record in enumerate(read_records(path)):
            yield f"record {index} of {path}", record


def iter_clickme(paths: Iterable[str | os.PathLike]) -> Iterator[ClickMeSample]:
    """The decoded records of the ClickMe shards `paths`, file after file, in record order."""
    for where, record in _labelled_records(paths):
        yield decode_clickme(record, where=where)


# ----------------------------------------------------------------------------- the validation shards


def _shard_manifest(shard: int):
    return load_manifest(f"clickme-val-{shard}")


def _keras_cache_dirs() -> list[Path]:
    """Where Keras' ``get_file`` keeps downloads: ``$KERAS_HOME``, ``~/.keras``, or ``/tmp/.keras``."""
    roots = [Path(os.environ["KERAS_HOME"]).expanduser()] if os.environ.get("KERAS_HOME") else []
    roots += [Path.home() / ".keras", Path("/tmp/.keras")]
    return [root / "datasets" / "click-me" for root in roots]


def _local_names(shard: int) -> tuple[str, str]:
    return f"val-{shard}.tfrecords", f"clickme_val_{shard}"


def _find_in(folder: Path, shard: int) -> Path | None:
    for name in _local_names(shard):
        if (folder / name).is_file():
            return folder / name
    return None


def _shard_file(shard: int, root: Path | None, origin: str, download: bool, verify: bool,
                downloader: Downloader | None) -> Path:
    manifest = _shard_manifest(shard)
    names = " or ".join(_local_names(shard))
    if root is not None:
        local = _find_in(root, shard)
        if local is None:
            raise DataUnavailableError(
                f"ClickMe validation shard {shard} is not in {root} ({origin}): expected a file named {names}. "
                f"Download {manifest.url} into that folder, or give the folder that holds all 17 shards."
            )
        if verify:
            check_recorded_hash(manifest, local)
        return local
    if not cached_path(manifest).is_file():
        for folder in _keras_cache_dirs():
            local = _find_in(folder, shard)
            if local is not None:
                if verify:
                    check_recorded_hash(manifest, local)
                return local
    how_to_get = (
        f"Download {manifest.url} and place it at {cached_path(manifest)} (or set {CACHE_DIR_ENV} to a folder "
        f"containing {manifest.name}/{manifest.filename}), or set {CLICKME_ENV} to a folder holding the shards "
        f"(named val-<i>.tfrecords or clickme_val_<i>); copies the Harmonization toolkit downloaded into "
        f"~/.keras/datasets/click-me are found by themselves."
    )

    return fetch_locally_or_download(manifest, download=download, downloader=downloader,
                                     what=f"ClickMe validation shard {shard}", how_to_get=how_to_get,
                                     hint=f"Or set {CLICKME_ENV} to a folder holding the shards.")


def _check_shards(shards: Sequence[int] | None) -> list[int]:
    if shards is None:
        return list(range(NB_VAL_SHARDS))
    if isinstance(shards, (int, np.integer)):
        shards = [shards]
    chosen = [check_count("clickme_val_files", "shards", shard, " (shard numbers)") for shard in shards]
    wrong = [shard for shard in chosen if shard >= NB_VAL_SHARDS]
    if wrong or len(set(chosen)) != len(chosen):
        raise InvalidParameterError(
            f"shards must be distinct numbers from 0 to {NB_VAL_SHARDS - 1} (ClickMe has {NB_VAL_SHARDS} validation "
            f"shards), got {list(shards)!r}"
        )
    return chosen


def clickme_val_files(
    root: str | os.PathLike | None = None,
    *,
    shards: Sequence[int] | None = None,
    download: bool = True,
    verify: bool = True,
    downloader: Downloader | None = None,
) -> list[Path]:
    """The local ClickMe validation shards (all 17 in order, or `shards`), downloading what is missing.

    Each shard is looked for in `root` (a folder), else ``$XAIKIT_CLICKME``, both holding files named
    ``val-<i>.tfrecords`` or ``clickme_val_<i>``; else xaikit's cache; else the Harmonization
    toolkit's Keras cache (``$KERAS_HOME``, ``~/.keras`` or ``/tmp/.keras``, then
    ``datasets/click-me/clickme_val_<i>``); else it is downloaded into xaikit's cache (unless
    ``download=False``). No checksum is published: with ``verify`` each copy is checked against the
    sha256 recorded the first time xaikit saw that shard (trust on first use, one warning for all
    shards recorded). `downloader` is pooch's download hook, for tests.
    """
    chosen = _check_shards(shards)
    folder, origin = None, ""
    if root is not None:
        folder, origin = Path(root).expanduser(), "the root given"
    elif os.environ.get(CLICKME_ENV):
        folder, origin = Path(os.environ[CLICKME_ENV]).expanduser(), CLICKME_ENV
    if folder is not None and not folder.is_dir():
        raise DataUnavailableError(f"The ClickMe folder {folder} ({origin}) is not a folder; give the folder that "
                                   f"holds the validation shards val-0.tfrecords ... val-16.tfrecords.")
    records = [hash_record_path(_shard_manifest(shard)) for shard in chosen]
    recorded_before = [record.is_file() for record in records]
    with warnings.catch_warnings():
        # One warning below for all the shards recorded now, not one per shard.
        warnings.filterwarnings("ignore", message=".*could not be checked against a published hash")
        files = [_shard_file(shard, folder, origin, download, verify, downloader) for shard in chosen]
    newly = [shard for shard, record, before in zip(chosen, records, recorded_before) if not before and record.is_file()]
    if newly:
        warnings.warn(
            f"ClickMe validation shard(s) {', '.join(map(str, newly))} could not be checked against a published hash "
            f"(the Serre lab publishes none): the sha256 and size of these copies are now recorded next to xaikit's "
            f"cache (e.g. {records[chosen.index(newly[0])]}), and later loads must match them (trust on first use). "
            f"If a copy may be incomplete or altered, delete it and its record, and get it again.",
            UserWarning,
            stacklevel=2,
        )
    return files


def load_clickme_val(
    root: str | os.PathLike | None = None,
    *,
    shards: Sequence[int] | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    download: bool = True,
    verify: bool = True,
    downloader: Downloader | None = None,
) -> Iterator[ClickMeSample]:
    """The ClickMe validation records as :class:`ClickMeSample` ``(image, heatmap, label)``, in shard order.

    Files are found (or downloaded) as :func:`clickme_val_files` does, before anything is yielded.
    `indices`: positions in that order (counting from 0 over all the chosen shards, e.g. the
    ``indices`` of :func:`select_vita_subset`) to decode and yield, in increasing order; the
    others are read (their CRCs checked) but not decoded. Pass :func:`human_map` the heatmaps.
    """
    files = clickme_val_files(root, shards=shards, download=download, verify=verify, downloader=downloader)
    if indices is None:
        return iter_clickme(files)
    wanted = sorted({check_count("load_clickme_val", "indices", index, " (record positions)")
                     for index in np.asarray(indices, dtype=object).ravel().tolist()})
    return _selected(files, wanted)


def _selected(files: list[Path], wanted: list[int]) -> Iterator[ClickMeSample]:
    pending = iter(wanted)
    target = next(pending, None)
    position = -1
    for position, (where, record) in enumerate(_labelled_records(files)):
        if target is None:
            break
        if position == target:
            yield decode_clickme(record, where=where)
            target = next(pending, None)
    if target is not None:
        raise InvalidParameterError(
            f"load_clickme_val got index {target}, but the chosen shards hold only {position + 1} records; give "
            f"positions from 0 to {position} (those select_vita_subset returned for the same shards)."
        )


# ----------------------------------------------------------------------------- human maps


def harmonization_kernel(size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Harmonization's ``gaussian_kernel``: (size, size) float64, summing to 1.

    Column ``c`` has ``x = range(-(size - 1) // 2, (size - 1) // 2 + 1)[c]`` and row ``r`` has
    ``y = range((size - 1) // 2, -(size - 1) // 2 - 1, -1)[r]`` (Python's floor division); the
    entry is ``exp(-(x**2 + y**2) / (2 sigma**2))``, normalised. For size 10: x = -5 ... 4 and
    y = 4 ... -5, so the peak is at row 4, column 5 (the kernel is not symmetric).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidParameterError(f"kernel_size must be a positive int (taps per side), got {size!r}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise InvalidParameterError(f"sigma must be a positive number (in grid pixels), got {sigma!r}")
    xs = np.arange(-(size - 1) // 2, (size - 1) // 2 + 1)
    ys = np.arange((size - 1) // 2, -(size - 1) // 2 - 1, -1)
    xx, yy = np.meshgrid(xs, ys)
    kernel = np.exp(-(xx ** 2 + yy ** 2) / (2 * float(sigma) ** 2))
    return kernel / kernel.sum()


def _resize(maps: torch.Tensor, side: int) -> torch.Tensor:
    # tf.image.resize(method="bilinear") of TensorFlow 2: half-pixel centres, no antialiasing.
    return F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False, antialias=False)


def _blur_same(maps: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """``tf.nn.conv2d(maps, kernel, 1, "SAME")``: a cross-correlation with zero padding.

    TensorFlow pads ``(k - 1) // 2`` before and the rest after (4 and 5 for k = 10); timm's
    ``pad_same`` is that rule.
    """
    weight = torch.as_tensor(kernel, dtype=maps.dtype)[None, None]
    return F.conv2d(pad_same(maps, list(kernel.shape), [1, 1], [1, 1]), weight)


def _as_maps(heatmap: Any, name: str) -> tuple[torch.Tensor, bool]:
    """(B, 1, H, W) float64 and whether the input was a single map."""
    maps = torch.as_tensor(np.asarray(heatmap.detach().cpu() if torch.is_tensor(heatmap) else heatmap),
                           dtype=torch.float64)
    if maps.ndim == 3 and maps.shape[-1] == 1 and maps.shape[0] > 1:
        maps = maps[..., 0]  # (H, W, 1), as TensorFlow decodes a grey JPEG
    if maps.ndim not in (2, 3) or min(maps.shape[-2:]) < 1:
        raise InvalidParameterError(f"{name} must be one map (H, W) or a batch (B, H, W), got shape "
                                    f"{tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise InvalidParameterError(f"{name} holds NaN or infinite values; give finite maps")
    single = maps.ndim == 2
    return (maps[None] if single else maps)[:, None], single


def human_map(
    heatmap: Any,
    size: int = HUMAN_MAP_SIZE,
    *,
    grid: int = BLUR_GRID,
    kernel_size: int = BLUR_KERNEL_SIZE,
    sigma: float = BLUR_SIGMA,
) -> np.ndarray:
    """ClickMe's human map as Harmonization makes it from a decoded heatmap: float32 (size, size).

    `heatmap` is (H, W) (or (H, W, 1)) or a batch (B, H, W), numpy or torch, on ClickMe's 0-255
    scale. Steps (``parse_clickme_prototype``), computed in float64:

    1. bilinear resize to ``grid x grid`` (64) as TensorFlow 2's ``tf.image.resize``: half-pixel
       centres, no antialiasing (``F.interpolate(mode="bilinear", align_corners=False)``);
    2. blur with :func:`harmonization_kernel` (10 x 10, sigma 10) as ``tf.nn.conv2d(..., "SAME")``:
       a cross-correlation with zero padding of ``(k - 1) // 2`` before and the rest after in each
       axis (4 above/left and 5 below/right for k = 10), so the borders darken, the lower and
       right ones more;
    3. bilinear resize to ``size x size`` (224) as in step 1.

    The result is not normalised (it stays on the heatmap's scale). The keywords exist for
    :func:`blurred_object_maps` and the tests; their defaults are Harmonization's.
    """
    for name, value in (("size", size), ("grid", grid)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(f"human_map needs {name} to be a positive int (pixels per side), got {value!r}")
    kernel = harmonization_kernel(kernel_size, sigma)
    maps, single = _as_maps(heatmap, "heatmap")
    out = _resize(_blur_same(_resize(maps, int(grid)), kernel), int(size))[:, 0]
    out = out.numpy().astype(np.float32)
    return out[0] if single else out


def blurred_object_maps(masks: Any, *, value: float = 255.0) -> np.ndarray:
    """"Human" maps for synthetic images: object masks blurred the way ClickMe heatmaps are.

    `masks` are (H, W) or (B, H, W) object masks (bool or 0/1) of square S x S images; the result
    is float32 of the same shape. Each mask is treated as a ClickMe heatmap drawn at ClickMe's
    256 x 256 (enlarged by nearest neighbour, the object at `value`, 255 like a full click
    density, the background 0), given Harmonization's exact preprocessing (:func:`human_map`:
    64 x 64 grid, the 10 x 10 sigma 10 blur, 224 x 224), and averaged down to S x S (area
    averaging: 7 x 7 blocks for S = 32). So in units of the image side the preprocessing is
    ClickMe's, scaled to the image: the blur is computed on a grid a quarter of the image side
    (64/256), its kernel spans 10/64 of the side with sigma 10/64 of the side, and it darkens the
    borders as ClickMe's does. (Scaling the grid and kernel directly, 32/256 of them, would leave
    an 8 x 8 grid and a 1.25-tap kernel, which cannot be drawn.)
    """
    maps, single = _as_maps(masks, "masks")
    height, width = maps.shape[-2:]
    if height != width:
        raise InvalidParameterError(f"masks must be square (ClickMe images are), got {height} x {width}; crop or pad "
                                    f"them to a square first")
    heatmaps = F.interpolate(maps * float(value), size=(CLICKME_SIDE, CLICKME_SIDE), mode="nearest")
    blurred = torch.as_tensor(human_map(heatmaps[:, 0]), dtype=torch.float64)[:, None]
    out = F.adaptive_avg_pool2d(blurred, (height, width))[:, 0].numpy().astype(np.float32)
    return out[0] if single else out


# ----------------------------------------------------------------------------- ViTA's subset


@dataclass(frozen=True)
class ClickMeSubset:
    """The records :func:`select_vita_subset` chose.

    indices: int64 positions of the chosen records (counting from 0 in the order given), sorted;
    labels: their classes; records: how many records were seen; duplicates: how many of them
    repeat an image seen earlier (same decoded pixels).
    """

    indices: np.ndarray
    labels: np.ndarray
    records: int
    duplicates: int

    def __len__(self) -> int:
        return len(self.indices)

    def images_per_class(self) -> dict[int, int]:
        """{number of images chosen of a class: how many classes have that many}, for classes chosen at all."""
        return dict(sorted(Counter(Counter(self.labels.tolist()).values()).items(), reverse=True))


def _pixels_and_label(item: Any, position: int) -> tuple[Any, int]:
    where = f"item {position} given to select_vita_subset"
    if isinstance(item, Mapping):
        _check_clickme_record(item, where)
        return item["image"], int(item["label"])
    if isinstance(item, tuple) and len(item) == 3:
        image, _, label = item
        if _is_int(label):
            return np.asarray(image), int(label)
    raise InvalidParameterError(
        f"{where} is a {type(item).__name__}; give ClickMe records (dicts from read_records) or samples "
        f"(image, heatmap, label) from load_clickme_val"
    )


def _pixel_digest(pixels: Any, position: int, jpeg_digests: dict[bytes, bytes]) -> bytes:
    if isinstance(pixels, bytes):
        jpeg = hashlib.sha256(pixels).digest()
        if jpeg not in jpeg_digests:  # identical JPEG bytes decode to identical pixels
            array = _decode_picture(pixels, f"item {position} given to select_vita_subset", "image")
            jpeg_digests[jpeg] = _pixel_digest(array, position, jpeg_digests)
        return jpeg_digests[jpeg]
    array = np.ascontiguousarray(pixels)
    return hashlib.sha256(repr((array.shape, array.dtype.str)).encode() + array.tobytes()).digest()


def select_vita_subset(samples: Iterable[Any], *, per_class: int = 3, seed: int = 0) -> ClickMeSubset:
    """ViTA's evaluation subset: up to `per_class` distinct images of each class, drawn with `seed`.

    `samples` are ClickMe records (dicts from :func:`read_records`, their ``image`` decoded here)
    or ``(image, heatmap, label)`` samples (:func:`load_clickme_val`), in the order of the shards.

    The rule: the records are taken in order (shard 0 to 16, each shard's records in file order).
    Two records show the same image when their decoded pixels are identical (their JPEG bytes
    need not be); only the first record of each image is kept, with its heatmap, and the later
    ones count as duplicates. For every class, `per_class` of its distinct images are then drawn
    at random without replacement by a generator seeded with (`seed`, class); a class with fewer
    distinct images keeps them all. The result lists the chosen records' positions in that order.
    """
    per_class = check_count("select_vita_subset", "per_class", per_class, " (images per class)")
    seed = check_count("select_vita_subset", "seed", seed)
    if per_class < 1:
        raise InvalidParameterError("select_vita_subset needs per_class >= 1 (images per class); got 0")
    seen: set[bytes] = set()
    jpeg_digests: dict[bytes, bytes] = {}
    by_class: dict[int, list[int]] = {}
    records = duplicates = 0
    for position, item in enumerate(samples):
        records += 1
        pixels, label = _pixels_and_label(item, position)
        if label < 0:
            raise DataIntegrityError(f"item {position} given to select_vita_subset has label {label}; ClickMe labels "
                                     f"are ImageNet classes 0-999. Use the ClickMe validation shards.")
        digest = _pixel_digest(pixels, position, jpeg_digests)
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        by_class.setdefault(label, []).append(position)
    chosen: list[int] = []
    for label, positions in by_class.items():
        if len(positions) <= per_class:
            chosen.extend(positions)
        else:
            generator = np.random.default_rng([seed, label])
            chosen.extend(np.asarray(positions)[generator.choice(len(positions), per_class, replace=False)].tolist())
    indices = np.array(sorted(chosen), dtype=np.int64)
    label_of = {position: label for label, positions in by_class.items() for position in positions}
    labels = np.array([label_of[position] for position in indices.tolist()], dtype=np.int64)
    return ClickMeSubset(indices, labels, records, duplicates)
