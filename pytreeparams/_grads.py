"""Gradient statistics inside a jitted step: ``grad_stats`` and ``GradStats``.

``grad_stats`` is designed to ride along in a jitted training step: per leaf
it takes one pass over each gradient leaf (sum, Blue's scaled sums of squares,
max |g|, zero and non-finite counts) plus one sum of squares over the
parameters and the updates, and returns everything as one small stacked
array, cheap to return and fetch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ._errors import StructureError
from ._flatten import flatten_with_paths
from ._histogram import check_edges, histogram_counts, tensorboard_histogram
from ._keys import unbox_all
from ._leaves import is_array, readable
from ._messages import did_you_mean, structure_mismatch_message
from ._moments import (
    GradSums,
    grad_scale,
    grad_sums,
    jax_norm,
    poolable,
    pooled_grad_sums,
    small_grad_sums,
)
from ._render import fmt_float, html_table, metrics, stats_text, treescope_repr
from ._stacked import layer_paths, resolve_stacked, stacked_axes
from ._typing import PyTree

__all__ = ['GRAD_STAT_NAMES', 'GradStats', 'grad_stats']

GRAD_STAT_NAMES = (
    'grad_norm',
    'grad_rms',
    'grad_max',
    'grad_mean',
    'grad_zero_frac',
    'grad_nonfinite',
    'param_norm',
    'grad_to_param',
    'update_norm',
    'update_to_param',
)


@struct.dataclass
class GradStats:
    """Per-layer gradient statistics as device arrays (returned from ``jit``).

    Attributes:
      table: ``(len(paths), len(GRAD_STAT_NAMES))`` float32 array; parameter and
        update columns are NaN when those trees were not given.
      global_norm: The L2 norm of all gradients (as ``optax.global_norm``).
      paths: Leaf paths, or group prefixes with ``depth`` (static).
      histogram: With ``grad_stats(..., histogram=edges)``: int32 counts of the
        gradient values per row, ``(len(paths), len(bin_edges) + 1)``; else None.
      bin_edges: The histogram's bin edges (static; empty without one).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> gs = ptp.grad_stats({'w': jnp.array([3.0, 4.0])})
      >>> float(gs['grad_norm'][0]), float(gs.global_norm)
      (5.0, 5.0)
    """

    table: jax.Array
    global_norm: jax.Array
    paths: tuple[str, ...] = struct.field(pytree_node=False)
    histogram: jax.Array | None = None
    bin_edges: tuple[float, ...] = struct.field(pytree_node=False, default=())

    def __getitem__(self, name: str) -> jax.Array:
        """The column ``name`` (one of ``GRAD_STAT_NAMES``) over layers.

        Raises:
          KeyError: For a name not in ``GRAD_STAT_NAMES`` (the message lists
            them), as ``Stats`` has it.
        """
        if name not in GRAD_STAT_NAMES:
            raise KeyError(
                f'no statistic {name!r}; the statistics are {", ".join(GRAD_STAT_NAMES)}.'
                + did_you_mean(name, GRAD_STAT_NAMES)
            )
        return self.table[:, GRAD_STAT_NAMES.index(name)]

    def __str__(self) -> str:
        text = stats_text(self.paths, GRAD_STAT_NAMES, self.table)
        if isinstance(self.global_norm, jax.core.Tracer):
            return text
        return f'{text}\nglobal_norm {float(jax.device_get(self.global_norm)):.4g}'

    def _repr_html_(self) -> str:
        if isinstance(self.table, jax.core.Tracer):
            return html_table(['path'], [[str(self)]], [''])
        table, gn = jax.device_get((self.table, self.global_norm))
        cells = [[p, *(fmt_float(float(v)) for v in row)] for p, row in zip(self.paths, table)]
        total = ['global_norm', fmt_float(float(gn))] + [''] * (len(GRAD_STAT_NAMES) - 1)
        return html_table(['path', *GRAD_STAT_NAMES], cells, total)

    def __treescope_repr__(self, path: Any, subtree_renderer: Any) -> Any:
        attributes = {'paths': self.paths, 'global_norm': self.global_norm, 'table': self.table}
        return treescope_repr(self, attributes, path, subtree_renderer)

    def to_dict(
        self, prefix: str = '', *, stat_first: bool = False, drop_nan: bool = False
    ) -> dict[str, float]:
        """The statistics as a flat dict for metric loggers, fetched in one transfer.

        Args:
          prefix: Put before every key (e.g. ``'train/'``).
          stat_first: Keys ``'grad_norm/h_0/fc'`` (grouped by statistic, as
            TensorBoard and W&B group by the first part) instead of
            ``'h_0/fc/grad_norm'``.
          drop_nan: Leave out entries that are not finite: NaN (the parameter
            and update columns when those trees were not given) and infinite
            (a ratio to a parameter that is all zeros, such as a freshly
            initialised bias); ``grad_nonfinite`` still counts NaN/Inf gradients.

        Returns:
          ``{key: float}`` with ``prefix + 'global_norm'`` too.

        Example:
          >>> import jax.numpy as jnp, pytreeparams as ptp
          >>> d = ptp.grad_stats({'w': jnp.array([3.0, 4.0])}).to_dict(
          ...     'train/', stat_first=True, drop_nan=True)
          >>> d['train/grad_norm/w'], 'train/param_norm/w' in d, d['train/global_norm']
          (5.0, False, 5.0)
        """
        table, gn = jax.device_get((self.table, self.global_norm))
        cells = (
            (p, s, float(table[i, j]))
            for i, p in enumerate(self.paths)
            for j, s in enumerate(GRAD_STAT_NAMES)
        )
        out = metrics(cells, prefix, stat_first, drop_nan)
        out[prefix + 'global_norm'] = float(gn)
        return out

    def histograms(self, prefix: str = 'grad_hist/') -> dict[str, dict[str, Any]]:
        """Per row, the keyword arguments of tensorboardX's ``add_histogram_raw``.

        Args:
          prefix: Put before every row's path (the tag).

        Returns:
          ``{prefix + path: {'min', 'max', 'num', 'sum', 'sum_squares',
          'bucket_limits', 'bucket_counts'}}``, fetched in one transfer; empty
          without ``grad_stats(..., histogram=edges)``.

        Example:
          >>> import jax.numpy as jnp, pytreeparams as ptp
          >>> gs = ptp.grad_stats({'w': jnp.array([-2.0, 0.5, 3.0])}, histogram=(-1.0, 0.0, 1.0))
          >>> gs.histograms()['grad_hist/w']['bucket_counts']
          [1.0, 0.0, 1.0, 1.0]
        """
        if self.histogram is None:
            return {}
        table, hist = jax.device_get((self.table, self.histogram))
        cols = {s: GRAD_STAT_NAMES.index(s) for s in ('grad_norm', 'grad_mean', 'grad_max')}
        out = {}
        for i, p in enumerate(self.paths):
            num = float(np.sum(hist[i]))
            norm, mean, amax = (float(table[i, cols[s]]) for s in cols)
            out[prefix + p] = tensorboard_histogram(self.bin_edges, hist[i], num, mean, norm, amax)
        return out


def _leaf_lists(
    tree: PyTree,
    what: str,
    paths_ref: tuple[str, ...] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
):
    leaves, _, paths_ = flatten_with_paths(tree, is_leaf)
    if paths_ref is not None and paths_ != paths_ref:
        have, want = set(paths_), set(paths_ref)
        missing = [p for p in paths_ref if p not in have]
        extra = [p for p in paths_ if p not in want]
        raise StructureError(
            structure_mismatch_message(
                f'grad_stats: `{what}` does not match the gradients', missing, extra
            )
        )
    return readable(unbox_all(leaves)), paths_


def _pooled_norm(ss: jax.Array, scale: jax.Array, ids: jax.Array, k: int) -> jax.Array:
    """Norms of groups of leaves from their scaled sums of squares: every
    leaf brought to its group's largest scale (powers of two), then summed;
    the root of the summed squares, never a sum of norms."""
    top = jax.ops.segment_max(scale, ids, num_segments=k)
    ratio = scale / top[ids]
    total = jax.ops.segment_sum(ss * ratio * ratio, ids, num_segments=k)
    return jnp.sqrt(total) * top


def _fields(level: str, extras: bool, has_p: bool, has_u: bool) -> tuple[str, ...]:
    """The raw columns that are computed (traced) for these options; the
    others are known before any data is read (``_table`` makes them NumPy
    constants once for all rows: a constant per leaf is folded by XLA, which
    takes compile time per leaf)."""
    full = level != 'norms'
    fields = ['ss']
    if full:  # 'scale' is the gradient's max|g|; _table clips it to the scale
        fields += ['scale', 'zeros', 'nonfinite'] + (['total'] if extras else [])
    if has_p:
        fields += ['pss'] + (['pscale'] if full else [])
    if has_u:
        fields += ['uss'] + (['uscale'] if full else [])
    return tuple(fields)


def _raw(sums: GradSums, pss: Any, pscale: Any, uss: Any, uscale: Any, fields: tuple[str, ...]):
    """``{field: value}`` of the computed raw columns: the counts int32 (a
    conversion per leaf is one more kernel per leaf on XLA:CPU; ``_table``
    converts the columns), the rest float32."""
    values = {
        'ss': sums.ss,
        'scale': sums.amax,  # the max the scale is clipped from (``_table`` clips once)
        'total': sums.total,
        'zeros': sums.zeros,
        'nonfinite': sums.nonfinite,
        'pss': pss,
        'pscale': pscale,
        'uss': uss,
        'uscale': uscale,
    }
    counts = ('zeros', 'nonfinite')
    return {f: jnp.asarray(values[f], jnp.int32 if f in counts else jnp.float32) for f in fields}


def _leaf_column(
    g: Any, p: Any, u: Any, fields: tuple[str, ...], extras: bool, level: str
) -> dict[str, jax.Array]:
    """One leaf's computed raw columns (``_fields``; finished over all leaves
    at once in ``_table``): the ``GradSums`` of the gradient, and the
    parameter and update sums of squares with their max|x|."""
    small = small_grad_sums(g, p, u, extras, level)
    if small is not None:
        return _raw(*small, fields)
    none = (None, None)
    if level == 'norms':
        sums = GradSums(jax_norm(g, level)[0], *(None,) * 5)
    else:
        sums = grad_sums(g, extras)
    pss, pscale = jax_norm(p, level) if p is not None else none
    uss, uscale = jax_norm(u, level) if u is not None else none
    # a dict of scalars, not a stack per leaf: XLA:CPU compiles each small
    # stack as a kernel of its own; the columns are stacked once over all leaves
    return _raw(sums, pss, pscale, uss, uscale, fields)


def _pooled_column(
    gs: list[Any],
    ps: list[Any] | None,
    us: list[Any] | None,
    fields: tuple[str, ...],
    extras: bool,
    level: str,
) -> dict[str, jax.Array]:
    """The computed raw columns of a pool of small leaves
    (``pooled_grad_sums``), one entry per leaf."""
    return _raw(*pooled_grad_sums(gs, ps, us, extras, level), fields)


def _groups(names: tuple[str, ...], depth: int) -> tuple[tuple[str, ...], list[int]]:
    """The group of each leaf path by its first ``depth`` keys: group names, ids."""
    groups: dict[str, int] = {}
    seg = [groups.setdefault('/'.join(p.split('/')[:depth]), len(groups)) for p in names]
    return tuple(groups), seg


def _grouped(raw: Sequence[Any], seg: Sequence[int], k: int) -> tuple[Any, ...]:
    """The raw columns ``(n, mean, ss, scale, amax, zeros, nonfinite, pss,
    pscale, uss, uscale)`` pooled into ``k`` groups (``seg``: each row's
    group): (n, mean, grad norm, param norm, update norm, amax, zeros,
    nonfinite)."""
    n, mean, ss, scale, amax, zeros, nonfinite, pss, pscale, uss, uscale = (
        jnp.asarray(c, jnp.float32) for c in raw
    )
    ids = jnp.asarray(seg, jnp.int32)
    total = jax.ops.segment_sum(n, ids, num_segments=k)
    return (
        total,
        jax.ops.segment_sum(n * mean, ids, num_segments=k) / jnp.maximum(total, 1),
        _pooled_norm(ss, scale, ids, k),
        _pooled_norm(pss, pscale, ids, k),
        _pooled_norm(uss, uscale, ids, k),
        jax.ops.segment_max(amax, ids, num_segments=k),
        jax.ops.segment_sum(zeros, ids, num_segments=k),
        jax.ops.segment_sum(nonfinite, ids, num_segments=k),
    )


def grad_stats(
    grads: PyTree,
    params: PyTree | None = None,
    updates: PyTree | None = None,
    *,
    depth: int | None = None,
    extras: bool = True,
    stacked: Mapping[str, int] | str | None = None,
    histogram: Sequence[float] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
    norms_only: bool = False,
) -> GradStats:
    """Per-leaf (or per-module) gradient statistics. Jittable.

    Per leaf: gradient L2 norm, RMS, max |g|, mean, fraction of exact zeros,
    number of non-finite values; with ``params`` the parameter norm and the
    ratio ``||g|| / ||p||``; with ``updates`` the ratio ``||u|| / ||p||``.
    With ``depth``, leaves sharing their first ``depth`` keys are combined
    exactly (norms as root of summed squares, means weighted by size).

    Cost inside a jitted step: no conditional and no copy of a leaf; each
    leaf is reduced in its own shape, so a sharded leaf is reduced where it
    lies (XLA exchanges scalars, never the leaf). Per gradient leaf five
    reductions that fuse (``max|g|``, then the sum of squares of
    ``g / max|g|``, the sum, and the integer counts of non-finite values and
    of zeros); per parameter and update leaf two (``max|x|``, then the sum of
    squares of ``x / max|x|``); a leaf of fewer than 4096 values takes the
    same terms stacked, in two reductions, and in a process with one device
    (nothing sharded) the small leaves of one dtype and padded length are
    pooled: two reductions for all of them. ``norms_only=True`` is one
    ``sum(x * x)`` per leaf and tree, the cost of per-leaf norms. Counts are
    exact, NaN or not; XLA:CPU flushes subnormal values to zero, so there
    they count as zeros.

    Args:
      grads: The gradient tree.
      params: Optional parameters of the same structure.
      updates: Optional optimizer updates of the same structure.
      depth: Optional grouping depth.
      extras: Also compute the mean (one more reduction per gradient
        leaf); False keeps the norms, RMS, max |g|, ratios, zero fractions
        and non-finite counts (NaN mean).
      stacked: ``{subtree glob: layer axis}`` for layers stacked on an axis
        (``nn.scan``, ``nnx.scan``): each leaf under such a subtree gives one
        row per layer, named with the index after the subtree
        (``{'params/layers': 0}`` gives ``'params/layers/3/mlp/kernel'``);
        computed in one vectorized pass per leaf. A string is the partition
        name that ``nn.scan(..., metadata_params={nn.PARTITION_NAME: name})``
        or ``nnx.vmap``/``nnx.scan(..., transform_metadata=...)`` gave the stacked axis: the
        subtree and axis are read from the leaves' partition metadata. As a
        static argument of ``jax.jit``, pass a hashable mapping
        (``flax.core.FrozenDict``) or the name.
      histogram: Bin edges (e.g. ``ptp.log_bins()``): also count the gradient
        values of each row in fixed bins (one more pass per leaf: a bucketize
        and a scatter-add), for TensorBoard-style histograms
        (:meth:`GradStats.histograms`). Static under ``jit`` (a tuple).
      is_leaf: As ``jax.tree_util`` takes it, for all three trees: a node for
        which it is true is a leaf (one that is not an array gives no row).
      norms_only: The cheapest tier: only the norms, RMS and ratios, each
        from one float32 ``sum(x * x)`` per leaf (no scaling: a leaf holding
        values above about 1.8e19 reads inf, one whose values all lie below
        about 1e-19 reads 0); the other columns are NaN.

    Returns:
      A :class:`GradStats` (one stacked array and the global norm).

    Raises:
      StructureError: If ``params`` or ``updates`` differ in structure, or a
        ``stacked`` leaf lacks its layer axis.
      PathError: If a ``stacked`` pattern matches no subtree.
      ValueError: If ``histogram`` edges are not finite and increasing.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'a': {'w': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}}
      >>> p = {'a': {'w': jnp.array([1.0, 0.0]), 'b': jnp.array([0.0])}}
      >>> gs = jax.jit(ptp.grad_stats, static_argnames='depth')(g, p, depth=1)
      >>> gs.paths, float(gs['grad_norm'][0]), float(gs['grad_to_param'][0])
      (('a',), 5.0, 5.0)
    """
    return gated_grad_stats(
        grads,
        params,
        updates,
        depth=depth,
        extras=extras,
        stacked=stacked,
        histogram=histogram,
        is_leaf=is_leaf,
        norms_only=norms_only,
    )


def gated_grad_stats(
    grads: PyTree,
    params: PyTree | None,
    updates: PyTree | None,
    *,
    depth: int | None = None,
    extras: bool = True,
    stacked: Mapping[str, int] | str | None = None,
    histogram: Sequence[float] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
    norms_only: bool = False,
    gate: jax.Array | None = None,
) -> GradStats:
    """:func:`grad_stats`, with each leaf's reductions in a ``lax.cond`` on
    ``gate`` where given (``watch(every=N)``: a skipped step reads no leaf,
    and each gradient leaf dies after its own conditional, not after one for
    the whole tree). Rows of a false gate hold zeros: the caller keeps its
    last statistics."""
    g_leaves, paths_ = _leaf_lists(grads, 'grads', None, is_leaf)
    if isinstance(stacked, str):  # the partition name of flax's scan metadata
        stacked = resolve_stacked(stacked, paths_, flatten_with_paths(grads, is_leaf)[0])
    keep = [i for i, g in enumerate(g_leaves) if is_array(g)]
    p_leaves = _leaf_lists(params, 'params', paths_, is_leaf)[0] if params is not None else None
    u_leaves = _leaf_lists(updates, 'updates', paths_, is_leaf)[0] if updates is not None else None
    names = tuple(paths_[i] for i in keep)
    splits = stacked_axes(names, [tuple(np.shape(g_leaves[i])) for i in keep], stacked)
    axes = tuple(sp[1] if sp is not None else None for sp in splits)
    if stacked:
        rows_of = [
            layer_paths(p, sp[0], int(np.shape(g_leaves[i])[sp[1]])) if sp is not None else [p]
            for p, sp, i in zip(names, splits, keep)
        ]
        names = tuple(r for rows in rows_of for r in rows)
    edges = check_edges(histogram) if histogram is not None else None
    table, global_norm, hist = _table(
        [g_leaves[i] for i in keep],
        [p_leaves[i] for i in keep] if p_leaves is not None else None,
        [u_leaves[i] for i in keep] if u_leaves is not None else None,
        gate,
        names=names,
        depth=depth,
        extras=extras,
        axes=axes,
        edges=edges,
        level='norms' if norms_only else 'full',
    )
    rows = _groups(names, depth)[0] if depth is not None else names
    return GradStats(
        table=table, global_norm=global_norm, paths=rows, histogram=hist, bin_edges=edges or ()
    )


@functools.partial(jax.jit, static_argnames=('names', 'depth', 'extras', 'axes', 'edges', 'level'))
def _table(
    g_leaves: list[Any],
    p_leaves: list[Any] | None,
    u_leaves: list[Any] | None,
    gate: jax.Array | None = None,
    *,
    names: tuple[str, ...],
    depth: int | None,
    extras: bool,
    axes: tuple[int | None, ...] = (),
    edges: tuple[float, ...] | None = None,
    level: str = 'full',
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The statistics table of the array leaves, as one program: called outside
    ``jit`` it is compiled once per structure (not dispatched op by op), and
    inside a jitted step it is inlined."""
    fields = _fields(level, extras, p_leaves is not None, u_leaves is not None)
    column = functools.partial(_leaf_column, fields=fields, extras=extras, level=level)
    pick = lambda leaves, idx: [leaves[i] for i in idx] if leaves is not None else None  # noqa: E731
    n_rows = [
        1 if not axes or axes[i] is None else int(np.shape(g)[axes[i]])
        for i, g in enumerate(g_leaves)
    ]
    first_row = np.cumsum([0, *n_rows])
    blocks: list[tuple[list[int], Any]] = []  # (leaves, their computed raw columns)
    pools: dict[Any, list[int]] = {}
    for i, g in enumerate(g_leaves):
        p, u = (t[i] if t is not None else None for t in (p_leaves, u_leaves))
        axis = axes[i] if axes else None
        pool = poolable(g, p, u) if axis is None else None
        if pool is not None:
            pools.setdefault(pool, []).append(i)
            continue
        blocks.append(([i], _gated(gate, functools.partial(_per_layer, column, axis), g, p, u)))
    for idx in pools.values():
        fn = functools.partial(_pooled_column, fields=fields, extras=extras, level=level)
        trees = (pick(t, idx) for t in (g_leaves, p_leaves, u_leaves))
        blocks.append((idx, _gated(gate, fn, *trees)))
    # the rows in the order of the blocks (pooled leaves last)
    order = [r for idx, _ in blocks for i in idx for r in range(first_row[i], first_row[i + 1])]
    rows = len(order)
    # column by column (no (leaves, 11) table to transpose and slice: each
    # such step is one more kernel for XLA:CPU to compile)
    col = {
        f: _replicated(jnp.concatenate([c[f] for _, c in blocks]))
        if blocks
        else jnp.zeros((0,), jnp.float32)
        for f in fields
    }
    sizes = [math.prod(np.shape(g)) / max(n_rows[i], 1) for i, g in enumerate(g_leaves)]
    # what is known before the data is read: NumPy constants (jnp or np below)
    n: Any = np.asarray([sizes[i] for idx, _ in blocks for i in idx for _ in range(n_rows[i])])
    n = n.astype(np.float32).reshape(rows)
    safe: Any = np.maximum(n, 1)
    nan: Any = np.full(rows, np.nan, np.float32)
    one: Any = np.ones(rows, np.float32)
    ss = col['ss']
    if level == 'norms':  # scale 1: nothing else computed
        scale, amax, mean, zeros, nonfinite = one, nan, nan, nan, nan
        global_norm = jnp.sqrt(jnp.sum(ss))
    else:
        scale = grad_scale(col['scale'])
        amax = jnp.where(jnp.isnan(ss), jnp.nan, col['scale'])  # (a vectorized max may drop NaN)
        zeros, nonfinite = (col[f].astype(jnp.float32) for f in ('zeros', 'nonfinite'))
        mean = col['total'] / safe if extras else nan
        top = jnp.max(scale, initial=0.0)  # every leaf brought to the largest scale
        top = jnp.where(top > 0, top, 1.0)  # (tiny gradients keep theirs: no underflow)
        global_norm = jnp.sqrt(jnp.sum(ss * jnp.square(scale / top))) * top
    pss, uss = col.get('pss', nan), col.get('uss', nan)
    pscale, uscale = (grad_scale(col[f]) if f in col else one for f in ('pscale', 'uscale'))
    if depth is not None:
        raw = (n, mean, ss, scale, amax, zeros, nonfinite, pss, pscale, uss, uscale)
        groups, seg = _groups(names, depth)
        grouped = _grouped(raw, [seg[r] for r in order], len(groups))
        n, mean, gnorm, pnorm, unorm, amax, zeros, nonfinite = grouped
        safe = jnp.maximum(n, 1)
        rms = gnorm / jnp.sqrt(safe)
        order = list(range(len(groups)))  # the segment sums put groups in order
    else:
        gnorm = jnp.sqrt(ss) * scale if level != 'norms' else jnp.sqrt(ss)
        # the RMS from the scaled sum: finite where the norm overflows (3e38 x sqrt(n))
        rms = jnp.sqrt(ss / safe) * scale if level != 'norms' else jnp.sqrt(ss / safe)
        pnorm = jnp.sqrt(pss) * pscale if 'pss' in col else nan
        unorm = jnp.sqrt(uss) * uscale if 'uss' in col else nan
    table = jnp.stack(
        [
            gnorm,
            rms,
            amax,
            mean,
            zeros / safe,
            nonfinite,
            pnorm,
            gnorm / pnorm,
            unorm,
            unorm / pnorm,
        ],
        axis=1,
    )
    if order != sorted(order):  # back to the leaves' order: one gather
        table = table[np.argsort(order)]
    return table, global_norm, _histograms(g_leaves, axes, names, depth, edges, gate)


def _replicated(small: jax.Array) -> jax.Array:
    """A small table replicated: per-layer rows of a stacked leaf sharded on
    its layer axis (Explicit axes of ``jax.make_mesh``) carry that sharding,
    which the segment sums over rows cannot take."""
    sharding = getattr(jax.typeof(small), 'sharding', None)
    spec = getattr(sharding, 'spec', None)
    if sharding is None or spec is None or all(s is None for s in spec):
        return small
    with jax.sharding.use_abstract_mesh(sharding.mesh):
        return jax.sharding.reshard(small, jax.P())


def _gated(gate: jax.Array | None, fn: Callable[..., Any], *xs: Any) -> Any:
    """``fn(*xs)``, or under ``lax.cond(gate, ...)`` with zeros of its shapes
    in the other branch."""
    if gate is None:
        return fn(*xs)
    shapes = jax.eval_shape(fn, *xs)
    return jax.lax.cond(
        gate, fn, lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), *xs
    )


def _per_layer(fn: Callable[..., Any], axis: int | None, *xs: Any) -> Any:
    """``fn`` of a leaf as one row, or of a stacked leaf as one row per layer
    (vectorized over ``axis``); ``None`` arguments pass through."""
    if axis is None:
        return jax.tree.map(lambda a: a[None], fn(*xs))
    return jax.vmap(fn, in_axes=tuple(None if x is None else axis for x in xs))(*xs)


def _histograms(
    g_leaves: list[Any],
    axes: tuple[int | None, ...],
    names: tuple[str, ...],
    depth: int | None,
    edges: tuple[float, ...] | None,
    gate: jax.Array | None = None,
) -> jax.Array | None:
    """The histogram rows: per leaf (per layer of a stacked leaf), summed per group."""
    if edges is None:
        return None
    count = functools.partial(histogram_counts, edges=edges)
    rows = [
        _gated(gate, functools.partial(_per_layer, count, axes[i] if axes else None), g)
        for i, g in enumerate(g_leaves)
    ]
    hist = _replicated(jnp.concatenate(rows) if rows else jnp.zeros((0, len(edges) + 1), jnp.int32))
    if depth is not None:
        groups, seg = _groups(names, depth)
        hist = jax.ops.segment_sum(hist, jnp.asarray(seg, jnp.int32), num_segments=len(groups))
    return hist
