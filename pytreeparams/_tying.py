"""Parameter tying: declare shared parameters, store them once, train them.

A :class:`Ties` maps alias paths to source paths (optionally through a
jittable transform such as :func:`transpose`). ``untie`` drops the aliases
(the *compact* tree, which the optimizer sees); ``tie`` rebuilds them. Since
``tie`` is an ordinary JAX function, ``jax.grad`` of ``loss(tie(compact))``
gives each source the sum of the gradients of all its uses.
"""

from __future__ import annotations

import builtins
import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from ._errors import StructureError
from ._flatten import children, flatten_with_paths
from ._keys import is_box, path_str, path_tuple, rebox, unbox
from ._leaves import dtype_name, type_str
from ._messages import quote_list
from ._moments import as_auto, fetch_replicated, is_global
from ._paths import get, set
from ._typing import FlatTree, PyTree

__all__ = ['Ties', 'tie', 'tied_grads', 'transpose', 'untie']


def transpose(x: chex.Array) -> jax.Array:
    """Swaps the last two axes (``x.T`` for matrices): the embedding/head tie.

    Args:
      x: An array of at least two dimensions.

    Returns:
      ``x`` with its last two axes swapped.

    Raises:
      ValueError: If ``x`` has fewer than two dimensions.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.transpose(jnp.zeros((2, 3))).shape
      (3, 2)
    """
    return jnp.swapaxes(x, -1, -2)


_KNOWN_TRANSFORMS: dict[str, Callable[[Any], Any]] = {'transpose': transpose}


class Ties:
    """A declaration of tied parameters: ``{alias: source}`` or ``{alias: (source, fn)}``.

    Aliases and sources may be leaves or whole subtrees; ``fn`` is any jittable
    function applied to the source (to each leaf of a subtree). Chains (an
    alias that is also a source), cycles, self-ties and overlapping paths are
    rejected here; missing paths and wrong shapes at first use.

    Args:
      mapping: The ties.

    Raises:
      StructureError: For chains, cycles, self-ties or overlapping aliases.

    Example:
      >>> import pytreeparams as ptp
      >>> ties = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})
      >>> ties.aliases
      ('params/lm_head/kernel',)
    """

    def __init__(self, mapping: FlatTree):
        entries: dict[str, tuple[str, Callable[[Any], Any] | None]] = {}
        for alias, spec in mapping.items():
            source, fn = (
                spec
                if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])
                else (spec, None)
            )
            a, s = path_str(alias), path_str(source)
            if not a or not s:
                raise StructureError('Ties: the root cannot be tied')
            if a == s:
                raise StructureError(f'Ties: {a!r} is tied to itself')
            entries[a] = (s, fn)
        sources = {s for s, _ in entries.values()}
        for a, (s, _) in entries.items():
            if a in sources:
                users = [x for x, (y, _) in entries.items() if y == a]
                if s in entries and entries[s][0] == a:
                    raise StructureError(
                        f'Ties: {a!r} and {s!r} are tied to each other: a cycle. Keep one '
                        f'direction: the alias rebuilt from the source, e.g. Ties({{{a!r}: {s!r}}})'
                    )
                fixed = {u: s for u in users}
                raise StructureError(
                    f'Ties: {a!r} is an alias (of {s!r}) and also a source (of {users[0]!r}): a '
                    f'chain. Tie every alias to the original source, e.g. {fixed!r} beside '
                    f'{{{a!r}: {s!r}}}'
                )
        names = list(entries) + sorted(sources)
        for a in entries:
            for other in names:
                if other != a and (other.startswith(a + '/') or a.startswith(other + '/')):
                    raise StructureError(
                        f'Ties: alias {a!r} overlaps {other!r}; one path lies inside the other'
                    )
        self._entries = entries

    @property
    def aliases(self) -> tuple[str, ...]:
        """The alias paths."""
        return tuple(self._entries)

    def items(self) -> list[tuple[str, str, Callable[[Any], Any] | None]]:
        """``(alias, source, transform)`` triples."""
        return [(a, s, fn) for a, (s, fn) in self._entries.items()]

    def __repr__(self) -> str:
        inner = ', '.join(
            f'{a!r}: ' + (f'({s!r}, {getattr(fn, "__name__", "fn")})' if fn else repr(s))
            for a, s, fn in self.items()
        )
        return f'Ties({{{inner}}})'

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (transforms by name; only known ones).

        Raises:
          ValueError: For a custom transform, which cannot be recorded.
        """
        out: dict[str, Any] = {}
        for a, s, fn in self.items():
            if fn is None:
                out[a] = s
            else:
                name = next((k for k, v in _KNOWN_TRANSFORMS.items() if v is fn), None)
                if name is None:
                    raise ValueError(
                        f'Ties: the transform of {a!r} is a custom function and cannot be saved; '
                        'use ptp.transpose or save the untied tree'
                    )
                out[a] = [s, name]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ties:
        """The inverse of :meth:`to_json`."""
        mapping: dict[str, Any] = {}
        for a, v in data.items():
            if isinstance(v, str):
                mapping[a] = v
            else:
                mapping[a] = (v[0], _KNOWN_TRANSFORMS[v[1]])
        return cls(mapping)

    def notes(self, tree: PyTree) -> dict[str, str]:
        """``{alias leaf path: 'alias of source'}`` for the leaves of ``tree``."""
        out = {}
        paths_ = flatten_with_paths(tree)[2]
        for a, s, fn in self.items():
            suffix = ' (transposed)' if fn is transpose else (' (transformed)' if fn else '')
            for p in paths_:
                if p == a or p.startswith(a + '/'):
                    out[p] = f'alias of {s + p[len(a) :]}{suffix}'
        return out


def _apply(fn: Callable[[Any], Any] | None, node: PyTree) -> PyTree:
    if fn is None:
        return node
    return jax.tree_util.tree_map(fn, node)


def _abstract(x: Any) -> Any:
    def one(v: Any) -> jax.ShapeDtypeStruct:
        dtype = v.dtype if hasattr(v, 'dtype') else np.asarray(v).dtype  # no eager default
        return jax.ShapeDtypeStruct(np.shape(v), dtype)

    return jax.tree_util.tree_map(one, x)


def _traced(tree: Any) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(tree))


def _check_shapes(alias: str, source: str, fn: Any, src_node: Any, alias_node: Any) -> None:
    got = jax.eval_shape(lambda t: _apply(fn, t), _abstract(src_node))
    want = _abstract(alias_node)
    g_leaves, g_def = jax.tree_util.tree_flatten(got)
    w_leaves, w_def = jax.tree_util.tree_flatten(want)
    if g_def != w_def:  # type: ignore[operator]  # PyTreeDef has __ne__
        g_paths, w_paths = flatten_with_paths(got)[2], flatten_with_paths(want)[2]
        raise StructureError(
            f'Ties: {alias!r} cannot be rebuilt from {source!r}: they hold different keys: only '
            f'in the source {[p for p in g_paths if p not in w_paths]}, only in the alias '
            f'{[p for p in w_paths if p not in g_paths]}'
        )
    if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(g_leaves, w_leaves)):
        desc = lambda ls: ', '.join(type_str(dtype_name(x.dtype), x.shape) for x in ls[:4])  # noqa: E731
        raise StructureError(
            f'Ties: {alias!r} cannot be rebuilt from {source!r}: the transform gives '
            f'{desc(g_leaves)} but the alias holds {desc(w_leaves)}'
        )


def _without(parent: Any, key: str) -> Any:
    if isinstance(parent, FrozenDict):
        return FrozenDict({k: v for k, v in parent.items() if str(k) != key})
    if isinstance(parent, dict):
        return {k: v for k, v in parent.items() if str(k) != key}
    kids = children(parent)
    assert kids is not None  # the parent of a leaf has children
    items = list(kids[1])
    items[kids[0].index(key)] = None
    return jax.tree_util.tree_unflatten(kids[2], items)


def _remove(tree: PyTree, path: str) -> PyTree:
    """``tree`` without the node at ``path``; mappings left empty go too."""
    keys = path_tuple(path)
    get(tree, keys)  # raises a PathError naming what exists
    for cut in range(len(keys) - 1, -1, -1):
        parent = get(tree, keys[:cut])
        new_parent = _without(parent, keys[cut])
        if cut == 0 or not (isinstance(new_parent, Mapping) and len(new_parent) == 0):
            return set(tree, keys[:cut], new_parent, check=False) if cut else new_parent
    return tree  # pragma: no cover


def _insert(node: Any, keys: tuple[str, ...], value: Any) -> Any:
    """``node`` with ``value`` at ``keys``, creating missing mappings."""
    if not keys:
        return value
    key = keys[0]
    if isinstance(node, Mapping):
        match = next((k for k in node if str(k) == key), None)
        if match is None:  # a removed key: of the kind its siblings have (NNX: ints)
            ints = bool(node) and all(isinstance(k, int) for k in node)
            match = int(key) if ints and key.lstrip('-').isdigit() else key
        child = node[match] if match in node else {}
        new = {**node, match: _insert(child, keys[1:], value)}
        if isinstance(node, FrozenDict):
            return FrozenDict(new)
        return new if type(node) is dict else _same_mapping(node, new)
    child = get(node, (key,))
    return set(node, (key,), _insert(child, keys[1:], value), check=False)


def _same_mapping(node: Mapping, new: dict) -> Any:
    """``new`` in ``node``'s mapping type (e.g. NNX ``State``), else a dict."""
    kind: Any = type(node)
    try:
        return kind(new)
    except TypeError:
        return new


def _boxed(tree: PyTree, path: str, value: Any) -> Any:
    """``value`` in the box that holds ``path`` in ``tree`` (an NNX ``Variable``,
    ``nn.Partitioned``), so that a rebuilt alias is boxed as its source is."""
    leaves, _, paths_ = flatten_with_paths(tree)
    if path in paths_:
        leaf = leaves[paths_.index(path)]
        if is_box(leaf):
            return rebox(leaf, value)
    return value


def untie(
    params: PyTree, ties: Ties, *, rtol: float = 1e-6, atol: float = 1e-6, check: bool = True
) -> PyTree:
    """The compact tree: ``params`` without the alias entries.

    Args:
      params: The full tree, every alias present.
      ties: The declaration.
      rtol: Relative tolerance of the check that each alias equals the
        transform of its source.
      atol: Absolute tolerance of that check.
      check: Whether to check values (skipped for traced values, under ``jit``).

    Returns:
      The tree without aliases (dict and FrozenDict keys removed; sequence
      slots set to None), container types kept.

    Raises:
      PathError: If an alias or source does not exist.
      StructureError: If a transform gives the wrong shape, or (with
        ``check``) an alias differs from its source, naming those paths.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ties = ptp.Ties({'b': 'a'})
      >>> ptp.untie({'a': jnp.ones(2), 'b': jnp.ones(2)}, ties)
      {'a': Array([1., 1.], dtype=float32)}
    """
    bad = []
    for a, s, fn in ties.items():
        src, ali = get(params, s), get(params, a)
        _check_shapes(a, s, fn, src, ali)
        if check and not _traced((src, ali)):
            want = jax.tree_util.tree_leaves(_apply(fn, src))
            have = jax.tree_util.tree_leaves(ali)
            if not all(_close(x, y, rtol, atol) for x, y in zip(want, have)):
                bad.append(a)
    if bad:
        raise StructureError(
            f'untie: {len(bad)} alias(es) differ from their source: {quote_list(bad)}; '
            'pass check=False to drop them anyway'
        )
    compact = params
    for a in ties.aliases:
        compact = _remove(compact, a)
    return compact


@jax.jit
def _allclose(x: jax.Array, y: jax.Array, rtol: Any, atol: Any) -> jax.Array:
    x, y = (
        jnp.asarray(x, jnp.result_type(x, y, float)),
        jnp.asarray(y, jnp.result_type(x, y, float)),
    )
    close = (x == y) | (jnp.abs(x - y) <= atol + rtol * jnp.abs(y))
    return jnp.all(close | (jnp.isnan(x) & jnp.isnan(y)))


def _close(x: Any, y: Any, rtol: float, atol: float) -> bool:
    """``np.allclose(x, y, equal_nan=True)``: in float64 on the host, or for
    arrays sharded over several processes by a jitted reduction where they lie."""
    if is_global(x) or is_global(y):
        return bool(fetch_replicated(_allclose(as_auto(x), as_auto(y), rtol, atol)))
    return bool(
        np.allclose(
            np.asarray(x, np.float64),
            np.asarray(y, np.float64),
            rtol=rtol,
            atol=atol,
            equal_nan=True,  # NaN where the source holds NaN is the same value
        )
    )


def tie(compact: PyTree, ties: Ties) -> PyTree:
    """The full tree again, every alias rebuilt from its source. Jittable.

    Use it inside the loss: ``jax.grad(lambda c: loss(ptp.tie(c, ties)))``
    gives each source the sum of the gradients of all its uses (pulled back
    through its transform), and the optimizer state holds one copy.

    Args:
      compact: A tree from :func:`untie` (aliases absent).
      ties: The declaration.

    Returns:
      The full tree with ``compact``'s container types.

    Raises:
      PathError: If a source or an alias's parent does not exist.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ties = ptp.Ties({'head': ('embed', ptp.transpose)})
      >>> full = ptp.tie({'embed': jnp.zeros((5, 2))}, ties)
      >>> full['head'].shape
      (2, 5)
    """
    full = compact
    for a, s, fn in ties.items():
        value = _boxed(compact, s, _apply(fn, get(compact, s)))
        full = _insert(full, path_tuple(a), value)
    return full


def tied_grads(full_grads: PyTree, ties: Ties) -> dict[str, dict[str, jax.Array]]:
    """Each use's share of the gradient of every shared leaf, and their sum.

    Args:
      full_grads: Gradients with respect to the full (tied) tree.
      ties: The declaration; transforms must be linear (a transpose, a
        reshape...), as each alias's gradient is pulled back through it.

    Returns:
      ``{source leaf path: {use path: contribution, ..., 'sum': total}}``,
      where the first use is the source itself; ``'sum'`` equals the gradient
      of the compact tree at the source.

    Raises:
      PathError: If a source or an alias is not in ``full_grads``.
      StructureError: If a tied subtree's keys differ from its source's (the
        leaves are matched by key, never by position).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([10.0, 20.0])}
      >>> ptp.tied_grads(g, ptp.Ties({'b': 'a'}))['a']['sum'].tolist()
      [11.0, 22.0]
    """
    out: dict[str, dict[str, jax.Array]] = {}
    for a, s, fn in ties.items():
        src_flat = {
            path_str((s, p)) if p else s: v for p, v in _subflat(get(full_grads, s)).items()
        }
        ali_flat = {
            path_str((a, p)) if p else a: v for p, v in _subflat(get(full_grads, a)).items()
        }
        src_rel = {k[len(s) :]: k for k in src_flat}
        ali_rel = {k[len(a) :]: k for k in ali_flat}
        if builtins.set(src_rel) != builtins.set(ali_rel):
            only_s = [src_rel[k] for k in src_rel if k not in ali_rel]
            only_a = [ali_rel[k] for k in ali_rel if k not in src_rel]
            raise StructureError(
                f'tied_grads: {a!r} and its source {s!r} hold different keys: only in the '
                f'source {only_s}, only in the alias {only_a}'
            )
        pairs = [
            ((src_rel[k], src_flat[src_rel[k]]), (ali_rel[k], ali_flat[ali_rel[k]]))
            for k in src_rel
        ]
        for (sp, g_src), (ap, g_ali) in pairs:
            if fn is None:
                back = g_ali
            else:
                _, pull = jax.vjp(fn, jnp.zeros_like(g_src))
                (back,) = pull(g_ali)
            entry = out.setdefault(sp, {sp: g_src})
            entry[ap] = back
    for entry in out.values():
        entry['sum'] = functools.reduce(operator.add, entry.values())
    return out


def _subflat(node: Any) -> dict[str, Any]:
    leaves, _, paths_ = flatten_with_paths(node)
    if paths_ == ('',):
        return {'': unbox(leaves[0])}
    return {p: unbox(x) for p, x in zip(paths_, leaves)}
