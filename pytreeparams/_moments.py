"""The moments algorithm: the one definition of every value statistic.

A leaf's statistics (``STAT_NAMES``: mean, std, min, max, L2 norm, number of
non-finite values, fraction of exact zeros) come from *partial moments*
``(n, mean, m2, scale, min, max, zeros, nonfinite)``: ``mean`` and ``m2`` (the
sum of squared deviations) are kept in units of ``scale``, a power of two at
least the leaf's largest ``|x|``, so that no square overflows (values near
3e38) or underflows (values near 1e-20).

The algorithm, the same on every path:

1. The leaf is cut into blocks. Per block: count, min, max (NaN propagates),
   exact counts of zeros and non-finite values (from the bits where the
   hardware flushes subnormals), and the block mean from a sum of ``x / B``
   (which cannot overflow).
2. Per block, the deviations from the block's own mean, scaled by
   ``1 / scale``, are summed and squared: ``m2 = sum(d**2) - sum(d)**2 / n``
   (the corrected two-pass formula; shifting by the block's own mean is what
   keeps outlier-first data such as ``[1e4] + N(0, 1)`` from cancelling).
3. Blocks are merged with Chan et al.'s pooled update (``merge``), the same
   code for blocks, chunks, shards and pieces, in NumPy or in JAX.
4. ``finalize`` turns merged partials into statistics and applies the rules
   for non-finite values (below), again the same code on every path.

Two implementations of steps 1-2 share steps 3-4: ``host_partials`` in NumPy
(float64 accumulation, blocks of ``HOST_BLOCK`` elements, small leaves of one
size stacked and reduced together) and ``jax_partials``, traceable (float32
accumulation, float64 for float64 leaves under x64; bfloat16 and float16
widened exactly; blocks of up to ``JAX_BLOCK`` elements).

Non-finite values, on every path:

=============  =====  =====  ========  ========  =====
leaf holds     mean   std    min       max       l2
=============  =====  =====  ========  ========  =====
NaN            NaN    NaN    NaN       NaN       NaN
+Inf only      +inf   NaN    data min  +inf      +inf
-Inf only      -inf   NaN    -inf      data max  +inf
+Inf and -Inf  NaN    NaN    -inf      +inf      +inf
=============  =====  =====  ========  ========  =====

``nonfinite`` is the exact count of NaN and +-Inf values and ``zero_frac`` the
exact fraction of zeros (subnormals are not zeros) in every case; an empty
leaf gives NaN statistics, ``nonfinite`` 0 and ``zero_frac`` NaN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    'HOST_BLOCK',
    'JAX_BLOCK',
    'N_PARTIAL',
    'STAT_NAMES',
    'finalize',
    'host_array',
    'host_partials',
    'host_partials_many',
    'jax_partials',
    'merge',
    'widen',
]

STAT_NAMES = ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac')
HOST_BLOCK = 1 << 18  # elements per NumPy block (2 MiB of float64: held in cache)
JAX_BLOCK = 128  # elements per block in the traceable path (float32 accumulators)
N_PARTIAL = 9  # n, mean, m2, scale, min, max, zeros, nonfinite, nans


class Partial(NamedTuple):
    """Partial moments (arrays or scalars, NumPy or JAX); see the module doc."""

    n: Any
    mean: Any  # in units of ``scale``
    m2: Any  # sum of squared deviations, in units of ``scale**2``
    scale: Any  # a power of two
    min: Any
    max: Any
    zeros: Any
    nonfinite: Any
    nans: Any


# --------------------------------------------------------------------------
# Shared: the merge and the final statistics, for NumPy (xp=np) and JAX (jnp).


def merge(p: Partial, xp: Any = np, axis: int = 0) -> Partial:
    """Merges partials along ``axis`` (Chan et al.'s pooled update).

    ``M2 = sum(M2_i) + sum(n_i * (mean_i - mean)**2)`` with every piece first
    brought to the largest scale; the mean is a first weighted estimate plus
    the weighted mean of the deviations from it, so that neither a large
    common offset nor an outlier piece costs precision. Pieces with ``n == 0`` weigh nothing.

    Args:
      p: A :class:`Partial` of arrays with the pieces along ``axis``.
      xp: ``numpy`` or ``jax.numpy``.
      axis: The axis to merge.

    Returns:
      The merged :class:`Partial` (that axis reduced).
    """
    n = p.n
    total = xp.sum(n, axis=axis)
    scale = xp.max(p.scale, axis=axis)
    ratio = p.scale / xp.expand_dims(scale, axis)
    has = n > 0
    mean_i = xp.where(has, p.mean * ratio, 0)
    m2_i = xp.where(has, p.m2 * ratio * ratio, 0)
    safe = xp.maximum(total, 1)
    m0 = xp.sum(n * mean_i, axis=axis) / safe  # a first estimate, then corrected
    mean = m0 + xp.sum(n * (mean_i - xp.expand_dims(m0, axis)), axis=axis) / safe
    dev = xp.where(has, mean_i - xp.expand_dims(mean, axis), 0)
    m2 = xp.sum(m2_i, axis=axis) + xp.sum(n * dev * dev, axis=axis)
    return Partial(
        total,
        mean,
        m2,
        scale,
        xp.min(p.min, axis=axis),  # NaN propagates, as in the data
        xp.max(p.max, axis=axis),
        xp.sum(p.zeros, axis=axis),
        xp.sum(p.nonfinite, axis=axis),
        xp.sum(p.nans, axis=axis),
    )


def finalize(p: Partial, xp: Any = np) -> Any:
    """The ``STAT_NAMES`` row(s) of merged partials, with the non-finite rules.

    Args:
      p: Merged partials (scalars, or arrays with one entry per leaf).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      An array of shape ``p.n.shape + (7,)``.
    """
    n = p.n
    safe = xp.maximum(n, 1)
    var = xp.maximum(p.m2, 0) / safe
    mean = xp.asarray(p.mean * p.scale)
    std = xp.sqrt(var) * p.scale
    l2 = xp.sqrt(xp.maximum(p.m2, 0) + n * p.mean * p.mean) * p.scale
    mn, mx = p.min, p.max
    # XLA:CPU's vectorized min/max may skip NaN: the exact NaN count decides
    has_nan = xp.isnan(mn) | xp.isnan(mx) | (p.nans > 0)
    mn = xp.where(has_nan, xp.nan, mn)
    mx = xp.where(has_nan, xp.nan, mx)
    pinf = mx == xp.inf
    ninf = mn == -xp.inf
    nonfinite = has_nan | pinf | ninf
    nan = xp.nan
    signed_inf = xp.where(pinf, xp.inf, xp.where(ninf, -xp.inf, mean))
    mean = xp.where(has_nan | (pinf & ninf), nan, signed_inf)
    std = xp.where(nonfinite, nan, std)
    l2 = xp.where(has_nan, nan, xp.where(pinf | ninf, xp.inf, l2))
    empty = n == 0
    row = [
        xp.where(empty, nan, mean),
        xp.where(empty, nan, std),
        xp.where(empty, nan, mn),
        xp.where(empty, nan, mx),
        xp.where(empty, nan, l2),
        p.nonfinite * xp.ones_like(mean),
        xp.where(empty, nan, p.zeros / safe),
    ]
    return xp.stack([xp.asarray(c, dtype=mean.dtype) for c in row], axis=-1)


def _scale_of(amax: Any, xp: Any, lo: int, hi: int) -> Any:
    """The power of two ``2**e >= amax`` (1 for 0), ``e`` clipped to ``[lo, hi]``."""
    e = xp.frexp(amax)[1]
    return xp.ldexp(xp.ones_like(amax), xp.clip(e, lo, hi))


# --------------------------------------------------------------------------
# NumPy: the host path.


def host_array(x: Any) -> np.ndarray:
    """``x`` as a flat NumPy array of a kind the host path reads.

    Complex values become their modulus, bfloat16 widens exactly to float32
    (by integer shifts), float16 to float32, bool to uint8, and big-endian
    data to native order; integers and float64 keep their precision.
    """
    a = np.asarray(x).reshape(-1)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder('='))
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.dtype.name == 'bfloat16':
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind == 'f' and a.dtype.itemsize < 4:  # float16, float8 types
        return a.astype(np.float32)
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    return a


def _host_blocks(rows: np.ndarray, inv: float) -> Partial:
    """Step 1-2 on each row of a 2-D host array (each row one block)."""
    with np.errstate(all='ignore'):  # non-finite data: the sums are replaced in finalize
        return _host_blocks_raw(rows, inv)


def _host_blocks_raw(rows: np.ndarray, inv: float) -> Partial:
    m = rows.shape[1]
    mn, mx = rows.min(axis=1), rows.max(axis=1)
    zeros = np.count_nonzero(rows == 0, axis=1)
    w = rows if inv == 1.0 else rows * inv  # an exact power-of-two scaling
    mean = w.sum(axis=1, dtype=np.float64) / m
    d = np.subtract(w, mean[:, None], dtype=np.float64)
    sd = d.sum(axis=1)
    sdd = np.einsum('ij,ij->i', d, d)
    m2 = np.maximum(sdd - sd * sd / m, 0.0)
    mean = mean + sd / m
    nonfinite = np.zeros(rows.shape[0], np.int64)
    nans = np.zeros(rows.shape[0], np.int64)
    bad = ~(np.isfinite(mn) & np.isfinite(mx)) if rows.dtype.kind == 'f' else None
    if bad is not None and bad.any():
        nonfinite[bad] = np.count_nonzero(~np.isfinite(rows[bad]), axis=1)
        nans[bad] = np.count_nonzero(np.isnan(rows[bad]), axis=1)
    k = rows.shape[0]
    return Partial(
        np.full(k, float(m)),
        mean,
        m2,
        np.full(k, 1.0 / inv),
        mn.astype(np.float64),
        mx.astype(np.float64),
        zeros.astype(np.float64),
        nonfinite.astype(np.float64),
        nans.astype(np.float64),
    )


def _host_inv_scale(a: np.ndarray) -> float:
    """``1 / scale``: 1 unless squares could leave float64's range (float64 data)."""
    if a.dtype != np.float64 or a.size == 0:
        return 1.0
    with np.errstate(invalid='ignore'):
        amax = float(np.max(np.abs(a)))
    if not math.isfinite(amax) or 1e-140 < amax < 1e140:
        return 1.0
    return float(1.0 / _scale_of(np.float64(amax), np, -1020, 1020))


def host_partials(x: Any) -> Partial:
    """The merged partial moments of one host leaf (NumPy, float64 accumulation).

    Args:
      x: A NumPy array, scalar, or anything ``np.asarray`` reads.

    Returns:
      A :class:`Partial` of float64 scalars.
    """
    a = host_array(x)
    n = a.size
    if n == 0:
        return _EMPTY
    inv = _host_inv_scale(a)
    full = n - n % HOST_BLOCK
    parts = []
    if full:
        parts.append(_host_blocks_chunked(a[:full], inv))
    if n > full:
        parts.append(_host_blocks(a[full:].reshape(1, -1), inv))
    if len(parts) == 1 and parts[0].n.shape[0] == 1:
        return Partial(*(c[0] for c in parts[0]))
    return merge(Partial(*(np.concatenate(cs) for cs in zip(*parts))), np)


def _host_blocks_chunked(a: np.ndarray, inv: float) -> Partial:
    """Blocks of ``HOST_BLOCK`` elements, one at a time (the float64 work stays in cache)."""
    rows = a.reshape(-1, HOST_BLOCK)
    parts = [_host_blocks(rows[i : i + 1], inv) for i in range(rows.shape[0])]
    return Partial(*(np.concatenate(cs) for cs in zip(*parts)))


_EMPTY = Partial(*np.array([0.0, 0.0, 0.0, 1.0, np.nan, np.nan, 0.0, 0.0, 0.0]))


def host_partials_many(xs: list[Any]) -> list[Partial]:
    """``host_partials`` of many leaves; small leaves of one size and dtype are
    stacked and reduced together (one block per leaf), which spares thousands
    of tiny NumPy calls on trees of many small leaves."""
    out: list[Any] = [None] * len(xs)
    groups: dict[tuple[int, Any], list[int]] = {}
    arrays = [host_array(x) for x in xs]
    for i, a in enumerate(arrays):
        if 0 < a.size <= 4096 and a.dtype != np.float64:
            groups.setdefault((a.size, a.dtype), []).append(i)
        else:
            out[i] = host_partials(a)
    for (size, _), idx in groups.items():
        step = max(1, HOST_BLOCK // size)
        for lo in range(0, len(idx), step):
            part = idx[lo : lo + step]
            rows = np.stack([arrays[i] for i in part])
            p = _host_blocks(rows, 1.0)
            for j, i in enumerate(part):
                out[i] = Partial(*(c[j] for c in p))
    return out


# --------------------------------------------------------------------------
# JAX: the traceable path.


def widen(x: jax.Array) -> jax.Array:
    """``x`` in its accumulation dtype: float32 (float64 for 64-bit data under
    x64); bfloat16 through integer shifts (exact, and vectorized by XLA:CPU)."""
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    if x.dtype == jnp.bfloat16:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
        return lax.bitcast_convert_type(bits, jnp.float32)
    if x.dtype in (jnp.float64, jnp.int64, jnp.uint64) and jax.config.jax_enable_x64:
        return x.astype(jnp.float64)
    return x.astype(jnp.float32)


_FLOAT_BITS = {2: (jnp.uint16, None), 4: (jnp.uint32, None), 8: (jnp.uint64, None)}


def _exact_counts(x: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, ...]:
    """(zeros, non-finite, NaN) of ``x`` from its bits: exact where the hardware
    flushes subnormals to zero (XLA:CPU and XLA:GPU do)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        info = jnp.finfo(x.dtype)
        width = x.dtype.itemsize * 8
        utype = _FLOAT_BITS[x.dtype.itemsize][0]
        bits = lax.bitcast_convert_type(x, utype)
        sign = np.array(1 << (width - 1), utype)
        exp_mask = np.array(((1 << info.nexp) - 1) << info.nmant, utype)
        magnitude = bits & ~sign
        zero = magnitude == 0
        nonfinite = (bits & exp_mask) == exp_mask
        nan = magnitude > exp_mask
    else:
        zero = x == 0
        nonfinite = nan = jnp.zeros(x.shape, bool)
    if valid is not None:
        zero, nonfinite, nan = zero & valid, nonfinite & valid, nan & valid
    return tuple(jnp.sum(c, dtype=jnp.int32) for c in (zero, nonfinite, nan))


def _counts_cpu(x, xf, valid, mn, mx):
    """XLA:CPU: a compare-and-count pass runs at 1/8 of a sum there, so the
    exact counts run only (in a ``lax.cond``, cheap on CPU) when the leaf may
    hold zeros, subnormals or non-finite values; ``sum(|sign(x)|)`` tells."""
    s = jnp.abs(jnp.sign(xf))
    nonzero = jnp.sum(s if valid is None else jnp.where(valid, s, 0))
    n_valid = math.prod(xf.shape) if valid is None else jnp.sum(valid, dtype=xf.dtype)
    plain = (nonzero == n_valid) & jnp.isfinite(mn) & jnp.isfinite(mx)
    zero = jnp.zeros((), jnp.int32)
    return lax.cond(plain, lambda: (zero, zero, zero), lambda: _exact_counts(x, valid))


def _counts(x, xf, valid, mn, mx):
    return lax.platform_dependent(
        x,
        xf,
        cpu=lambda x, xf: _counts_cpu(x, xf, valid, mn, mx),
        default=lambda x, xf: _exact_counts(x, valid),
    )


def jax_partials(x: jax.Array, n_valid: Any = None) -> Partial:
    """The merged partial moments of one array. Traceable.

    Args:
      x: An array of any shape and numeric dtype.
      n_valid: If given (a traced int), only the first ``n_valid`` elements of
        ``x.ravel()`` count (the rest is padding of a size class, holding a
        value of the data). Then ``x.size`` must be a multiple of ``JAX_BLOCK``.

    Returns:
      A :class:`Partial` of scalars in the accumulation dtype.
    """
    x = jnp.asarray(x)
    flat = x.reshape(-1)
    size = flat.shape[0]
    xf = widen(flat)
    acc = xf.dtype
    if size == 0:
        z = jnp.zeros((), acc)
        return Partial(z, z, z, z + 1, z + jnp.nan, z + jnp.nan, z, z, z)
    block = JAX_BLOCK if n_valid is not None else math.gcd(size, JAX_BLOCK)
    k = size // block
    rows = xf.reshape(k, block)
    if n_valid is None:
        valid = None
        nb = jnp.full((k,), block, acc)
        n = jnp.asarray(size, acc)
    else:
        valid = lax.iota(jnp.int32, size).reshape(k, block) < n_valid
        nb = jnp.clip(n_valid - block * lax.iota(jnp.int32, k), 0, block).astype(acc)
        n = jnp.asarray(n_valid, acc)
    # step 1: per block min, max and the block mean (from x / B: cannot overflow)
    rmin, rmax = jnp.min(rows, axis=1), jnp.max(rows, axis=1)
    w = rows * (1.0 / block)
    rsum = jnp.sum(w if valid is None else jnp.where(valid, w, 0), axis=1)
    mean_b = jnp.where(nb > 0, rsum * (block / jnp.maximum(nb, 1)), 0)
    mn, mx = jnp.min(rmin), jnp.max(rmax)
    lo, hi = (-1020, 1020) if acc == jnp.float64 else (-125, 125)
    amax = jnp.maximum(jnp.abs(mn), jnp.abs(mx))
    scale = lax.stop_gradient(_scale_of(jnp.where(jnp.isfinite(amax), amax, 1), jnp, lo, hi))
    inv = 1 / scale
    # step 2: deviations from the block mean, in units of scale
    d = rows * inv - (mean_b * inv)[:, None]
    if valid is not None:
        d = jnp.where(valid, d, 0)
    sd, sdd = jnp.sum(d, axis=1), jnp.sum(d * d, axis=1)
    safe = jnp.maximum(nb, 1)
    m2_b = jnp.maximum(sdd - sd * sd / safe, 0)
    mean_bs = mean_b * inv + sd / safe
    counts = _counts(flat.reshape(k, block), rows, valid, mn, mx)
    one = jnp.ones((k,), acc)
    blocks = Partial(nb, mean_bs, m2_b, one, rmin, rmax, one * 0, one * 0, one * 0)
    m = merge(blocks, jnp)
    zeros, nonfinite, nans = (c.astype(acc) for c in counts)
    return Partial(n, m.mean, m.m2, scale, mn, mx, zeros, nonfinite, nans)


# --------------------------------------------------------------------------
# One pass for gradient statistics (no std needed): sums of squares without
# overflow or underflow by Blue's three accumulators (as BLAS nrm2 does), so
# that every statistic of a leaf comes from one reduction over it.

# Blue's constants for float32: |x| < _TSML is summed as (x * _SSML)**2,
# |x| > _TBIG as (x * _SBIG)**2, the rest as x**2; all powers of two.
_TSML, _TBIG = 2.0**-63, 2.0**52
GRAD_BLOCK = 1024  # values per block of the one-pass reduction (rows first, then blocks)
_SSML, _SBIG = 2.0**75, 2.0**-76


class GradPartial(NamedTuple):
    """One pass over one leaf: scaled sums of squares and the gradient extras."""

    ss: Any  # sum of squares in units of scale**2
    scale: Any  # a power of two
    mean: Any  # the mean of the values (NaN without extras)
    amax: Any  # max |x| (NaN without extras)
    zeros: Any
    nonfinite: Any


def _scaled_square(x: jax.Array, c: float) -> jax.Array:
    """``(x * c)**2`` with ``c`` behind an optimization barrier: otherwise XLA
    rewrites it as ``x * x * (c * c)``, where ``c * c`` overflows or underflows."""
    y = x * lax.optimization_barrier(jnp.asarray(c, x.dtype))
    return y * y


def _blue(asml: Any, amed: Any, abig: Any) -> tuple[Any, Any]:
    """(ss, scale) from Blue's accumulators, as BLAS nrm2 combines them."""
    big = abig > 0
    med = amed > 0
    medium = jnp.where(med, amed + asml / _SSML / _SSML, asml)
    ss = jnp.where(big, abig + amed * _SBIG * _SBIG, medium)
    scale = jnp.where(big, 1 / _SBIG, jnp.where(med, 1.0, 1 / _SSML))
    return ss, scale.astype(ss.dtype)


def _pass_default(x: jax.Array, n: int, extras: bool) -> tuple[Any, ...]:
    """GPU/TPU: one variadic reduction over the data, no branch (the selects
    fuse into it), then one over the block partials. ``x`` is ``(k, GRAD_BLOCK)``
    holding ``n`` values and zero padding."""
    xf = widen(x)
    a = jnp.abs(xf)
    zero = jnp.zeros((), xf.dtype)
    small, large = a < _TSML, a > _TBIG
    ops = [
        jnp.where(small, _scaled_square(xf, _SSML), zero),
        jnp.where(small | large, zero, xf * xf),
        jnp.where(large, _scaled_square(xf, _SBIG), zero),
    ]
    zeros, nonfinite, nans = (c.astype(jnp.int32) for c in _exact_indicators(x))
    izero = jnp.zeros((), jnp.int32)
    ops.append(nonfinite)
    inits = [zero, zero, zero, izero]
    shift = 2.0 ** -max(0, (n - 1).bit_length())  # x / 2**k: the sum cannot overflow
    if extras:
        ops += [xf * shift, a, zeros, nans]
        inits += [zero, jnp.asarray(-jnp.inf, xf.dtype), izero, izero]
    kinds = ['add'] * 4 + (['add', 'max', 'add', 'add'] if extras else [])

    def combine(p, q):
        return tuple(jnp.maximum(u, v) if k == 'max' else u + v for k, u, v in zip(kinds, p, q))

    blocks = lax.reduce(tuple(ops), tuple(inits), combine, (1,))
    out = lax.reduce(blocks, tuple(inits), combine, (0,))
    ss, scale = _blue(*out[:3])
    nan = jnp.asarray(jnp.nan, xf.dtype)
    nonfinite = out[3].astype(xf.dtype)
    if not extras:
        return ss, scale, nan, nan, nan, nonfinite
    mean = out[4] / shift / n
    amax = jnp.where(out[7] > 0, jnp.nan, out[5])
    padding = x.size - n
    return ss, scale, mean, amax, (out[6] - padding).astype(xf.dtype), nonfinite


def _exact_indicators(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per element: is zero, is non-finite, is NaN (from the bits for floats)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        info = jnp.finfo(x.dtype)
        utype = _FLOAT_BITS[x.dtype.itemsize][0]
        bits = lax.bitcast_convert_type(x, utype)
        sign = np.array(1 << (x.dtype.itemsize * 8 - 1), utype)
        exp_mask = np.array(((1 << info.nexp) - 1) << info.nmant, utype)
        magnitude = bits & ~sign
        return magnitude == 0, (bits & exp_mask) == exp_mask, magnitude > exp_mask
    false = jnp.zeros(x.shape, bool)
    return x == 0, false, false


def _sum2(v: jax.Array, dtype: Any = None) -> jax.Array:
    """Sum of a ``(k, B)`` array, rows first (blocked: accurate on XLA:CPU)."""
    return jnp.sum(jnp.sum(v, axis=1, dtype=dtype))


def _pass_cpu(x: jax.Array, n: int, extras: bool) -> tuple[Any, ...]:
    """XLA:CPU: separate reductions (it fuses no siblings, and a variadic or
    select-carrying reduction runs 8-20x slower there); the rare cases (a sum
    of squares out of the safe range, zeros, non-finite values) are redone
    exactly under a ``lax.cond``, which costs nothing on CPU."""
    xf = widen(x)
    padding = x.size - n
    ss = _sum2(xf * xf)
    safe = (ss > 2.0**-100) & (ss < 2.0**100)
    ss, scale = lax.cond(safe, lambda: (ss, jnp.ones((), xf.dtype)), lambda: _blue_exact(xf))
    nan = jnp.asarray(jnp.nan, xf.dtype)
    zero = jnp.zeros((), xf.dtype)
    if not extras:
        nonfinite = lax.cond(
            jnp.isfinite(ss),
            lambda: zero,
            lambda: _sum2(_exact_indicators(x)[1], jnp.int32).astype(xf.dtype),
        )
        return ss, scale, nan, nan, nan, nonfinite
    shift = 2.0 ** -max(0, (n - 1).bit_length())
    mean = _sum2(xf * shift) / shift / n
    amax = jnp.max(jnp.abs(xf))
    nonzero = _sum2(jnp.abs(jnp.sign(xf)))
    plain = (nonzero == n) & jnp.isfinite(ss)

    def exact():
        z, nf, nn = (_sum2(c, jnp.int32).astype(xf.dtype) for c in _exact_indicators(x))
        return z - padding, nf, jnp.where(nn > 0, jnp.nan, amax)

    zeros, nonfinite, amax = lax.cond(plain, lambda: (zero, zero, amax), exact)
    return ss, scale, mean, amax, zeros, nonfinite


def _blue_exact(xf: jax.Array) -> tuple[jax.Array, jax.Array]:
    a = jnp.abs(xf)
    zero = jnp.zeros((), xf.dtype)
    small, large = a < _TSML, a > _TBIG
    asml = _sum2(jnp.where(small, _scaled_square(xf, _SSML), zero))
    amed = _sum2(jnp.where(small | large, zero, xf * xf))
    abig = _sum2(jnp.where(large, _scaled_square(xf, _SBIG), zero))
    return _blue(asml, amed, abig)


def jax_grad_partials(x: jax.Array, extras: bool = True) -> GradPartial:
    """One pass over ``x``: scaled sum of squares, mean, max |x|, zeros and
    non-finite counts. Traceable, branch-free on GPU/TPU (one variadic
    reduction); on CPU separate reductions. An empty leaf gives zeros.

    Args:
      x: An array.
      extras: Also the mean, max |x| and zero count (else NaN).

    Returns:
      A :class:`GradPartial` of scalars.
    """
    x = jnp.asarray(x).reshape(-1)
    n = x.shape[0]
    if n == 0:
        z = jnp.zeros((), jnp.float32)
        return GradPartial(z, z + 1, z, z, z, z)
    block = min(GRAD_BLOCK, n)
    k = -(-n // block)
    if k * block != n:  # zeros add nothing to the sums; the zero count is corrected
        x = jnp.pad(x, (0, k * block - n))
    x = x.reshape(k, block)
    out = lax.platform_dependent(
        x,
        cpu=lambda x: _pass_cpu(x, n, extras),
        default=lambda x: _pass_default(x, n, extras),
    )
    return GradPartial(*out)
