"""Safe file writing: unique temporary files, atomic renames, exclusive creation, no links.

Every writer in bioplan (plan archives, DICOM objects, metrics records) goes through
:func:`atomic_write`, so that

- a reader never sees a half-written file (the data go to a unique temporary file in the target
  folder, created with ``O_EXCL`` so an existing file or symlink there is never followed, then
  renamed into place);
- of two concurrent writers to one path with ``overwrite=False`` exactly one succeeds and the
  other gets :class:`FileExistsError` (the final step is a hard link, which fails if the name
  exists, instead of a rename, which would replace it);
- with ``overwrite=True`` a symlink at the target is replaced by the new file, never written
  through.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], overwrite: bool = False) -> str:
    """Write a file atomically.

    Parameters
    ----------
    path : target file
    write : called with a binary file object open for writing; it writes the whole content
    overwrite : replace an existing file (or symlink) at ``path``; otherwise an existing name
        raises :class:`FileExistsError`, checked atomically at the end

    Returns
    -------
    the path written, as a string
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"{path}: is a folder; expected a file path")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _publish_exclusive(tmp: str, path: str) -> None:
    """Give ``tmp`` the name ``path`` only if that name does not exist (atomic)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(f"{path}: exists (written meanwhile?); pass overwrite=True to replace "
                              "it") from None
    except OSError:
        # file systems without hard links: reserve the name exclusively, then move the data in
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)))
        except FileExistsError:
            raise FileExistsError(f"{path}: exists (written meanwhile?); pass overwrite=True to replace "
                                  "it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> str:
    """:func:`atomic_write` of a byte string."""
    return atomic_write(path, lambda f: f.write(data), overwrite)
