"""Finding tied or duplicated leaves in a tree (the same array, equal values,
or one the transpose of another)."""

from __future__ import annotations

import builtins
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._flatten import flatten_with_paths
from ._keys import unbox_all
from ._leaves import is_array, readable
from ._moments import as_auto, fetch_replicated, is_global, leaf_rows
from ._tying import Ties, transpose
from ._typing import PyTree

__all__ = ['TieGroup', 'find_ties']


@dataclasses.dataclass(frozen=True)
class TieGroup:
    """Leaves holding the same values (see :func:`find_ties`).

    Attributes:
      source: The first path in flatten order.
      aliases: Paths holding identical values.
      transposed: Paths holding the transpose of ``source``.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g, = ptp.find_ties({'a': jnp.arange(3.0), 'b': jnp.arange(3.0)})
      >>> g.source, g.aliases, g.to_ties().aliases
      ('a', ('b',), ('b',))
    """

    source: str
    aliases: tuple[str, ...]
    transposed: tuple[str, ...] = ()

    def to_ties(self) -> Ties:
        """The :class:`Ties` that declares this group."""
        mapping: dict[str, Any] = {a: self.source for a in self.aliases}
        mapping.update({a: (self.source, transpose) for a in self.transposed})
        return Ties(mapping)


@jax.jit
def _equal(a: jax.Array, b: jax.Array) -> jax.Array:
    same = a == b
    if jnp.issubdtype(a.dtype, jnp.inexact):
        same = same | (jnp.isnan(a) & jnp.isnan(b))
    return jnp.all(same)


def _values(x: Any) -> Any:
    """A leaf for comparing: NumPy on the host; an array sharded over several
    processes stays where it lies (compared by a jitted reduction, collective)."""
    return as_auto(x) if is_global(x) else np.asarray(x)


def _swap(x: Any) -> Any:
    return jnp.swapaxes(x, -1, -2) if is_global(x) else np.swapaxes(x, -1, -2)


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN where the other holds NaN included."""
    if is_global(a) or is_global(b):
        return bool(fetch_replicated(_equal(a, b)))
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # dtypes without NaN (ints, bool)
        return bool(np.array_equal(a, b))


def find_ties(tree: PyTree, *, transposed: bool = False, constants: bool = False) -> list[TieGroup]:
    """Finds groups of leaves with identical values (or the same object).

    Leaves are bucketed by shape, dtype and a fingerprint (sum, sum of
    squares, min, max: invariant under transposition), and only leaves in one
    bucket are compared exactly, so a 5,000-leaf tree costs one statistics
    pass, not 12.5 million comparisons. Arrays sharded over several processes
    (multi-host) are fingerprinted and compared where they lie, by jitted
    reductions: a collective call, made by every process.

    Args:
      tree: Any pytree of concrete arrays.
      transposed: Also find leaves that are the transpose of another.
      constants: Also group leaves that hold one repeated value (zero biases,
        unit LayerNorm scales of fresh parameters are equal without being
        ties); without it such leaves group only when they are the same object.

    Returns:
      One :class:`TieGroup` per group of two or more, in flatten order.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> w = jnp.arange(6.0).reshape(2, 3)
      >>> ptp.find_ties({'a': w, 'b': w + 0, 'c': w.T, 'd': w + 1}, transposed=True)
      [TieGroup(source='a', aliases=('b',), transposed=('c',))]
    """

    leaves, _, paths_ = flatten_with_paths(tree)
    leaves = readable(unbox_all(leaves))
    idx = [i for i, x in enumerate(leaves) if is_array(x) and np.size(x) > 0]
    fps = leaf_rows([leaves[i] for i in idx])
    buckets: dict[Any, list[int]] = {}
    for i, fp in zip(idx, fps):
        shape = tuple(np.shape(leaves[i]))
        key_shape = tuple(sorted(shape[-2:])) + shape[:-2] if transposed else shape
        dtype = np.dtype(leaves[i].dtype).name
        prints = np.round(fp[[0, 1, 2, 3]], 6) if fp is not None else None
        # NaN != NaN: fingerprints of NaN-holding leaves compare by their text
        key: tuple[Any, ...] = (
            key_shape,
            dtype,
            None if prints is None else tuple(repr(v) for v in prints),
        )
        if not constants and fp is not None and fp[2] == fp[3] and np.size(leaves[i]) > 1:
            key = (*key, id(leaves[i]))  # a constant leaf ties only with itself
        buckets.setdefault(key, []).append(i)
    groups = []
    claimed: builtins.set[int] = builtins.set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        for j, i in enumerate(members):
            if i in claimed:
                continue
            same, trans = [], []
            a = _values(leaves[i])
            for k in members[j + 1 :]:
                if k in claimed:
                    continue
                b = _values(leaves[k])
                if leaves[k] is leaves[i] or (a.shape == b.shape and _same(a, b)):
                    same.append(k)
                elif (
                    transposed and a.ndim >= 2 and _swap(b).shape == a.shape and _same(a, _swap(b))
                ):
                    trans.append(k)
            if same or trans:
                claimed.update([i, *same, *trans])
                groups.append(
                    TieGroup(
                        paths_[i], tuple(paths_[k] for k in same), tuple(paths_[k] for k in trans)
                    )
                )
    order = {p: n for n, p in enumerate(paths_)}
    return sorted(groups, key=lambda g: order[g.source])
