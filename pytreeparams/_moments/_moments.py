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

Two implementations of steps 1-2 share steps 3-4 from this module:
``_host_moments`` in NumPy (float64 accumulation, blocks of 65,536 elements,
small leaves of one size stacked) and ``_jax_moments``, traceable (float32
accumulation, float64 for float64 leaves under x64; bfloat16 and float16
widened exactly; the leaf reduced in its own shape by XLA's tree reductions,
deviations taken from a pivot, the first estimate of the mean).

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

from typing import Any, NamedTuple

import numpy as np

__all__ = ['N_PARTIAL', 'STAT_NAMES', 'Partial', 'finalize', 'merge', 'scale_of']

STAT_NAMES = ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac')
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
    if xp is np:
        with np.errstate(all='ignore'):  # non-finite pieces: replaced in finalize
            return _merge(p, xp, axis)
    return _merge(p, xp, axis)


def _merge(p: Partial, xp: Any, axis: int) -> Partial:
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


def scale_of(amax: Any, xp: Any, lo: int, hi: int) -> Any:
    """The power of two ``2**e >= amax`` (1 for 0), ``e`` clipped to ``[lo, hi]``."""
    e = xp.frexp(amax)[1]
    return xp.ldexp(xp.ones_like(amax), xp.clip(e, lo, hi))
