"""Which format a path names: the suffix decides (a folder is an Orbax checkpoint);
pickle files are named and refused."""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from .._errors import FormatError

_SCHEME = re.compile(r'([A-Za-z][A-Za-z0-9+.-]*)://')

SHARD_INDEX = '.safetensors.index.json'  # Hugging Face's sharded checkpoints (``_shards``)
PICKLE_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt', '.pkl', '.pickle')
PICKLE_MESSAGE = (
    '{path!r} is a pickle file (PyTorch .pt/.pth/.bin): it is not read, as unpickling can run '
    'code. Convert it once where you trust it: in PyTorch, `from safetensors.torch import '
    "save_model; save_model(model, 'model.safetensors')` (or `save_file(state_dict, ...)`), "
    'then load the .safetensors file'
)


def scheme_of(path: str) -> str | None:
    """The scheme of a URL (``'gs'`` for ``'gs://bucket/ckpt'``); None for a local path."""
    m = _SCHEME.match(os.fspath(path))
    return m.group(1).lower() if m else None


def format_of(path: str) -> str:
    """'safetensors', 'msgpack', 'npz', 'orbax' or 'shards' (a ``*.safetensors.index.json``,
    or a folder holding one or a ``.safetensors`` file), from the path (suffixes in any case).

    Raises:
      FormatError: For a pickle file (with how to convert it safely) or an
        unknown suffix.
    """
    p = os.fspath(path)
    low = p.lower()
    if scheme_of(p) and low.endswith(('.safetensors', '.msgpack', '.npz')):
        raise FormatError(
            f'{p!r}: only Orbax folders are read and written at a URL (through Orbax and '
            'etils.epath); copy the file to a local path first, or save to a folder URL'
        )
    if low.endswith('.safetensors'):
        return 'safetensors'
    if low.endswith('.msgpack'):
        return 'msgpack'
    if low.endswith('.npz'):
        return 'npz'
    if low.endswith(SHARD_INDEX) or (os.path.isdir(p) and is_hf_folder(p)):
        return 'shards'
    if low.endswith(PICKLE_SUFFIXES):
        raise FormatError(PICKLE_MESSAGE.format(path=p))
    if scheme_of(p):  # a URL names an Orbax folder (Orbax reads and writes gs://, s3://)
        return 'orbax'
    if p.endswith(os.sep) or os.path.isdir(p) or not os.path.splitext(p)[1]:
        return 'orbax'
    raise FormatError(
        f'cannot tell the format of {p!r}: use a .safetensors or .msgpack file, '
        'or a directory (no suffix) for an Orbax checkpoint'
    )


def is_hf_folder(folder: str) -> bool:
    """Whether ``folder`` holds a Hugging Face checkpoint (a safetensors index,
    ``model.safetensors`` or one ``.safetensors`` file) rather than an Orbax one."""
    names = os.listdir(folder)
    files = sum(n.endswith('.safetensors') for n in names)
    return 'model.safetensors' in names or files == 1 or any(n.endswith(SHARD_INDEX) for n in names)


def regular_size(path: str, fd: int) -> int:
    """The size of the open file ``fd``, which must be a regular file.

    Raises:
      FormatError: For a device, pipe or socket (``/dev/zero`` would be read
        until memory runs out).
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(
            f'{path!r} is not a regular file (a device, pipe, socket or folder); '
            'checkpoints are read from files'
        )
    return st.st_size


def read_regular_file(path: str) -> bytes:
    """The bytes of a regular file, read up to the size it has when opened.

    Raises:
      FormatError: If ``path`` is not a regular file.
    """
    with open_regular(path) as f:
        return f.read(regular_size(path, f.fileno()))


def open_regular(path: str) -> Any:
    """``path`` opened for binary reading without blocking on a FIFO (and a
    folder opened too), so that :func:`regular_size` can refuse them."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    return os.fdopen(fd, 'rb')
