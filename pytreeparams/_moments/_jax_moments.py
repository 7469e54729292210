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
deviation): ``max|x|``, then the sums of ``(x / scale)**2`` and ``x / scale``
and two integer counts that fuse into their reductions; no conditional, no
copy. ``level='norms'`` is one ``sum(x * x)`` per leaf (a norm's cost).
"""

from __future__ import annotations

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
    'finish_grads',
    'grad_sums',
    'jax_grad_partials',
    'jax_norm',
    'jax_partials',
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
    scale: Any  # a power of two
    mean: Any  # the mean of the values (NaN without extras)
    amax: Any  # max |x| (NaN without extras)
    zeros: Any
    nonfinite: Any


def _scale(amax: jax.Array) -> jax.Array:
    """A power of two above ``amax`` from its exponent bits (a few scalar ops,
    where ``frexp``/``ldexp`` take dozens per leaf), at most ``2**125`` (so
    that ``1 / scale`` is a normal number); 1 for non-finite ``amax``."""
    if amax.dtype == jnp.float64:
        utype, mask, one, top = jnp.uint64, 0x7FF0000000000000, 1 << 52, 2.0**1020
    else:
        utype, mask, one, top = jnp.uint32, 0x7F800000, 1 << 23, 2.0**125
    bits = lax.bitcast_convert_type(amax, utype)
    up = lax.bitcast_convert_type((bits & np.array(mask, utype)) + np.array(one, utype), amax.dtype)
    return lax.stop_gradient(jnp.where(amax < np.inf, jnp.minimum(up, top), 1).astype(amax.dtype))


def jax_norm(x: jax.Array, level: str = 'full') -> tuple[jax.Array, jax.Array]:
    """``(sum of squares in units of scale**2, scale)`` of one leaf. Traceable.

    ``level='full'``: ``max|x|`` first, then ``sum((x / scale)**2)``: right for
    every float32 value (1e-30 or 1e30). ``level='norms'``: ``sum(x * x)`` and
    scale 1, one reduction: squares leave float32's range for ``|x|`` above
    about 1.8e19 (the norm reads inf) or when every value is below about 1e-19.
    """
    xf = widen(jnp.asarray(x))
    if level == 'norms':
        return jnp.sum(xf * xf), jnp.ones((), xf.dtype)
    scale = _scale(jnp.max(jnp.abs(xf)))
    # a division, not xf * (1 / scale): XLA rewrites (x * c) * (x * c) as
    # (x * x) * (c * c), and c * c overflows for a small max|x|; a leaf XLA
    # knows to be zero (an unused parameter's gradient under jit) read 0 * inf
    y = xf / scale
    return jnp.sum(y * y), scale


def _count_rows(c: jax.Array) -> jax.Array:
    """The number of true values of ``c``, exact: float32 counts along the last
    axis (exact below 2**24 per row; a float reduction fuses on XLA:CPU, an
    integer one holds a copy of the leaf), then the rows' counts as int32."""
    if c.ndim < 2 or c.size < 2**24:  # one reduction: float32 counts are exact below 2**24
        return jnp.sum(c, dtype=jnp.float32).astype(jnp.int32)
    return jnp.sum(jnp.sum(c, axis=-1, dtype=jnp.float32).astype(jnp.int32))


class GradSums(NamedTuple):
    """The raw reductions of one gradient leaf (finished by :func:`finish_grads`)."""

    ss: Any  # sum((x / scale)**2)
    scale: Any  # a power of two above max|x|
    half: Any  # sum(x / (2 * scale)) (NaN without extras)
    amax: Any  # max|x| (a vectorized max may drop NaN: finish_grads restores it)
    zeros: Any  # count of exact zeros (NaN without extras)
    nonfinite: Any  # count of NaN and +-Inf values


def grad_sums(x: jax.Array, extras: bool = True) -> GradSums:
    """The reductions of one leaf, in its own shape, without a branch: the
    per-leaf part of :func:`jax_grad_partials` (kept to the reductions and a
    few scalar ops: compile time on XLA:CPU goes by the instructions per leaf)."""
    x = jnp.asarray(x)
    if x.dtype in (jnp.int4, jnp.uint4):
        x = x.astype(jnp.int8)
    xf = widen(x)
    dtype = xf.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    if x.size == 0:
        z = jnp.zeros((), dtype)
        return GradSums(z, z + 1, z, z, z, z)
    amax = jnp.max(jnp.abs(xf))
    scale = _scale(amax)
    y = xf / scale  # not xf * (1 / scale): see jax_norm
    ss = jnp.sum(y * y)
    nonfinite = _count_rows(~jnp.isfinite(xf)).astype(dtype)
    if not extras:
        return GradSums(ss, scale, nan, amax, nan, nonfinite)
    half = jnp.sum(xf * (0.5 / scale))  # a scalar of its own: XLA keeps one fusion per sum
    # 1 - |sign(x)| fuses on XLA:CPU where a comparison holds a copy of the
    # leaf; a NaN makes the count NaN (the leaf's zero fraction reads NaN)
    zeros = _sum_rows(1 - jnp.abs(jnp.sign(xf))).astype(dtype)
    return GradSums(ss, scale, half, amax, zeros, nonfinite)


def finish_grads(s: GradSums, n: Any) -> GradPartial:
    """:class:`GradPartial` from :class:`GradSums` of leaves of ``n`` values,
    vectorized (scalars or one entry per leaf)."""
    n = jnp.asarray(n, s.ss.dtype)
    mean = 2 * s.half * s.scale / jnp.maximum(n, 1)
    has_nan = jnp.isnan(s.ss)  # a sum keeps NaN (a vectorized max may drop it)
    amax = jnp.where(has_nan, jnp.nan, s.amax)
    zeros = jnp.where(has_nan, jnp.nan, s.zeros)
    return GradPartial(s.ss, s.scale, mean, amax, zeros, s.nonfinite)


def _sum_rows(v: jax.Array) -> jax.Array:
    """An exact count from 0/1 float values: float32 sums along the last axis
    (exact below 2**24 per row), then the rows' sums as int32 (a NaN row
    counts 0: ``finish_grads`` makes the count NaN, from the sum of squares)."""
    if v.ndim < 2 or v.size < 2**24:
        return jnp.sum(v)
    return jnp.sum(jnp.sum(v, axis=-1).astype(jnp.int32)).astype(v.dtype)


def jax_grad_partials(x: jax.Array, extras: bool = True) -> GradPartial:
    """Gradient sums of one leaf, in its own shape, without a branch. Traceable.

    Five reductions that fuse with their elementwise expressions:
    ``max|x|``; ``sum((x / s)**2)`` and ``sum(x / 2s)`` with ``s`` a power of
    two above ``max|x|`` (no overflow, no underflow); the counts of zeros and
    of non-finite values, in float32 along the last axis, then as integers.
    Zeros are ``sum(1 - |sign(x)|)`` (it fuses on XLA:CPU): exact, but NaN for
    a leaf holding NaN; XLA:CPU flushes subnormals, so there they count as
    zeros.

    Args:
      x: An array.
      extras: Also the mean and the zero count (else NaN); max |x| and the
        non-finite count are always computed (the scale needs max |x|).

    Returns:
      A :class:`GradPartial` of float32 (float64 under x64) scalars; an empty
      leaf gives zeros.
    """
    return finish_grads(grad_sums(x, extras), jnp.size(x))
