"""The moments algorithm in NumPy: statistics of leaves in host memory.

Steps 1-2 of ``_moments`` per block of ``HOST_BLOCK`` elements (held in
cache), in float64 where it matters: min and max on the data; the exact zero
count (``x == 0``; NumPy does not flush subnormals); the deviations from an
approximate block mean (a float32 dot product of ``x / n`` with ones: only a
shift) written into a float64 buffer, then summed and squared by float64
dot products. The corrected two-pass formula turns these into the block's
exact mean and ``M2``, whatever the BLAS kernel's summation order (float64
accumulation leaves it ~1e-14 relative). Steps 3-4 (merge, finalize) are the
shared ones. Blocks of large leaves go to one thread per core; small leaves of
one size and dtype are stacked and reduced together, one row per leaf.
"""

from __future__ import annotations

import concurrent.futures
import math
import mmap
import os
from typing import Any

import ml_dtypes
import numpy as np

from ._moments import Partial, merge, scale_of

__all__ = ['HOST_BLOCK', 'host_array', 'host_partials_many', 'host_table']

HOST_BLOCK = 1 << 16  # elements per block: 256 KiB of float32, 512 KiB of float64
_SMALL = 4096  # leaves up to this size are stacked with others of their size
_EMPTY = Partial(*np.array([0.0, 0.0, 0.0, 1.0, np.nan, np.nan, 0.0, 0.0, 0.0]))
_WORKERS = min(8, os.cpu_count() or 1)  # threads of the pool that reads large leaves
_POOL: list[concurrent.futures.ThreadPoolExecutor] = []


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(concurrent.futures.ThreadPoolExecutor(_WORKERS, 'pytreeparams-host'))
    return _POOL[0]


def _forget_pool() -> None:
    """In a forked child: the parent's pool came along without its threads (its
    tasks would wait forever); the child makes its own on first use."""
    _POOL.clear()


if hasattr(os, 'register_at_fork'):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool)


_PLANS: dict[Any, str] = {}


def _is_float(dtype: np.dtype) -> bool:
    """A NumPy float or one of ml_dtypes' (whose kind is often 'V')."""
    if dtype.kind == 'f':
        return True
    try:
        ml_dtypes.finfo(dtype)
    except ValueError:
        return False
    return True


def _plan(dtype: np.dtype) -> str:
    """How ``host_array`` reads a dtype (looked up once per dtype)."""
    if not dtype.isnative:
        return 'native'
    if dtype.kind == 'c':
        return 'abs'
    if dtype == np.uint16:  # (uint16 below means bfloat16 bits)
        return 'int32'
    if dtype.name == 'bfloat16':
        return 'bfloat16'
    if dtype.itemsize < 4 and _is_float(dtype):  # float16, 8-bit (and smaller) floats
        return 'float32'
    if dtype == np.bool_:
        return 'uint8'
    return 'as_is'


def host_array(x: Any) -> np.ndarray:
    """``x`` as a flat NumPy array of a kind the host path reads.

    Complex values become their modulus, bfloat16 widens exactly to float32
    (by integer shifts; a large leaf stays as its uint16 bits, widened block by
    block), float16 and 8-bit floats to float32 (a large leaf block by block
    too, so a memory-mapped one is never copied whole), bool to uint8, big-endian
    data to native order; integers and float64 keep their precision.

    Example:
      >>> import numpy as np
      >>> host_array(np.arange(3, dtype='>f4')).dtype.isnative
      True
    """
    a = np.asarray(x).reshape(-1)
    plan = _PLANS.get(a.dtype)
    if plan is None:
        plan = _PLANS[a.dtype] = _plan(a.dtype)
    if plan == 'as_is':
        return a
    if plan == 'native':
        return host_array(a.astype(a.dtype.newbyteorder('=')))
    if plan == 'abs':
        return host_array(np.abs(a))
    if plan == 'int32':
        return a.astype(np.int32)
    if plan == 'bfloat16':
        if a.size > _SMALL:  # widened block by block (``_block``), never as a whole
            return a.view(np.uint16)
        return np.left_shift(a.view(np.uint16), 16, dtype=np.uint32).view(np.float32)
    if plan == 'float32':  # a large leaf is widened block by block (``_block``)
        return a if a.size > _SMALL else a.astype(np.float32)
    return a.view(np.uint8)


def _inv_scale(a: np.ndarray) -> float:
    """``1 / scale``: 1 unless squares could leave float64's range (float64 data)."""
    if a.dtype != np.float64 or a.size == 0:
        return 1.0
    amax = 0.0  # block by block, with no temporary: a mapped leaf is never copied whole
    releasable = _releasable(a) is not None
    for i in range(0, a.size, HOST_BLOCK):
        block = a[i : i + HOST_BLOCK]
        lo, hi = float(block.min()), float(block.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return 1.0
        amax = max(amax, -lo, hi)
        if releasable:
            release_pages(a, i, i + HOST_BLOCK)
    if not math.isfinite(amax) or 1e-140 < amax < 1e140:
        return 1.0
    return float(1.0 / scale_of(np.float64(amax), np, -1020, 1020))


_ROW = 64  # values per BLAS dot: float32 rounding bounded by 63 eps in any summation order


def _block(c: np.ndarray, inv: float, buf: np.ndarray, wide: np.ndarray) -> list[float]:
    """Steps 1-2 on one 1-D block: [n, mean, m2, scale, min, max, zeros, nonfinite, nans].

    float32 data (and bfloat16/float16, widened into ``wide``): deviations from
    an approximate mean in float32, summed and squared in rows of ``_ROW`` by
    BLAS (an error bound of 63 eps whatever the kernel's order), the row sums
    added in float64. Other data, and float32 values whose squares could leave
    float32's range: float64 deviations and float64 dot products.
    """
    if c.dtype == np.uint16:  # bfloat16 bits: widened exactly, block by block
        c = np.left_shift(c, 16, out=wide[: c.size].view(np.uint32), dtype=np.uint32).view(
            np.float32
        )
    elif _PLANS.get(c.dtype) == 'float32':  # float16, 8-bit floats: exact in float32
        np.copyto(wide[: c.size], c, casting='unsafe')
        c = wide[: c.size]
    m = c.size
    mn, mx = c.min(), c.max()
    zeros = 0 if (mn > 0 or mx < 0) else int(np.count_nonzero(c == 0))
    work = c if inv == 1.0 else c * inv  # an exact power-of-two scaling (float64 data only)
    flt = work.dtype.kind == 'f'
    nonfinite = nans = 0
    if flt and not (math.isfinite(mn) and math.isfinite(mx)):
        nonfinite = int(np.count_nonzero(~np.isfinite(c)))
        nans = int(np.count_nonzero(np.isnan(c)))
    amax = max(abs(float(mn)), abs(float(mx)))
    if work.dtype == np.float32 and m % _ROW == 0 and 1e-10 < amax < 1e18:  # squares fit
        shift: Any = np.float32(np.dot(work, _means_of(m, np.dtype(np.float32))))
        if not math.isfinite(shift):
            shift = work[0] if math.isfinite(work[0]) else np.float32(0)
        d = np.subtract(work, shift, out=wide[:m])
        rows = d.reshape(-1, _ROW)
        ones = _ONES32[:_ROW]
        sd = float(np.sum(rows @ ones, dtype=np.float64))
        np.multiply(d, d, out=d)
        sdd = float(np.sum(rows @ ones, dtype=np.float64))
        mean = float(shift) + sd / m
    else:
        ones = _means_of(m, work.dtype if flt else np.dtype(np.float64))
        w64 = work if flt else work.astype(np.float64)
        shift = float(np.dot(w64, ones))
        if not math.isfinite(shift):
            shift = float(work[0]) if math.isfinite(float(work[0])) else 0.0
        d = np.subtract(work, shift, out=buf[:m], dtype=np.float64)  # never in float32
        sd = float(np.dot(d, _ONES64[:m]))
        sdd = float(np.dot(d, d))
        mean = shift + sd / m
    m2 = max(sdd - sd * sd / m, 0.0)
    return [m, mean, m2, 1.0 / inv, float(mn), float(mx), zeros, nonfinite, nans]


_ONES64 = np.ones(HOST_BLOCK)
_ONES32 = np.ones(HOST_BLOCK, np.float32)
_MEANS: dict[tuple[int, Any], np.ndarray] = {}


def _means_of(m: int, dtype: Any) -> np.ndarray:
    """``np.full(m, 1 / m, dtype)``, cached: ``dot(x, it)`` is the mean of ``x``."""
    key = (m, dtype)
    if key not in _MEANS:
        _MEANS[key] = np.full(m, 1.0 / m, dtype)
    return _MEANS[key]


def _blocks(a: np.ndarray, lo: int, hi: int, inv: float) -> np.ndarray:
    """Step 1-2 rows of the blocks starting in ``[lo, hi)`` of a flat leaf; the
    pages of a memory-mapped leaf are released block by block, once read."""
    buf = np.empty(HOST_BLOCK)
    wide = np.empty(HOST_BLOCK, np.float32)
    mapped = _releasable(a) is not None
    rows = []
    with np.errstate(all='ignore'):  # non-finite data: replaced in finalize
        for i in range(lo, hi, HOST_BLOCK):
            rows.append(_block(a[i : i + HOST_BLOCK], inv, buf, wide))
            if mapped:  # this block and the one before (the page they share too)
                release_pages(a, max(lo, i - HOST_BLOCK), i + HOST_BLOCK)
    return np.array(rows, np.float64)


def _mapping_of(a: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` that ``a`` views (through views and memoryviews), else None."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _releasable(a: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` that ``a`` views if dropping its pages cannot change what ``a``
    holds: a read-only mapping (``ACCESS_READ``, as ``np.load(mmap_mode='r')``
    and a loaded safetensors file map), whose pages always come back from the
    file. A copy-on-write map (``mmap_mode='c'``) may hold the user's edits only
    in its private pages, and a writable one is the user's to manage: None."""
    mapping = _mapping_of(a) if a.flags.c_contiguous else None
    if mapping is None or not hasattr(mapping, 'madvise') or not hasattr(mmap, 'MADV_DONTNEED'):
        return None
    try:
        with memoryview(mapping) as view:  # read-only exactly for ACCESS_READ maps
            return mapping if view.readonly else None
    except (TypeError, ValueError):  # a closed map
        return None


def release_pages(a: np.ndarray, lo: int, hi: int) -> None:
    """Drops the resident pages of ``a[lo:hi]`` if ``a`` is a contiguous view of a
    read-only memory map (a loaded safetensors file, ``np.load(f, mmap_mode='r')``):
    they were read once, and a later read maps them again from the file (or the
    OS cache). A summary of a file then holds a few blocks at a time, not every
    page it has read. Pages shared with the neighbouring blocks are kept (only
    whole pages inside the range are dropped). Copy-on-write (``mmap_mode='c'``)
    and writable maps are left alone: their pages may hold edits the file does
    not. Does nothing where ``madvise`` is missing.
    """
    mapping = _releasable(a)
    if mapping is None:
        return
    origin = np.frombuffer(mapping, np.uint8).ctypes.data
    start = a.ctypes.data - origin + lo * a.itemsize
    end = a.ctypes.data - origin + min(hi, a.size) * a.itemsize
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the range
    end = end // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, end - start)


def _rows(rows: np.ndarray) -> np.ndarray:
    """Step 1-2 of each row of a 2-D array of small leaves (one block each)."""
    m = rows.shape[1]
    with np.errstate(all='ignore'):
        mn, mx = rows.min(axis=1), rows.max(axis=1)
        zeros = np.count_nonzero(rows == 0, axis=1)
        mean = rows.sum(axis=1, dtype=np.float64) / m
        d = np.subtract(rows, mean[:, None], dtype=np.float64)
        sd = d.sum(axis=1)
        sdd = np.einsum('ij,ij->i', d, d)
        nonfinite = np.zeros(rows.shape[0])
        nans = np.zeros(rows.shape[0])
        if rows.dtype.kind == 'f':
            bad = ~(np.isfinite(mn) & np.isfinite(mx))
            if bad.any():
                nonfinite[bad] = np.count_nonzero(~np.isfinite(rows[bad]), axis=1)
                nans[bad] = np.count_nonzero(np.isnan(rows[bad]), axis=1)
        k = rows.shape[0]
        cols = [np.full(k, float(m)), mean + sd / m, np.maximum(sdd - sd * sd / m, 0.0)]
        cols += [np.ones(k), mn, mx, zeros, nonfinite, nans]
        return np.stack([np.asarray(c, np.float64) for c in cols], axis=1)


def _merge_rows(table: np.ndarray) -> Partial:
    if table.shape[0] == 1:
        return Partial(*table[0])
    return merge(Partial(*table.T), np)


def host_partials_many(xs: list[Any]) -> list[Partial]:
    """The merged partial moments of each host leaf, as :class:`Partial` rows
    (see :func:`host_table`)."""
    return [Partial(*row) for row in host_table(xs)]


def host_table(xs: list[Any]) -> np.ndarray:
    """Merged partials of many host leaves, one row each (``N_PARTIAL`` columns).

    Blocks of large leaves are shared out to one thread per core (NumPy and
    BLAS release the GIL); small leaves of one size and dtype are stacked and
    reduced together (one row each), so thousands of small leaves cost a few
    NumPy calls, not thousands.

    Args:
      xs: Host leaves.

    Returns:
      A float64 array of shape ``(len(xs), 9)``.
    """
    table = np.empty((len(xs), len(Partial._fields)))
    arrays = [host_array(x) for x in xs]
    groups: dict[tuple[int, Any], list[int]] = {}
    tasks: list[tuple[int, Any]] = []
    workers = _WORKERS
    for i, a in enumerate(arrays):
        n = a.size
        if n == 0:
            table[i] = _EMPTY
        elif n <= _SMALL and a.dtype != np.float64:
            groups.setdefault((n, a.dtype), []).append(i)
        else:
            inv = _inv_scale(a)
            blocks = -(-n // HOST_BLOCK)
            pieces = max(1, min(workers, blocks // 2))
            cuts = [HOST_BLOCK * (blocks * j // pieces) for j in range(pieces + 1)]
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                if pieces == 1:
                    tasks.append((i, _blocks(a, lo, n, inv)))
                else:
                    tasks.append((i, _pool().submit(_blocks, a, lo, min(hi, n), inv)))
    for (size, _), idx in groups.items():
        step = max(1, HOST_BLOCK // size)
        for lo in range(0, len(idx), step):
            part = idx[lo : lo + step]
            table[part] = _rows(np.stack([arrays[i] for i in part]))
    per_leaf: dict[int, list[np.ndarray]] = {}
    for i, t in tasks:
        per_leaf.setdefault(i, []).append(t if isinstance(t, np.ndarray) else t.result())
    for i, tables in per_leaf.items():
        table[i] = _merge_rows(np.concatenate(tables))
    for i, x in enumerate(xs):
        if arrays[i].size and np.asarray(x).dtype.kind == 'c':
            table[i, _NONFINITE : _NANS + 1] = _complex_counts(x)
    return table


_NONFINITE, _NANS = Partial._fields.index('nonfinite'), Partial._fields.index('nans')


def _complex_counts(x: Any) -> tuple[int, int]:
    """``(nonfinite, nans)`` of a complex leaf, from its real and imaginary parts
    (as the traced route counts them): a modulus that overflows to Inf is no
    non-finite value, and a NaN beside an Inf part is a NaN."""
    a = np.asarray(x).reshape(-1)
    nonfinite = nans = 0
    for lo in range(0, a.size, HOST_BLOCK):  # block by block: no copy of a large leaf
        re, im = a[lo : lo + HOST_BLOCK].real, a[lo : lo + HOST_BLOCK].imag
        nan = np.isnan(re) | np.isnan(im)
        nonfinite += int(np.count_nonzero(nan | np.isinf(re) | np.isinf(im)))
        nans += int(np.count_nonzero(nan))
    return nonfinite, nans
