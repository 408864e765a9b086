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
  through;
- the file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the
  process umask), not the ``0o600`` of a temporary file, so group members and import services
  can read plans and DICOM exports on a shared server; a regular file that is overwritten keeps
  its own permission bits.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
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
    mode = _new_file_mode(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _set_mode(f.fileno(), tmp, mode)
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


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where possible.

    Linux reports it in ``/proc/self/status`` (line ``Umask:``, kernel 4.7+), which is safe with
    concurrent threads. Elsewhere it is read by setting a restrictive umask (0o077) and restoring
    the old one at once; a file another thread creates in that instant is then at worst more
    private than intended, never more open.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old & 0o777


def _new_file_mode(path: str, overwrite: bool) -> int:
    """Permission bits for the file written to ``path``: those of the regular file it replaces
    (``overwrite``; a symlink is replaced, not followed, so it does not count), else
    ``0o666 & ~umask`` as for ``open(path, "w")``."""
    if overwrite:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~_umask()


def _set_mode(fd: int, tmp: str, mode: int) -> None:
    """Give the temporary file (created 0o600 by mkstemp) its final permission bits."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows before Python 3.13: only the read-only flag is meaningful there
        os.chmod(tmp, mode)


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
