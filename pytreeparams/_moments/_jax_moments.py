"""The moments algorithm in JAX: traceable statistics that keep each leaf's shape.

Every reduction here runs over the leaf's own axes (``jnp.sum(v)`` of an
elementwise expression of the leaf, never ``reshape(-1)`` or padding first),
so that a sharded leaf stays sharded: XLA reduces each shard where it lies and
exchanges scalars. XLA's reductions accumulate in trees, which keeps long axes
accurate (float32 sums of 2**24 values within a few 1e-8).

``jax_partials`` is steps 1-2 of ``_moments`` for one array, in two passes
that fuse: (1) min, max, a scaled sum (for a pivot, the first estimate of the
mean) and the exact counts of zeros, non-finite values and NaN; (2) the sum
and the sum of squares of ``x / scale - pivot / scale`` (a subtraction that is
exact near the data, so that float32 keeps ``1e6 + N(0, 1)`` to 1e-6). It runs
inside ``jit`` (``ptp.stats``), as the size-class kernel of the device route
(``_engine``), and on sharded arrays.

``jax_grad_partials`` is the cheap form for gradient statistics (no standard
deviation): ``max|x|``, then the sum of ``(x / scale)**2`` with ``scale``
that maximum, the sum of ``x`` and two exact integer counts that fuse into
their reductions; no conditional, no copy. ``small_grad_sums`` takes the same
terms of a small leaf stacked. ``level='norms'`` is one ``sum(x * x)`` per
leaf (a norm's cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._moments import Partial, scale_of

__all__ = [
    'JAX_BLOCK',
    'GradPartial',
    'GradSums',
    'SMALL',
    'finish_grads',
    'grad_scale',
    'grad_sums',
    'jax_grad_partials',
    'jax_norm',
    'jax_partials',
    'pooled_grad_sums',
    'poolable',
    'small_grad_sums',
    'widen',
]

JAX_BLOCK = 128  # size classes of the device route are multiples of this


def widen(x: jax.Array) -> jax.Array:
    """``x`` in its accumulation dtype: float32 (float64 for 64-bit data under
    x64); bfloat16 through integer shifts (exact, and vectorized by XLA:CPU);
    complex values by their modulus."""
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    if x.dtype == jnp.bfloat16:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
        return lax.bitcast_convert_type(bits, jnp.float32)
    if x.dtype in (jnp.float64, jnp.int64, jnp.uint64) and jax.config.read('jax_enable_x64'):
        return x.astype(jnp.float64)
    return x.astype(jnp.float32)


# IEEE layouts read from their bits (subnormals are not zeros even where the
# hardware flushes them); the 8- and 4-bit floats of ml_dtypes (some without
# Inf, some with NaN at 0x80 or at the top exponent's finite values) are read
# from their exact float32 values, where XLA keeps their own rules.
_IEEE_BITS = {
    np.dtype(jnp.float16): jnp.uint16,
    np.dtype(jnp.bfloat16): jnp.uint16,
    np.dtype(jnp.float32): jnp.uint32,
    np.dtype(jnp.float64): jnp.uint64,
}


def _indicators(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per element, in ``x``'s shape: is zero, is non-finite, is NaN (exact)."""
    if jnp.iscomplexobj(x):
        parts = [_indicators(jnp.real(x)), _indicators(jnp.imag(x))]
        (z1, f1, n1), (z2, f2, n2) = parts
        return z1 & z2, f1 | f2, n1 | n2
    utype = _IEEE_BITS.get(np.dtype(x.dtype))
    if utype is not None:
        info = jnp.finfo(x.dtype)
        bits = lax.bitcast_convert_type(x, utype)
        sign = np.array(1 << (x.dtype.itemsize * 8 - 1), utype)
        exp_mask = np.array(((1 << info.nexp) - 1) << info.nmant, utype)
        magnitude = bits & ~sign
        return magnitude == 0, (bits & exp_mask) == exp_mask, magnitude > exp_mask
    if jnp.issubdtype(x.dtype, jnp.floating):  # 8- and 4-bit floats: exact in float32
        f = x.astype(jnp.float32)
        return f == 0, ~jnp.isfinite(f), jnp.isnan(f)
    false = jnp.zeros(x.shape, bool)
    return x == 0, false, false


def _count(c: jax.Array, valid: jax.Array | None) -> jax.Array:
    return jnp.sum(c if valid is None else c & valid, dtype=jnp.int32)


def _minmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact min and max in the accumulation dtype (integers compared as
    integers: int32 near 2**31 is not rounded before the comparison)."""
    if jnp.iscomplexobj(x) or jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == bool:
        xf = widen(x)
        return jnp.min(xf), jnp.max(xf)
    acc = widen(jnp.zeros((), x.dtype)).dtype
    return jnp.min(x).astype(acc), jnp.max(x).astype(acc)


def jax_partials(x: jax.Array, n_valid: Any = None) -> Partial:
    """The merged partial moments of one array, in its own shape. Traceable.

    Args:
      x: An array of any shape and numeric dtype (sharded or not).
      n_valid: If given (a traced int), only the first ``n_valid`` elements of
        the 1-D ``x`` count (the rest is padding of a size class, holding a
        value of the data).

    Returns:
      A :class:`Partial` of scalars in the accumulation dtype.
    """
    x = jnp.asarray(x)
    if x.dtype in (jnp.int4, jnp.uint4):  # sub-byte integers: as int8 (layout-safe)
        x = x.astype(jnp.int8)
    xf = widen(x)
    acc = xf.dtype
    size = x.size
    if size == 0:
        z = jnp.zeros((), acc)
        return Partial(z, z, z, z + 1, z + jnp.nan, z + jnp.nan, z, z, z)
    valid = None if n_valid is None else lax.iota(jnp.int32, size) < n_valid
    n = jnp.asarray(size if n_valid is None else n_valid, acc)
    # pass 1: min, max (the padding repeats a value of the data), counts, pivot
    mn, mx = _minmax(x)
    zeros, nonfinite, nans = (_count(c, valid).astype(acc) for c in _indicators(x))
    lo, hi = (-1020, 1020) if acc == jnp.float64 else (-125, 125)
    amax = jnp.maximum(jnp.abs(mn), jnp.abs(mx))
    scale = lax.stop_gradient(scale_of(jnp.where(jnp.isfinite(amax), amax, 1), jnp, lo, hi))
    inv = 1 / scale
    y = xf * (inv * 0.5)  # |y| <= 1/2: the sum cannot overflow (a scalar of its own: no CSE)
    m0 = 2 * jnp.sum(y if valid is None else jnp.where(valid, y, 0)) / jnp.maximum(n, 1)
    pivot = jnp.where(jnp.isfinite(m0), m0, 0).astype(acc)  # the first mean, units of scale
    # pass 2: deviations from the pivot (exact near the data), in units of scale
    d = xf * inv - pivot
    if valid is not None:
        d = jnp.where(valid, d, 0)
    sd, sdd = jnp.sum(d), jnp.sum(d * d)
    safe = jnp.maximum(n, 1)
    m2 = jnp.maximum(sdd - sd * (sd / safe), 0)
    return Partial(n, pivot + sd / safe, m2, scale, mn, mx, zeros, nonfinite, nans)


# --------------------------------------------------------------------------
# Gradient statistics: no standard deviation, so the cheapest exact form.


class GradPartial(NamedTuple):
    """One leaf's gradient sums: scaled sum of squares and the extras."""

    ss: Any  # sum of squares in units of scale**2
    scale: Any  # the divisor of the sums (grad_scale)
    mean: Any  # the mean of the values (NaN without extras)
    amax: Any  # max |x| (NaN without extras)
    zeros: Any
    nonfinite: Any


def grad_scale(amax: jax.Array) -> jax.Array:
    """The divisor of a leaf's scaled sums: ``max|x|`` clipped to the dtype's
    range whose reciprocal is normal too, ``[tiny, 1 / tiny]`` (one scalar op
    per leaf; the power of two of the exponent bits took five, and XLA:CPU
    compiles each leaf's scalar ops as a kernel of its own; XLA may divide
    by multiplying with the reciprocal, which must not be flushed to zero).
    ``x / scale`` lies in [-4, 4] for finite ``x``: its squares neither
    overflow nor lose the leaf's largest values (1e-30 or 3e38); an all-zero
    leaf divides by ``tiny`` (0, not 0 / 0); an infinite one reads inf; NaN
    stays NaN."""
    tiny = jnp.finfo(amax.dtype).tiny
    return lax.stop_gradient(jnp.clip(amax, tiny, 1 / tiny))


def jax_norm(x: jax.Array, level: str = 'full') -> tuple[jax.Array, jax.Array]:
    """``(sum of squares in units of scale**2, max|x|)`` of one leaf, ``scale``
    being ``grad_scale(max|x|)`` (1 and 1 for ``level='norms'``). Traceable.

    ``level='full'``: ``max|x|`` first, then ``sum((x / scale)**2)`` with
    ``scale`` that maximum (clipped to the normal range): right for every
    float32 value (1e-30 or 1e30). ``level='norms'``: ``sum(x * x)`` and
    scale 1, one reduction: squares leave float32's range for ``|x|`` above
    about 1.8e19 (the norm reads inf) or when every value is below about 1e-19.
    """
    xf = widen(jnp.asarray(x))
    if level == 'norms' or xf.size == 0:  # (an empty leaf: 0, in units of 1)
        return jnp.sum(xf * xf), jnp.ones((), xf.dtype)
    amax = jnp.max(jnp.abs(xf))
    y = xf / grad_scale(amax)
    return jnp.sum(y * y), amax


def _reduce_counts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(non-finite count, zero count)`` as int32 in one variadic reduction:
    on XLA:CPU the only form of a count whose comparison fuses into the loop
    (a single reduction of a comparison there first stores the comparison,
    a copy of the leaf). XLA's SPMD partitioner exchanges the per-shard
    partial counts of a sharded leaf as an all-gather of scalars. XLA:CPU
    compiles this loop per leaf shape (LLVM, about 3-15 ms; leaves of one
    shape share it)."""
    z = jnp.zeros((), jnp.int32)
    ops = ((~jnp.isfinite(x)).astype(jnp.int32), (x == 0).astype(jnp.int32))
    return lax.reduce(ops, (z, z), lambda a, b: (a[0] + b[0], a[1] + b[1]), tuple(range(x.ndim)))


def _sum_counts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(non-finite count, zero count)`` as int32, two reductions of a
    comparison (fused into the reduction on GPU and TPU; all-reduced when
    the leaf is sharded)."""
    return jnp.sum(~jnp.isfinite(x), dtype=jnp.int32), jnp.sum(x == 0, dtype=jnp.int32)


def one_cpu() -> bool:
    """Whether programs run on one CPU device (where :func:`counts` takes its
    variadic form)."""
    return jax.device_count() == 1 and jax.default_backend() == 'cpu'


def counts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The exact numbers of non-finite values and of zeros of ``x`` (widened),
    as int32: reductions of comparisons, which GPUs and TPUs fuse and which a
    sharded leaf all-reduces; in a process whose one device is a CPU, one
    variadic reduction, the one form that holds no copy of the leaf on
    XLA:CPU (no leaf can be sharded there, so no partial counts are
    exchanged). With several CPU devices the comparisons stay (a copy of a
    shard on XLA:CPU) rather than exchange partial counts by all-gathers."""
    return _reduce_counts(x) if one_cpu() else _sum_counts(x)


class GradSums(NamedTuple):
    """The raw reductions of one gradient leaf (finished by :func:`finish_grads`)."""

    ss: Any  # sum((x / scale)**2)
    scale: Any  # max|x| clipped to the normal range (grad_scale)
    total: Any  # sum(x), unscaled (NaN without extras)
    amax: Any  # max|x| (a vectorized max may drop NaN: finish_grads restores it)
    zeros: Any  # count of exact zeros (int32 or float)
    nonfinite: Any  # count of NaN and +-Inf values (int32 or float)


def _widened(x: Any) -> jax.Array:
    """``x`` as an array in its accumulation dtype (:func:`widen`), sub-byte
    integers through int8 (layout-safe)."""
    x = jnp.asarray(x)
    return widen(x.astype(jnp.int8) if x.dtype in (jnp.int4, jnp.uint4) else x)


def grad_sums(x: jax.Array, extras: bool = True) -> GradSums:
    """The reductions of one leaf, in its own shape, without a branch: the
    per-leaf part of :func:`jax_grad_partials` (kept to the reductions and a
    few scalar ops: compile time on XLA:CPU goes by the instructions per leaf)."""
    xf = _widened(x)
    dtype = xf.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    if xf.size == 0:
        z = jnp.zeros((), dtype)
        return GradSums(z, z + 1, z, z, z, z)
    amax = jnp.max(jnp.abs(xf))
    scale = grad_scale(amax)
    y = xf / scale
    ss = jnp.sum(y * y)
    nonfinite, zeros = counts(xf)  # int32 (converted once per column, not per leaf)
    if not extras:  # the zero count stays: on XLA:CPU it shares one loop with the other
        return GradSums(ss, scale, nan, amax, zeros, nonfinite)
    # unscaled: a second sum of x / scale would make XLA store x / scale (a
    # copy of the leaf) for both; sum(x) leaves float32's range only past 3e38
    total = jnp.sum(xf)
    return GradSums(ss, scale, total, amax, zeros, nonfinite)


SMALL = 4096  # below this many values a leaf's sums are taken together (small_grad_sums)


def _stacked_sums(
    a: jax.Array,
    gx: jax.Array,
    keep: int,
    extras: bool,
    level: str,
    has_p: bool,
    pad: Any = 0,
) -> tuple[GradSums, Any, Any, Any, Any]:
    """The sums of ``a`` (g, then p and u where given, stacked on axis 0) over
    its axes from ``keep`` on (1 for one leaf; 2 for rows of leaves): one
    max and one sum over all the scaled terms stacked. ``gx`` is the
    gradient part of ``a`` (axis 0 of length 1); ``pad`` counts the zeros
    that padding added to each row; ``has_p``: p follows g (else u does, where
    ``a`` holds two trees). Returns as :func:`small_grad_sums`."""
    dtype = a.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    one = jnp.ones((), dtype)
    k = a.shape[0]
    axes = tuple(range(keep, a.ndim))
    if level == 'norms':
        ss, amax = jnp.sum(a * a, axis=axes), jnp.ones(a.shape[:keep], dtype)  # (scale 1)
        sums = GradSums(ss[0], one, nan, nan, nan, nan)
    else:
        amax = jnp.max(jnp.abs(a), axis=axes)
        scale = grad_scale(amax)
        y = a / scale.reshape(scale.shape + (1,) * len(axes))
        terms = [y * y, (~jnp.isfinite(gx)).astype(dtype), (gx == 0).astype(dtype)]
        if extras:  # the counts are exact below SMALL values
            terms.append(gx)
        total = jnp.sum(jnp.concatenate(terms), axis=axes)
        ss = total[:k]
        nonfinite, zeros = total[k], total[k + 1] - pad
        sum_ = total[k + 2] if extras else nan
        sums = GradSums(ss[0], scale[0], sum_, amax[0], zeros, nonfinite)
    return sums, *_norms_of_p_and_u(ss, amax, k, has_p, nan, one)


def _norms_of_p_and_u(
    ss: Any, amax: Any, k: int, has_p: bool, nan: Any, one: Any
) -> tuple[Any, ...]:
    """``(pss, pscale, uss, uscale)`` from the stacked sums: p and u follow g
    where given (``k`` trees; with two, ``has_p`` says which); NaN and 1 where
    absent. The scales are the ``max|x|`` they are clipped from (1 for norms),
    as :func:`jax_norm` gives."""
    pss = uss = nan
    pscale = uscale = one
    if k == 3:
        pss, pscale, uss, uscale = ss[1], amax[1], ss[2], amax[2]
    elif k == 2 and has_p:
        pss, pscale = ss[1], amax[1]
    elif k == 2:
        uss, uscale = ss[1], amax[1]
    return pss, pscale, uss, uscale


def small_grad_sums(
    g: jax.Array, p: Any, u: Any, extras: bool = True, level: str = 'full'
) -> tuple[GradSums, Any, Any, Any, Any] | None:
    """:func:`grad_sums` of ``g`` and :func:`jax_norm` of ``p`` and ``u`` (None
    for absent trees) for a leaf of fewer than ``SMALL`` values, the same
    expressions reduced together: one max over ``|g|, |p|, |u|`` stacked,
    then one sum over all the scaled terms stacked. XLA:CPU compiles each
    reduction of a small array as three kernels, so that one reduction per
    pass, not one per statistic, is what keeps small leaves (biases, norm
    scales) cheap to compile; the stacked copy is at most a few ``SMALL``
    values. The leaf keeps its shape (a sharded leaf stays sharded). Returns
    None where the leaf is not small (or is empty, or the trees' accumulation
    dtypes differ): take the leaf's own reductions.

    Returns:
      ``(GradSums of g, p's sum of squares, its max|p|, u's, max|u|)``, as
      :func:`jax_norm` gives them (1 for the max with ``level='norms'``).
    """
    xs = [_widened(v) for v in (g, p, u) if v is not None]
    if not 0 < xs[0].size < SMALL or len({(v.dtype, v.shape) for v in xs}) > 1:
        return None
    return _stacked_sums(jnp.stack(xs), xs[0][None], 1, extras, level, p is not None)


def poolable(g: Any, p: Any, u: Any) -> tuple[Any, int] | None:
    """The pool of a leaf for :func:`pooled_grad_sums`: ``(accumulation dtype,
    padded length)``, or None where the leaf takes its own reductions (not
    small, empty, the trees' shapes or dtypes differ, or the process has
    several devices: a leaf that may be sharded is never flattened)."""
    if jax.device_count() != 1:
        return None
    xs = [jax.eval_shape(_widened, v) for v in (g, p, u) if v is not None]
    size = math.prod(xs[0].shape)
    if not 0 < size < SMALL or len({(v.dtype, v.shape) for v in xs}) > 1:
        return None
    return np.dtype(xs[0].dtype), 1 << (size - 1).bit_length()


def pooled_grad_sums(
    gs: Sequence[Any],
    ps: Sequence[Any] | None,
    us: Sequence[Any] | None,
    extras: bool = True,
    level: str = 'full',
) -> tuple[GradSums, Any, Any, Any, Any]:
    """:func:`small_grad_sums` of many small leaves of one pool
    (:func:`poolable`) at once: each flattened and padded with zeros to the
    pool's length, stacked as rows, and reduced along the rows, so that a
    pool of leaves compiles as one max and one sum (per leaf, XLA:CPU
    compiled several kernels and one more to take each result apart).
    Only where the process has one device (nothing is sharded).

    Returns:
      As :func:`small_grad_sums`, each entry a vector over the leaves.
    """
    trees = [t for t in (gs, ps, us) if t is not None]
    length = max(1 << (int(np.size(x)) - 1).bit_length() for x in gs)

    def row(x: Any) -> jax.Array:
        v = _widened(x).reshape(-1)
        return jnp.pad(v, (0, length - v.size))

    a = jnp.stack([jnp.stack([row(x) for x in t]) for t in trees])
    pad = np.asarray([length - int(np.size(x)) for x in gs], a.dtype)
    return _stacked_sums(a, a[:1], 2, extras, level, ps is not None, pad)


def finish_grads(s: GradSums, n: Any) -> GradPartial:
    """:class:`GradPartial` from :class:`GradSums` of leaves of ``n`` values,
    vectorized (scalars or one entry per leaf)."""
    n = jnp.asarray(n, s.ss.dtype)
    mean = s.total / jnp.maximum(n, 1)
    has_nan = jnp.isnan(s.ss)  # a sum keeps NaN (a vectorized max may drop it)
    amax = jnp.where(has_nan, jnp.nan, s.amax)
    zeros, nonfinite = (jnp.asarray(c).astype(s.ss.dtype) for c in (s.zeros, s.nonfinite))
    return GradPartial(s.ss, s.scale, mean, amax, zeros, nonfinite)


def jax_grad_partials(x: jax.Array, extras: bool = True) -> GradPartial:
    """Gradient sums of one leaf, in its own shape, without a branch. Traceable.

    Five reductions that fuse with their elementwise expressions:
    ``max|x|``; ``sum((x / s)**2)`` with ``s`` that maximum clipped to the
    normal range (no overflow, no underflow); ``sum(x)``; the int32 counts of
    non-finite values and of zeros (:func:`counts`), exact also beside NaN;
    XLA:CPU flushes subnormals, so there they count as zeros.

    Args:
      x: An array.
      extras: Also the mean (else NaN); max |x| and the counts are always
        computed (the scale needs max |x|).

    Returns:
      A :class:`GradPartial` of float32 (float64 under x64) scalars; an empty
      leaf gives zeros.
    """
    return finish_grads(grad_sums(x, extras), jnp.size(x))
