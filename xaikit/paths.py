"""Paths given on the command line: made absolute against the caller's folder, and checked before any work.

The commands hand their paths to tools that resolve relative paths against other folders
(Jupyter Book resolves ``--toc`` against the book's folder), so the command line makes every
path absolute first. An output path is checked before the work that fills it: a benchmark
or a notebook run must not end in a raw ``IsADirectoryError``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidParameterError


def absolute(path: Path | str) -> Path:
    """`path` against the current folder, ``~`` expanded, ``..`` and links resolved."""
    return Path(path).expanduser().resolve()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, option: str, what: str) -> None:
    """The folders above `path` exist or can be made (none of them is a file, the nearest existing one is writable)."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise InvalidParameterError(
            f"{option} {path}: {ancestor} is a file, not a folder, so the {what} cannot be made there; "
            "give a path under a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {path}: the folder {ancestor} is not writable; give a path you can write to")


def check_output_file(path: Path, option: str) -> Path:
    """`path` (absolute) if a file can be written there: not a folder, under folders that exist or can be made."""
    path = absolute(path)
    if path.is_dir():
        raise InvalidParameterError(f"{option} {path} is a folder; give a file name, e.g. {path / 'bench.json'}")
    _check_creatable(path, option, "file")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidParameterError(f"{option} {path} is not writable; give another file name")
    return path


def check_output_folder(path: Path, option: str, alternative: str = "") -> Path:
    """`path` (absolute) if it is a folder or can be made one: not a file, under folders that exist or can be made.

    `alternative` ends the message when `path` is a file (e.g. "or leave out --output-dir").
    """
    path = absolute(path)
    if path.exists() and not path.is_dir():
        raise InvalidParameterError(
            f"{option} {path} is a file, not a folder; give a folder (it is made when missing){alternative}"
        )
    _check_creatable(path, option, "folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {path} is not writable; give a folder you can write to")
    return path
