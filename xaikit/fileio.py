"""Atomic file writes with the permissions the user's umask gives.

Everything xaikit writes into a cache (decoded data, downloads, training
checkpoints, trained weights and model cards) goes through :func:`atomic_write`:
the data is written under a temporary name in the destination folder, flushed to
disk, then renamed over the destination, so a crash never leaves a half-written
file and a reader never sees one.

The temporary file is created with mode ``0o666`` filtered by the umask, exactly
as ``open(path, "w")`` would create it, and not with the owner-only ``0o600`` of
``tempfile.mkstemp``/``NamedTemporaryFile``: with a group-friendly umask (e.g.
``0o002``) a cache shared by a group stays readable and writable by the group.
"""

from __future__ import annotations

import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import InvalidParameterError

__all__ = ["atomic_write", "current_umask", "make_temp_dir", "umask_mode"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read with
    ``os.umask``, which must set it to read it: it is set to ``0o022`` for that
    instant (under a lock), so a file another thread creates meanwhile is at
    worst not group-writable, never world-writable.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def umask_mode(base: int = 0o666) -> int:
    """`base` filtered by the umask: the mode ``open`` (0o666) or ``mkdir`` (0o777) would give."""
    return base & ~current_umask() & 0o7777


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success it replaces `path`.

    `mode` is ``"wb"`` (default) or ``"w"`` (text, `encoding` defaults to UTF-8).
    On an exception the temporary file is removed and `path` is left as it was.
    The file gets the umask's permissions (``0o666 & ~umask``); missing parent
    folders are created (``0o777 & ~umask``).
    """
    if mode not in ("wb", "w"):
        raise InvalidParameterError(f"atomic_write opens files with mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = _temporary_name(path)
        try:
            # O_EXCL: never follow a planted link or reuse another writer's file. The kernel
            # applies the umask to 0o666, as it does for open(path, "w").
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        if mode == "w":
            handle = os.fdopen(descriptor, "w", encoding=encoding or "utf-8")
        else:
            handle = os.fdopen(descriptor, "wb")
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` with the umask's permissions (``0o777 & ~umask``).

    Unlike ``tempfile.mkdtemp`` (always ``0o700``), a folder later renamed into a
    shared cache stays readable by the users the umask admits.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            folder.mkdir(mode=0o777)
            return folder
        except FileExistsError:
            continue
