"""Global arrays to a single file (safetensors, msgpack, a sharded safetensors
checkpoint): in a multi-process job, gathered to every process and written by
process 0 when the caller asks (``gather=True``), else refused with the Orbax
route named. Orbax folders need neither: every process writes its own shards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from .._errors import FormatError
from .._flatten import flatten_with_paths
from .._keys import describe, unbox
from .._patterns import map_with_path
from .._typing import PyTree


def _is_global(x: Any) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _is_split(x: Any) -> bool:
    """A global array no process holds whole (a replicated one each holds)."""
    return _is_global(x) and not x.is_fully_replicated


def gather_global(tree: PyTree, path: str, gather: bool) -> tuple[PyTree, bool]:
    """``(tree, one_writer)``: ``tree`` as it is when every array is addressable
    here; else its global arrays on the host (a replicated one from this
    process's copy; with ``gather``, a split one gathered whole to every
    process by ``process_allgather``, a collective), written by process 0.

    Raises:
      FormatError: For a split global array without ``gather``, naming the
        leaf, its devices and the two routes; before anything is written.
    """
    leaves, _, paths = flatten_with_paths(tree)
    if not any(_is_global(unbox(x)) for x in leaves):
        return tree, False
    spread = [(p, unbox(x)) for p, x in zip(paths, leaves) if _is_split(unbox(x))]
    if spread and not gather:
        p, x = spread[0]
        here = len(x.sharding.addressable_devices)
        raise FormatError(
            f'save: {p!r} ({describe(x)}) is a global jax.Array: this process '
            f'({jax.process_index()} of {jax.process_count()}) holds {here} of its '
            f'{len(x.sharding.device_set)} devices ({len(spread)} such leaves), and a single '
            f'file ({path!r}) is written by one process. Save to a folder instead (Orbax: every '
            'process writes its own shards, ptp.save(folder, tree)), or pass gather=True to '
            'gather each array to every host and write from process 0 (every process calls '
            'save; each array must fit in host memory); nothing was written'
        )
    from jax.experimental import multihost_utils

    def fetch(_: str, x: Any) -> Any:
        if _is_split(x):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x.addressable_data(0)) if _is_global(x) else x

    return map_with_path(tree, fetch), True


@contextlib.contextmanager
def written_by_process_0(one_writer: bool, path: str) -> Iterator[bool]:
    """Yields whether this process writes; with ``one_writer``, only process 0 does,
    and at the end every process learns whether it succeeded (one broadcast), so
    that a failure on process 0 raises everywhere instead of leaving the others
    waiting."""
    if not one_writer:
        yield True
        return
    from jax.experimental import multihost_utils

    ok = np.int32(0)
    try:
        yield jax.process_index() == 0
        ok = np.int32(1)
    finally:  # process 0 reaches here after its write, or with its error
        done = int(multihost_utils.broadcast_one_to_all(ok))
    if not done:
        raise FormatError(
            f'save: process 0 failed to write {path!r} (its own error says why); '
            'the previous file, if any, is unchanged'
        )
