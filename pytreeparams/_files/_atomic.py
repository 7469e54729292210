"""Atomic writes: a temporary file beside the target, flushed and fsynced,
then renamed over it (through a symlink to its target); the previous file is
untouched by a failure midway."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write_path(path: str, write: Callable[[str], None]) -> None:
    """Writes a file atomically through a writer that takes a file name.

    The content goes to a temporary file in the target's folder, is fsynced,
    then renamed over ``path`` (and the folder fsynced), so a failure midway
    (an exception, a full disk, a killed process) leaves the previous file
    as it was.

    Args:
      path: The target file.
      write: Called with the temporary file's name; it writes the content.

    Raises:
      Whatever ``write`` raises; the temporary file is then removed.
    """
    path = os.path.realpath(path)  # through a symlink to its target, the link kept
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'save: the folder {folder!r} does not exist; create it first')
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Writes a file atomically (see :func:`atomic_write_path`).

    Args:
      path: The target file; replaced only once the new content is on disk.
      write: Called with the open binary temporary file.

    Raises:
      Whatever ``write`` raises; the previous file is then left untouched.
    """

    def through(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            write(f)

    atomic_write_path(path, through)
