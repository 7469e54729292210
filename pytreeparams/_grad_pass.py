"""The gradient pass over a whole tree: per-leaf sums of squares and extras.

``grad_pass`` gives, for every leaf (every layer of a stacked leaf) of one or
more trees, the :class:`GradPartial` that ``grad_stats`` turns into its table.
The algorithm is chosen when the program is lowered (``lax.platform_dependent``):

- **GPU/TPU**: per leaf the branch-free one-pass reduction of
  ``_jax_moments.jax_grad_partials`` (one variadic ``lax.reduce``; Blue's
  accumulators, counts from the bits, no branch).
- **XLA:CPU**: per leaf only plain sums and maxima (the sum of squares, max |x|,
  and with extras the sum and ``sum(|sign(x)|)``), which XLA:CPU compiles in
  milliseconds. The rare leaves whose sum of squares leaves float32's safe range
  (non-finite, huge or tiny values) are redone exactly in one ``lax.cond`` for
  the whole tree: all leaves as one matrix of blocks, each scaled by a power of
  two at least its max |x|, the zero and non-finite counts from the bits. That
  branch has a fixed number of kernels whatever the number of leaves: a
  compare-and-count reduction takes XLA:CPU 40-90 ms to compile, and one exact
  branch per leaf made a training step with ``grad_stats`` compile 10-20x
  longer than without it. Leaves that need no rescue keep their fast values
  bit for bit. The branch copies the leaves (widened) once, on the rare steps
  it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._jax_moments import GRAD_BLOCK, GradPartial, exact_indicators, jax_grad_partials, widen
from ._moments import scale_of

__all__ = ['grad_pass', 'grad_pass_cpu', 'grad_pass_default', 'layer_view']

_GROUP = 1024  # block partials summed per group before the groups are summed (as rows, then blocks)


def layer_view(x: Any, axis: int | None) -> jax.Array:
    """``x`` as ``(layers, values)``: one row per layer along ``axis`` (one row if None)."""
    x = jnp.asarray(x)
    if axis is None:
        return x.reshape(1, -1)
    return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def grad_pass(views: Sequence[Sequence[jax.Array]], extras: Sequence[bool]) -> list[GradPartial]:
    """The :class:`GradPartial` of every row of every view, per tree. Traceable.

    Args:
      views: Per tree, a list of ``(layers, values)`` arrays (:func:`layer_view`).
      extras: Per tree, whether to compute the mean, max |x| and zero count
        (else NaN).

    Returns:
      Per tree a :class:`GradPartial` whose fields have one entry per row of
      its views, in order.

    Example:
      >>> import jax.numpy as jnp
      >>> p = grad_pass([[layer_view(jnp.array([3.0, 4.0]), None)]], [True])[0]
      >>> float(jnp.sqrt(p.ss[0]) * p.scale[0]), float(p.amax[0])
      (5.0, 4.0)
    """
    views = [list(v) for v in views]
    return lax.platform_dependent(
        views,
        cpu=lambda v: grad_pass_cpu(v, extras),
        default=lambda v: grad_pass_default(v, extras),
    )


def grad_pass_default(
    views: Sequence[Sequence[jax.Array]], extras: Sequence[bool]
) -> list[GradPartial]:
    """GPU/TPU: :func:`jax_grad_partials` per leaf, vectorized over its layers."""
    out = []
    for tree, ex in zip(views, extras):
        parts = [
            GradPartial(*(f[None] for f in jax_grad_partials(v[0], ex)))
            if v.shape[0] == 1
            else jax.vmap(lambda r, ex=ex: jax_grad_partials(r, ex))(v)  # stacked layers
            for v in tree
        ]
        out.append(_concat(parts, ex))
    return out


def _concat(parts: list[GradPartial], extras: bool) -> GradPartial:
    if not parts:
        z = jnp.zeros((0,), jnp.float32)
        return GradPartial(z, z, z, z, z, z)
    return GradPartial(
        *(jnp.concatenate([jnp.asarray(f, jnp.float32) for f in fs]) for fs in zip(*parts))
    )


def _blocks(v: jax.Array) -> jax.Array:
    """``(layers, n)`` widened and zero padded to ``(layers, k, block)``."""
    rows, n = v.shape
    block = min(GRAD_BLOCK, n)
    k = -(-n // block)
    xf = widen(v)
    if k * block != n:
        xf = jnp.pad(xf, ((0, 0), (0, k * block - n)))
    return xf.reshape(rows, k, block)


def _sum_blocks(x: jax.Array, dtype: Any = None) -> jax.Array:
    """Per row of ``(layers, k, block)``: blocks first, then their sums (in
    ``dtype``: int32 keeps a count exact past 2**24). The barrier keeps XLA from
    merging the two into one long (less accurate) sum."""
    blocks = lax.optimization_barrier(jnp.sum(x, axis=2))
    return jnp.sum(blocks if dtype is None else blocks.astype(dtype), axis=1)


def _fast(v: jax.Array, extras: bool) -> dict[str, jax.Array]:
    """Plain per-row reductions: sum of squares, max |x|, and the mean and
    zero count with extras (exact unless the row needs the rescue)."""
    rows, n = v.shape
    if n == 0:
        z = jnp.zeros((rows,), jnp.float32)
        return {'ss': z, 'amax': z, 'mean': z, 'zeros': z}
    xf = _blocks(v)
    out = {
        'ss': _sum_blocks(xf * xf),
        'amax': jnp.max(jnp.abs(xf), axis=(1, 2)),
    }
    if extras:
        shift = 2.0 ** -max(0, (n - 1).bit_length())  # x / 2**k: the sum cannot overflow
        out['mean'] = _sum_blocks(xf * shift) / shift / n
        out['zeros'] = (n - _sum_blocks(jnp.abs(jnp.sign(xf)), jnp.int32)).astype(xf.dtype)
    return out


def grad_pass_cpu(
    views: Sequence[Sequence[jax.Array]], extras: Sequence[bool]
) -> list[GradPartial]:
    """XLA:CPU: plain reductions per leaf, one exact rescue for the whole tree."""
    flat = [v for tree in views for v in tree]
    ex_of = [ex for tree, ex in zip(views, extras) for _ in tree]
    fast = [_fast(v, ex) for v, ex in zip(flat, ex_of)]
    ss = _cat([f['ss'] for f in fast])
    amax = _cat([f['amax'] for f in fast])
    ok = (ss < 2.0**100) & ((ss > 2.0**-100) | (amax == 0))  # False for NaN and Inf
    dtype = ss.dtype

    def plain():
        one = jnp.ones_like(ss)
        return ss, one, jnp.zeros_like(ss), jnp.zeros_like(ss), jnp.zeros_like(ss)

    def rescue():
        ss2, scale2, zeros2, nonfinite2, nans2 = _exact(flat, amax)
        return (
            jnp.where(ok, ss, ss2),
            jnp.where(ok, 1, scale2).astype(dtype),
            zeros2,
            jnp.where(ok, 0, nonfinite2).astype(dtype),
            jnp.where(ok, 0, nans2).astype(dtype),
        )

    all_ok = jnp.all(ok) if ss.size else jnp.array(True)
    ss, scale, exact_zeros, nonfinite, nans = lax.cond(all_ok, plain, rescue)
    nan = jnp.full((), jnp.nan, jnp.float32)
    out, row0, leaf0 = [], 0, 0
    for tree, ex in zip(views, extras):
        part = fast[leaf0 : leaf0 + len(tree)]
        rows = sum(int(v.shape[0]) for v in tree)
        cut = slice(row0, row0 + rows)
        leaf0, row0 = leaf0 + len(tree), row0 + rows
        if ex:
            mean = _cat([f['mean'] for f in part])
            zeros = jnp.where(ok[cut], _cat([f['zeros'] for f in part]), exact_zeros[cut])
            amax_t = jnp.where(nans[cut] > 0, jnp.nan, amax[cut])
        else:
            mean = zeros = amax_t = jnp.broadcast_to(nan, (rows,))
        fields = (ss[cut], scale[cut], mean, amax_t, zeros, nonfinite[cut])
        out.append(GradPartial(*(f.astype(jnp.float32) for f in fields)))
    return out


def _cat(xs: list[jax.Array]) -> jax.Array:
    return jnp.concatenate(xs) if xs else jnp.zeros((0,), jnp.float32)


def _exact(flat: list[jax.Array], amax: jax.Array) -> tuple[jax.Array, ...]:
    """Exact (ss, scale, zeros, nonfinite, nans) of every row of every view, from
    one matrix of blocks per accumulation dtype (a fixed number of kernels)."""
    total = int(amax.shape[0])
    results = [jnp.zeros((total,), jnp.float32) for _ in range(4)]
    results.insert(1, jnp.ones((total,), jnp.float32))
    first, by_dtype = 0, {}
    for v in flat:
        rows, n = (int(s) for s in v.shape)
        if n:
            by_dtype.setdefault(jnp.dtype(widen(v[:0]).dtype), []).append((first, v))
        first += rows
    for acc, members in by_dtype.items():
        idx = np.concatenate([np.arange(s, s + v.shape[0]) for s, v in members])
        got = _exact_group([v for _, v in members], amax[idx], acc)
        results = [r.at[idx].set(g.astype(jnp.float32)) for r, g in zip(results, got)]
    return tuple(results)


def _exact_group(views: list[jax.Array], amax: jax.Array, acc: Any) -> tuple[jax.Array, ...]:
    """The exact pass over views of one accumulation dtype: rows of ``GRAD_BLOCK``
    values (each segment zero padded), per segment summed in groups of rows."""
    parts, nblocks, padding = [], [], []
    for v in views:
        rows, n = v.shape
        k = -(-n // GRAD_BLOCK)
        xf = widen(v)
        if k * GRAD_BLOCK != n:
            xf = jnp.pad(xf, ((0, 0), (0, k * GRAD_BLOCK - n)))
        parts.append(xf.reshape(rows * k, GRAD_BLOCK))
        nblocks += [k] * rows
        padding += [k * GRAD_BLOCK - n] * rows
    data = jnp.concatenate(parts)
    segments = len(nblocks)
    starts = np.cumsum([0, *nblocks])[:-1]
    ngroups = [-(-k // _GROUP) for k in nblocks]
    group_starts = np.cumsum([0, *ngroups])[:-1]
    group_segment = np.repeat(np.arange(segments), ngroups)
    # the segment of every block row, built on the device from the segment starts
    mark = jnp.zeros((data.shape[0],), jnp.int32).at[starts[1:]].add(1)
    seg = jnp.cumsum(mark)
    row = lax.iota(jnp.int32, data.shape[0])
    group = (
        jnp.asarray(group_starts, jnp.int32)[seg]
        + (row - jnp.asarray(starts, jnp.int32)[seg]) // _GROUP
    )
    lo, hi = (-1020, 1020) if acc == jnp.float64 else (-125, 125)
    finite = jnp.isfinite(amax) & (amax > 0)
    scale = scale_of(jnp.where(finite, amax, 1).astype(acc), jnp, lo, hi)
    y = data * (1 / scale)[seg][:, None]
    block_ss = jnp.sum(y * y, axis=1)
    group_ss = jax.ops.segment_sum(block_ss, group, len(group_segment), indices_are_sorted=True)
    ss = jax.ops.segment_sum(
        group_ss, jnp.asarray(group_segment), segments, indices_are_sorted=True
    )
    counts = [
        jax.ops.segment_sum(
            jnp.sum(c, axis=1, dtype=jnp.int32), seg, segments, indices_are_sorted=True
        )
        for c in exact_indicators(data)
    ]
    zeros = counts[0] - jnp.asarray(padding, jnp.int32)
    return ss, scale, zeros, counts[1], counts[2]
