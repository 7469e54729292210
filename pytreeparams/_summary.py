"""Summaries of parameter trees: rows of data, grouped subtotals, renderers.

Data and presentation are apart (as in flax ``linen/summary.py``): a
:class:`Summary` holds :class:`Row` objects; ``str()``, ``__rich__`` and
``_repr_html_`` render them, ``to_dict`` flattens them for metric loggers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ._calls import Call, assign_calls, is_module, module_calls, module_variables
from ._errors import PathError
from ._flatten import flatten_with_paths
from ._keys import is_state_box, logical_axes, shared_leaves, torch_as_numpy, unbox, unbox_all
from ._leaves import dtype_info, is_array, is_key_array, readable
from ._moments import as_auto, is_global, leaf_rows
from ._patterns import compile_pattern, map_with_path, no_match_text
from ._render import (
    axes_text,
    fmt_bytes,
    fmt_count,
    fmt_float,
    fmt_int,
    html_table,
    metrics,
    rich_table,
    text_table,
    treescope_repr,
)
from ._rows import (
    Row,
    combine_rows,
    is_state_path,
    leaf_row,
)
from ._stacked import layer_paths, resolve_stacked, stacked_axes
from ._typing import Pattern, PyTree

__all__ = ['Summary', 'count', 'nbytes', 'shapes', 'summary']


@dataclasses.dataclass(frozen=True)
class Summary:
    """A summary of a parameter tree: rows, optional group rows, totals.

    Attributes:
      rows: One :class:`Row` per leaf, in flatten order.
      groups: With ``depth``: one subtotal row per group of leaves sharing their
        first ``depth`` keys, in order of first appearance; else empty.
      totals: A row summing the whole tree (exact Python ints); its ``leaves`` is
        the tree's leaf count (a stacked leaf shown as layer rows is one leaf).
      depth: The grouping depth, or None.
      has_stats: Whether statistics were computed.
      show_sharding: Whether the tables show a sharding column.
      calls: For ``summary(module, *inputs)``: one :class:`Call` per module
        call (module type, input and output types, the statistics of the
        variables it owns), which the tables then show; else empty.
      state: A row pooling the other state than parameters (Flax collections
        such as ``batch_stats``, NNX ``BatchStat`` and RNG variables, PyTorch
        buffers), kept out of ``totals`` as ``nn.tabulate`` and
        ``nnx.tabulate`` keep collections apart; None when there is none.
      local: Whether the statistics of arrays sharded over several processes
        cover this process's shards only (``summary(..., local=True)``).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> s = ptp.summary({'a': {'w': jnp.ones((2, 3))}, 'b': jnp.zeros(4)})
      >>> s.totals.size, s.totals.nbytes, s.rows[0].type
      (10, 40, 'float32[2,3]')
    """

    rows: tuple[Row, ...]
    groups: tuple[Row, ...]
    totals: Row
    depth: int | None = None
    has_stats: bool = True
    show_sharding: bool = False
    calls: tuple[Call, ...] = ()
    state: Row | None = None
    local: bool = False

    def _columns(self) -> list[tuple[str, Any]]:
        cols: list[tuple[str, Any]] = [
            ('path', lambda r: r.path),
            ('type', lambda r: r.type if r.shape is not None else r.dtype),
            ('size', lambda r: fmt_int(r.size)),
            ('bytes', lambda r: fmt_bytes(r.nbytes)),
        ]
        if self.depth is not None:
            cols.insert(2, ('leaves', lambda r: fmt_int(r.leaves)))
        if self.has_stats:
            for name in ('mean', 'std', 'min', 'max', 'l2'):
                cols.append((name, lambda r, n=name: fmt_float(getattr(r, n))))
            cols.append(
                ('nonfinite', lambda r: '' if r.nonfinite is None else fmt_int(r.nonfinite))
            )
            cols.append(('zeros', lambda r: fmt_float(r.zero_frac)))
        body = self.groups if self.depth is not None else self.rows
        if body and body[0].extra:
            for j, (name, _) in enumerate(body[0].extra):
                cols.append(
                    (name, lambda r, j=j: fmt_float(r.extra[j][1]) if len(r.extra) > j else '')
                )
        if self.show_sharding:
            cols.append(('sharding', lambda r: r.sharding or ''))
            if any(r.logical_axes is not None for r in self.rows):
                cols.append(('logical', lambda r: axes_text(r.logical_axes)))
            if any(r.device_bytes is not None for r in self.rows):
                cols.append(('per device', lambda r: _maybe(fmt_bytes, r.device_bytes)))
        if any(r.note for r in (*self.rows, *self.groups)):
            cols.append(('note', lambda r: r.note))
        return cols

    def _call_columns(self) -> list[tuple[str, Any]]:
        cols: list[tuple[str, Any]] = [
            ('path', lambda c: c.path),
            ('module', lambda c: c.module + ('' if c.method == '__call__' else f'.{c.method}')),
            ('inputs', lambda c: c.inputs),
            ('outputs', lambda c: c.outputs),
        ]
        for name, f in self._columns()[1:]:
            if name not in ('type', 'leaves', 'sharding', 'note'):
                cols.append((name, lambda c, f=f: f(c.params)))
        if any(c.state is not None for c in self.calls):  # as tabulate's collection columns
            cols.append(('state', lambda c: fmt_int(c.state.size) if c.state is not None else ''))
        return cols

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        if self.calls:
            call_cols = self._call_columns()
            leaves = fmt_count(self.totals.leaves, 'leaf', 'leaves')
            totals = Call('total', leaves, '__call__', '', '', self.totals, self.state)
            return (
                [c for c, _ in call_cols],
                [[f(c) for _, f in call_cols] for c in self.calls],
                [f(totals) for _, f in call_cols],
            )
        cols = self._columns()
        body = self.groups if self.depth is not None else self.rows
        if self.state is not None:  # the other state, pooled, below the parameters
            body = (*body, self.state)
        header = [c for c, _ in cols]
        cells = [[f(r) for _, f in cols] for r in body]
        total = [f(self.totals) for _, f in cols]
        total[1] = fmt_count(self.totals.leaves, 'leaf', 'leaves')
        return header, cells, total

    def _title(self) -> str:
        if self.calls:
            return 'Module calls' + (f' (depth {self.depth})' if self.depth else '')
        title = 'Parameters' + (f' by module (depth {self.depth})' if self.depth else '')
        return title + (f" (process {jax.process_index()}'s shards only)" if self.local else '')

    def __str__(self) -> str:
        return text_table(*self._table()) + self._local_note()

    def _local_note(self) -> str:
        if not self.local:
            return ''
        return (
            f"\nstatistics of process {jax.process_index()}'s shards only (local=True); "
            'sizes and bytes are of the whole arrays'
        )

    def rich_table(self, width: int = 80) -> Any:
        """A ``rich.table.Table`` that fits ``width`` columns with no cut cell.

        Numbers are never cut: long paths fold onto further lines at a '/'
        (types, inputs and outputs at a shape's '[' or ','), and when the table
        is still too wide whole columns are left out (first ``l2``, ``zeros``,
        ``nonfinite``, ``bytes``, ``min``/``max``; ``mean`` and ``std`` last),
        named in the caption. ``print(summary)`` or ``summary.to_dict()`` give
        everything.

        Args:
          width: The console width.

        Returns:
          A ``rich.table.Table``.

        Raises:
          ImportError: If rich is not installed.
        """
        return rich_table(*self._table(), title=self._title(), width=width)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield self.rich_table(options.max_width)

    def _repr_html_(self) -> str:
        return html_table(*self._table()) + self._local_note().replace('\n', '<p>')

    def __treescope_repr__(self, path: Any, subtree_renderer: Any) -> Any:
        attributes = {'totals': self.totals, 'groups': self.groups, 'rows': self.rows}
        if self.calls:
            attributes = {'totals': self.totals, 'calls': self.calls, 'rows': self.rows}
        return treescope_repr(self, attributes, path, subtree_renderer)

    def __repr__(self) -> str:
        state = self.state
        other = '' if state is None else f', {fmt_int(state.size)} values of other state'
        return (
            f'Summary({fmt_count(self.totals.leaves, "leaf", "leaves")}, '
            f'{fmt_count(self.totals.size, "parameter", "parameters")}, '
            f'{fmt_bytes(self.totals.nbytes)}{other})'
        )

    def to_dict(
        self, prefix: str = '', *, stat_first: bool = False, drop_nan: bool = False
    ) -> dict[str, float]:
        """Flat ``{'path/stat': float}`` (groups with ``depth``), plus ``total/...``
        (``_total/...`` when the tree has a top-level key ``total`` of its own) for
        the parameters and ``total_state/...`` for other state (when there is some).

        Args:
          prefix: Put before every key (e.g. ``'train/'``).
          stat_first: Keys ``'mean/dense/kernel'`` (grouped by statistic, as
            TensorBoard and W&B group by the first part) instead of
            ``'dense/kernel/mean'``.
          drop_nan: Leave out entries that are not finite (NaN or infinite);
            ``nonfinite`` still counts NaN/Inf values.

        Returns:
          Sizes, bytes and (with statistics) every statistic, for loggers such as
          TensorBoard.

        Example:
          >>> import numpy as np, pytreeparams as ptp
          >>> s = ptp.summary({'w': np.array([1.0, np.nan])})
          >>> d = s.to_dict(stat_first=True, drop_nan=True)
          >>> d['size/w'], d['nonfinite/total'], 'mean/w' in d
          (2.0, 1.0, False)
        """
        body = self.groups if self.depth is not None else self.rows
        total = 'total'
        while any(r.path == total or r.path.startswith(total + '/') for r in body):
            total = '_' + total  # a tree with its own 'total' keeps it; the totals move aside
        totals = dataclasses.replace(self.totals, path=total)
        state = (
            () if self.state is None else (dataclasses.replace(self.state, path=f'{total}_state'),)
        )
        return metrics(
            (cell for r in (*body, totals, *state) for cell in self._cells(r)),
            prefix,
            stat_first,
            drop_nan,
        )

    def _cells(self, r: Row) -> Iterator[tuple[str, str, float]]:
        """``(path, statistic, value)`` of one row for :meth:`to_dict`."""
        yield r.path, 'size', float(r.size)
        yield r.path, 'nbytes', float(r.nbytes)
        if r.device_bytes is not None:
            yield r.path, 'device_bytes', float(r.device_bytes)
        if self.has_stats and r.mean is not None:
            for k, v in r.stats().items():
                yield r.path, k, float('nan') if v is None else float(v)
        for k, v in r.extra:
            if v is not None:
                yield r.path, k, float(v)


def _split_layers(
    leaves: list[Any], paths_: tuple[str, ...], stacked: Mapping[str, int]
) -> tuple[list[Any], tuple[str, ...], list[int]]:
    """Each stacked leaf as one leaf per layer (a view of a host array, a slice
    of a device array), named with the layer index after its subtree; and the
    index of the tree's leaf each row comes from."""
    splits = stacked_axes(paths_, [tuple(np.shape(x)) for x in leaves], stacked)
    out, names, origin = [], [], []
    for j, (x, p, sp) in enumerate(zip(leaves, paths_, splits)):
        if sp is None:
            out.append(x)
            names.append(p)
            origin.append(j)
            continue
        n = int(np.shape(x)[sp[1]])
        origin.extend([j] * n)
        if isinstance(x, jax.ShapeDtypeStruct):
            shape = tuple(d for i, d in enumerate(x.shape) if i != sp[1])
            out.extend(jax.ShapeDtypeStruct(shape, x.dtype) for _ in range(n))
        else:
            xp = np if isinstance(x, np.ndarray) else jnp
            x = as_auto(x)  # a gather along an Explicit mesh axis needs its out_sharding
            out.extend(xp.take(x, i, axis=sp[1]) for i in range(n))
        names.extend(layer_paths(p, sp[0], n))
    return out, tuple(names), origin


def summary(
    tree: PyTree,
    *inputs: Any,
    stats: bool = True,
    depth: int | None = None,
    select: Pattern | None = None,
    sharding: bool = False,
    notes: dict[str, str] | None = None,
    ties: Any = None,
    stacked: Mapping[str, int] | str | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
    variables: PyTree | None = None,
    rngs: Any = None,
    call_kwargs: Mapping[str, Any] | None = None,
    method: str | None = None,
    local: bool = False,
    **kwargs: Any,
) -> Summary:
    """Summarizes every leaf of ``tree``: path, shape, dtype, counts, statistics.

    Given a flax module and its inputs, ``summary(module, *inputs)`` adds the
    per-call view of ``nn.tabulate`` / ``nnx.tabulate`` (read from flax's own
    tabulate machinery): one row per module call with its module type, input
    and output types, beside the statistics of the variables that module owns
    (its own, as tabulate counts them; with ``depth``, a call at the depth owns
    everything below it). The module is run abstractly or on a copy: nothing
    it holds changes.

    Statistics are computed where each array lives (see ``ptp.stats``), in
    float32 or better for every dtype; a sharded array is reduced shard by
    shard and never gathered; an array sharded over several processes
    (multi-host) is reduced by each process on the shards it holds, the
    partials of all leaves exchanged once per call: a collective call
    (``local=True`` for one process alone). Abstract trees (``jax.ShapeDtypeStruct``
    leaves) give names, shapes, counts and bytes instantly. Counts are exact
    Python ints. A leaf holding NaN shows NaN mean/std/min/max/L2 and its
    exact ``nonfinite`` count.

    Args:
      tree: Any pytree; or a ``flax.linen.Module`` or ``flax.nnx.Module``
        called on ``inputs`` (an NNX module alone is summarized as the tree
        of its variables).
      *inputs: With a module: the positional arguments of its call.
      stats: Whether to compute value statistics.
      depth: Group leaves by their first ``depth`` keys, with pooled subtotals
        (sums of counts and bytes, the mean and std of all the group's
        elements, min/max, L2 as the root of summed squares). With a module's
        calls: show calls at most ``depth`` modules deep, as tabulate does.
      select: Only leaves whose path matches this pattern.
      sharding: Add columns for sharded models: each array's sharding (its
        partition spec), the logical axis names of its metadata
        (``nn.with_logical_partitioning``, NNX sharding metadata) and the bytes
        of its largest shard on this process's devices (``Row.device_bytes``;
        the total: the sum, what one device holds of the tree when it is
        sharded evenly).
      notes: Optional ``{path: text}`` shown in a ``note`` column.
      ties: Optional ``ptp.Ties``: aliases are marked ``alias of ...`` and
        counted once in the totals.
      stacked: ``{subtree glob: layer axis}`` for layers stacked on an axis
        (``nn.scan``): one row per layer, named with the index after the
        subtree, as in :func:`grad_stats` (``select`` sees those names); or
        the partition name of flax's scan metadata (``'layers'``), as there.
      is_leaf: As ``jax.tree_util`` takes it: a node for which it is true is
        one row (a node that is not an array shows its type, and counts nothing).
      variables: linen only: the variables to summarize (trained ones, say);
        by default ``module.init(rngs, *inputs)`` under jit (abstract with
        ``stats=False``).
      rngs: linen only: the key, or ``{name: key}``, of ``init``; by default
        ``jax.random.key(0)``.
      call_kwargs: Keyword arguments of the module's call (``{'train': False}``).
      method: The module's method to call instead of ``__call__`` (its name),
        as ``nn.tabulate`` and ``nnx.tabulate`` take it.
      local: Arrays sharded over several processes (multi-host): statistics of
        the shards this process holds (replicas once), no communication; the
        table says so. By default statistics of whole arrays, which makes the
        call collective: every process calls it, one prints
        (``s = ptp.summary(tree)``, then ``if jax.process_index() == 0: print(s)``).
      **kwargs: Further keyword arguments of the module's call, as
        ``nn.tabulate`` takes them: ``summary(model, x, train=False)`` is
        ``call_kwargs={'train': False}``.

    Returns:
      A :class:`Summary`; ``print`` it, show it in a notebook or with rich.

    Raises:
      PathError: If ``select`` (or a ``stacked`` pattern) matches nothing.
      StructureError: If a ``stacked`` leaf lacks its layer axis.
      ValueError: If ``depth`` is not a positive integer.
      TypeError: If ``inputs`` come without a module, or a linen module
        without ``inputs``.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> params = {'dense': {'kernel': jnp.ones((4, 8)), 'bias': jnp.zeros(8)}}
      >>> s = ptp.summary(params)
      >>> [(r.path, r.size) for r in s.rows], s.totals.size
      ([('dense/bias', 8), ('dense/kernel', 32)], 40)
      >>> s.rows[1].mean, s.rows[0].zero_frac
      (1.0, 1.0)

      A module's calls, as ``nn.tabulate`` lists them, with statistics:

      >>> import flax.linen as nn, jax
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
      >>> s = ptp.summary(net, jnp.ones((2, 4)))
      >>> [(c.path, c.module, c.params.size) for c in s.calls]
      [('', 'Sequential', 0), ('layers_0', 'Dense', 40), ('layers_2', 'Dense', 9)]
      >>> s.calls[1].outputs
      'float32[2,8]'
    """
    if depth is not None and (not isinstance(depth, int) or depth < 1):
        raise ValueError(f'depth must be a positive integer or None, got {depth!r}')
    both = sorted(set(kwargs) & set(call_kwargs or {}))
    if both:
        raise TypeError(f'summary: {both[0]!r} is given both as a keyword and in call_kwargs=')
    kwargs = {
        **(call_kwargs or {}),
        **kwargs,
        **({'method': method} if method is not None else {}),
    }
    raw_calls = None
    linen = isinstance(tree, nn.Module)  # linen variables: paths start with a collection
    if _wants_calls(tree, inputs, variables, rngs, kwargs):
        key = jax.random.key(0) if rngs is None else rngs
        raw_calls = module_calls(tree, inputs, kwargs, key)
        tree = module_variables(tree, inputs, kwargs, variables, key, stats)
    leaves, _, paths_ = flatten_with_paths(tree, is_leaf)
    stacked = resolve_stacked(stacked, paths_, leaves)
    logical = [logical_axes(x) for x in leaves] if sharding else []
    shared = shared_leaves(leaves, paths_)  # an NNX Variable in two places counts once
    is_state = [is_state_box(x) or is_state_path(p) for x, p in zip(leaves, paths_)]
    leaves = readable(unbox_all(leaves))
    origin = list(range(len(leaves)))  # the tree's leaf of each row
    tree_paths = paths_
    if stacked:
        leaves, paths_, origin = _split_layers(leaves, paths_, stacked)
    if select is not None:
        pred = compile_pattern(select)
        keep = [i for i, p in enumerate(paths_) if pred(p)]
        if not keep:
            raise PathError(no_match_text(select, paths_))
        leaves = [leaves[i] for i in keep]
        paths_ = tuple(paths_[i] for i in keep)
        origin = [origin[i] for i in keep]
    concrete = stats and any(
        is_array(x) and not isinstance(x, jax.ShapeDtypeStruct) for x in leaves
    )
    st = leaf_rows(leaves, local, 'ptp.summary') if concrete else [None] * len(leaves)
    notes = dict(notes or {})
    aliases: dict[str, str] = ties.notes(tree) if ties is not None else {}
    notes.update(aliases)
    rows = tuple(
        leaf_row(p, x, s, sharding, notes.get(p, '')) for p, x, s in zip(paths_, leaves, st)
    )
    if aliases or shared:
        rows = tuple(_mark_alias(r, shared.get(j), r.path in aliases) for r, j in zip(rows, origin))
    if any(n is not None for n in logical):
        rows = _with_logical(rows, [logical[j] for j in origin])
    state = [is_state[j] for j in origin]  # each row: other state than a parameter
    groups: tuple[Row, ...] = ()
    calls: tuple[Call, ...] = ()
    if raw_calls is not None:
        leaf_paths = [tree_paths[j] for j in origin]
        calls = assign_calls(
            raw_calls, rows, depth, collections=linen, leaf_paths=leaf_paths, state=state
        )
    elif depth is not None:
        groups = _groups(rows, state, depth)
    totals, state_totals = (
        _pooled(name, [(r, j) for r, j, s in zip(rows, origin, state) if s is kind])
        for name, kind in (('total', False), ('other state', True))
    )
    local_note = local and concrete and any(is_global(x) for x in leaves)
    return Summary(
        rows, groups, totals, depth, concrete, sharding, calls,
        state=state_totals if state_totals.leaves else None, local=local_note,
    )  # fmt: skip


def _maybe(fmt: Callable[[Any], str], v: Any) -> str:
    return '' if v is None else fmt(v)


def _with_logical(rows: tuple[Row, ...], names: list[Any]) -> tuple[Row, ...]:
    """Rows with the logical axis names of their leaves (a layer row of a stacked
    leaf has one axis fewer than the names: none shown)."""
    return tuple(
        dataclasses.replace(r, logical_axes=n)
        if n is not None and r.shape is not None and len(n) == len(r.shape)
        else r
        for r, n in zip(rows, names)
    )


def _mark_alias(r: Row, shared_with: str | None, tied: bool) -> Row:
    """A row not counted in the totals: an alias of ``ties``, or a leaf shared
    with an earlier path (the same NNX Variable)."""
    if shared_with is None:
        return dataclasses.replace(r, alias=True) if tied else r
    return dataclasses.replace(r, alias=True, note=r.note or f'alias of {shared_with}')


def _pooled(path: str, rows_origins: list[tuple[Row, int]]) -> Row:
    """One row pooling the rows that are no alias; its ``leaves`` counts the
    tree's leaves (a stacked leaf split into layer rows is one leaf)."""
    counted = [r for r, _ in rows_origins if not r.alias]
    leaves = len({j for r, j in rows_origins if not r.alias})
    return dataclasses.replace(combine_rows(path, counted), leaves=leaves)


def _groups(rows: tuple[Row, ...], state: list[bool], depth: int) -> tuple[Row, ...]:
    """Subtotals by the first ``depth`` keys; a group's other state (an NNX
    BatchNorm's ``mean`` and ``var``) is pooled apart from its parameters, in
    a row of its own noted ``other state``."""
    buckets: dict[tuple[str, bool], list[Row]] = {}
    for r, s in zip(rows, state):
        buckets.setdefault(('/'.join(r.path.split('/')[:depth]), s), []).append(r)
    out = []
    for (k, s), v in buckets.items():
        row = combine_rows(k, [r for r in v if not r.alias])  # an alias's group shows 0
        out.append(dataclasses.replace(row, note='other state') if s else row)
    return tuple(out)


def _wants_calls(
    tree: Any, inputs: tuple[Any, ...], variables: Any, rngs: Any, kwargs: Mapping[str, Any]
) -> bool:
    """Whether ``summary`` is asked for a module's calls; the module arguments
    without a module, or a linen module without inputs, are errors."""
    if not is_module(tree):
        if inputs or variables is not None or rngs is not None or kwargs:
            raise TypeError(
                'inputs, variables=, rngs=, call_kwargs=, method= and keyword arguments of the '
                'call are for a flax module: '
                f'summary(module, *inputs); got a {type(tree).__name__} tree'
            )
        return False
    if not inputs and not kwargs:
        if isinstance(tree, nn.Module):
            raise TypeError(
                f'a linen {type(tree).__name__} holds no variables: pass its inputs, '
                'summary(module, *inputs) (variables= for trained ones), or summary(variables)'
            )
        return False  # an NNX module alone: the tree of its variables
    return True


def count(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> int:
    """The number of array elements in ``tree``, as an exact Python int.

    Args:
      tree: Any pytree; Python scalars count 1, non-array leaves 0, a PRNG key
        array its number of keys (as ``summary`` and ``nbytes`` count it); an
        NNX ``Variable`` shared by two modules once, as ``nnx.state`` holds it.
        Other state (``batch_stats``) counts too: ``summary(tree).totals`` is
        the parameters alone.
      is_leaf: As ``jax.tree_util`` takes it (a node for which it is true is a leaf).

    Returns:
      The total element count (no int32 overflow).

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.count({'w': jax.ShapeDtypeStruct((70_000, 1_000_000), jnp.bfloat16)})
      70000000000
    """
    return sum(math.prod(np.shape(x)) for x in _array_leaves(tree, is_leaf))


def nbytes(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> int:
    """The number of bytes of the arrays in ``tree``, as an exact Python int.

    Args:
      tree: Any pytree; abstract leaves count their would-be bytes, a shared
        NNX ``Variable`` once.
      is_leaf: As ``jax.tree_util`` takes it (a node for which it is true is a leaf).

    Returns:
      Total bytes (a PRNG key counts the bytes of its key data).

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.nbytes({'w': jnp.zeros((4, 8)), 'b': jnp.zeros(8, jnp.bfloat16)})
      144
    """
    total = 0
    for x in _array_leaves(tree, is_leaf):
        dtype = getattr(x, 'dtype', None) or np.asarray(x).dtype
        total += math.prod(np.shape(x)) * dtype_info(dtype)[1]
    return total


def _array_leaves(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> list[Any]:
    """The array leaves, unboxed; an NNX Variable in two places once."""
    leaves, _, paths_ = flatten_with_paths(tree, is_leaf)
    shared = shared_leaves(leaves, paths_)
    if shared:
        leaves = [x for i, x in enumerate(leaves) if i not in shared]
    return [x for x in readable([unbox(v) for v in leaves]) if is_array(x) or is_key_array(x)]


def shapes(tree: PyTree) -> PyTree:
    """A tree of shapes in ``tree``'s own containers.

    Args:
      tree: Any pytree.

    Returns:
      What ``jax.tree.map(lambda x: x.shape, tree)`` gives, with boxes kept and
      ``()`` for Python scalars.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.shapes({'w': jnp.zeros((4, 8)), 'b': [jnp.zeros(8)]})
      {'b': [(8,)], 'w': (4, 8)}
    """

    def shape(_: str, x: Any) -> Any:
        x = torch_as_numpy(x)
        return tuple(np.shape(x)) if is_array(x) else None

    return map_with_path(tree, shape)
