"""Finding tied or duplicated leaves in a tree (the same array, equal values,
or one the transpose of another)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._flatten import flatten_with_paths
from ._keys import unbox_all
from ._leaves import is_array, readable
from ._moments import as_auto, fetch_replicated, is_global, leaf_rows
from ._patterns import compile_pattern
from ._tying import Ties, transpose
from ._typing import Pattern, PyTree

__all__ = ['TieGroup', 'find_ties']


@dataclasses.dataclass(frozen=True)
class TieGroup:
    """Leaves holding the same values (see :func:`find_ties`).

    Attributes:
      source: The path the others are tied to (see :func:`find_ties`).
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


def _memory(x: Any) -> Any:
    """Where a leaf's data lies: a NumPy array's (a torch tensor read as one
    shares its storage) data pointer; another array's identity."""
    if isinstance(x, np.ndarray):
        return ('ptr', x.__array_interface__['data'][0])
    return ('id', id(x))


def _own_order(tree: PyTree, paths_: tuple[str, ...]) -> list[tuple[int, int]]:
    """Each leaf's rank in the tree's own order: dicts in insertion order (a
    PyTorch ``state_dict`` lists the embedding before the head tied to it; a
    Flax tree its modules as they were made), not JAX's sorted keys."""
    own: dict[str, int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*prefix, str(k)))
        elif type(node) in (list, tuple):
            for j, v in enumerate(node):
                walk(v, (*prefix, str(j)))
        else:
            own.setdefault('/'.join(prefix), len(own))

    walk(tree, ())
    ranks = []
    for i, p in enumerate(paths_):
        q = p
        while q not in own and '/' in q:  # a leaf inside another container: its node's rank
            q = q.rsplit('/', 1)[0]
        ranks.append((own.get(q, len(own)), i))
    return ranks


def _buckets(leaves: list[Any], transposed: bool, constants: bool) -> dict[Any, list[int]]:
    """Candidate groups: leaves of one shape (up to a transpose), dtype and
    fingerprint (sum, sum of squares, min, max: invariant under transposition).
    A leaf holding one repeated value (any size: a zero bias, a counter) is a
    candidate only with leaves sharing its memory, unless ``constants``."""
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
        if not constants and fp is not None and fp[2] == fp[3]:
            key = (*key, _memory(leaves[i]))  # a constant leaf ties only with its own memory
        buckets.setdefault(key, []).append(i)
    return buckets


def _group(
    i: int, same: list[int], trans: list[int], paths_: tuple[str, ...], rank: Any, pred: Any
) -> TieGroup:
    """The group with its source chosen: the first leaf (in the tree's own
    order) that ``prefer`` matches, else the first; the others alias it, and
    those of the other orientation are its transposes."""
    members = sorted([i, *same, *trans], key=rank)
    preferred = [k for k in members if pred is not None and pred(paths_[k])]
    src = (preferred or members)[0]
    straight, turned = ([i, *same], trans) if src in (i, *same) else (trans, [i, *same])
    return TieGroup(
        paths_[src],
        tuple(paths_[k] for k in sorted(straight, key=rank) if k != src),
        tuple(paths_[k] for k in sorted(turned, key=rank)),
    )


def find_ties(
    tree: PyTree,
    *,
    transposed: bool = False,
    constants: bool = False,
    prefer: Pattern | None = None,
) -> list[TieGroup]:
    """Finds groups of leaves with identical values (or the same memory).

    Leaves are bucketed by shape, dtype and a fingerprint (sum, sum of
    squares, min, max: invariant under transposition), and only leaves in one
    bucket are compared exactly, so a 5,000-leaf tree costs one statistics
    pass, not 12.5 million comparisons. Leaves sharing memory (one array in
    two places, NumPy views of one buffer, PyTorch tensors sharing storage as a
    ``state_dict`` holds tied weights) are ties whatever they hold. Arrays
    sharded over several processes (multi-host) are fingerprinted and compared
    where they lie, by jitted reductions: a collective call, made by every process.

    Args:
      tree: Any pytree of concrete arrays (a PyTorch ``state_dict`` too).
      transposed: Also find leaves that are the transpose of another.
      constants: Also group leaves that hold one repeated value without
        sharing memory (zero biases, unit LayerNorm scales of fresh
        parameters, every BatchNorm's ``num_batches_tracked`` are equal
        without being ties).
      prefer: A pattern: in each group, the first leaf it matches is the
        source (``prefer='**embed*'``).

    Returns:
      One :class:`TieGroup` per group of two or more; each source is the
      preferred leaf, else the group's first in the tree's own order (dicts in
      insertion order: a ``state_dict``'s embedding before the head tied to
      it), so ``group.to_ties()`` keeps the tensor a model is built from.
      Groups in the order of their sources.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> w = jnp.arange(6.0).reshape(2, 3)
      >>> ptp.find_ties({'a': w, 'b': w + 0, 'c': w.T, 'd': w + 1}, transposed=True)
      [TieGroup(source='a', aliases=('b',), transposed=('c',))]
      >>> ptp.find_ties({'wte': w, 'head': w + 0})  # its own order, not sorted
      [TieGroup(source='wte', aliases=('head',), transposed=())]
    """
    leaves, _, paths_ = flatten_with_paths(tree)
    leaves = readable(unbox_all(leaves))
    ranks = _own_order(tree, paths_)
    rank = ranks.__getitem__
    pred = compile_pattern(prefer) if prefer is not None else None
    groups = []
    claimed: set[int] = set()
    for members in _buckets(leaves, transposed, constants).values():
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
                groups.append(_group(i, same, trans, paths_, rank, pred))
    index = {p: n for n, p in enumerate(paths_)}
    return sorted(groups, key=lambda g: ranks[index[g.source]])
