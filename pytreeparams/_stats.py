"""Statistics kernels: per-leaf moments computed where the data lives.

Every leaf gives one row of ``STAT_NAMES``: mean, std, min, max, L2 norm,
number of non-finite values and fraction of exact zeros. Accumulation is in
float32 (float64 for float64 leaves), with the data shifted by its first
element so that the variance does not cancel for leaves with a large mean
(LayerNorm scales near 1). The L2 norm is derived from mean and variance
(``sqrt(n * (var + mean**2))``) instead of a further pass over the data.

Three ways to the same numbers:

- ``leaf_stats``, traceable, for ``stats`` inside ``jit`` and for leaves on an
  accelerator or sharded over devices. The non-finite count costs a slow pass
  on XLA:CPU, so it only runs (under ``lax.cond``) when the sum or the sum of
  squares is not finite; the zero count is ``n - sum(|sign(x)|)``, exact for
  finite data and several times faster there than ``sum(x == 0)``.
- ``native_stats_many``, for leaves in host memory: the optional C kernel
  (``_native.c``) reads each leaf once for every statistic, on all cores.
- ``host_stats_many`` / ``host_stats_batch``, the NumPy fallback where the
  package was built without the kernel.

A leaf that holds NaN reports NaN for mean, std, min, max and L2 (and a
leaf with Inf reports inf or NaN there); its ``nonfinite`` count is exact.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from ._paths import _flatten, unbox
from ._typing import PyTree

__all__ = ['STAT_NAMES', 'Stats', 'stats']

STAT_NAMES = ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac')
_SMALL = 1 << 16  # CPU-resident leaves up to this size are reduced in stacked batches
_CHUNK = 1 << 18  # elements per float64 chunk of the host path (2 MiB)


_NUMERIC: dict[Any, bool] = {}


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array-like leaf with a numeric or bool dtype."""
    dtype = getattr(x, 'dtype', None)
    if dtype is None or not hasattr(x, 'shape'):
        return isinstance(x, (bool, int, float, complex, np.generic))
    hit = _NUMERIC.get(dtype)
    if hit is None:
        try:
            hit = bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))
        except TypeError:  # pragma: no cover - exotic dtypes
            hit = False
        _NUMERIC[dtype] = hit
    return hit


def _acc_dtype(dtype: Any) -> Any:
    return jnp.float64 if np.dtype(dtype) == np.float64 else jnp.float32


def _nan_row(n: int) -> jax.Array:
    zero_frac = jnp.nan if n == 0 else 0.0
    return jnp.array([jnp.nan] * 5 + [0.0, zero_frac], jnp.float32)


def _upcast(x: jax.Array, acc: Any) -> jax.Array:
    """``x.astype(acc)``; bfloat16 through integer shifts, which XLA:CPU vectorizes."""
    if x.dtype == jnp.bfloat16 and acc == jnp.float32:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32) << 16
        return lax.bitcast_convert_type(bits, jnp.float32)
    return x.astype(acc)


def leaf_stats(x: jax.Array) -> jax.Array:
    """The ``STAT_NAMES`` of one array as a float array of shape (7,). Traceable.

    Separate reductions (shifted sum, shifted sum of squares, min, max, and the
    non-zero count as ``sum(|sign(x)|)``): each runs near memory speed on
    XLA:CPU, unlike a variadic reduction or ``sum(x == 0)``, and SPMD
    partitions each one shard by shard, so a sharded array is never gathered.

    Args:
      x: A numeric or bool array.

    Returns:
      ``[mean, std, min, max, l2, nonfinite, zero_frac]``.
    """
    x = jnp.asarray(x)
    n = math.prod(x.shape)
    if n == 0:
        return _nan_row(0)
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    acc = _acc_dtype(x.dtype)
    xf = _upcast(x, acc)
    shift = lax.stop_gradient(xf[(0,) * xf.ndim])
    d = xf - shift
    sd, sdd = jnp.sum(d), jnp.sum(d * d)
    mn, mx = jnp.min(xf), jnp.max(xf)
    nonzero = jnp.sum(jnp.abs(jnp.sign(xf)))
    mean_d = sd / n
    mean = shift + mean_d
    var = jnp.maximum(sdd / n - mean_d * mean_d, 0)
    l2 = jnp.sqrt(n * (var + mean * mean))
    finite = jnp.isfinite(sd) & jnp.isfinite(sdd)
    nonfinite, zeros = lax.cond(
        finite,
        lambda: (jnp.zeros((), acc), n - nonzero),
        lambda: (
            jnp.sum(~jnp.isfinite(xf), dtype=acc),
            jnp.sum(xf == 0, dtype=acc),
        ),
    )
    row = jnp.stack([mean, jnp.sqrt(var), mn, mx, l2, nonfinite, zeros / n])
    return row.astype(jnp.float32) if acc == jnp.float32 else row


def host_stats_batch(a: np.ndarray) -> np.ndarray:
    """``leaf_stats`` of each row of a 2-D host array, in float64 NumPy."""
    k, n = a.shape
    if n == 0:
        return np.tile(np.array([np.nan] * 5 + [0.0, np.nan]), (k, 1))
    if np.iscomplexobj(a):
        a = np.abs(a)
    a = a.astype(np.float64, copy=False)
    with np.errstate(all='ignore'):
        mean = a.mean(axis=1)
        var = np.mean((a - mean[:, None]) ** 2, axis=1)
        l2 = np.sqrt(np.einsum('ij,ij->i', a, a))
        nonfinite = np.zeros(k)
        bad = ~np.isfinite(l2)
        if bad.any():
            nonfinite[bad] = np.count_nonzero(~np.isfinite(a[bad]), axis=1)
        zeros = np.count_nonzero(a == 0, axis=1) / n
        return np.stack([mean, np.sqrt(var), a.min(axis=1), a.max(axis=1), l2, nonfinite, zeros], 1)


def _chunk_to(c: np.ndarray, work: Any) -> np.ndarray:
    """A chunk in the working dtype; bfloat16 by integer shifts (exact, fast)."""
    if c.dtype == work:
        return c
    if c.dtype.name == 'bfloat16' and work == np.float32:
        return (c.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return c.astype(work)


def _host_partial(a: np.ndarray, lo: int, hi: int, shift: Any, work: Any) -> tuple:
    """Partial moments of ``a[lo:hi]``: (sum d, sum d^2, min, max, zeros)."""
    buf = np.empty(min(_CHUNK, hi - lo), work)
    ones = np.ones_like(buf)
    sd = sdd = 0.0
    mn, mx = np.inf, -np.inf
    zeros = 0
    for i in range(lo, hi, _CHUNK):
        c = _chunk_to(a[i : min(i + _CHUNK, hi)], work)
        zeros += int(np.count_nonzero(c == 0))
        cmin, cmax = float(c.min()), float(c.max())
        if mn == mn:  # once NaN, stays NaN
            mn = cmin if (cmin != cmin or cmin < mn) else mn
        if mx == mx:
            mx = cmax if (cmax != cmax or cmax > mx) else mx
        d = np.subtract(c, shift, out=buf[: c.size])
        # BLAS dots (several times faster than NumPy's sum); per-chunk totals
        # are accumulated in float64.
        sd += float(np.dot(d, ones[: c.size]))
        sdd += float(np.dot(d, d))
    return sd, sdd, mn, mx, zeros


_POOL: list[Any] = []


def _pool() -> Any:
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)))
    return _POOL[0]


def host_stats_many(xs: list[Any]) -> list[np.ndarray]:
    """``leaf_stats`` of host-resident leaves with NumPy, one pass over memory.

    Each leaf is read in cache-sized chunks (float32, or float64 for float64
    leaves; bfloat16 widened exactly by integer shifts); each chunk is shifted
    by the leaf's first element into a reused buffer, summed and dotted with
    itself by BLAS, chunk totals accumulated in float64, so the variance does not cancel
    for leaves with a large mean; zeros are counted with
    ``count_nonzero(c == 0)``, min and max on the chunk itself. The ranges of
    all leaves go to one thread pool together (NumPy releases the GIL), so
    every core is busy also on trees of many medium-sized leaves.
    """
    tasks: list[tuple[int, Any]] = []
    meta = []
    with np.errstate(all='ignore'):
        for j, x in enumerate(xs):
            a = np.asarray(x).reshape(-1)
            if np.iscomplexobj(a):
                a = np.abs(a)
            work = np.float64 if a.dtype == np.float64 else np.float32
            shift = _chunk_to(a[:1], work)[0]
            n = a.size
            pieces = max(1, min(_pool()._max_workers, n // (4 * _CHUNK)))
            bounds = [n * k // pieces for k in range(pieces + 1)]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                tasks.append((j, _pool().submit(_host_partial, a, lo, hi, shift, work)))
            meta.append((a, n, shift, work))
        parts: list[list[tuple]] = [[] for _ in xs]
        for j, fut in tasks:
            parts[j].append(fut.result())
        out = []
        for (a, n, shift, work), ps in zip(meta, parts):
            sd = sum(p[0] for p in ps)
            sdd = sum(p[1] for p in ps)
            mins, maxs = [p[2] for p in ps], [p[3] for p in ps]
            mn = float('nan') if any(m != m for m in mins) else min(mins)
            mx = float('nan') if any(m != m for m in maxs) else max(maxs)
            zeros = sum(p[4] for p in ps)
            mean_d = sd / n
            mean = float(shift) + mean_d
            var = max(sdd / n - mean_d * mean_d, 0.0) if np.isfinite(sdd) else np.nan
            nonfinite = 0
            if not (np.isfinite(sd) and np.isfinite(sdd)):
                nonfinite = int(np.count_nonzero(~np.isfinite(_chunk_to(a, work))))
            l2 = np.sqrt(n * (var + mean * mean))
            out.append(np.array([mean, np.sqrt(var), mn, mx, l2, nonfinite, zeros / n]))
        return out


try:  # the optional one-pass C kernel (setup.py); NumPy does the work without it
    from . import _native
except ImportError:  # pragma: no cover - built without a C compiler
    _native = None

_NATIVE_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(jnp.bfloat16): 2}
_PIECE = 1 << 20  # elements: a tree smaller than workers * _PIECE uses fewer threads
try:  # the concrete class of jax arrays, read in place by pointer (else through NumPy)
    from jax._src.array import ArrayImpl as _ArrayImpl

    _ARRAY_TYPES: frozenset[type] = frozenset({_ArrayImpl})
except ImportError:  # pragma: no cover - a jax that moved it
    _ARRAY_TYPES = frozenset()


def _native_view(x: Any) -> tuple[np.ndarray, int]:
    """``x`` as a flat contiguous host array of a kind the C kernel reads."""
    a = np.asarray(x).reshape(-1)
    kind = _NATIVE_KINDS.get(a.dtype)
    if kind is None:
        if np.iscomplexobj(a):
            a = np.abs(a)
        elif a.dtype == np.float16:
            a = a.astype(np.float32)
        if a.dtype not in _NATIVE_KINDS:  # ints and bools: exact in float64
            a = a.astype(np.float64)
        kind = _NATIVE_KINDS[a.dtype]
    if not (a.flags.c_contiguous and a.flags.aligned):  # e.g. a view into a file at an odd offset
        a = a.copy()
    return a, kind


def _segment(x: Any) -> tuple[Any, int, int, int, int]:
    """(keep-alive object, address, size, itemsize, kind) of one host leaf.

    A jax array on one CPU device is read in place through its buffer pointer
    (dense on CPU; the statistics do not depend on the element order), which
    costs a fraction of ``np.asarray``; anything else goes through NumPy.
    """
    if type(x) in _ARRAY_TYPES:
        dtype = x.dtype
        kind = _NATIVE_KINDS.get(dtype)
        if kind is not None:
            return x, x.unsafe_buffer_pointer(), math.prod(x.shape), dtype.itemsize, kind
    a, kind = _native_view(x)
    return a, a.ctypes.data, a.size, a.itemsize, kind


def native_stats_many(xs: list[Any], workers: int | None = None) -> np.ndarray:
    """``leaf_stats`` of host-resident leaves with the one-pass C kernel.

    Every leaf is read from memory once: per block of 4,096 elements (held in
    cache) the kernel takes sum, min, max and the zero and non-finite counts,
    then the squared deviations from the block mean, in float32 lanes (float64
    for float64 leaves; bfloat16 widened exactly), and merges blocks in
    float64 with Chan et al.'s update, so the variance does not cancel for
    any offset of the data. Large leaves are cut into pieces so that
    ``workers`` threads get equal shares (the kernel releases the GIL); the
    pieces are merged the same way. Leaves with non-finite values get min and
    max again from NumPy, so that NaN propagates there as in ``leaf_stats``.

    Args:
      xs: Host arrays or scalars (NumPy, or jax arrays on one CPU device).
      workers: Threads to use; by default one per core (at most 8).

    Returns:
      A float64 ``(len(xs), 7)`` array, one ``STAT_NAMES`` row per leaf.
    """
    jax.block_until_ready([x for x in xs if type(x) in _ARRAY_TYPES])  # pointers need data
    segs = [_segment(x) for x in xs]
    if not segs:
        return np.zeros((0, len(STAT_NAMES)))
    keep, base, size, itemsize, kind = zip(*segs)
    sizes = np.asarray(size, np.int64)
    ends = np.cumsum(sizes)
    total = int(ends[-1])
    if workers is None:
        workers = _pool()._max_workers
    workers = max(1, min(workers, total // _PIECE))
    # Worker shares end at equal element counts; a leaf across a share's end is
    # cut there, and its pieces are merged after the kernel.
    bounds = [total * w // workers for w in range(1, workers)]
    pieces = np.ones(len(segs), np.int64)
    cuts: dict[int, list[int]] = {}
    for b in bounds:
        j = int(np.searchsorted(ends, b, side='right'))
        lo = int(ends[j] - sizes[j])
        if lo < b:
            pieces[j] += 1
            cuts.setdefault(j, []).append(b - lo)
    first = np.cumsum(pieces) - pieces
    seg_addr = np.repeat(np.asarray(base, np.int64), pieces)
    seg_size = np.repeat(sizes, pieces)
    seg_kind = np.repeat(np.asarray(kind, np.int64), pieces)
    for j, offs in cuts.items():
        starts = [0, *offs]
        stops = [*offs, int(sizes[j])]
        k = slice(first[j], first[j] + len(starts))
        seg_addr[k] += np.asarray(starts, np.int64) * itemsize[j]
        seg_size[k] = np.asarray(stops) - np.asarray(starts)
    seg_start = np.cumsum(seg_size) - seg_size
    span_cuts = [0, *(int(np.searchsorted(seg_start, b)) for b in bounds), len(seg_size)]
    out = np.empty((len(seg_size), 6))  # mean, M2, min, max, zeros, nonfinite per piece
    cols = [seg_addr, seg_size, seg_kind]
    ptrs = [c.ctypes.data for c in cols]

    def run(lo: int, hi: int) -> None:
        _native.moments(out.ctypes.data + 48 * lo, *(p + 8 * lo for p in ptrs), hi - lo)

    spans = [(lo, hi) for lo, hi in zip(span_cuts[:-1], span_cuts[1:]) if hi > lo]
    futures = [_pool().submit(run, lo, hi) for lo, hi in spans[1:]]
    if spans:
        run(*spans[0])
    for f in futures:
        f.result()
    n = sizes.astype(np.float64)
    w = seg_size.astype(np.float64)
    with np.errstate(all='ignore'):
        # pieces of a leaf merged exactly: M2 = sum M2_i + sum n_i (mean_i - mean)^2
        mean = np.add.reduceat(w * out[:, 0], first) / n
        dev = out[:, 0] - np.repeat(mean, pieces)
        m2 = np.add.reduceat(out[:, 1] + w * dev * dev, first)
        zeros, nonfinite = (np.add.reduceat(out[:, j], first) for j in (4, 5))
        mn = np.minimum.reduceat(out[:, 2], first)
        mx = np.maximum.reduceat(out[:, 3], first)
        var = np.maximum(m2 / n, 0.0)
        l2 = np.sqrt(n * (var + mean * mean))
        table = np.stack([mean, np.sqrt(var), mn, mx, l2, nonfinite, zeros / n], 1)
        for i in np.flatnonzero(nonfinite):  # NaN propagates through min and max
            a = _native_view(keep[i])[0]
            table[i, 2:4] = np.min(a), np.max(a)
        table[n == 0] = [np.nan] * 5 + [0.0, np.nan]
    return table


@jax.jit
def _leaf_kernel(x: jax.Array) -> jax.Array:
    return leaf_stats(x)


_HOST_SHARDING: dict[Any, bool] = {}


def _on_host(x: Any) -> bool:
    """Whether ``x`` lives in host memory on one device (NumPy can read it in place)."""
    if isinstance(x, (np.ndarray, np.generic, bool, int, float, complex)):
        return True
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        sharding = x.sharding
        hit = _HOST_SHARDING.get(sharding)
        if hit is None:
            devices = sharding.device_set
            hit = len(devices) == 1 and all(d.platform == 'cpu' for d in devices)
            _HOST_SHARDING[sharding] = hit
        return hit
    return False


def eager_leaf_stats(leaves: list[Any]) -> list[np.ndarray | None]:
    """Statistics of concrete leaves, each computed where it lives.

    CPU-resident leaves (on a CPU backend the host is their device) need no
    compilation, so the first call is as fast as the next: they are read once
    by the one-pass C kernel (``native_stats_many``), or, where the package was
    built without it, by NumPy (small leaves of one size and dtype stacked and
    reduced together, large ones in cache-sized chunks). Leaves on an accelerator use one
    jitted kernel per shape and dtype, shared by all leaves alike, fetched in
    one transfer; sharded arrays use reductions that
    run on each shard and combine only scalars. Non-array leaves give None.
    """
    out: list[Any] = [None] * len(leaves)
    pending: list[tuple[int, jax.Array]] = []
    batches: dict[tuple[int, Any], list[int]] = {}
    large: list[int] = []
    native: list[int] = []
    for i, x in enumerate(leaves):
        if type(x) in _ARRAY_TYPES and _native is not None:  # the common case, quickly
            hit = _HOST_SHARDING.get(x.sharding)
            if hit and _NUMERIC.get(x.dtype):
                native.append(i)
                continue
        if not is_array(x) or isinstance(x, jax.ShapeDtypeStruct):
            continue
        if not _on_host(x):
            pending.append((i, _leaf_kernel(x)))
            continue
        if _native is not None:
            native.append(i)
            continue
        size = math.prod(np.shape(x))
        if size <= _SMALL:
            dtype = getattr(x, 'dtype', None) or np.asarray(x).dtype
            batches.setdefault((size, dtype), []).append(i)
        else:
            large.append(i)
    if native:
        for i, row in zip(native, native_stats_many([leaves[i] for i in native])):
            out[i] = row
    for i, row in zip(large, host_stats_many([leaves[i] for i in large])):
        out[i] = row
    for (size, _), idx in batches.items():
        rows_per_chunk = max(1, _CHUNK // max(size, 1))
        for start in range(0, len(idx), rows_per_chunk):
            part = idx[start : start + rows_per_chunk]
            stacked = np.stack([np.asarray(leaves[i]).reshape(size) for i in part])
            for i, row in zip(part, host_stats_batch(stacked)):
                out[i] = row
    fetched = jax.device_get([r for _, r in pending])
    for (i, _), r in zip(pending, fetched):
        out[i] = np.asarray(r, np.float64)
    return out


@struct.dataclass
class Stats:
    """Per-leaf statistics as one device array, cheap to return from ``jit``.

    Attributes:
      paths: The leaf paths (static), in flatten order.
      table: A ``(len(paths), 7)`` array, columns in ``STAT_NAMES`` order.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> s = ptp.stats({'w': jnp.array([3.0, 4.0])})
      >>> float(s['l2'][0]), s.paths
      (5.0, ('w',))
    """

    table: jax.Array
    paths: tuple[str, ...] = struct.field(pytree_node=False)

    def __getitem__(self, name: str) -> jax.Array:
        """The column ``name`` (one of ``STAT_NAMES``) as an array over leaves."""
        return self.table[:, STAT_NAMES.index(name)]

    def to_dict(self) -> dict[str, float]:
        """``{'path/stat': float}`` on the host (one transfer)."""
        t = np.asarray(jax.device_get(self.table))
        return {
            f'{p}/{s}': float(t[i, j])
            for i, p in enumerate(self.paths)
            for j, s in enumerate(STAT_NAMES)
        }


def stats(tree: PyTree) -> Stats:
    """Computes per-leaf statistics of ``tree`` as device arrays. Jittable.

    For every array leaf: mean, std, min, max, L2 norm, the number of
    non-finite values (NaN/Inf) and the fraction of exact zeros, accumulated
    in float32 (float64 for float64 leaves) in a single pass where possible.
    Use it inside a jitted training step and fetch the one ``(L, 7)`` array.
    Non-array leaves are skipped; a NaN-holding leaf reports NaN moments and
    its exact non-finite count.

    Args:
      tree: Any pytree of arrays (boxes are transparent).

    Returns:
      A :class:`Stats` with the paths of the array leaves and their table.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> s = jax.jit(ptp.stats)({'a': jnp.array([1.0, jnp.nan]), 'b': jnp.zeros(4)})
      >>> s.paths, s['nonfinite'].tolist(), s['zero_frac'].tolist()
      (('a', 'b'), [1.0, 0.0], [0.0, 1.0])
    """
    leaves, _, paths_ = _flatten(tree)
    rows, names = [], []
    for p, x in zip(paths_, leaves):
        x = unbox(x)
        if is_array(x) and not isinstance(x, jax.ShapeDtypeStruct):
            rows.append(leaf_stats(x).astype(jnp.float32))
            names.append(p)
    table = jnp.stack(rows) if rows else jnp.zeros((0, len(STAT_NAMES)), jnp.float32)
    return Stats(table=table, paths=tuple(names))
