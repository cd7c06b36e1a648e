"""Hashed data set entries (d2l style), verified downloads and safe archive extraction.

Each downloadable file is described by ``data_manifests/<name>.json``::

    {"name": "cifar10", "url": "https://...", "filename": "cifar-10-binary.tar.gz",
     "size": 170052171, "sha256": "...", "licence": "...", "description": "...",
     "members": ["cifar-10-batches-bin/test_batch.bin", ...]}   # members optional

Optional fields: ``members``; ``md5`` (the provider's published md5); ``obtain`` (how to get a
file that cannot be downloaded automatically, e.g. behind a registration: :func:`fetch` then only
uses a copy placed in the cache). ``sha256`` and ``size`` are ``null`` where the provider
publishes none (xaikit never invents a checksum).

:func:`fetch` downloads it once into ``<cache>/<name>/<filename>`` through pooch
(progress bar, hash check) and afterwards uses the cached copy without any
network access. The check is the manifest's sha256; without one, the published md5;
without either, trust on first use: the sha256 of the first copy seen is recorded in
``<cache>/<name>/<filename>.sha256.json`` (with a warning) and later copies must match it.
With only an md5, the sha256 computed at the first check is recorded the same way.
:func:`safe_extract` unpacks tar/zip archives of plain files and folders, refusing members
that would land outside the target folder, links, and names given twice.
"""

from __future__ import annotations

import functools
import gzip
import json
import lzma
import os
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISLNK
from typing import Any, Callable, NoReturn

import pooch
from pooch.downloaders import choose_downloader

from xaikit.errors import (
    DataIntegrityError,
    DataUnavailableError,
    InvalidParameterError,
    UnsafeArchiveError,
    XaikitError,
)
from xaikit.fileio import atomic_write, umask_mode

__all__ = [
    "Manifest",
    "available_manifests",
    "cache_dir",
    "cached_path",
    "check_recorded_hash",
    "fetch",
    "hash_record_path",
    "load_manifest",
    "default_manifest_dir",
    "memoised_sha256",
    "safe_extract",
    "sha256_of",
]

MANIFEST_DIR_ENV = "XAIKIT_MANIFEST_DIR"
CACHE_DIR_ENV = "XAIKIT_CACHE_DIR"

_REQUIRED_FIELDS = ("name", "url", "filename", "size", "sha256", "licence", "description")
_OPTIONAL_FIELDS = ("members", "md5", "obtain")

# What the standard library raises on a truncated or corrupt tar/gzip/xz/zip stream. Not every
# OSError: a full disk or a permission problem must not be reported as a corrupt archive.
CORRUPT_ARCHIVE_ERRORS = (
    tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError,
)

Downloader = Callable[[str, Any, Any], None]


@dataclass(frozen=True)
class Manifest:
    """One downloadable file: where it lives, what it must hash to, and its terms of use."""

    name: str
    url: str
    filename: str
    size: int | None  # None: the provider publishes no size
    sha256: str | None  # None: the provider publishes no sha256 (md5, or trust on first use)
    licence: str
    description: str
    members: tuple[str, ...] = ()
    md5: str | None = None
    obtain: str | None = None  # how to get a file that cannot be downloaded automatically

    @property
    def known_hash(self) -> str | None:
        """The published hash in pooch's ``"algorithm:hex"`` notation (sha256, else md5), or None."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None

    def describe_file(self) -> str:
        """``"<size> bytes, sha256 <hex>"``, saying which of the two the provider does not publish."""
        size = f"{self.size} bytes" if self.size is not None else "size not published"
        if self.known_hash is None:
            return f"{size}, no published checksum"
        algorithm, digest = self.known_hash.split(":")
        return f"{size}, {algorithm} {digest}"


def default_manifest_dir() -> Path:
    """Folder holding the ``<name>.json`` entries (``$XAIKIT_MANIFEST_DIR`` overrides it)."""
    override = os.environ.get(MANIFEST_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "data_manifests"


def cache_dir() -> Path:
    """Root of xaikit's download cache: ``$XAIKIT_CACHE_DIR``, else ``~/.cache/xaikit``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "xaikit"


def available_manifests(manifest_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Names of all manifests in the manifest folder, sorted."""
    folder = Path(manifest_dir) if manifest_dir is not None else default_manifest_dir()
    if not folder.is_dir():
        return ()
    return tuple(sorted(path.stem for path in folder.glob("*.json")))


def load_manifest(name: str, manifest_dir: str | os.PathLike | None = None) -> Manifest:
    """Read and validate ``<manifest_dir>/<name>.json``."""
    folder = Path(manifest_dir) if manifest_dir is not None else default_manifest_dir()
    path = folder / f"{name}.json"
    if not isinstance(name, str) or Path(name).name != name or not path.is_file():
        names = available_manifests(folder)
        listing = ", ".join(names) if names else "none"
        raise InvalidParameterError(
            f"No data manifest named {name!r} in {folder}. Available manifests: {listing}. "
            f"Use one of those names, or set {MANIFEST_DIR_ENV} to the folder holding {name}.json."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataIntegrityError(f"Manifest {path} is not valid JSON ({err}); fix or restore the file.") from err
    return _manifest_from_dict(raw, path)


def _manifest_from_dict(raw: Any, path: Path) -> Manifest:
    def invalid(problem: str) -> DataIntegrityError:
        return DataIntegrityError(f"Manifest {path} is invalid: {problem}. Fix the file.")

    if not isinstance(raw, dict):
        raise invalid("the top level must be a JSON object")
    missing = [key for key in _REQUIRED_FIELDS if key not in raw]
    if missing:
        raise invalid(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        allowed = ", ".join(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)
        raise invalid(f"unknown field(s) {', '.join(unknown)} (allowed: {allowed})")
    for key in ("name", "url", "filename", "licence", "description"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise invalid(f"{key!r} must be a non-empty string")
    if raw["name"] != path.stem:
        raise invalid(f"'name' is {raw['name']!r} but the file is named {path.name}")
    sha256 = raw["sha256"]
    if sha256 is not None:
        if not _is_hex(sha256, 64):
            raise invalid("'sha256' must be 64 hexadecimal digits, or null where the provider publishes none")
        sha256 = sha256.lower()
    size = raw["size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise invalid("'size' must be a positive integer (bytes), or null where the provider publishes none")
    if Path(raw["filename"]).name != raw["filename"]:
        raise invalid("'filename' must be a bare file name, without folders")
    members = raw.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise invalid("'members' must be a list of paths inside the archive")
    md5 = raw.get("md5")
    if md5 is not None and not _is_hex(md5, 32):
        raise invalid("'md5' must be 32 hexadecimal digits")
    obtain = raw.get("obtain")
    if obtain is not None and (not isinstance(obtain, str) or not obtain.strip()):
        raise invalid("'obtain' must be a non-empty string saying how to get the file")
    return Manifest(
        name=raw["name"],
        url=raw["url"],
        filename=raw["filename"],
        size=size,
        sha256=sha256,
        licence=raw["licence"],
        description=raw["description"],
        members=tuple(members),
        md5=md5.lower() if md5 else None,
        obtain=obtain,
    )


def _is_hex(value: Any, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and all(c in "0123456789abcdef" for c in value.lower())


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return pooch.file_hash(str(path), alg="sha256")


def cached_path(manifest: Manifest, cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch` keeps (and looks for) the manifest's file."""
    root = Path(cache) if cache is not None else cache_dir()
    return root.expanduser() / manifest.name / manifest.filename


def fetch(
    manifest: Manifest,
    *,
    cache: str | os.PathLike | None = None,
    downloader: Downloader | None = None,
    progress: bool = True,
) -> Path:
    """Return the local path of the manifest's file, downloading and verifying it if needed.

    A copy already in the cache with the right hash is used without network access,
    so a manually downloaded file placed at :func:`cached_path` works offline.
    ``downloader`` is pooch's download hook ``(url, output_file, pooch)``.
    Without a published sha256 the copy is also checked by :func:`check_recorded_hash`
    (trust on first use). A manifest with ``obtain`` is never downloaded: only a copy
    placed in the cache is used.
    """
    destination = cached_path(manifest, cache)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataUnavailableError(
            f"Cannot create the cache folder {destination.parent} ({err}). "
            f"Set {CACHE_DIR_ENV} to a writable folder."
        ) from err

    if manifest.obtain:

        def download(url: str, output_file: Any, pooch_instance: Any) -> None:
            stale = (
                f" The file already at {destination} does not match the published hash; replace it."
                if destination.is_file()
                else ""
            )
            raise DataUnavailableError(
                f"{manifest.name} ({manifest.filename}, {manifest.describe_file()}) cannot be downloaded "
                f"automatically. {manifest.obtain} Then place {manifest.filename} at {destination}.{stale}"
            )

    else:
        download = downloader if downloader is not None else choose_downloader(manifest.url, progressbar=progress)
    algorithm = manifest.known_hash.split(":")[0] if manifest.known_hash else None
    received: dict[str, Any] = {}

    def recording_downloader(url: str, output_file: Any, pooch_instance: Any) -> None:
        # Remember what arrived, so a hash mismatch can report the actual sha256 and size.
        download(url, output_file, pooch_instance)
        if isinstance(output_file, (str, os.PathLike)) and os.path.isfile(output_file):
            # pooch downloads into a tempfile (mode 0o600) and moves it into the cache: give it the
            # umask's permissions, as open() would, so a shared cache stays readable.
            os.chmod(output_file, umask_mode())
            received["sha256"] = sha256_of(output_file)
            received["size"] = os.path.getsize(output_file)
            if algorithm and algorithm != "sha256":
                received[algorithm] = pooch.file_hash(str(output_file), alg=algorithm)

    try:
        local = pooch.retrieve(
            manifest.url,
            known_hash=manifest.known_hash,
            fname=manifest.filename,
            path=destination.parent,
            progressbar=progress,
            downloader=recording_downloader,
        )
    except XaikitError:
        raise
    except ValueError as err:
        expected = manifest.known_hash.split(":")[1] if manifest.known_hash else None
        if algorithm not in received or received[algorithm] == expected:
            raise
        raise DataIntegrityError(
            f"The download of {manifest.filename} from {manifest.url} is corrupted or truncated: "
            f"{algorithm} expected {expected} but got {received[algorithm]} "
            f"({received['size']} bytes received, {manifest.size or 'size not published, so unknown'} expected). "
            f"The bad download was removed; retry, and if it fails again download the file "
            f"yourself and place it at {destination}.{_stale_file_note(destination)}"
        ) from err
    except OSError as err:  # requests' errors and socket/FTP errors are OSErrors
        raise DataUnavailableError(
            f"Could not download {manifest.url} ({type(err).__name__}: {err}). "
            f"{manifest.name} needs the file {manifest.filename} ({manifest.describe_file()}). "
            f"Check your network connection, or download it on another machine and place it at "
            f"{destination} (or set {CACHE_DIR_ENV} to a folder containing {manifest.name}/{manifest.filename}); "
            f"it will then be used offline.{_stale_file_note(destination)}"
        ) from err
    local = Path(local)
    if manifest.sha256 is None:
        check_recorded_hash(manifest, local, cache=cache)
    return local


def fetch_locally_or_download(manifest: Manifest, *, download: bool, what: str, how_to_get: str, hint: str,
                              downloader: Downloader | None = None) -> Path:
    """`fetch`, refusing to download when ``download`` is False (the error names `what` and says `how_to_get` it),
    and adding `hint` (another place to put the file) to a failed download's error."""
    def refuse_download(url: str, output_file: object, pooch_instance: object) -> None:
        raise DataUnavailableError(f"{what} is not available locally and download=False. {how_to_get}")

    try:
        return fetch(manifest, downloader=downloader if download else refuse_download)
    except DataUnavailableError as err:
        if not download:
            raise
        raise DataUnavailableError(f"{err} {hint}") from err


def _stale_file_note(destination: Path) -> str:
    """Explain a file already at the destination whose hash is wrong (pooch tried to replace it)."""
    if not destination.is_file():
        return ""
    return (
        f" Note: the file already at {destination} does not have the expected hash "
        f"(it is corrupted, truncated or another version); delete or replace it."
    )


def hash_record_path(manifest: Manifest, cache: str | os.PathLike | None = None) -> Path:
    """Where the sha256 of the first copy seen of a manifest without a published sha256 is kept."""
    destination = cached_path(manifest, cache)
    return destination.with_name(f"{destination.name}.sha256.json")


@functools.lru_cache(maxsize=32)
def _memoised_sha256(resolved: str, size: int, mtime_ns: int) -> str:
    return sha256_of(resolved)


def memoised_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_of`, computed once per process for each (path, size, modification time)."""
    stat = Path(path).stat()
    return _memoised_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


_WARNED_UNVERIFIED: set[str] = set()


def check_recorded_hash(
    manifest: Manifest, path: str | os.PathLike, *, cache: str | os.PathLike | None = None
) -> str:
    """Check `path` against the sha256 recorded for `manifest` (trust on first use); return its sha256.

    For manifests without a published sha256. The first copy checked (downloaded, placed in the
    cache, or a local file a loader was pointed at) has its sha256 and size recorded at
    :func:`hash_record_path`; every later copy must match them, so a truncated, corrupted or
    replaced file is noticed. When the provider publishes no checksum at all, recording the
    first copy warns (once per process) that it could not be checked.
    """
    path = Path(path)
    record_path = hash_record_path(manifest, cache)
    stat = path.stat()
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            expected_sha256, expected_size = str(record["sha256"]), int(record["size"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataIntegrityError(
                f"The hash record {record_path} is unreadable ({type(err).__name__}: {err}). Delete it; the next "
                f"load records the sha256 of {manifest.filename} again."
            ) from err
        digest = None if stat.st_size != expected_size else _memoised_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if digest != expected_sha256:
            raise DataIntegrityError(
                f"{path} ({stat.st_size} bytes{', sha256 ' + digest if digest else ''}) is not the copy of "
                f"{manifest.filename} first used here ({expected_size} bytes, sha256 {expected_sha256}, recorded in "
                f"{record_path}): it is truncated, corrupted or another version. Delete it and download "
                f"{manifest.url} again; if you trust this file instead, delete {record_path}."
            )
        return digest
    digest = _memoised_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    record = {
        "name": manifest.name,
        "url": manifest.url,
        "filename": manifest.filename,
        "size": stat.st_size,
        "sha256": digest,
        "checked_against": f"md5 {manifest.md5} published by the provider" if manifest.md5 else
        "nothing: the provider publishes no checksum (trust on first use)",
    }
    with atomic_write(record_path, "w") as handle:
        json.dump(record, handle, indent=2)
    if manifest.md5 is None and manifest.name not in _WARNED_UNVERIFIED:
        _WARNED_UNVERIFIED.add(manifest.name)
        warnings.warn(
            f"{manifest.filename} ({path}) could not be checked against a published hash: {manifest.url} publishes "
            f"none. Its sha256 {digest} ({stat.st_size} bytes) is now recorded in {record_path}, and later loads "
            f"must match it (trust on first use). If this copy may be incomplete or altered, delete it and "
            f"{record_path}, and download it again.",
            UserWarning,
            stacklevel=2,
        )
    return digest


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tar (optionally gz/bz2/xz) or zip archive into ``target`` and return ``target``.

    Every member is checked before anything is written; the archive may hold only files and
    folders, each named once. Absolute paths, ``..`` escapes, links (symbolic or hard, wherever
    they point), devices and FIFOs, and a name given twice (the later member would silently
    replace the earlier) raise :class:`UnsafeArchiveError`: a link inside the archive could make
    one file read as another, e.g. ``test_batch.bin`` as ``data_batch_1.bin``.
    Truncated or corrupt archives raise :class:`DataIntegrityError`.
    """
    archive = Path(archive)
    target = Path(target)
    if not archive.is_file():
        raise DataUnavailableError(f"Archive {archive} does not exist; check the path or download it again.")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root)
        else:
            _extract_tar(archive, root)
    except XaikitError:
        raise
    except tarfile.FilterError as err:  # the runtime check of filter="data" (e.g. links created mid-extraction)
        member = getattr(getattr(err, "tarinfo", None), "name", "?")
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: member {member!r} is unsafe ({err}). "
            f"Only extract archives from trusted sources."
        ) from err
    except CORRUPT_ARCHIVE_ERRORS as err:
        raise DataIntegrityError(
            f"Archive {archive} is truncated or corrupt ({type(err).__name__}: {err}). "
            f"Delete it and download it again."
        ) from err
    return target


_UNTRUSTED_ARCHIVE_FIX = "The archive is malicious or broken; do not use it: download the original again."


def _refuse(archive: Path, problem: str) -> NoReturn:
    raise UnsafeArchiveError(f"Refusing to extract {archive}: {problem}. {_UNTRUSTED_ARCHIVE_FIX}")


def _check_member_name(root: Path, archive: Path, name: str, is_dir: bool, seen: dict[str, bool]) -> None:
    """Refuse a member name that is absolute, leaves the target folder, or repeats an earlier one.

    `seen` maps each normalised name met so far to whether it was a folder; a folder may be
    listed twice (only its mode would change), anything else may not.
    """
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        _refuse(archive, f"member {name!r} has an absolute path")
    # Lexical check (fast for 50,000 members): the callers refuse links, so none can redirect a path.
    normalised = os.path.normpath(root / name)
    if os.path.commonpath([normalised, str(root)]) != str(root):
        _refuse(archive, f"member {name!r} has a path outside the target folder {root}")
    if normalised in seen and not (is_dir and seen[normalised]):
        _refuse(archive, f"member {name!r} appears twice, and the later copy would silently replace the earlier one")
    seen[normalised] = is_dir


def _extract_tar(archive: Path, root: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise XaikitError(
            "This Python's tarfile lacks extraction filters; upgrade to Python >= 3.10.12 or >= 3.11.4 "
            "to extract archives safely."
        )
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()  # reads the whole stream, so truncation is caught before writing
        seen: dict[str, bool] = {}
        for member in members:
            if member.issym() or member.islnk():
                kind = "symbolic link" if member.issym() else "hard link"
                _refuse(archive, f"member {member.name!r} is a {kind} (to {member.linkname!r}), so it would read as "
                                 f"another file; data archives hold only files and folders")
            if not (member.isfile() or member.isdir()):
                _refuse(archive, f"member {member.name!r} is a device or FIFO, not a file or folder")
            _check_member_name(root, archive, member.name, member.isdir(), seen)
        tar.extractall(root, members=members, filter="data")


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        seen: dict[str, bool] = {}
        for info in zf.infolist():
            # zipfile writes a Unix symlink entry as a plain file holding the link's target path.
            if S_ISLNK(info.external_attr >> 16):
                _refuse(archive, f"member {info.filename!r} is a symbolic link; data archives hold only files and "
                                 f"folders")
            _check_member_name(root, archive, info.filename, info.is_dir(), seen)
        corrupt_member = zf.testzip()  # CRC check of every member before writing anything
        if corrupt_member is not None:
            raise DataIntegrityError(
                f"Archive {archive} is corrupt: member {corrupt_member!r} fails its CRC check. "
                f"Delete it and download it again."
            )
        zf.extractall(root)
