"""Navigation by path: ``get`` and ``set`` of any node, with errors that say
what exists nearby."""

from __future__ import annotations

import builtins
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from ._errors import PathError, StructureError
from ._flatten import children, flatten_with_paths
from ._keys import describe, is_box, path_tuple, rebox, same_dtype, unbox
from ._messages import joined_list, nearest, quote_list, structure_mismatch_message
from ._typing import Path, PathLike, PyTree

# --------------------------------------------------------------------------
# Navigation by path.


def _resolve_error(tree: PyTree, keys: Path, depth: int, node: Any, kids: Any) -> PathError:
    where = '/'.join(keys[:depth]) or '<root>'
    full = '/'.join(keys)
    if kids is None:
        msg = (
            f'{where!r} is a leaf ({describe(node)}) and has no key {keys[depth]!r} '
            f'(while resolving {full!r}).'
        )
    else:
        names = kids[0]
        msg = (
            f'no key {keys[depth]!r} under {where!r} (while resolving {full!r}). '
            f'Keys there: {quote_list(names) or "none"}.'
        )
    try:
        candidates = _all_node_paths(tree)
    except Exception:  # pragma: no cover - hints must never mask the error
        candidates = []
    names = kids[0] if kids is not None else []
    slashed = [n for n in names if '/' in n and '/'.join(keys[depth:]).startswith(n)]
    if slashed:
        rest = keys[depth + slashed[0].count('/') + 1 :]
        spelled = (*keys[:depth], slashed[0], *rest)
        msg += f' The key {slashed[0]!r} contains "/": pass the path as a tuple, {spelled!r}.'
        return PathError(msg)
    near = [p for p in nearest(full, candidates, n=2) if p != full]
    if near:
        msg += f' Did you mean {near[0]!r}?'
    return PathError(msg)


def _all_node_paths(tree: PyTree) -> list[str]:
    """Every leaf path and every inner-node path (for hints)."""
    out: list[str] = []
    for p in flatten_with_paths(tree)[2]:
        keys = p.split('/')
        for i in range(1, len(keys) + 1):
            out.append('/'.join(keys[:i]))
    return list(dict.fromkeys(out))


def _as_child(parent: Any, child: Any) -> Any:
    # FrozenDict stores nested dicts unfrozen and freezes them on access.
    if isinstance(parent, FrozenDict) and type(child) is dict:
        return FrozenDict(child)
    return child


def _find(kids: tuple[list[str], list[Any], Any], keys: Path, depth: int) -> tuple[int, int]:
    """The child named ``keys[depth]``, else the one whose key holds several of the
    path's keys joined by ``/`` (a flat ``{path: leaf}`` mapping, as ``select``
    gives), the longest first; ``(index, keys consumed)``, index -1 if none."""
    names = kids[0]
    try:
        return names.index(keys[depth]), 1
    except ValueError:
        pass
    for n in range(len(keys) - depth, 1, -1):
        joined = '/'.join(keys[depth : depth + n])
        if joined in names:
            return names.index(joined), n
    return -1, 1


def get(tree: PyTree, path: PathLike) -> Any:
    """Returns the subtree or leaf of ``tree`` at ``path``.

    Args:
      tree: A pytree of mappings and sequences, e.g. Flax ``params``; a key
        holding ``/`` (a flat ``{path: leaf}`` mapping, as ``select`` and
        ``read_state_dict`` give) is reached by the keys it joins.
      path: ``'dense/kernel'`` or ``('dense', 'kernel')``; ``''`` is the root.

    Returns:
      The node at ``path`` (a boxed leaf is returned unboxed).

    Raises:
      PathError: If some key of ``path`` is not a child of its parent; the
        message names the keys that exist there and the closest path.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.get({'dense': {'kernel': 1.0, 'bias': 0.0}}, 'dense/bias')
      0.0
    """
    keys = path_tuple(path)
    node, depth = tree, 0
    while depth < len(keys):
        kids = children(node)
        i, n = (-1, 1) if kids is None else _find(kids, keys, depth)
        if kids is None or i < 0:
            raise _resolve_error(tree, keys, depth, node, kids)
        node = _as_child(node, kids[1][i])
        depth += n
    return unbox(node)


def _check_replacement(old: Any, new: Any, where: str) -> None:
    old_leaves, old_def = jax.tree_util.tree_flatten(old, is_leaf=is_box)
    new_leaves, new_def = jax.tree_util.tree_flatten(new, is_leaf=is_box)
    if old_def != new_def:  # type: ignore[operator]  # PyTreeDef has __ne__
        old_paths = flatten_with_paths(old)[2]
        new_paths = flatten_with_paths(new)[2]
        new_set, old_set = builtins.set(new_paths), builtins.set(old_paths)
        missing = [p for p in old_paths if p not in new_set]
        unexpected = [p for p in new_paths if p not in old_set]
        if missing or unexpected:
            msg = structure_mismatch_message(
                f'the new value at {where!r} has another structure', missing, unexpected
            )
        else:
            msg = (
                f'the new value at {where!r} has another structure '
                f'(containers differ): expected {old_def}, got {new_def}'
            )
        raise StructureError(msg + '; pass check=False to replace it anyway')
    bad = []
    sub_paths = flatten_with_paths(old)[2]
    for p, a, b in zip(sub_paths, old_leaves, new_leaves, strict=False):
        a, b = unbox(a), unbox(b)
        sa, sb = np.shape(a) if a is not None else (), np.shape(b) if b is not None else ()
        da, db = getattr(a, 'dtype', None), getattr(b, 'dtype', None)
        if sa != sb or (da is not None and db is not None and not same_dtype(da, db)):
            name = '/'.join(x for x in (where, p) if x)
            bad.append(f'{name!r}: expected {describe(a)}, got {describe(b)}')
    if bad:
        raise StructureError(
            'the new value does not match the old one: '
            + joined_list(bad)
            + '; pass check=False to replace it anyway'
        )


def _like_container(old: Any, new: Any) -> Any:
    """``new`` as the mapping kind ``old`` is (a FrozenDict holds plain dicts inside,
    so ``get`` hands out a FrozenDict where ``set`` finds a dict, and back)."""
    if isinstance(old, FrozenDict) and type(new) is dict:
        return FrozenDict(new)
    if type(old) is dict and isinstance(new, FrozenDict):
        return new.unfreeze()
    return new


def set(tree: PyTree, path: PathLike, value: Any, *, check: bool = True) -> PyTree:  # noqa: A001
    """Returns a new tree with the node at ``path`` replaced by ``value``.

    The input is not modified; subtrees off the path are shared, not copied.
    A boxed leaf keeps its box (and its metadata) around ``value``.

    Args:
      tree: Any pytree.
      path: Where to put ``value``; must exist. ``''`` replaces the root.
      value: The new leaf or subtree.
      check: If True, ``value`` must have the old node's structure, shapes and
        dtypes.

    Returns:
      The new tree, with ``tree``'s container types.

    Raises:
      PathError: If ``path`` does not exist in ``tree``.
      StructureError: If ``check`` and ``value`` differs in structure, shape or
        dtype from the node it replaces.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.set({'a': {'b': 1, 'c': 2}}, 'a/b', 10)
      {'a': {'b': 10, 'c': 2}}
    """
    keys = path_tuple(path)
    where = '/'.join(keys)

    def rec(node: Any, depth: int) -> Any:
        if depth == len(keys):
            new = _like_container(node, value)
            if check:
                _check_replacement(node, new, where)
            return rebox(node, new)
        kids = children(node)
        i, n = (-1, 1) if kids is None else _find(kids, keys, depth)
        if kids is None or i < 0:
            raise _resolve_error(tree, keys, depth, node, kids)
        items = list(kids[1])
        items[i] = rec(items[i], depth + n)
        return jax.tree_util.tree_unflatten(kids[2], items)

    return rec(tree, 0)
