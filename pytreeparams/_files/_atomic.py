"""Atomic writes: a temporary file beside the target, flushed and fsynced,
then renamed over it (through a symlink to its target); the previous file is
untouched by a failure midway. The new file gets the mode ``open()`` would
give it (``0o666`` less the umask), or the replaced file's mode."""

from __future__ import annotations

import os
import secrets
import stat
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
    check_folder(folder)
    tmp, mode = _new_file(path)
    try:
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that made its own file
            os.chmod(tmp, mode)
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


def check_folder(folder: str) -> None:
    """Raises the error that says why ``folder`` cannot hold a new file.

    Raises:
      NotADirectoryError: If ``folder`` (or a folder above it) is a file.
      FileNotFoundError: If it does not exist.
    """
    if os.path.isdir(folder):
        return
    above = folder
    while above and not os.path.lexists(above):
        above = os.path.dirname(above) if os.path.dirname(above) != above else ''
    if above and not os.path.isdir(above):
        raise NotADirectoryError(
            f'save: {above!r} is a file, not a folder, so {folder!r} cannot hold the new file'
        )
    raise FileNotFoundError(f'save: the folder {folder!r} does not exist; create it first')


def _new_file(path: str) -> tuple[str, int]:
    """A new empty file beside ``path``: created as ``open()`` creates one (the
    umask applies), then given the mode of the file it will replace, if any;
    its name and that mode."""
    base = os.path.join(os.path.dirname(path), '.' + os.path.basename(path) + '.')
    while True:
        tmp = f'{base}{secrets.token_hex(4)}.tmp'
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - a name drawn twice
            continue
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            os.fchmod(fd, mode)
        except FileNotFoundError:  # a new file: the umask decided
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp, mode


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
