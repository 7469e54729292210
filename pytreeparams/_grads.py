"""Gradient inspection: per-layer statistics inside a jitted step, NaN hunting.

``grad_stats`` is designed to ride along in a jitted training step: per leaf
it takes a few reductions over each gradient leaf (sum, sum of squares, max
|g|, non-zero count) plus one sum of squares over the parameters and the
updates, and returns everything as one small stacked array, cheap to return
and fetch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ._errors import NonFiniteError, PathError, StructureError
from ._flatten import flatten, flatten_with_paths
from ._jax_moments import jax_grad_partials
from ._keys import unbox_all
from ._messages import quote_list
from ._patterns import compile_pattern, select
from ._stats import STAT_NAMES, Stats, eager_leaf_stats, is_array, readable, table_text
from ._summary import summary
from ._typing import Pattern, PyTree

__all__ = [
    'GRAD_STAT_NAMES',
    'GradStats',
    'History',
    'LayerFlags',
    'Inspection',
    'assert_finite',
    'dead_units',
    'find_nonfinite',
    'first_nonfinite_activation',
    'flag_layers',
    'grad_stats',
    'inspect',
]

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
_RAW = 10  # n, mean, ss, scale, max|g|, zeros, nonfinite, param ss, update ss (+ scales)


def _norm_parts(x: Any) -> tuple[jax.Array, jax.Array]:
    """(sum of squares in units of scale**2, scale) of a parameter or update leaf."""
    p = jax_grad_partials(x, extras=False)
    return p.ss, p.scale


@struct.dataclass
class GradStats:
    """Per-layer gradient statistics as device arrays (returned from ``jit``).

    Attributes:
      table: ``(len(paths), len(GRAD_STAT_NAMES))`` float32 array; parameter and
        update columns are NaN when those trees were not given.
      global_norm: The L2 norm of all gradients (as ``optax.global_norm``).
      paths: Leaf paths, or group prefixes with ``depth`` (static).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> gs = ptp.grad_stats({'w': jnp.array([3.0, 4.0])})
      >>> float(gs['grad_norm'][0]), float(gs.global_norm)
      (5.0, 5.0)
    """

    table: jax.Array
    global_norm: jax.Array
    paths: tuple[str, ...] = struct.field(pytree_node=False)

    def __getitem__(self, name: str) -> jax.Array:
        """The column ``name`` (one of ``GRAD_STAT_NAMES``) over layers."""
        return self.table[:, GRAD_STAT_NAMES.index(name)]

    def __str__(self) -> str:
        text = table_text(self.paths, GRAD_STAT_NAMES, self.table)
        if isinstance(self.global_norm, jax.core.Tracer):
            return text
        return f'{text}\nglobal_norm {float(jax.device_get(self.global_norm)):.4g}'

    def to_dict(
        self, prefix: str = '', *, stat_first: bool = False, drop_nan: bool = False
    ) -> dict[str, float]:
        """The statistics as a flat dict for metric loggers, fetched in one transfer.

        Args:
          prefix: Put before every key (e.g. ``'train/'``).
          stat_first: Keys ``'grad_norm/h_0/fc'`` (grouped by statistic, as
            TensorBoard and W&B group by the first part) instead of
            ``'h_0/fc/grad_norm'``.
          drop_nan: Leave out NaN entries (the parameter and update columns
            when those trees were not given).

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
        out = {}
        for i, p in enumerate(self.paths):
            for j, s in enumerate(GRAD_STAT_NAMES):
                v = float(table[i, j])
                if drop_nan and v != v:
                    continue
                out[prefix + (f'{s}/{p}' if stat_first else f'{p}/{s}')] = v
        out[prefix + 'global_norm'] = float(gn)
        return out


def _leaf_lists(tree: PyTree, what: str, paths_ref: tuple[str, ...] | None = None):
    leaves, _, paths_ = flatten_with_paths(tree)
    if paths_ref is not None and paths_ != paths_ref:
        have, want = set(paths_), set(paths_ref)
        missing = [p for p in paths_ref if p not in have]
        extra = [p for p in paths_ if p not in want]
        raise StructureError(
            f'grad_stats: `{what}` does not match the gradients: missing '
            f'{quote_list(missing) or "none"}; unexpected {quote_list(extra) or "none"}'
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


def grad_stats(
    grads: PyTree,
    params: PyTree | None = None,
    updates: PyTree | None = None,
    *,
    depth: int | None = None,
    extras: bool = True,
) -> GradStats:
    """Per-leaf (or per-module) gradient statistics. Jittable.

    Per leaf: gradient L2 norm, RMS, max |g|, mean, fraction of exact zeros,
    number of non-finite values; with ``params`` the parameter norm and the
    ratio ``||g|| / ||p||``; with ``updates`` the ratio ``||u|| / ||p||``.
    With ``depth``, leaves sharing their first ``depth`` keys are combined
    exactly (norms as root of summed squares, means weighted by size).

    Args:
      grads: The gradient tree.
      params: Optional parameters of the same structure.
      updates: Optional optimizer updates of the same structure.
      depth: Optional grouping depth.
      extras: Also compute max |g|, mean and the zero fraction (three more
        passes over the gradients); False keeps the norms, RMS, ratios and
        non-finite counts only, for the cheapest per-step monitoring.

    Returns:
      A :class:`GradStats` (one stacked array and the global norm).

    Raises:
      StructureError: If ``params`` or ``updates`` differ in structure.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'a': {'w': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}}
      >>> p = {'a': {'w': jnp.array([1.0, 0.0]), 'b': jnp.array([0.0])}}
      >>> gs = jax.jit(ptp.grad_stats, static_argnames='depth')(g, p, depth=1)
      >>> gs.paths, float(gs['grad_norm'][0]), float(gs['grad_to_param'][0])
      (('a',), 5.0, 5.0)
    """
    g_leaves, paths_ = _leaf_lists(grads, 'grads')
    keep = [i for i, g in enumerate(g_leaves) if is_array(g)]
    p_leaves = _leaf_lists(params, 'params', paths_)[0] if params is not None else None
    u_leaves = _leaf_lists(updates, 'updates', paths_)[0] if updates is not None else None
    nan = jnp.array(jnp.nan, jnp.float32)
    one = jnp.ones((), jnp.float32)
    cols = []  # per leaf: n, mean, ss, scale, amax, zeros, nonfinite, pss, pscale, uss, uscale
    for i in keep:
        g = g_leaves[i]
        gp = jax_grad_partials(g, extras)
        n = jnp.array(float(math.prod(np.shape(g))), jnp.float32)
        pss, pscale = _norm_parts(p_leaves[i]) if p_leaves is not None else (nan, one)
        uss, uscale = _norm_parts(u_leaves[i]) if u_leaves is not None else (nan, one)
        cols.append(
            jnp.stack(
                [
                    n,
                    *gp[2:3],
                    gp.ss,
                    gp.scale,
                    gp.amax,
                    gp.zeros,
                    gp.nonfinite,
                    pss,
                    pscale,
                    uss,
                    uscale,
                ]
            ).astype(jnp.float32)
        )
    names = tuple(paths_[i] for i in keep)
    raw = jnp.stack(cols) if cols else jnp.zeros((0, 11), jnp.float32)
    n, mean, ss, scale, amax, zeros, nonfinite, pss, pscale, uss, uscale = raw.T
    global_norm = _pooled_norm(ss, scale, jnp.zeros(len(names), jnp.int32), 1)[0]
    if depth is not None:
        groups: dict[str, int] = {}
        seg = [groups.setdefault('/'.join(p.split('/')[:depth]), len(groups)) for p in names]
        ids = jnp.asarray(seg, jnp.int32)
        k = len(groups)
        total = jax.ops.segment_sum(n, ids, num_segments=k)
        mean = jax.ops.segment_sum(n * mean, ids, num_segments=k) / jnp.maximum(total, 1)
        gnorm = _pooled_norm(ss, scale, ids, k)
        pnorm = _pooled_norm(pss, pscale, ids, k)
        unorm = _pooled_norm(uss, uscale, ids, k)
        amax = jax.ops.segment_max(amax, ids, num_segments=k)
        zeros = jax.ops.segment_sum(zeros, ids, num_segments=k)
        nonfinite = jax.ops.segment_sum(nonfinite, ids, num_segments=k)
        n = total
        names = tuple(groups)
    else:
        gnorm, pnorm, unorm = jnp.sqrt(ss) * scale, jnp.sqrt(pss) * pscale, jnp.sqrt(uss) * uscale
    safe = jnp.maximum(n, 1)
    table = jnp.stack(
        [
            gnorm,
            gnorm / jnp.sqrt(safe),
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
    return GradStats(table=table, global_norm=global_norm, paths=names)


# --------------------------------------------------------------------------
# Flags.


@dataclasses.dataclass(frozen=True)
class LayerFlags:
    """Layers whose gradients look wrong (see :func:`flag_layers`).

    Attributes:
      vanishing: Paths whose gradient norm is below ``vanishing`` x the median.
      exploding: Paths whose gradient norm is above ``exploding`` x the median.
      nonfinite: Paths with NaN or Inf gradients.
      median: The median layer gradient norm.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> flags = ptp.flag_layers(ptp.grad_stats({'a': jnp.ones(3), 'b': jnp.zeros(3)}))
      >>> flags.vanishing, bool(flags)
      (['b'], True)
    """

    vanishing: list[str]
    exploding: list[str]
    nonfinite: list[str]
    median: float

    def __bool__(self) -> bool:
        return bool(self.vanishing or self.exploding or self.nonfinite)


def flag_layers(stats: GradStats, *, vanishing: float = 1e-3, exploding: float = 1e3) -> LayerFlags:
    """Flags vanishing, exploding and non-finite layers (on the host).

    Args:
      stats: From :func:`grad_stats` (per leaf or per module).
      vanishing: A layer is vanishing below this multiple of the median norm
        (an all-zero gradient always is).
      exploding: A layer is exploding above this multiple of the median norm.

    Returns:
      A :class:`LayerFlags`.

    Raises:
      Nothing for well-formed statistics; NaN norms are reported as non-finite.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'a': jnp.ones(4), 'b': jnp.ones(4), 'c': jnp.zeros(4), 'd': 1e5 * jnp.ones(4)}
      >>> f = ptp.flag_layers(ptp.grad_stats(g))
      >>> f.vanishing, f.exploding
      (['c'], ['d'])
    """
    table = np.asarray(jax.device_get(stats.table))
    norms = table[:, GRAD_STAT_NAMES.index('grad_norm')]
    nonfinite_col = table[:, GRAD_STAT_NAMES.index('grad_nonfinite')]
    finite = np.isfinite(norms)
    median = float(np.median(norms[finite])) if finite.any() else float('nan')
    van, exp, bad = [], [], []
    for p, nrm, nf in zip(stats.paths, norms, nonfinite_col):
        if nf > 0 or not np.isfinite(nrm):
            bad.append(p)
        elif nrm == 0 or nrm < vanishing * median:
            van.append(p)
        elif nrm > exploding * median:
            exp.append(p)
    return LayerFlags(van, exp, bad, median)


def dead_units(grads: PyTree, pattern: Pattern = '**/kernel') -> dict[str, jax.Array]:
    """Counts output units whose whole gradient column is exactly zero. Jittable.

    A ReLU unit that never activates gets no gradient: its column of the
    kernel (last axis) is all zeros.

    Args:
      grads: Gradients of the parameters.
      pattern: Which leaves are kernels with units on the last axis.

    Returns:
      ``{path: number of dead units}`` as device int32 scalars.

    Raises:
      PathError: If ``pattern`` matches no leaf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'dense': {'kernel': jnp.array([[1.0, 0.0, 0.0], [2.0, 0.0, 1.0]])}}
      >>> int(ptp.dead_units(g)['dense/kernel'])
      1
    """

    try:
        chosen = select(grads, pattern)
    except PathError as e:  # dead_units takes no missing_ok: do not suggest it
        raise PathError(str(e).replace(' Pass missing_ok=True to allow no match.', '')) from None
    out = {}
    for p, g in chosen.items():
        g = jnp.asarray(g)
        cols = g.reshape(-1, g.shape[-1]) if g.ndim else g.reshape(1, 1)
        out[p] = jnp.sum(jnp.all(cols == 0, axis=0)).astype(jnp.int32)
    return out


# --------------------------------------------------------------------------
# Non-finite values.


def _nonfinite_counts(tree: PyTree) -> list[tuple[str, int]]:
    leaves, _, paths_ = flatten_with_paths(tree)
    leaves = readable(unbox_all(leaves))
    stats = eager_leaf_stats(leaves)
    return [(p, int(s[5])) for p, s in zip(paths_, stats) if s is not None and s[5] > 0]


def find_nonfinite(tree: PyTree) -> list[str]:
    """The paths of leaves holding NaN or Inf, in flatten order.

    Args:
      tree: Any pytree of concrete arrays (use outside ``jit``).

    Returns:
      The paths, empty if everything is finite.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.find_nonfinite({'a': jnp.ones(2), 'b': jnp.array([1.0, jnp.inf])})
      ['b']
    """
    return [p for p, _ in _nonfinite_counts(tree)]


def assert_finite(tree: PyTree) -> None:
    """Raises if any leaf holds NaN or Inf (for use outside ``jit``).

    Args:
      tree: Any pytree of concrete arrays.

    Returns:
      None when every value is finite.

    Raises:
      NonFiniteError: Naming each non-finite path with its count of NaN/Inf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.assert_finite({'a': jnp.ones(2)})
      >>> try:
      ...   ptp.assert_finite({'a': jnp.array([jnp.nan, 1.0, jnp.nan])})
      ... except ptp.NonFiniteError as e:
      ...   print(e)
      1 leaf holds NaN/Inf: 'a' (2 of 3 values)
    """
    bad = _nonfinite_counts(tree)
    if bad:
        sizes = {p: math.prod(np.shape(x)) for p, x in flatten(tree).items()}
        parts = [f'{p!r} ({n} of {sizes[p]} values)' for p, n in bad[:12]]
        more = f', ... ({len(bad) - 12} more)' if len(bad) > 12 else ''
        noun = 'leaf holds' if len(bad) == 1 else 'leaves hold'
        raise NonFiniteError(f'{len(bad)} {noun} NaN/Inf: ' + ', '.join(parts) + more)


def first_nonfinite_activation(
    module: Any, variables: PyTree, *args: Any, **kwargs: Any
) -> str | None:
    """Names the first Flax linen sub-module whose output is non-finite.

    Runs the forward pass once with ``capture_intermediates`` and checks the
    outputs in the order the calls finished, so the answer is the layer where
    a NaN or Inf is born, not every layer it reached.

    Args:
      module: A ``flax.linen.Module``.
      variables: Its variables (``{'params': ...}``).
      *args: Inputs of ``module.apply``.
      **kwargs: Keyword inputs of ``module.apply``.

    Returns:
      The sub-module path (``'layers_2'``; ``''`` for the module itself, with
      ``/__call__`` omitted; other methods as ``'path/method'``), or None if
      every output is finite.

    Raises:
      TypeError: Under ``jax.jit`` (it needs concrete outputs).
      Whatever ``module.apply`` raises for these inputs.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(2), nn.Dense(1)])
      >>> v = net.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> v = ptp.set(v, 'params/layers_1/bias', jnp.array([jnp.nan]))
      >>> ptp.first_nonfinite_activation(net, v, jnp.ones((1, 3)))
      'layers_1'
    """
    order: list[tuple[tuple[str, ...], str]] = []

    def record(mdl: Any, method_name: str) -> bool:
        order.append((tuple(mdl.path), method_name))
        return True

    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((variables, args))):
        raise TypeError(
            'first_nonfinite_activation looks at concrete outputs and returns a path, so it '
            'cannot run under jax.jit; call it outside jit with the same inputs'
        )
    _, state = module.apply(
        variables, *args, capture_intermediates=record, mutable=['intermediates'], **kwargs
    )
    inter = state['intermediates']
    seen = set()
    for path, method in order:
        if (path, method) in seen:
            continue
        seen.add((path, method))
        node = inter
        for k in path:
            node = node[k]
        outs = node.get(method, ())
        for out in outs:
            leaves = [x for x in jax.tree_util.tree_leaves(out) if is_array(x)]
            if any(not bool(jnp.all(jnp.isfinite(x))) for x in leaves):
                name = '/'.join(path)
                return name if method == '__call__' else f'{name}/{method}'.lstrip('/')
    return None


# --------------------------------------------------------------------------
# inspect: loss, grads and their statistics in one call.


@dataclasses.dataclass(frozen=True)
class Inspection:
    """The result of :func:`inspect`.

    Attributes:
      loss: The loss value.
      grads: The gradient tree.
      aux: The auxiliary output (with ``has_aux``), else None.
      stats: The :class:`GradStats` of the gradients against the parameters.
      table: A ``ptp.Summary`` of the parameters with gradient columns beside.
      jitted: Whether the computation ran under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> r = ptp.inspect(lambda p: jnp.sum(p['w'] ** 2), {'w': jnp.ones(2)})
      >>> float(r.loss), r.jitted
      (2.0, True)
    """

    loss: jax.Array
    grads: PyTree
    aux: Any
    stats: GradStats
    table: Any
    jitted: bool

    def __str__(self) -> str:
        return f'loss {float(self.loss):.6g}\n{self.table}'

    def _repr_html_(self) -> str:
        return f'<p>loss {float(self.loss):.6g}</p>' + self.table._repr_html_()

    def __rich__(self) -> Any:
        return self.table.__rich__()


_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def _inspect_compute(
    params: PyTree, *args: Any, loss_fn: Callable[..., Any], has_aux: bool, depth: Any
) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    inexact = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    if not any(inexact):
        raise TypeError(
            'inspect: params has no floating-point leaves to differentiate '
            f'(leaf dtypes: {sorted({str(jnp.result_type(x)) for x in leaves})})'
        )

    def with_floats(floats: list[Any]) -> PyTree:
        it = iter(floats)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if d else x for x, d in zip(leaves, inexact)]
        )

    floats = [x for x, d in zip(leaves, inexact) if d]
    out, gf = jax.value_and_grad(lambda f, *a: loss_fn(with_floats(f), *a), has_aux=has_aux)(
        floats, *args
    )
    loss, aux = out if has_aux else (out, None)
    # leaves that are not floating point (a step counter, a PRNG key) get no
    # gradient: None, as in equinox.filter_grad, and no row in the statistics
    it = iter(gf)
    g = jax.tree_util.tree_unflatten(treedef, [next(it) if d else None for d in inexact])
    float_params = jax.tree_util.tree_unflatten(
        treedef, [x if d else None for x, d in zip(leaves, inexact)]
    )
    return loss, aux, g, grad_stats(g, float_params, depth=depth)


# One jitted function for every call: jax's cache keys it by loss_fn (static), so
# repeated inspect calls with the same loss function compile once.
_inspect_jit = jax.jit(_inspect_compute, static_argnames=('loss_fn', 'has_aux', 'depth'))


def inspect(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    jit: bool | None = None,
    depth: int | None = None,
) -> Inspection:
    """Loss, gradients and per-layer statistics of both, in one jitted call.

    Args:
      loss_fn: ``loss_fn(params, *args)`` returning a scalar (or ``(loss, aux)``
        with ``has_aux``).
      params: The parameters to differentiate. Leaves that are not floating
        point (an integer step counter, a PRNG key) are passed through but
        not differentiated: their gradient is None and they get no row.
      *args: Further arguments of ``loss_fn`` (a batch, ...).
      has_aux: Whether ``loss_fn`` returns ``(loss, aux)``.
      jit: None: try ``jax.jit`` and fall back to eager evaluation with a
        warning when ``loss_fn`` cannot be traced (Python control flow on
        values); True: require ``jit`` and raise a clear error instead;
        False: run eagerly.
      depth: Optional grouping depth for the statistics table.

    Returns:
      An :class:`Inspection`; print it for the table.

    Raises:
      ValueError: If ``jit=True`` and ``loss_fn`` cannot be traced.
      TypeError: If ``params`` has no floating-point leaf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> r = ptp.inspect(lambda p, x: jnp.sum(p['w'] * x), {'w': jnp.ones(3)}, jnp.arange(3.0))
      >>> float(r.loss), r.grads['w'].tolist(), round(float(r.stats['grad_norm'][0]), 6)
      (3.0, [0.0, 1.0, 2.0], 2.236068)
    """

    def compute(p: PyTree, *a: Any) -> Any:
        return _inspect_compute(p, *a, loss_fn=loss_fn, has_aux=has_aux, depth=depth)

    jitted = jit is not False
    if jitted:
        try:
            loss, aux, grads, gs = _inspect_jit(
                params, *args, loss_fn=loss_fn, has_aux=has_aux, depth=depth
            )
        except _TRACE_ERRORS as e:
            if jit:
                raise ValueError(
                    'inspect(jit=True): loss_fn cannot be traced by jax.jit (it uses Python '
                    'control flow on array values, e.g. `if x.sum() > 0` or `while ...`). '
                    'Rewrite it with jax.lax.cond/while_loop, or pass jit=None to fall back '
                    f'to eager evaluation. JAX said: {type(e).__name__}'
                ) from e
            warnings.warn(
                'inspect: loss_fn cannot be traced by jax.jit (Python control flow on '
                'values); evaluating eagerly instead. Pass jit=False to silence this.',
                stacklevel=2,
            )
            jitted = False
    if not jitted:
        loss, aux, grads, gs = compute(params, *args)
    base = summary(params, stats=True, depth=depth)
    table = np.asarray(jax.device_get(gs.table))
    body = base.groups if depth is not None else base.rows
    index = {p: i for i, p in enumerate(gs.paths)}
    cols = ('grad_norm', 'grad_rms', 'grad_max', 'grad_nonfinite', 'grad_to_param')
    new_rows = []
    for r in body:
        i = index.get(r.path)
        extra = tuple(
            (c, float(table[i, GRAD_STAT_NAMES.index(c)]) if i is not None else float('nan'))
            for c in cols
        )
        new_rows.append(dataclasses.replace(r, extra=extra))
    gn = float(gs.global_norm)
    totals = dataclasses.replace(
        base.totals, extra=(('grad_norm', gn),) + tuple((c, None) for c in cols[1:])
    )
    if depth is not None:
        base = dataclasses.replace(base, groups=tuple(new_rows), totals=totals)
    else:
        base = dataclasses.replace(base, rows=tuple(new_rows), totals=totals)
    return Inspection(loss, grads, aux, gs, base, jitted)


# --------------------------------------------------------------------------
# History over training.


class History:
    """Statistics of many steps, kept on device and fetched in bulk.

    ``append`` stores the (device) statistics without a host sync; the first
    read (``steps``, ``array``, ``plot``) fetches everything at once.

    Attributes:
      paths: The layer paths of the recorded statistics (None before any).
      columns: The statistic names (``GRAD_STAT_NAMES`` or ``STAT_NAMES``).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> h = ptp.History()
      >>> for step in range(3):
      ...   h.append(step, ptp.grad_stats({'w': jnp.full(4, step + 1.0)}))
      >>> h.array('w', 'grad_norm').tolist()
      [2.0, 4.0, 6.0]
    """

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._pending: list[Any] = []
        self._tables: list[np.ndarray] = []
        self._global: list[float] = []
        self.paths: tuple[str, ...] | None = None
        self.columns: tuple[str, ...] = GRAD_STAT_NAMES

    def append(self, step: int, stats: Any) -> None:
        """Records ``stats`` (a :class:`GradStats` or ``ptp.Stats``) for ``step``.

        Raises:
          StructureError: If the paths differ from earlier steps.
        """

        columns = STAT_NAMES if isinstance(stats, Stats) else GRAD_STAT_NAMES
        if self.paths is None:
            self.paths, self.columns = stats.paths, columns
        elif stats.paths != self.paths or columns != self.columns:
            raise StructureError('History.append: statistics of another tree or kind than before')
        self._steps.append(int(step))
        gn = getattr(stats, 'global_norm', jnp.array(jnp.nan))
        self._pending.append((stats.table, gn))

    def _fetch(self) -> None:
        if self._pending:
            fetched = jax.device_get(self._pending)
            self._tables += [np.asarray(t) for t, _ in fetched]
            self._global += [float(g) for _, g in fetched]
            self._pending = []

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> np.ndarray:
        """The recorded step numbers."""
        return np.asarray(self._steps)

    def array(self, path: str, stat: str) -> np.ndarray:
        """The values of ``stat`` at ``path`` over the recorded steps.

        Raises:
          KeyError: For an unknown path or statistic.
        """
        self._fetch()
        if self.paths is None or path not in self.paths:
            raise KeyError(f'History has no path {path!r}; it has {quote_list(self.paths or ())}')
        if stat not in self.columns:
            raise KeyError(f'History has no statistic {stat!r}; it has {list(self.columns)}')
        i, j = self.paths.index(path), self.columns.index(stat)
        return np.array([t[i, j] for t in self._tables])

    def global_norm(self) -> np.ndarray:
        """The global gradient norm over the recorded steps."""
        self._fetch()
        return np.asarray(self._global)

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{'path/stat': values over steps}`` for every path and statistic."""
        self._fetch()
        stacked = np.stack(self._tables) if self._tables else np.zeros((0, 0, 0))
        return {
            f'{p}/{s}': stacked[:, i, j]
            for i, p in enumerate(self.paths or ())
            for j, s in enumerate(self.columns)
        }

    def plot(
        self,
        file: str | None = None,
        stats: Sequence[str] = ('grad_norm', 'param_norm', 'update_to_param'),
        paths: Pattern | None = None,
    ) -> Any:
        """Plots per-layer curves of ``stats`` against the step (log scale).

        Args:
          file: Where to save a PNG (or any format matplotlib knows), if given.
          stats: One panel per statistic; panels whose values are all NaN
            (e.g. updates not given) are left out.
          paths: Optional pattern for the layers to draw.

        Returns:
          The matplotlib ``Figure``.

        Raises:
          ImportError: Without matplotlib (``pip install pytreeparams[plot]``).
        """
        try:  # a Figure of its own: the global backend (a notebook's inline one) is left alone
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover
            raise ImportError(
                'History.plot needs matplotlib: pip install pytreeparams[plot]'
            ) from e
        self._fetch()
        chosen = list(self.paths or ())
        if paths is not None:
            pred = compile_pattern(paths)
            chosen = [p for p in chosen if pred(p)]
        panels = [
            s for s in stats if any(np.isfinite(self.array(p, s)).any() for p in chosen)
        ] or list(stats[:1])
        fig = Figure(figsize=(8, 3 * len(panels)))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
        for ax, stat in zip(axes[:, 0], panels):
            for p in chosen:
                ax.plot(self.steps, self.array(p, stat), label=p)
            ax.set_yscale('log')
            ax.set_ylabel(stat)
            ax.grid(True, alpha=0.3)
        axes[0, 0].legend(fontsize='small', loc='best')
        axes[-1, 0].set_xlabel('step')
        fig.tight_layout()
        if file is not None:
            fig.savefig(file, dpi=100)
        return fig
