"""Summaries of parameter trees: rows of data, grouped subtotals, renderers.

Data and presentation are apart (as in flax ``linen/summary.py``): a
:class:`Summary` holds :class:`Row` objects; ``str()``, ``__rich__`` and
``_repr_html_`` render them, ``to_dict`` flattens them for metric loggers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ._errors import PathError
from ._flatten import flatten_with_paths
from ._keys import describe, dtype_name, is_key_dtype, unbox, unbox_all
from ._messages import no_match_message
from ._patterns import compile_pattern, map_with_path, pattern_texts
from ._render import fmt_bytes, fmt_float, fmt_int, html_table, rich_table, text_table
from ._stats import STAT_NAMES, eager_leaf_stats, is_array, readable
from ._typing import Pattern, PyTree

__all__ = ['Row', 'Summary', 'count', 'nbytes', 'shapes', 'summary']


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaf, or one group of leaves, of a :class:`Summary`.

    Attributes:
      path: The leaf path, the group prefix, or ``'total'``.
      shape: The leaf shape (None for groups and non-array leaves).
      dtype: The dtype name (``'mixed'`` for groups of several dtypes).
      size: Number of elements, an exact Python int.
      nbytes: Bytes, an exact Python int.
      mean, std, min, max, l2: Statistics (None without statistics).
      nonfinite: Number of NaN/Inf values (None without statistics).
      zero_frac: Fraction of exact zeros (None without statistics).
      leaves: Number of leaves the row covers.
      sharding: A description of the sharding, when asked for.
      note: Free text, e.g. ``'alias of ...'`` for tied leaves.
      alias: Whether the leaf is an alias of ``ties`` (stored once: not in the totals).
      extra: Further ``(column, value)`` pairs, e.g. gradient statistics.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> row = ptp.summary({'w': jnp.ones((2, 3))}).rows[0]
      >>> row.type, row.size, row.nbytes, row.mean
      ('float32[2,3]', 6, 24, 1.0)
    """

    path: str
    shape: tuple[int, ...] | None
    dtype: str
    size: int
    nbytes: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    l2: float | None = None
    nonfinite: int | None = None
    zero_frac: float | None = None
    leaves: int = 1
    sharding: str | None = None
    note: str = ''
    alias: bool = False
    extra: tuple[tuple[str, float | None], ...] = ()

    @property
    def type(self) -> str:
        """``'float32[4,8]'`` style description (dtype alone for groups)."""
        if self.shape is None:
            return self.dtype
        return f'{self.dtype}[{",".join(str(d) for d in self.shape)}]'

    def stats(self) -> dict[str, float | None]:
        """The statistics as a dict in ``STAT_NAMES`` order."""
        return {k: getattr(self, k) for k in STAT_NAMES}


def _sharding_str(x: Any) -> str | None:
    s = getattr(x, 'sharding', None)
    if s is None:
        return None
    spec = getattr(s, 'spec', None)
    n = len(s.device_set)
    return f'{spec} on {n} devices' if spec is not None else f'{type(s).__name__} ({n})'


_DTYPE_NAMES: dict[Any, tuple[str, int]] = {}


def _dtype_info(dtype: Any) -> tuple[str, int]:
    """(name, itemsize) of a dtype, cached (``np.dtype.name`` is slow)."""
    info = _DTYPE_NAMES.get(dtype)
    if info is None:
        if is_key_dtype(dtype):  # PRNG keys: the bytes of their key data
            info = (dtype_name(dtype), int(dtype.itemsize))
        else:
            d = np.dtype(dtype)
            info = (d.name, d.itemsize)
        _DTYPE_NAMES[dtype] = info
    return info


_FIELDS = ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac')


# Array types whose ``shape`` is a tuple of Python ints and ``dtype`` a NumPy dtype
# (NumPy arrays and the concrete jax array class, added when first seen).
_PLAIN_ARRAYS: set[type] = {np.ndarray}


def _is_plain(x: Any) -> bool:
    t = type(x)
    if t in _PLAIN_ARRAYS:
        return True
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        _PLAIN_ARRAYS.add(t)
        return True
    return False


def is_key_array(x: Any) -> bool:
    """A PRNG key array (``jax.random.key``): shown, counted in bytes, no statistics."""
    dtype = getattr(x, 'dtype', None)
    return dtype is not None and hasattr(x, 'shape') and is_key_dtype(dtype)


def _leaf_row(path: str, x: Any, st: np.ndarray | None, sharding: bool, note: str) -> Row:
    if _is_plain(x) and (st is not None or is_array(x)):  # the common case, quickly
        shape = x.shape
        name, itemsize = _dtype_info(x.dtype)
        size = math.prod(shape)
        fields = {'path': path, 'shape': shape, 'dtype': name, 'size': size}
        fields['nbytes'] = size * itemsize
    elif is_array(x) or is_key_array(x):
        shape = tuple(map(int, np.shape(x)))  # () for Python scalars
        name, itemsize = _dtype_info(getattr(x, 'dtype', None) or np.asarray(x).dtype)
        size = math.prod(shape)
        fields = dict(path=path, shape=shape, dtype=name, size=size, nbytes=size * itemsize)
    else:
        fields = dict(path=path, shape=None, dtype=describe(x), size=0, nbytes=0)
    if st is not None:
        fields.update(zip(_FIELDS, st.tolist()))
        fields['nonfinite'] = int(fields['nonfinite'])
    if sharding:
        fields['sharding'] = _sharding_str(x)
    if note:
        fields['note'] = note
    return _make_row(fields)


def _make_row(fields: dict[str, Any]) -> Row:
    """``Row(**fields)`` without the frozen dataclass's per-field ``__setattr__``."""
    row = object.__new__(Row)
    row.__dict__.update(_ROW_DEFAULTS)
    row.__dict__.update(fields)
    return row


def combine_rows(path: str, rows: Sequence[Row]) -> Row:
    """One row for a group: sums, pooled mean/std, min/max, root-sum-square L2.

    The pooled variance is ``sum(n_i * (var_i + (mean_i - mean)**2)) / N``
    computed in float64, the exact variance of all the group's elements.
    """
    size = sum(r.size for r in rows)
    dtypes = {r.dtype for r in rows if r.shape is not None}
    row = Row(
        path,
        None,
        dtypes.pop() if len(dtypes) == 1 else ('mixed' if dtypes else ''),
        size,
        sum(r.nbytes for r in rows),
        leaves=sum(r.leaves for r in rows),
    )
    # one pass over the rows: (size, mean, std, min, max, l2, zero_frac, nonfinite)
    cols = [
        (r.size, r.mean, r.std, r.min, r.max, r.l2, r.zero_frac, r.nonfinite or 0)
        for r in rows
        if r.mean is not None and r.size > 0
    ]
    if not cols:
        return row
    n, means, stds, mins, maxs, l2s, zfs, _ = np.array(cols, np.float64).T
    with np.errstate(all='ignore'):
        total = n.sum()
        mean = float(np.sum(n * means) / total)
        var = float(np.sum(n * (stds**2 + (means - mean) ** 2)) / total)
        l2 = float(np.sqrt(np.sum(l2s**2)))
        zeros = float(np.sum(n * zfs) / total)
    return dataclasses.replace(
        row,
        mean=mean,
        std=math.sqrt(var) if var == var else float('nan'),
        min=float(np.min(mins)),
        max=float(np.max(maxs)),
        l2=l2,
        nonfinite=sum(c[7] for c in cols),
        zero_frac=zeros,
    )


_ROW_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Row) if f.default is not dataclasses.MISSING
}


# Trees hold other state beside parameters: Flax's non-parameter collections
# and PyTorch's buffers (running statistics, counters).
_STATE_COLLECTIONS = frozenset({'batch_stats', 'cache', 'intermediates', 'losses', 'rngs'})
_TORCH_BUFFERS = frozenset({'running_mean', 'running_var', 'num_batches_tracked'})


def is_state_path(path: str) -> bool:
    """Whether a leaf path names other state than a parameter: a Flax collection
    such as ``batch_stats`` or a PyTorch buffer (``running_mean``, ``running_var``,
    ``num_batches_tracked``).

    Example:
      >>> from pytreeparams._summary import is_state_path
      >>> is_state_path('batch_stats/bn/mean'), is_state_path('layer1.0.bn1.running_var')
      (True, True)
      >>> is_state_path('params/bn/scale')
      False
    """
    keys = path.replace('.', '/').split('/')
    return keys[0] in _STATE_COLLECTIONS or keys[-1] in _TORCH_BUFFERS


def parameter_count(rows: Sequence[Row]) -> tuple[int, int]:
    """``(parameters, other state)`` element counts of leaf rows (see :func:`is_state_path`).

    Example:
      >>> import numpy as np, pytreeparams as ptp
      >>> from pytreeparams._summary import parameter_count
      >>> s = ptp.summary({'params': {'w': np.ones(3)}, 'batch_stats': {'mean': np.ones(2)}})
      >>> parameter_count(s.rows)
      (3, 2)
    """
    state = sum(r.size for r in rows if is_state_path(r.path))
    return sum(r.size for r in rows) - state, state


@dataclasses.dataclass(frozen=True)
class Summary:
    """A summary of a parameter tree: rows, optional group rows, totals.

    Attributes:
      rows: One :class:`Row` per leaf, in flatten order.
      groups: With ``depth``: one subtotal row per group of leaves sharing their
        first ``depth`` keys, in order of first appearance; else empty.
      totals: A row summing the whole tree (exact Python ints).
      depth: The grouping depth, or None.
      has_stats: Whether statistics were computed.

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

    def _columns(self) -> list[tuple[str, Any]]:
        cols: list[tuple[str, Any]] = [
            ('path', lambda r: r.path),
            ('type', lambda r: r.type if r.shape is not None else r.dtype),
            ('size', lambda r: fmt_int(r.size)),
            ('bytes', lambda r: fmt_bytes(r.nbytes)),
        ]
        if self.depth is not None:
            cols.insert(2, ('leaves', lambda r: str(r.leaves)))
        if self.has_stats:
            for name in ('mean', 'std', 'min', 'max', 'l2'):
                cols.append((name, lambda r, n=name: fmt_float(getattr(r, n))))
            cols.append(('nonfinite', lambda r: '' if r.nonfinite is None else str(r.nonfinite)))
            cols.append(('zeros', lambda r: fmt_float(r.zero_frac)))
        body = self.groups if self.depth is not None else self.rows
        if body and body[0].extra:
            for j, (name, _) in enumerate(body[0].extra):
                cols.append(
                    (name, lambda r, j=j: fmt_float(r.extra[j][1]) if len(r.extra) > j else '')
                )
        if self.show_sharding:
            cols.append(('sharding', lambda r: r.sharding or ''))
        if any(r.note for r in self.rows):
            cols.append(('note', lambda r: r.note))
        return cols

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        cols = self._columns()
        body = self.groups if self.depth is not None else self.rows
        header = [c for c, _ in cols]
        cells = [[f(r) for _, f in cols] for r in body]
        total = [f(self.totals) for _, f in cols]
        total[1] = f'{self.totals.leaves} leaves'
        return header, cells, total

    def _title(self) -> str:
        return 'Parameters' + (f' by module (depth {self.depth})' if self.depth else '')

    def __str__(self) -> str:
        return text_table(*self._table())

    def rich_table(self, width: int = 80) -> Any:
        """A ``rich.table.Table`` that fits ``width`` columns with no cut cell.

        Numbers are never cut: long paths fold onto further lines, and when the
        table is still too wide whole columns are left out (first ``l2``,
        ``zeros``, ``nonfinite``, ``bytes``, ``min``/``max``), named in the
        caption. ``print(summary)`` or ``summary.to_dict()`` give everything.

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
        return html_table(*self._table())

    def __repr__(self) -> str:
        return (
            f'Summary({len(self.rows)} leaves, {fmt_int(self.totals.size)} parameters, '
            f'{fmt_bytes(self.totals.nbytes)})'
        )

    def to_dict(self) -> dict[str, float]:
        """Flat ``{'path/stat': float}`` (groups with ``depth``), plus ``total/...``
        (``_total/...`` when the tree has a top-level key ``total`` of its own).

        Returns:
          Sizes, bytes and (with statistics) every statistic, for loggers such as
          TensorBoard.
        """
        out: dict[str, float] = {}
        body = self.groups if self.depth is not None else self.rows
        total = 'total'
        while any(r.path == total or r.path.startswith(total + '/') for r in body):
            total = '_' + total  # a tree with its own 'total' keeps it; the totals move aside
        totals = dataclasses.replace(self.totals, path=total)
        for r in (*body, totals):
            out[f'{r.path}/size'] = float(r.size)
            out[f'{r.path}/nbytes'] = float(r.nbytes)
            if self.has_stats and r.mean is not None:
                for k, v in r.stats().items():
                    out[f'{r.path}/{k}'] = float(v)
            for k, v in r.extra:
                if v is not None:
                    out[f'{r.path}/{k}'] = float(v)
        return out


def summary(
    tree: PyTree,
    *,
    stats: bool = True,
    depth: int | None = None,
    select: Pattern | None = None,
    sharding: bool = False,
    notes: dict[str, str] | None = None,
    ties: Any = None,
) -> Summary:
    """Summarizes every leaf of ``tree``: path, shape, dtype, counts, statistics.

    Statistics are computed where each array lives (see ``ptp.stats``), in
    float32 or better for every dtype; a sharded array is reduced shard by
    shard and never gathered. Abstract trees (``jax.ShapeDtypeStruct``
    leaves) give names, shapes, counts and bytes instantly. Counts are exact
    Python ints. A leaf holding NaN shows NaN mean/std/min/max/L2 and its
    exact ``nonfinite`` count.

    Args:
      tree: Any pytree.
      stats: Whether to compute value statistics.
      depth: Group leaves by their first ``depth`` keys, with pooled subtotals
        (sums of counts and bytes, the mean and std of all the group's
        elements, min/max, L2 as the root of summed squares).
      select: Only leaves whose path matches this pattern.
      sharding: Add a column describing each array's sharding.
      notes: Optional ``{path: text}`` shown in a ``note`` column.
      ties: Optional ``ptp.Ties``: aliases are marked ``alias of ...`` and
        counted once in the totals.

    Returns:
      A :class:`Summary`; ``print`` it, show it in a notebook or with rich.

    Raises:
      PathError: If ``select`` matches no leaf.
      ValueError: If ``depth`` is not a positive integer.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> params = {'dense': {'kernel': jnp.ones((4, 8)), 'bias': jnp.zeros(8)}}
      >>> s = ptp.summary(params)
      >>> [(r.path, r.size) for r in s.rows], s.totals.size
      ([('dense/bias', 8), ('dense/kernel', 32)], 40)
      >>> s.rows[1].mean, s.rows[0].zero_frac
      (1.0, 1.0)
    """
    if depth is not None and (not isinstance(depth, int) or depth < 1):
        raise ValueError(f'depth must be a positive integer or None, got {depth!r}')
    leaves, _, paths_ = flatten_with_paths(tree)
    leaves = readable(unbox_all(leaves))
    if select is not None:
        pred = compile_pattern(select)
        keep = [i for i, p in enumerate(paths_) if pred(p)]
        if not keep:
            raise PathError(no_match_message(pattern_texts(select), paths_))
        leaves = [leaves[i] for i in keep]
        paths_ = tuple(paths_[i] for i in keep)
    concrete = stats and any(
        is_array(x) and not isinstance(x, jax.ShapeDtypeStruct) for x in leaves
    )
    st = eager_leaf_stats(leaves) if concrete else [None] * len(leaves)
    notes = dict(notes or {})
    aliases: dict[str, str] = ties.notes(tree) if ties is not None else {}
    notes.update(aliases)
    rows = tuple(
        _leaf_row(p, x, s, sharding, notes.get(p, '')) for p, x, s in zip(paths_, leaves, st)
    )
    if aliases:
        rows = tuple(dataclasses.replace(r, alias=True) if r.path in aliases else r for r in rows)
    groups: tuple[Row, ...] = ()
    if depth is not None:
        buckets: dict[str, list[Row]] = {}
        for r in rows:
            buckets.setdefault('/'.join(r.path.split('/')[:depth]), []).append(r)
        groups = tuple(combine_rows(k, v) for k, v in buckets.items())
    counted = [r for r in rows if not r.alias]
    totals = dataclasses.replace(combine_rows('total', counted), leaves=len(rows))
    return Summary(rows, groups, totals, depth, concrete, sharding)


def count(tree: PyTree) -> int:
    """The number of array elements in ``tree``, as an exact Python int.

    Args:
      tree: Any pytree; Python scalars count 1, non-array leaves 0.

    Returns:
      The total element count (no int32 overflow).

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.count({'w': jax.ShapeDtypeStruct((70_000, 1_000_000), jnp.bfloat16)})
      70000000000
    """
    return sum(math.prod(np.shape(x)) for x in _array_leaves(tree))


def nbytes(tree: PyTree) -> int:
    """The number of bytes of the arrays in ``tree``, as an exact Python int.

    Args:
      tree: Any pytree; abstract leaves count their would-be bytes.

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
    leaves = readable([unbox(v) for v in flatten_with_paths(tree)[0]])
    for x in leaves:
        if is_array(x) or is_key_array(x):
            dtype = getattr(x, 'dtype', None) or np.asarray(x).dtype
            total += math.prod(np.shape(x)) * _dtype_info(dtype)[1]
    return total


def _array_leaves(tree: PyTree) -> list[Any]:
    return [x for x in readable([unbox(v) for v in flatten_with_paths(tree)[0]]) if is_array(x)]


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

    return map_with_path(tree, lambda _, x: tuple(np.shape(x)) if is_array(x) else None)
