"""Summary rows: one leaf's (or group's) counts, bytes and statistics, and
which leaves are parameters and which other state."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ._keys import describe
from ._leaves import (
    dtype_info,
    is_array,
    is_key_array,
    is_plain,
    type_str,
)
from ._moments import STAT_NAMES, Partial, merge, scale_of

__all__ = ['Row', 'combine_rows', 'is_state_path', 'parameter_count']


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaf, or one group of leaves, of a :class:`Summary`.

    Attributes:
      path: The leaf path, the group prefix, or ``'total'``.
      shape: The leaf shape (None for groups and non-array leaves).
      dtype: The dtype name (``'mixed'`` for groups of several dtypes).
      size: Number of elements, an exact Python int.
      nbytes: Bytes, an exact Python int.
      mean, std, min, max, l2: Statistics (None without statistics).
      nonfinite: Number of NaN/Inf values (None without statistics).
      zero_frac: Fraction of exact zeros (None without statistics).
      leaves: Number of leaves the row covers.
      sharding: A description of the sharding, when asked for.
      note: Free text, e.g. ``'alias of ...'`` for tied leaves.
      alias: Whether the leaf is an alias of ``ties`` (stored once: not in the totals).
      extra: Further ``(column, value)`` pairs, e.g. gradient statistics.
      device_bytes: With ``sharding``: the bytes of the largest shard this
        process's devices hold (a group's or the total's: their sum); None
        for leaves that are not jax arrays.
      logical_axes: With ``sharding``: the logical axis names of the leaf's
        metadata (``nn.with_logical_partitioning``, NNX sharding metadata), or None.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> row = ptp.summary({'w': jnp.ones((2, 3))}).rows[0]
      >>> row.type, row.size, row.nbytes, row.mean
      ('float32[2,3]', 6, 24, 1.0)
    """

    path: str
    shape: tuple[int, ...] | None
    dtype: str
    size: int
    nbytes: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    l2: float | None = None
    nonfinite: int | None = None
    zero_frac: float | None = None
    leaves: int = 1
    sharding: str | None = None
    note: str = ''
    alias: bool = False
    extra: tuple[tuple[str, float | None], ...] = ()
    device_bytes: int | None = None
    logical_axes: tuple[str | None, ...] | None = None

    @property
    def type(self) -> str:
        """``'float32[4,8]'`` style description (dtype alone for groups)."""
        if self.shape is None:
            return self.dtype
        return type_str(self.dtype, self.shape)

    def stats(self) -> dict[str, float | None]:
        """The statistics as a dict in ``STAT_NAMES`` order."""
        return {k: getattr(self, k) for k in STAT_NAMES}


def sharding_str(x: Any) -> str | None:
    s = getattr(x, 'sharding', None)
    if s is None:
        return None
    spec = getattr(s, 'spec', None)
    n = len(s.device_set)
    return f'{spec} on {n} devices' if spec is not None else f'{type(s).__name__} ({n})'


def device_bytes(x: Any) -> int | None:
    """The bytes of the largest shard of a jax array on this process's devices.

    Example:
      >>> import jax.numpy as jnp
      >>> device_bytes(jnp.zeros((4, 8))), device_bytes(1.0)
      (128, None)
    """
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return None
    shards = x.addressable_shards
    if not shards:  # none of its devices is this process's
        return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    sizes = (math.prod(len(range(*i.indices(d))) for i, d in zip(s.index, x.shape)) for s in shards)
    return max(sizes) * x.dtype.itemsize


_FIELDS = ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac')


def leaf_row(path: str, x: Any, st: np.ndarray | None, sharding: bool, note: str) -> Row:
    if is_plain(x) and (st is not None or is_array(x)):  # the common case, quickly
        shape = x.shape
        name, itemsize = dtype_info(x.dtype)
        size = math.prod(shape)
        fields = {'path': path, 'shape': shape, 'dtype': name, 'size': size}
        fields['nbytes'] = size * itemsize
    elif is_array(x) or is_key_array(x):
        shape = tuple(map(int, np.shape(x)))  # () for Python scalars
        name, itemsize = dtype_info(getattr(x, 'dtype', None) or np.asarray(x).dtype)
        size = math.prod(shape)
        fields = dict(path=path, shape=shape, dtype=name, size=size, nbytes=size * itemsize)
    else:
        fields = dict(path=path, shape=None, dtype=describe(x), size=0, nbytes=0)
    if st is not None:
        fields.update(zip(_FIELDS, st.tolist()))
        fields['nonfinite'] = int(fields['nonfinite'])
    if sharding:
        fields['sharding'] = sharding_str(x)
        fields['device_bytes'] = device_bytes(x)
    if note:
        fields['note'] = note
    return make_row(fields)


def make_row(fields: dict[str, Any]) -> Row:
    """``Row(**fields)`` without the frozen dataclass's per-field ``__setattr__``."""
    row = object.__new__(Row)
    row.__dict__.update(_ROW_DEFAULTS)
    row.__dict__.update(fields)
    return row


def combine_rows(path: str, rows: Sequence[Row]) -> Row:
    """One row for a group: sums, pooled mean/std, min/max, root-sum-square L2.

    Pooled by the one scaled merge of ``_moments`` (Chan's update, every row
    in units of a power of two at least its largest ``|value|``), so that
    leaves of ``+1e200`` and ``-1e200`` (or values near ``1e-200``) pool to
    the exact variance and L2 norm of all the group's elements.
    """
    size = sum(r.size for r in rows)
    dtypes = {r.dtype for r in rows if r.shape is not None}
    row = Row(
        path,
        None,
        dtypes.pop() if len(dtypes) == 1 else ('mixed' if dtypes else ''),
        size,
        sum(r.nbytes for r in rows),
        leaves=sum(r.leaves for r in rows),
        device_bytes=sum(r.device_bytes for r in rows if r.device_bytes is not None)
        if any(r.device_bytes is not None for r in rows)
        else None,
    )
    # one pass over the rows: (size, mean, std, min, max, l2, zero_frac, nonfinite)
    cols = [
        (r.size, r.mean, r.std, r.min, r.max, r.l2, r.zero_frac, r.nonfinite or 0)
        for r in rows
        if r.mean is not None and r.size > 0
    ]
    if not cols:
        return row
    n, means, stds, mins, maxs, l2s, zfs, nf = np.array(cols, np.float64).T
    with np.errstate(all='ignore'):
        # the one scaled merge of _moments: every row in units of a power of two
        # at least its largest |value| (no square overflows near 1e200 or
        # underflows near 1e-200), pooled by Chan's update
        amax = np.fmax(
            np.abs(np.where(np.isfinite(mins), mins, 0)),
            np.abs(np.where(np.isfinite(maxs), maxs, 0)),
        )
        scale = scale_of(np.where(amax > 0, amax, 1.0), np, -1020, 1020)
        fin = np.isfinite(means) & np.isfinite(stds)
        m2 = np.where(fin, n * np.square(np.where(fin, stds, 0) / scale), 0)
        parts = Partial(
            n, np.where(fin, means, 0) / scale, m2, scale, mins, maxs, n * zfs, nf, nf * 0
        )
        merged = merge(parts, np)
        mean = float(merged.mean * merged.scale)
        std = float(np.sqrt(merged.m2 / merged.n) * merged.scale)
        top = np.max(np.where(np.isfinite(l2s), l2s, 0), initial=0.0)
        unit = top if top > 0 else 1.0
        l2 = float(np.sqrt(np.sum(np.square(l2s / unit))) * unit)
        zeros = float(merged.zeros / merged.n)
    if not fin.all():  # a row with NaN or Inf: the plain pooled formulas give the rule's value
        mean = float(np.sum(n * means) / np.sum(n))
        std = float('nan')
    return dataclasses.replace(
        row,
        mean=mean,
        std=std,
        min=float(np.min(mins)),
        max=float(np.max(maxs)),
        l2=l2,
        nonfinite=sum(c[7] for c in cols),
        zero_frac=zeros,
    )


_ROW_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Row) if f.default is not dataclasses.MISSING
}


# Trees hold other state beside parameters: Flax's non-parameter collections
# and PyTorch's buffers (running statistics, counters).
_STATE_COLLECTIONS = frozenset({'batch_stats', 'cache', 'intermediates', 'losses', 'rngs'})
_TORCH_BUFFERS = frozenset({'running_mean', 'running_var', 'num_batches_tracked'})
_NNX_STATS = frozenset({'mean', 'var'})  # an NNX BatchNorm's BatchStat, saved as plain arrays


def is_state_path(path: str) -> bool:
    """Whether a leaf path names other state than a parameter: a Flax collection
    such as ``batch_stats``, a PyTorch buffer (``running_mean``, ``running_var``,
    ``num_batches_tracked``), or the NNX state a file holds as plain arrays (an
    ``Rngs``' ``key`` and ``count``, a BatchNorm's ``mean`` and ``var``) outside
    a ``params`` collection.

    Example:
      >>> from pytreeparams._rows import is_state_path
      >>> is_state_path('batch_stats/bn/mean'), is_state_path('layer1.0.bn1.running_var')
      (True, True)
      >>> is_state_path('drop/rngs/count'), is_state_path('bn/var')
      (True, True)
      >>> is_state_path('params/bn/scale'), is_state_path('params/bn/mean')
      (False, False)
    """
    keys = path.replace('.', '/').split('/')
    if keys[0] in _STATE_COLLECTIONS or keys[-1] in _TORCH_BUFFERS:
        return True
    if keys[0] == 'params':
        return False
    return keys[-1] in _NNX_STATS or ('rngs' in keys[:-1] and keys[-1] in ('key', 'count'))


def parameter_count(rows: Sequence[Row]) -> tuple[int, int]:
    """``(parameters, other state)`` element counts of leaf rows (see :func:`is_state_path`).

    Example:
      >>> import numpy as np, pytreeparams as ptp
      >>> from pytreeparams._rows import parameter_count
      >>> s = ptp.summary({'params': {'w': np.ones(3)}, 'batch_stats': {'mean': np.ones(2)}})
      >>> parameter_count(s.rows)
      (3, 2)
    """
    state = sum(r.size for r in rows if is_state_path(r.path))
    return sum(r.size for r in rows) - state, state
