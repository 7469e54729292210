"""Parameter tying: declare shared parameters, store them once, train them.

A :class:`Ties` maps alias paths to source paths (optionally through a
jittable transform such as :func:`transpose`). ``untie`` drops the aliases
(the *compact* tree, which the optimizer sees); ``tie`` rebuilds them. Since
``tie`` is an ordinary JAX function, ``jax.grad`` of ``loss(tie(compact))``
gives each source the sum of the gradients of all its uses.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from ._errors import StructureError
from ._flatten import children, flatten_with_paths
from ._keys import is_box, path_str, path_tuple, rebox, unbox, unbox_all
from ._paths import get, set
from ._stats import eager_leaf_stats, is_array, readable
from ._typing import PathLike, PyTree

__all__ = [
    'SharedModule',
    'TieGroup',
    'Ties',
    'find_ties',
    'shared_modules',
    'tie',
    'tied_grads',
    'transpose',
    'untie',
]


def transpose(x: jax.Array) -> jax.Array:
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

    def __init__(self, mapping: Mapping[PathLike, Any]):
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
        out = {}
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
    if g_def != w_def:
        g_paths, w_paths = flatten_with_paths(got)[2], flatten_with_paths(want)[2]
        raise StructureError(
            f'Ties: {alias!r} cannot be rebuilt from {source!r}: they hold different keys: only '
            f'in the source {[p for p in g_paths if p not in w_paths]}, only in the alias '
            f'{[p for p in w_paths if p not in g_paths]}'
        )
    if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(g_leaves, w_leaves)):
        desc = lambda ls: ', '.join(f'{np.dtype(x.dtype).name}{list(x.shape)}' for x in ls[:4])  # noqa: E731
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
    try:
        return type(node)(new)
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
            if not all(
                np.allclose(
                    np.asarray(x, np.float64),
                    np.asarray(y, np.float64),
                    rtol=rtol,
                    atol=atol,
                    equal_nan=True,  # NaN where the source holds NaN is the same value
                )
                for x, y in zip(want, have)
            ):
                bad.append(a)
    if bad:
        raise StructureError(
            f'untie: {len(bad)} alias(es) differ from their source: {", ".join(map(repr, bad))}; '
            'pass check=False to drop them anyway'
        )
    compact = params
    for a in ties.aliases:
        compact = _remove(compact, a)
    return compact


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
        entry['sum'] = sum(v for k, v in entry.items())
    return out


def _subflat(node: Any) -> dict[str, Any]:
    leaves, _, paths_ = flatten_with_paths(node)
    if paths_ == ('',):
        return {'': unbox(leaves[0])}
    return {p: unbox(x) for p, x in zip(paths_, leaves)}


# --------------------------------------------------------------------------
# Finding ties in a tree.


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


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values, NaN where the other holds NaN included."""
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # dtypes without NaN (ints, bool)
        return bool(np.array_equal(a, b))


def find_ties(tree: PyTree, *, transposed: bool = False, constants: bool = False) -> list[TieGroup]:
    """Finds groups of leaves with identical values (or the same object).

    Leaves are bucketed by shape, dtype and a fingerprint (sum, sum of
    squares, min, max: invariant under transposition), and only leaves in one
    bucket are compared exactly, so a 5,000-leaf tree costs one statistics
    pass, not 12.5 million comparisons.

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
    fps = eager_leaf_stats([leaves[i] for i in idx])
    buckets: dict[Any, list[int]] = {}
    for i, fp in zip(idx, fps):
        shape = tuple(np.shape(leaves[i]))
        key_shape = tuple(sorted(shape[-2:])) + shape[:-2] if transposed else shape
        dtype = np.dtype(leaves[i].dtype).name
        prints = np.round(fp[[0, 1, 2, 3]], 6) if fp is not None else None
        # NaN != NaN: fingerprints of NaN-holding leaves compare by their text
        key = (key_shape, dtype, None if prints is None else tuple(repr(v) for v in prints))
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
            a = np.asarray(leaves[i])
            for k in members[j + 1 :]:
                if k in claimed:
                    continue
                b = np.asarray(leaves[k])
                if leaves[k] is leaves[i] or (a.shape == b.shape and _same(a, b)):
                    same.append(k)
                elif (
                    transposed
                    and a.ndim >= 2
                    and np.swapaxes(b, -1, -2).shape == a.shape
                    and _same(a, np.swapaxes(b, -1, -2))
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


# --------------------------------------------------------------------------
# Shared sub-modules.


@dataclasses.dataclass(frozen=True)
class SharedModule:
    """A sub-module reached more than once.

    Attributes:
      path: The module's path (where its parameters are stored).
      calls: How many times it was called (linen; NNX given inputs), or the
        number of attribute paths that reach it (NNX without inputs).
      call_sites: Where: for linen, ``'caller path #n'`` per call (the n-th
        sub-module call of that caller); for NNX, every attribute path.
      param_paths: The parameter paths it owns (stored once).

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> d = nn.Dense(2)
      >>> m, = ptp.shared_modules(nn.Sequential([d, d]), jnp.ones((1, 2)))
      >>> m.path, m.calls, m.param_paths
      ('layers_0', 2, ('params/layers_0/bias', 'params/layers_0/kernel'))
    """

    path: str
    calls: int
    call_sites: tuple[str, ...]
    param_paths: tuple[str, ...]


def shared_modules(module: Any, *args: Any, **kwargs: Any) -> list[SharedModule]:
    """Reports sub-modules used at several places, stored once.

    For a Flax linen module, runs ``module.init`` abstractly (``jax.eval_shape``,
    nothing allocated) on ``args`` and records every sub-module call. For a
    Flax NNX module, reports every ``Module`` or ``Param`` reached through more
    than one attribute path (``nnx.find_duplicates``), under the path where
    NNX's ``State`` stores its parameters; with ``args``, ``calls`` counts the
    calls of one abstract forward pass (``nnx.eval_shape``: the model is not
    changed), without them the attribute paths that reach it. Modules without
    parameters (dropout, activations) are not listed.

    Args:
      module: A ``flax.linen.Module`` or ``flax.nnx.Module``.
      *args: Example inputs, e.g. ``jnp.ones((2, 4))`` (linen: required).
      **kwargs: Keyword inputs.

    Returns:
      One :class:`SharedModule` per reused module, in order of first call.

    Raises:
      Whatever ``module.init`` raises for these inputs.

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> shared = nn.Dense(8)
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
      >>> [(m.path, m.calls) for m in ptp.shared_modules(net, jnp.ones((2, 4)))]
      [('layers_2', 2)]
    """
    from flax import nnx

    if isinstance(module, nnx.Module):
        return _shared_nnx(module, args, kwargs)
    import flax.linen as nn

    calls: dict[tuple[str, ...], list[str]] = {}
    stack: list[tuple[str, ...]] = []
    counters: dict[tuple[str, ...], int] = {}

    def interceptor(next_fun: Any, a: Any, kw: Any, context: Any) -> Any:
        if context.method_name != '__call__':
            return next_fun(*a, **kw)
        path = tuple(context.module.path)
        caller = stack[-1] if stack else None
        if caller is not None:
            counters[caller] = counters.get(caller, 0) + 1
            site = f'{"/".join(caller) or "<root>"} #{counters[caller]}'
            calls.setdefault(path, []).append(site)
        stack.append(path)
        try:
            return next_fun(*a, **kw)
        finally:
            stack.pop()

    def run() -> Any:
        with nn.intercept_methods(interceptor):
            return module.init(jax.random.key(0), *args, **kwargs)

    variables = jax.eval_shape(run)
    all_paths = flatten_with_paths(variables)[2]
    out = []
    for path, sites in calls.items():
        if len(sites) > 1:
            p = '/'.join(path)
            owned = tuple(
                x
                for x in all_paths
                if f'/{p}/' in f'/{x}' and x.split('/', 1)[1].startswith(p + '/')
            )
            if owned:  # a parameterless module (dropout, an activation) shares no weight
                out.append(SharedModule(p, len(sites), tuple(sites), owned))
    return out


def _shared_nnx(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[SharedModule]:
    """NNX: ``nnx.find_duplicates`` for the nodes reached by several attribute
    paths; the path NNX stores them under (its state's); calls counted by
    running the model abstractly when inputs are given."""
    from flax import nnx

    param_paths = flatten_with_paths(nnx.state(module, nnx.Param))[2]
    groups = []
    for group in nnx.find_duplicates(module):
        paths_ = ['/'.join(str(k) for k in p) for p in group]
        owned = tuple(
            p for p in param_paths if any(p == q or p.startswith(q + '/') for q in paths_)
        )
        if owned:  # a parameterless module (Dropout, an activation) is not a shared weight
            stored = next(q for q in paths_ if owned[0] == q or owned[0].startswith(q + '/'))
            groups.append((stored, paths_, owned))
    calls = _count_nnx_calls(module, args, kwargs) if (args or kwargs) and groups else {}
    return [
        SharedModule(stored, calls.get(stored, 0) if args or kwargs else len(paths_),
                     tuple(paths_), owned)
        for stored, paths_, owned in groups
    ]  # fmt: skip


def _count_nnx_calls(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, int]:
    """``{stored path: __call__ count}`` of every sub-module, from one abstract
    forward pass (``nnx.eval_shape``: nothing computed, the model untouched)."""
    from flax import nnx

    counts: dict[str, int] = {}
    where: dict[int, str] = {}
    classes = {type(n) for _, n in nnx.graph.iter_graph(module) if isinstance(n, nnx.Module)}
    saved = {cls: cls.__dict__.get('__call__') for cls in classes}

    def counting(cls: type) -> Any:
        original = cls.__call__

        def __call__(self: Any, *a: Any, **k: Any) -> Any:
            path = where.get(id(self))
            if path is not None:
                counts[path] = counts.get(path, 0) + 1
            return original(self, *a, **k)

        return __call__

    def run(m: Any, *a: Any) -> Any:
        for p, n in nnx.graph.iter_graph(m):
            if isinstance(n, nnx.Module) and p:
                where[id(n)] = '/'.join(str(k) for k in p)
        return m(*a, **kwargs)

    try:
        for cls in classes:
            cls.__call__ = counting(cls)
        nnx.eval_shape(run, module, *args)
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.__call__
            else:
                cls.__call__ = original
    return counts
