"""Flattening: a tree's leaves with their path strings (cached), and back.

Path strings are computed once per tree structure and cached, so repeated
calls on trees of the same structure (every training step) cost little more
than ``jax.tree_util.tree_flatten``.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import jax

from ._errors import StructureError
from ._keys import is_box, key_str, path_str, path_tuple, rebox, unbox
from ._messages import structure_mismatch_message, unspellable_key_message
from ._typing import FlatTree, Leaf, PyTree

CACHE_SIZE = 256  # tree structures (and pattern matches) remembered


# --------------------------------------------------------------------------
# Flattening with cached path strings.


class LRU(dict):
    """A tiny bounded cache (insertion order eviction), safe across threads:
    ``get`` is one dict lookup (atomic); ``put`` holds a lock while it evicts."""

    _lock = threading.Lock()

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            while len(self) >= CACHE_SIZE:
                self.pop(next(iter(self)), None)
            self[key] = value
        return value


PATHS_CACHE = LRU()
_GetAttrKey = jax.tree_util.GetAttrKey


def box_or(is_leaf: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
    """The ``is_leaf`` for ``jax.tree_util`` that keeps boxes whole, and the
    nodes the caller's ``is_leaf`` chooses."""
    if is_leaf is None:
        return is_box
    return lambda x: is_box(x) or is_leaf(x)


def _check_paths(key_strs: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The path strings of the leaves' key strings; refuses keys that make them ambiguous.

    A key holding ``/`` between non-empty parts (``'dense/kernel'``: a flat
    ``{path: leaf}`` mapping, as ``select`` and ``read_state_dict`` give it)
    is read as the keys it joins; an empty key or part (``''``, ``'/a'``,
    ``'a//b'``), or two leaves that then get the same path, is refused."""
    for keys in key_strs:
        bad = next((k for k in keys if not k or '' in k.split('/')), None)
        if bad is not None:
            raise StructureError(unspellable_key_message(bad, keys))
    paths_ = tuple('/'.join(keys) for keys in key_strs)
    if len(set(paths_)) != len(paths_):
        counts = collections.Counter(paths_)
        dup = next(p for p in paths_ if counts[p] > 1)
        raise StructureError(
            f'two leaves have the same path {dup!r}: a key contains "/" '
            'or two keys have the same string form; rename the keys'
        )
    return paths_


def flatten_with_paths(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[Any], Any, tuple[str, ...]]:
    """Leaves (boxes kept), treedef and path strings, in flatten order.

    The fast C++ flatten runs first; the structure's path strings, and whether
    it holds metadata boxes (which need a slower flatten with ``is_leaf``), are
    cached per treedef. With ``is_leaf`` (as ``jax.tree_util`` takes it: a
    node for which it is true is a leaf), boxes are still leaves, and nothing
    is cached.
    """
    if is_leaf is not None:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=box_or(is_leaf))
        paths_ = _check_paths([tuple(key_str(k) for k in kp) for kp, _ in with_path])
        return [x for _, x in with_path], treedef, paths_
    try:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
    except ValueError as e:
        if 'sorting' not in str(e):
            raise
        raise StructureError(
            'a dict of this tree has keys of different types (for example 1 and "1"), which '
            'JAX cannot sort; give each dict keys of one type'
        ) from e
    try:
        info = PATHS_CACHE.get(treedef)
        cacheable = True
    except TypeError:  # unhashable auxiliary data
        info, cacheable = None, False
    if info is None:
        # Boxes (nn.Partitioned, NNX Variable) hold their array under a 'value'
        # attribute: only then is the slower flatten with an is_leaf callback needed.
        with_path, boxed_def = jax.tree_util.tree_flatten_with_path(tree)
        if any(
            kp and type(kp[-1]) is _GetAttrKey and kp[-1].name == 'value' for kp, _ in with_path
        ):
            with_path, boxed_def = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)
        has_boxes = bool(boxed_def != treedef)  # type: ignore[operator]  # PyTreeDef has __ne__
        boxed_leaves = [x for _, x in with_path]
        paths_ = _check_paths([tuple(key_str(k) for k in kp) for kp, _ in with_path])
        info = (has_boxes, paths_)
        if cacheable:
            PATHS_CACHE.put(treedef, info)
        if has_boxes:
            return boxed_leaves, boxed_def, paths_
    has_boxes, paths_ = info
    if has_boxes:
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_box)
    return leaves, treedef, paths_


def paths(tree: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> list[str]:
    """The paths of all leaves of ``tree``, in JAX's flatten order.

    Args:
      tree: Any pytree; ``None`` nodes are empty subtrees, boxes are transparent.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves.

    Returns:
      A list of ``/``-joined path strings.

    Raises:
      StructureError: If a key is empty or has an empty part between ``/``
        (its path string would be ambiguous), a dict's keys are of different
        types, or two leaves would get the same path string. (A key such as
        ``'dense/kernel'``, of a flat mapping of paths, is the keys it joins.)

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.paths({'params': {'dense': {'kernel': 1.0, 'bias': 0.0}}})
      ['params/dense/bias', 'params/dense/kernel']
    """
    return list(flatten_with_paths(tree, is_leaf)[2])


def flatten(tree: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Leaf]:
    """Flattens ``tree`` to a dict from path string to leaf.

    Boxed leaves (``nn.Partitioned``, NNX ``Variable``) are given unboxed.

    Args:
      tree: Any pytree.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (``ptp.flatten(t, is_leaf=lambda x: isinstance(x, tuple))``).

    Returns:
      ``{path: leaf}`` in flatten order.

    Raises:
      StructureError: If a key is empty or has an empty part between ``/``
        (its path string would be ambiguous), a dict's keys are of different
        types, or two leaves would get the same path string. (A key such as
        ``'dense/kernel'``, of a flat mapping of paths, is the keys it joins.)

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.flatten({'b': [1, 2], 'a': 3})
      {'a': 3, 'b/0': 1, 'b/1': 2}
    """
    leaves, _, paths_ = flatten_with_paths(tree, is_leaf)
    return {p: unbox(x) for p, x in zip(paths_, leaves, strict=False)}


def unflatten(
    flat: FlatTree,
    like: PyTree | None = None,
    *,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """Builds a tree from a ``{path: leaf}`` mapping.

    Args:
      flat: A mapping from paths (strings or tuples) to leaves.
      like: Optional tree to copy the structure and container types from
        (FrozenDict stays FrozenDict, boxes are re-applied around the leaves).
      is_leaf: With ``like``: its leaves, as in ``jax.tree_util``.

    Returns:
      Nested dicts (without ``like``), or a tree with exactly ``like``'s
      structure.

    Raises:
      StructureError: If the paths of ``flat`` differ from those of ``like``
        (listing missing and unexpected paths), or without ``like`` if a path
        is both a leaf and a prefix of another path.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.unflatten({'a/b': 1, 'a/c': 2})
      {'a': {'b': 1, 'c': 2}}
    """
    if like is not None:
        leaves, treedef, paths_ = flatten_with_paths(like, is_leaf)
        by_str = {path_str(k): v for k, v in flat.items()}
        if len(by_str) != len(paths_) or any(p not in by_str for p in paths_):
            known = set(paths_)
            missing = [p for p in paths_ if p not in by_str]
            unexpected = [p for p in by_str if p not in known]
            raise StructureError(
                structure_mismatch_message(
                    'flat entries do not match the structure of `like`', missing, unexpected
                )
            )
        new = [rebox(old, by_str[p]) for old, p in zip(leaves, paths_, strict=False)]
        return jax.tree_util.tree_unflatten(treedef, new)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        keys = path_tuple(key)
        if not keys:
            raise StructureError('the empty path cannot be unflattened without `like`')
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise StructureError(
                    f'{"/".join(keys[: i + 1])!r} is a leaf and also the parent of '
                    f'{path_str(keys)!r}'
                )
            node = child
        if keys[-1] in node:
            raise StructureError(
                f'{path_str(keys)!r} is both a leaf and a subtree (or given twice)'
            )
        node[keys[-1]] = value
    return out


def children(node: Any) -> tuple[list[str], list[Any], Any] | None:
    """One level of ``node``: key strings, children and treedef; None at leaves."""
    if node is None or is_box(node):
        return None
    kids, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef) and len(kids) == 1 and kids[0][0] == ():
        return None
    return [key_str(kp[0]) for kp, _ in kids], [c for _, c in kids], treedef
