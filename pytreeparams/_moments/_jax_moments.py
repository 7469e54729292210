"""The moments algorithm in JAX: traceable statistics and one-pass gradient sums.

``jax_partials`` is steps 1-2 of ``_moments`` for one array: blocks of up to
``JAX_BLOCK`` elements (float32 accumulators keep their rounding local), the
block means from sums of ``x / B``, deviations scaled by a power of two, then
the shared merge. It runs inside ``jit`` (``ptp.stats``), as the size-class
kernel of the device route (``_engine``), and on sharded arrays.

``jax_grad_partials`` is the one-pass form for gradient statistics (which
need no standard deviation): every statistic of a leaf from one reduction,
a variadic ``lax.reduce`` on GPU/TPU (branch-free: counts from selects that
fuse into it; sums of squares without overflow by Blue's three accumulators,
as BLAS ``nrm2``), separate reductions on XLA:CPU (which fuses no sibling
reductions and runs select-carrying ones 8-20x slower), chosen at lowering
time by ``lax.platform_dependent``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._moments import Partial, merge, scale_of

__all__ = ['GRAD_BLOCK', 'JAX_BLOCK', 'GradPartial', 'jax_grad_partials', 'jax_partials', 'widen']

JAX_BLOCK = 128  # elements per block in the traceable path (float32 accumulators)


def widen(x: jax.Array) -> jax.Array:
    """``x`` in its accumulation dtype: float32 (float64 for 64-bit data under
    x64); bfloat16 through integer shifts (exact, and vectorized by XLA:CPU)."""
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    if x.dtype == jnp.bfloat16:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
        return lax.bitcast_convert_type(bits, jnp.float32)
    if x.dtype in (jnp.float64, jnp.int64, jnp.uint64) and jax.config.read('jax_enable_x64'):
        return x.astype(jnp.float64)
    return x.astype(jnp.float32)


_UINT_OF_SIZE = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _exact_indicators(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per element: is zero, is non-finite, is NaN. For floats from the bits:
    exact where the hardware flushes subnormals to zero (XLA:CPU and XLA:GPU do)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        info = jnp.finfo(x.dtype)
        utype = _UINT_OF_SIZE[x.dtype.itemsize]
        bits = lax.bitcast_convert_type(x, utype)
        sign = np.array(1 << (x.dtype.itemsize * 8 - 1), utype)
        exp_mask = np.array(((1 << info.nexp) - 1) << info.nmant, utype)
        magnitude = bits & ~sign
        return magnitude == 0, (bits & exp_mask) == exp_mask, magnitude > exp_mask
    false = jnp.zeros(x.shape, bool)
    return x == 0, false, false


def _exact_counts(x: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, ...]:
    """(zeros, non-finite, NaN) counts of ``x`` (of its ``valid`` elements)."""
    indicators: tuple[jax.Array, ...] = _exact_indicators(x)
    if valid is not None:
        indicators = tuple(c & valid for c in indicators)
    return tuple(jnp.sum(c, dtype=jnp.int32) for c in indicators)


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
    scale = lax.stop_gradient(scale_of(jnp.where(jnp.isfinite(amax), amax, 1), jnp, lo, hi))
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
    ss = jnp.where(jnp.isnan(asml + amed + abig), jnp.nan, ss)  # NaN (a comparison drops it)
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


def _sum2(v: jax.Array, dtype: Any = None) -> jax.Array:
    """Sum of a ``(k, B)`` array, rows first (blocked: accurate on XLA:CPU)."""
    return jnp.sum(jnp.sum(v, axis=1, dtype=dtype))


def _pass_cpu(x: jax.Array, n: int, extras: bool) -> tuple[Any, ...]:
    """XLA:CPU: separate reductions (it fuses no siblings, and a variadic or
    select-carrying reduction runs 8-20x slower there), and one ``lax.cond``
    per leaf (cheap on CPU) that redoes the rare cases exactly: a sum of
    squares out of float32's safe range (Blue's accumulators) or non-finite
    values (counts from the bits).

    Zeros are ``n - sum(|sign(x)|)``: exact for every value XLA computes
    (XLA:CPU flushes subnormal results to zero, so a gradient holds none).
    """
    xf = widen(x)
    padding = x.size - n
    dtype = xf.dtype
    nan = jnp.asarray(jnp.nan, dtype)
    zero = jnp.zeros((), dtype)
    ss = _sum2(xf * xf)
    if extras:
        amax = jnp.max(jnp.abs(xf))
        shift = 2.0 ** -max(0, (n - 1).bit_length())
        mean = _sum2(xf * shift) / shift / n
        zeros = n - _sum2(jnp.abs(jnp.sign(xf)))
        tiny_ok = (ss > 2.0**-100) | (amax == 0)  # an all-zero leaf needs no rescue
    else:
        amax = mean = zeros = nan
        tiny_ok = ss > 2.0**-100
    fast = (ss < 2.0**100) & tiny_ok  # also False for NaN / Inf

    def exact():
        ss2, scale2 = _blue_exact(xf)
        z, nf, nn = (_sum2(c, jnp.int32).astype(dtype) for c in _exact_indicators(x))
        if not extras:
            return ss2, scale2, zeros, nf, amax
        return ss2, scale2, z - padding, nf, jnp.where(nn > 0, jnp.nan, amax)

    one = jnp.ones((), dtype)
    ss, scale, zeros, nonfinite, amax = lax.cond(fast, lambda: (ss, one, zeros, zero, amax), exact)
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
