"""Fixed-bin histograms of gradient values, per layer, for TensorBoard-style loggers.

The bins are fixed (the same on every step, so that a logger can draw them over
time, and static under ``jit``): ``edges`` ``e_0 < e_1 < ... < e_{K-1}`` give
``K + 1`` bins ``(-inf, e_0), [e_0, e_1), ..., [e_{K-1}, +inf)``. NaN values are
in no bin (``grad_nonfinite`` counts them); -Inf is in the first and +Inf in the
last. :func:`log_bins` gives symmetric, logarithmically spaced edges (gradient
values span many orders of magnitude), as TensorBoard's default buckets are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['histogram_counts', 'log_bins', 'on_auto_axes', 'tensorboard_histogram']


def log_bins(lo: float = 1e-8, hi: float = 1e2, per_decade: int = 2) -> tuple[float, ...]:
    """Symmetric edges: ``-hi ... -lo, 0, lo ... hi``, ``per_decade`` per factor 10.

    Args:
      lo: The smallest magnitude with bins of its own (smaller ones share the
        bins around 0).
      hi: The largest edge (larger values are in the outer bins).
      per_decade: Edges per factor of 10.

    Returns:
      The sorted edges, as a tuple (hashable: a static argument under ``jit``).

    Raises:
      ValueError: If not ``0 < lo < hi`` or ``per_decade < 1``.

    Example:
      >>> log_bins(1e-2, 1.0, per_decade=1)
      (-1.0, -0.1, -0.01, 0.0, 0.01, 0.1, 1.0)
    """
    if not (0 < lo < hi) or int(per_decade) < 1:
        raise ValueError(
            f'log_bins: need 0 < lo < hi and per_decade >= 1, got lo={lo!r}, hi={hi!r}, '
            f'per_decade={per_decade!r}'
        )
    k = round(math.log10(hi / lo) * per_decade)
    pos = [float(f'{lo * 10 ** (i / per_decade):.6g}') for i in range(k + 1)]
    return (*(-p for p in reversed(pos)), 0.0, *pos)


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """``edges`` as a tuple of floats, checked to be finite and increasing.

    Raises:
      ValueError: If they are empty, not finite or not strictly increasing.
    """
    out = tuple(float(e) for e in edges)
    if (
        not out
        or not all(math.isfinite(e) for e in out)
        or any(b <= a for a, b in zip(out, out[1:]))
    ):
        raise ValueError(
            f'histogram edges must be finite and strictly increasing, got {list(out)[:8]}'
            f'{" ..." if len(out) > 8 else ""}; ptp.log_bins() gives a default'
        )
    return out


def histogram_counts(x: chex.Array, edges: tuple[float, ...]) -> jax.Array:
    """Counts of the values of ``x`` in the ``len(edges) + 1`` bins. Traceable.

    Args:
      x: An array (widened to float32; complex values by magnitude).
      edges: Increasing bin edges.

    Returns:
      An int32 array of ``len(edges) + 1`` exact counts.

    Example:
      >>> import jax.numpy as jnp
      >>> histogram_counts(jnp.array([-2.0, 0.0, 0.5, 3.0, jnp.nan]), (-1.0, 0.0, 1.0)).tolist()
      [1, 0, 2, 1]
    """
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    xf = x.astype(jnp.float32)  # in its own shape: a sharded leaf is counted where it lies
    k = len(edges) + 1
    # the bin of each value: how many edges lie at or below it (fused compares);
    # NaN is past the last bin and dropped
    idx = sum((xf >= np.float32(e)).astype(jnp.int32) for e in edges)
    idx = jnp.where(jnp.isnan(xf), k, idx)

    def scatter(idx: jax.Array) -> jax.Array:
        return jnp.zeros(k, jnp.int32).at[idx].add(1, mode='drop')

    return on_auto_axes(scatter, idx)


def on_auto_axes(fn: Any, x: jax.Array) -> jax.Array:
    """``fn(x)`` with ``x``'s Explicit mesh axes (``jax.make_mesh``) made Auto,
    so that XLA partitions ``fn`` (a scatter, a segment sum) as on a ``Mesh``;
    the result is replicated (small: counts)."""
    mesh = getattr(getattr(jax.typeof(x), 'sharding', None), 'mesh', None)
    types = getattr(mesh, 'axis_types', ())
    explicit = (
        tuple(a for a, t in zip(mesh.axis_names, types) if t == jax.sharding.AxisType.Explicit)
        if mesh is not None
        else ()
    )
    if mesh is None or not explicit:
        return fn(x)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fn, axes=explicit, out_sharding=jax.P())(x)


def tensorboard_histogram(
    edges: Sequence[float], counts: Any, n: float, mean: float, norm: float, amax: float
) -> dict[str, Any]:
    """The keyword arguments of tensorboardX's ``add_histogram_raw`` for one row.

    ``bucket_limits`` are the bins' right edges (the last is the largest
    float64). ``min``/``max`` are the tightest bounds the row holds (the table
    keeps max |g|, not the signed extremes): within ``[-max|g|, max|g|]`` and
    within the first and last non-empty bins, so gradients that are all
    positive show no negative range. A row holding NaN or Inf (``max|g|`` not
    finite) gets the finite edges of its first and last non-empty bins.

    Example:
      >>> kw = tensorboard_histogram((0.0, 1.0), [0, 2, 1], 3, 1.0, 2.0, 1.5)
      >>> kw['min'], kw['max'], kw['bucket_counts']
      (0.0, 1.5, [0.0, 2.0, 1.0])
    """
    e = [float(x) for x in edges]
    c = np.asarray(counts)
    full = np.flatnonzero(c)
    lo, hi = -float(amax), float(amax)
    if not math.isfinite(hi):  # a row holding NaN or Inf: the bins' finite bounds
        lo, hi = (e[0], e[-1]) if full.size else (0.0, 0.0)
        if full.size:
            lo = ([e[0], *e])[full[0]]
            hi = ([*e, e[-1]])[full[-1]]
    elif full.size:  # bin i spans [e[i-1], e[i]), with e[-1] = -inf and e[K] = +inf
        lo = max(lo, ([-math.inf, *e])[full[0]])
        hi = min(hi, ([*e, math.inf])[full[-1]])
    limits = [*e, float(np.finfo(np.float64).max)]
    return {
        'min': lo,
        'max': hi,
        'num': float(n),
        'sum': float(mean) * float(n),
        'sum_squares': float(norm) ** 2,
        'bucket_limits': limits,
        'bucket_counts': [float(x) for x in c],
    }
