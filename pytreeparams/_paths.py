"""The path grammar: naming, finding, selecting and replacing nodes of a pytree.

A *path* names a node: the string ``'params/layers_2/bias'`` (keys joined by
``/``, never a leading ``/``) or the tuple ``('params', 'layers_2', 'bias')``.
List and tuple children are named by their index (``'blocks/0/w'``), integer
dict keys (Flax NNX uses them) by their decimal form, namedtuple and dataclass
fields by their name. Metadata boxes (``nn.Partitioned``, NNX ``Variable``) are
transparent: ``'l0/kernel'`` names the array inside the box, and a replaced
leaf goes back into a copy of its box.

A *pattern* selects leaf paths. A string is a glob matched against the whole
path: ``*`` and ``?`` match within one key, ``**`` matches any number of whole
keys (``'**/kernel'`` matches ``'kernel'`` and ``'a/b/kernel'``), ``[...]`` is a
character class (``[!...]`` negates). A compiled ``re.Pattern`` is matched with
``fullmatch``. A list or tuple of patterns matches what any of them matches.

Path strings are computed once per tree structure and cached, as are pattern
matches, so repeated calls on trees of the same structure (every training step)
cost little more than ``jax.tree_util.tree_flatten``.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from ._errors import PathError, StructureError
from ._typing import Leaf, Path, PathLike, Pattern, PyTree

__all__ = [
    'combine',
    'describe',
    'flatten',
    'get',
    'labels',
    'map_with_path',
    'mask',
    'partition',
    'paths',
    'select',
    'set',
    'unflatten',
    'update',
]

_MAX_KEYS_SHOWN = 12
_CACHE_SIZE = 256

# --------------------------------------------------------------------------
# Metadata boxes.


_BOX_TYPES: dict[bool, tuple[type, ...]] = {}
_IS_BOX: dict[type, bool] = {}


def _box_types() -> tuple[type, ...]:
    """The metadata box types. NNX's ``Variable`` counts only once ``flax.nnx``
    is imported (no NNX object can exist before), so plain linen users never pay
    for importing it."""
    nnx_loaded = 'flax.nnx' in sys.modules
    types = _BOX_TYPES.get(nnx_loaded)
    if types is None:
        found: list[type] = []
        from flax.core import meta

        found.append(meta.AxisMetadata)
        if nnx_loaded:
            from flax import nnx

            found.append(nnx.Variable)
        types = _BOX_TYPES[nnx_loaded] = tuple(found)
        _IS_BOX.clear()
    return types


def is_box(x: Any) -> bool:
    """Whether ``x`` is a metadata box (``nn.Partitioned``, NNX ``Variable``)."""
    types = _box_types()
    t = type(x)
    hit = _IS_BOX.get(t)
    if hit is None:
        hit = _IS_BOX[t] = isinstance(x, types)
    return hit


def unbox(x: Any) -> Any:
    """The value inside a metadata box; ``x`` itself if it is not a box."""
    if not is_box(x):
        return x
    get_value = getattr(x, 'get_value', None)
    if get_value is not None:
        return get_value()
    if hasattr(x, 'value'):
        return x.value
    return x.unbox()


def unbox_all(leaves: list[Any]) -> list[Any]:
    """``[unbox(x) for x in leaves]``, checking each leaf type only once."""
    if any(is_box(x) for x in {type(x): x for x in leaves}.values()):
        return [unbox(x) for x in leaves]
    return leaves


def rebox(old: Any, value: Any) -> Any:
    """``value`` in a copy of ``old``'s box; ``value`` if ``old`` is no box."""
    if not is_box(old) or is_box(value):
        return value
    replace_boxed = getattr(old, 'replace_boxed', None)
    if replace_boxed is not None:
        return replace_boxed(value)
    return old.replace(value)


# --------------------------------------------------------------------------
# Path spelling.


_KEY_ATTR = {
    jax.tree_util.DictKey: 'key',
    jax.tree_util.SequenceKey: 'idx',
    jax.tree_util.GetAttrKey: 'name',
    jax.tree_util.FlattenedIndexKey: 'key',
}


def _key_str(entry: Any) -> str:
    attr = _KEY_ATTR.get(type(entry))
    if attr is None:
        return str(entry)
    value = getattr(entry, attr)
    return value if type(value) is str else str(value)


def path_tuple(path: PathLike) -> Path:
    """Normalizes a path to a tuple of key strings.

    Args:
      path: ``'a/b/0'`` or ``('a', 'b', 0)``; ``''`` or ``()`` is the root.

    Returns:
      The keys as strings, e.g. ``('a', 'b', '0')``.

    Raises:
      PathError: If ``path`` is not a string or a sequence of keys, or a string
        path has a leading, trailing or doubled ``/``.
    """
    if isinstance(path, str):
        if not path:
            return ()
        keys = tuple(path.split('/'))
        if '' in keys:
            hint = path.strip('/')
            raise PathError(
                f'path {path!r} has an empty key: keys are joined by single '
                f"'/' with no leading or trailing '/'. Did you mean {hint!r}?"
            )
        return keys
    if isinstance(path, Sequence):
        return tuple(str(k) for k in path)
    raise PathError(
        f'a path is a string like "params/dense/kernel" or a tuple of keys, '
        f'got {type(path).__name__}: {path!r}'
    )


def path_str(path: PathLike) -> str:
    """The string spelling of a path (keys joined by ``/``)."""
    return '/'.join(path_tuple(path))


def is_key_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is a typed PRNG key dtype (``jax.random.key``: ``key<fry>``)."""
    try:
        return bool(jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key))
    except TypeError:  # pragma: no cover - exotic dtypes
        return False


def dtype_name(dtype: Any) -> str:
    """``np.dtype(dtype).name``, and ``'key<fry>'`` style names for PRNG keys."""
    if is_key_dtype(dtype):
        return str(dtype)
    return np.dtype(dtype).name


def same_dtype(a: Any, b: Any) -> bool:
    """Whether two dtypes are the same (PRNG key dtypes included)."""
    if is_key_dtype(a) or is_key_dtype(b):
        return str(a) == str(b)
    return np.dtype(a) == np.dtype(b)


def describe(x: Any) -> str:
    """Describes a leaf by dtype and shape, as Flax summaries do.

    Args:
      x: An array, ``jax.ShapeDtypeStruct``, Python scalar or any object.

    Returns:
      ``'float32[4,8]'`` for arrays (``'float32[]'`` for 0-d), the type name for
      Python scalars (``'float'``), ``'None'`` for None, else the type name.

    Raises:
      Nothing: any object gets a description.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.describe(jnp.zeros((4, 8)))
      'float32[4,8]'
      >>> ptp.describe(3)
      'int'
    """
    x = unbox(x)
    dtype = getattr(x, 'dtype', None)
    shape = getattr(x, 'shape', None)
    if dtype is not None and shape is not None:
        return f'{dtype_name(dtype)}[{",".join(str(d) for d in shape)}]'
    if x is None:
        return 'None'
    return type(x).__name__


# --------------------------------------------------------------------------
# Flattening with cached path strings.


class _LRU(dict):
    """A tiny bounded cache (insertion order eviction), safe across threads:
    ``get`` is one dict lookup (atomic); ``put`` holds a lock while it evicts."""

    _lock = threading.Lock()

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            while len(self) >= _CACHE_SIZE:
                self.pop(next(iter(self)), None)
            self[key] = value
        return value


_PATHS_CACHE = _LRU()
_GetAttrKey = jax.tree_util.GetAttrKey
_MATCH_CACHE = _LRU()


def _flatten(tree: PyTree) -> tuple[list[Any], Any, tuple[str, ...]]:
    """Leaves (boxes kept), treedef and path strings, in flatten order.

    The fast C++ flatten runs first; the structure's path strings, and whether
    it holds metadata boxes (which need a slower flatten with ``is_leaf``), are
    cached per treedef.
    """
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
        info = _PATHS_CACHE.get(treedef)
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
        has_boxes = boxed_def != treedef
        boxed_leaves = [x for _, x in with_path]
        key_strs = [tuple(_key_str(k) for k in kp) for kp, _ in with_path]
        for keys in key_strs:
            bad = next((k for k in keys if not k or '/' in k), None)
            if bad is not None:
                raise StructureError(unspellable_key_message(bad, keys))
        paths_ = tuple('/'.join(keys) for keys in key_strs)
        if len(builtins.set(paths_)) != len(paths_):
            seen: builtins.set[str] = builtins.set()
            dup = next(p for p in paths_ if p in seen or seen.add(p))
            raise StructureError(
                f'two leaves have the same path {dup!r}: a key contains "/" '
                'or two keys have the same string form; rename the keys'
            )
        info = (has_boxes, paths_)
        if cacheable:
            _PATHS_CACHE.put(treedef, info)
        if has_boxes:
            return boxed_leaves, boxed_def, paths_
    has_boxes, paths_ = info
    if has_boxes:
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_box)
    return leaves, treedef, paths_


def unspellable_key_message(key: str, keys: Sequence[str]) -> str:
    """Why a key cannot be spelled in a path string (empty, or holding '/')."""
    where = '/'.join(keys)
    what = 'is empty' if not key else 'contains "/"'
    return (
        f'the key {key!r} (in the leaf path {where!r}) {what}: path strings join keys with '
        f"'/', so this tree's paths would be ambiguous and would not unflatten to the same "
        f'tree. Rename the key first (its subtree can still be read with a tuple path, '
        f'ptp.get(tree, {tuple(keys[: keys.index(key) + 1])!r}))'
    )


def paths(tree: PyTree) -> list[str]:
    """The paths of all leaves of ``tree``, in JAX's flatten order.

    Args:
      tree: Any pytree; ``None`` nodes are empty subtrees, boxes are transparent.

    Returns:
      A list of ``/``-joined path strings.

    Raises:
      StructureError: If a key is empty or contains ``/`` (its path string
        would be ambiguous), a dict's keys are of different types, or two
        leaves would get the same path string.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.paths({'params': {'dense': {'kernel': 1.0, 'bias': 0.0}}})
      ['params/dense/bias', 'params/dense/kernel']
    """
    return list(_flatten(tree)[2])


def flatten(tree: PyTree) -> dict[str, Leaf]:
    """Flattens ``tree`` to a dict from path string to leaf.

    Boxed leaves (``nn.Partitioned``, NNX ``Variable``) are given unboxed.

    Args:
      tree: Any pytree.

    Returns:
      ``{path: leaf}`` in flatten order.

    Raises:
      StructureError: If a key is empty or contains ``/`` (its path string
        would be ambiguous), a dict's keys are of different types, or two
        leaves would get the same path string.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.flatten({'b': [1, 2], 'a': 3})
      {'a': 3, 'b/0': 1, 'b/1': 2}
    """
    leaves, _, paths_ = _flatten(tree)
    return {p: unbox(x) for p, x in zip(paths_, leaves, strict=False)}


def _nearest(word: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.0)


def _quote_list(items: Iterable[str], limit: int = _MAX_KEYS_SHOWN) -> str:
    items = list(items)
    shown = ', '.join(repr(i) for i in items[:limit])
    if len(items) > limit:
        shown += f', ... ({len(items) - limit} more)'
    return shown


def _plural(n: int, word: str) -> str:
    return f'{n} {word}' + ('' if n == 1 else 's')


def structure_mismatch_message(what: str, missing: Sequence[str], unexpected: Sequence[str]) -> str:
    parts = []
    if missing:
        parts.append(f'missing {_plural(len(missing), "path")}: {_quote_list(missing)}')
    if unexpected:
        parts.append(f'unexpected {_plural(len(unexpected), "path")}: {_quote_list(unexpected)}')
    return f'{what}: ' + '; '.join(parts)


def unflatten(flat: Mapping[PathLike, Leaf], like: PyTree = None) -> PyTree:
    """Builds a tree from a ``{path: leaf}`` mapping.

    Args:
      flat: A mapping from paths (strings or tuples) to leaves.
      like: Optional tree to copy the structure and container types from
        (FrozenDict stays FrozenDict, boxes are re-applied around the leaves).

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
        leaves, treedef, paths_ = _flatten(like)
        by_str = {path_str(k): v for k, v in flat.items()}
        if len(by_str) != len(paths_) or any(p not in by_str for p in paths_):
            known = builtins.set(paths_)
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


# --------------------------------------------------------------------------
# Navigation by path.


def _children(node: Any) -> tuple[list[str], list[Any], Any] | None:
    """One level of ``node``: key strings, children and treedef; None at leaves."""
    if node is None or is_box(node):
        return None
    kids, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef) and len(kids) == 1 and kids[0][0] == ():
        return None
    return [_key_str(kp[0]) for kp, _ in kids], [c for _, c in kids], treedef


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
            f'Keys there: {_quote_list(names) or "none"}.'
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
    near = [p for p in _nearest(full, candidates, n=2) if p != full]
    if near:
        msg += f' Did you mean {near[0]!r}?'
    return PathError(msg)


def _all_node_paths(tree: PyTree) -> list[str]:
    """Every leaf path and every inner-node path (for hints)."""
    out: list[str] = []
    for p in _flatten(tree)[2]:
        keys = p.split('/')
        for i in range(1, len(keys) + 1):
            out.append('/'.join(keys[:i]))
    return list(dict.fromkeys(out))


def _as_child(parent: Any, child: Any) -> Any:
    # FrozenDict stores nested dicts unfrozen and freezes them on access.
    if isinstance(parent, FrozenDict) and type(child) is dict:
        return FrozenDict(child)
    return child


def _find(kids: tuple[list[str], list[Any], Any], key: str) -> int:
    try:
        return kids[0].index(key)
    except ValueError:
        return -1


def get(tree: PyTree, path: PathLike) -> PyTree:
    """Returns the subtree or leaf of ``tree`` at ``path``.

    Args:
      tree: A pytree of mappings and sequences, e.g. Flax ``params``.
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
    node = tree
    for depth, key in enumerate(keys):
        kids = _children(node)
        i = -1 if kids is None else _find(kids, key)
        if i < 0:
            raise _resolve_error(tree, keys, depth, node, kids)
        node = _as_child(node, kids[1][i])
    return unbox(node)


def _check_replacement(old: Any, new: Any, where: str) -> None:
    old_leaves, old_def = jax.tree_util.tree_flatten(old, is_leaf=is_box)
    new_leaves, new_def = jax.tree_util.tree_flatten(new, is_leaf=is_box)
    if old_def != new_def:
        old_paths = _flatten(old)[2]
        new_paths = _flatten(new)[2]
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
    sub_paths = _flatten(old)[2]
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
            + '; '.join(bad[:_MAX_KEYS_SHOWN])
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
        kids = _children(node)
        i = -1 if kids is None else _find(kids, keys[depth])
        if i < 0:
            raise _resolve_error(tree, keys, depth, node, kids)
        children = list(kids[1])
        children[i] = rec(children[i], depth + 1)
        return jax.tree_util.tree_unflatten(kids[2], children)

    return rec(tree, 0)


# --------------------------------------------------------------------------
# Patterns.


def glob_to_regex(glob: str) -> str:
    """Translates a path glob into a regular expression (for ``fullmatch``).

    Args:
      glob: ``*``/``?`` match within one key, ``**`` any number of keys,
        ``[...]`` a character class (``[!...]`` negated).

    Returns:
      The regular expression source.
    """
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith('**', i):
            j = i + 2
            if j < n and glob[j] == '/':
                out.append('(?:.*/)?')
                i = j + 1
            else:
                out.append('.*')
                i = j
            continue
        if c == '*':
            out.append('[^/]*')
        elif c == '?':
            out.append('[^/]')
        elif c == '[':
            end = glob.find(']', i + 2 if glob.startswith('[!', i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end]
                negate = body.startswith('!')
                if negate:
                    body = body[1:]
                body = body.replace('\\', '\\\\').replace('[', '\\[')
                out.append(f'[^/{body}]' if negate else f'[{body}]')
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return ''.join(out)


@functools.lru_cache(maxsize=1024)
def _compile_one(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(glob_to_regex(pattern))
    except re.error as e:
        raise ValueError(
            f'the glob {pattern!r} is not valid ({e.msg}); a "[" opens a character class that '
            'needs a closing "]" (write "[[]" for a literal "[")'
        ) from None


def _pattern_key(pattern: Pattern) -> tuple[Any, ...]:
    if isinstance(pattern, (str, re.Pattern)):
        return (pattern,)
    if isinstance(pattern, Sequence) and all(isinstance(p, (str, re.Pattern)) for p in pattern):
        return tuple(pattern)
    raise TypeError(
        'a pattern is a glob string, a compiled re.Pattern or a list of them, '
        f'got {type(pattern).__name__}: {pattern!r}'
    )


def compile_pattern(pattern: Pattern) -> Callable[[str], bool]:
    """A predicate on path strings for ``pattern`` (see the module docstring)."""
    regexes = [_compile_one(p) for p in _pattern_key(pattern)]
    if len(regexes) == 1:
        fm = regexes[0].fullmatch
        return lambda s: fm(s) is not None
    return lambda s: any(r.fullmatch(s) is not None for r in regexes)


def _pattern_str(pattern: Pattern) -> str:
    parts = [p.pattern if isinstance(p, re.Pattern) else p for p in _pattern_key(pattern)]
    return repr(parts[0]) if len(parts) == 1 else repr(parts)


def no_match_message(pattern: Pattern, paths_: Sequence[str], missing_ok_hint: bool = False) -> str:
    """The text of the error for a pattern that matches no path.

    ``missing_ok_hint`` adds "Pass missing_ok=True": only for callers that take it.
    """
    msg = f'pattern {_pattern_str(pattern)} matches none of the {len(paths_)} paths.'
    if not paths_:
        return msg + ' The tree has no leaves.'
    firsts = [p.pattern if isinstance(p, re.Pattern) else p for p in _pattern_key(pattern)]
    near: list[str] = []
    for f in firsts:
        near += _nearest(f, paths_, n=3)
    near = list(dict.fromkeys(near))[:3]
    if near:
        msg += f' Nearest paths: {_quote_list(near)}.'
    for f in firsts:
        if isinstance(f, str) and any(p.startswith(f + '/') for p in paths_):
            msg += (
                f' Patterns match whole leaf paths: to select everything under {f!r}, '
                f'write {f + "/**"!r}.'
            )
            break
    if missing_ok_hint:
        msg += ' Pass missing_ok=True to allow no match.'
    return msg


def match_flags(tree_paths: tuple[str, ...], pattern: Pattern) -> tuple[bool, ...]:
    """Which of ``tree_paths`` match ``pattern`` (cached per paths and pattern)."""
    key = (id(tree_paths), tree_paths, _pattern_key(pattern))
    try:
        flags = _MATCH_CACHE.get(key)
    except TypeError:
        flags = None
    if flags is None:
        pred = compile_pattern(pattern)
        flags = tuple(pred(p) for p in tree_paths)
        try:
            _MATCH_CACHE.put(key, flags)
        except TypeError:
            pass
    return flags


def _matches(tree: PyTree, pattern: Pattern, missing_ok: bool):
    leaves, treedef, paths_ = _flatten(tree)
    flags = match_flags(paths_, pattern)
    if not missing_ok and not any(flags):
        raise PathError(no_match_message(pattern, paths_, missing_ok_hint=True))
    return leaves, treedef, paths_, flags


def select(tree: PyTree, pattern: Pattern, *, missing_ok: bool = False) -> dict[str, Leaf]:
    """The leaves whose paths match ``pattern``, in flatten order.

    Args:
      tree: Any pytree.
      pattern: A glob (``'**/kernel'``), a compiled regex (matched with
        ``fullmatch``) or a list of them.
      missing_ok: If False, a pattern that matches nothing is an error.

    Returns:
      ``{path: leaf}`` for the matching leaves (unboxed).

    Raises:
      PathError: If nothing matches and not ``missing_ok``; the message names
        the nearest paths.

    Example:
      >>> import pytreeparams as ptp
      >>> params = {'l0': {'kernel': 1, 'bias': 2}, 'l1': {'kernel': 3, 'bias': 4}}
      >>> ptp.select(params, '*/kernel')
      {'l0/kernel': 1, 'l1/kernel': 3}
    """
    leaves, _, paths_, flags = _matches(tree, pattern, missing_ok)
    return {p: unbox(x) for p, x, f in zip(paths_, leaves, flags, strict=False) if f}


def mask(tree: PyTree, pattern: Pattern, *, missing_ok: bool = False) -> PyTree:
    """A tree of bools, True where the leaf path matches ``pattern``.

    The mask has ``tree``'s own container types (a FrozenDict stays a
    FrozenDict), so it fits ``optax.masked(tx, mask)`` and the ``mask=``
    argument of ``optax.adamw`` directly.

    Args:
      tree: Any pytree, e.g. Flax params.
      pattern: Which leaves are True (see the module docstring).
      missing_ok: If False, a pattern that matches nothing is an error.

    Returns:
      A tree of Python bools with ``tree``'s structure.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.mask({'dense': {'kernel': 1.0, 'bias': 0.0}}, '**/kernel')
      {'dense': {'bias': False, 'kernel': True}}
    """
    _, treedef, _, flags = _matches(tree, pattern, missing_ok)
    return jax.tree_util.tree_unflatten(treedef, list(flags))


def update(
    tree: PyTree, pattern: Pattern, fn: Callable[[Leaf], Leaf], *, missing_ok: bool = False
) -> PyTree:
    """Returns a new tree with ``fn(leaf)`` at every leaf matching ``pattern``.

    Args:
      tree: Any pytree.
      pattern: Which leaves to change.
      fn: Called on each matching (unboxed) leaf; the result is reboxed.
      missing_ok: If False, a pattern that matches nothing is an error.

    Returns:
      The new tree with ``tree``'s container types; ``tree`` is unchanged.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.update({'w': 1.0, 'b': 2.0}, 'w', lambda x: x + 1)
      {'b': 2.0, 'w': 2.0}
    """
    leaves, treedef, _, flags = _matches(tree, pattern, missing_ok)
    new = [rebox(x, fn(unbox(x))) if f else x for x, f in zip(leaves, flags, strict=False)]
    return jax.tree_util.tree_unflatten(treedef, new)


def map_with_path(fn: Callable[[str, Leaf], Leaf], tree: PyTree) -> PyTree:
    """Maps ``fn(path, leaf)`` over every leaf, keeping containers and boxes.

    Args:
      fn: Called with the path string and the (unboxed) leaf.
      tree: Any pytree.

    Returns:
      A tree of ``fn``'s results with ``tree``'s structure.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.map_with_path(lambda p, x: p, {'a': 1, 'b': [2]})
      {'a': 'a', 'b': ['b/0']}
    """
    leaves, treedef, paths_ = _flatten(tree)
    new = [rebox(x, fn(p, unbox(x))) for p, x in zip(paths_, leaves, strict=False)]
    return jax.tree_util.tree_unflatten(treedef, new)


def _rules(rules: Any, what: str) -> list[tuple[Pattern, Any]]:
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(
                f'{what} are an ordered mapping or a list of (pattern, {what[:-1]}) '
                f'pairs, got the item {item!r}'
            )
    return items


def first_match(paths_: Sequence[str], rules: Any, what: str) -> list[Any]:
    """For each path, the value of the first ``(pattern, value)`` rule matching it.

    Args:
      paths_: Leaf paths.
      rules: An ordered mapping or list of ``(pattern, value)``.
      what: The caller's name, for messages.

    Returns:
      One value per path, None where no rule matches.

    Raises:
      PathError: If a rule matches no path.
    """
    out: list[Any] = [None] * len(paths_)
    for pattern, value in _rules(rules, 'rules'):
        flags = match_flags(tuple(paths_), pattern)
        if not any(flags):
            raise PathError(f'{what}: rule ' + no_match_message(pattern, paths_))
        for i, f in enumerate(flags):
            if f and out[i] is None:
                out[i] = value
    return out


def labels(tree: PyTree, rules: Any, default: str | None = None) -> PyTree:
    """A tree of label strings for ``optax.multi_transform``.

    Args:
      tree: Any pytree, e.g. Flax params.
      rules: An ordered mapping or list of ``(pattern, label)``; for each leaf
        the first matching rule gives its label.
      default: The label of leaves no rule matches.

    Returns:
      A tree of strings with ``tree``'s containers.

    Raises:
      PathError: If a rule matches no leaf.
      StructureError: If some leaf gets no label and there is no ``default``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.labels({'w': 1.0, 'b': 0.0}, {'w': 'adam'}, default='sgd')
      {'b': 'sgd', 'w': 'adam'}
    """
    leaves, treedef, paths_ = _flatten(tree)
    out = first_match(paths_, rules, 'labels')
    unlabeled = [p for p, lab in zip(paths_, out, strict=False) if lab is None]
    if unlabeled:
        if default is None:
            raise StructureError(
                f'labels: no rule matches {_plural(len(unlabeled), "path")}: '
                f'{_quote_list(unlabeled)}; add a rule or pass default='
            )
        out = [default if lab is None else lab for lab in out]
    return jax.tree_util.tree_unflatten(treedef, out)


def partition(tree: PyTree, pattern: Pattern, *, missing_ok: bool = False) -> tuple[PyTree, PyTree]:
    """Splits ``tree`` into the leaves matching ``pattern`` and the rest.

    Both parts keep ``tree``'s structure with ``None`` in the holes, so
    ``combine(matched, rest)`` gives ``tree`` back. Use it to differentiate
    with respect to part of a model: ``jax.grad(lambda m: loss(combine(m,
    rest)))(matched)``.

    Args:
      tree: Any pytree.
      pattern: Which leaves go to ``matched``.
      missing_ok: If False, a pattern that matches nothing is an error.

    Returns:
      ``(matched, rest)``.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.partition({'w': 1.0, 'b': 0.0}, 'w')
      ({'b': None, 'w': 1.0}, {'b': 0.0, 'w': None})
    """
    leaves, treedef, _, flags = _matches(tree, pattern, missing_ok)
    matched = [x if f else None for x, f in zip(leaves, flags, strict=False)]
    rest = [None if f else x for x, f in zip(leaves, flags, strict=False)]
    return (
        jax.tree_util.tree_unflatten(treedef, matched),
        jax.tree_util.tree_unflatten(treedef, rest),
    )


def combine(*trees: PyTree) -> PyTree:
    """Merges trees with ``None`` holes, the inverse of :func:`partition`.

    Args:
      *trees: Trees of one structure; at each leaf position at most one of
        them is not ``None``.

    Returns:
      The tree with each position taken from the tree that fills it.

    Raises:
      StructureError: If the trees' structures differ or two fill one place.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.combine({'w': 1.0, 'b': None}, {'w': None, 'b': 0.0})
      {'b': 0.0, 'w': 1.0}
    """
    if not trees:
        raise StructureError('combine needs at least one tree')

    def pick(*xs: Any) -> Any:
        filled = [x for x in xs if x is not None]
        if len(filled) > 1:
            raise StructureError('combine: two trees fill the same leaf position')
        return filled[0] if filled else None

    try:
        return jax.tree_util.tree_map(pick, *trees, is_leaf=lambda x: x is None or is_box(x))
    except ValueError as e:
        if isinstance(e, StructureError):
            raise
        raise StructureError(f'combine: the trees have different structures: {e}') from e
