"""Per-leaf value statistics: ``ptp.stats`` and the :class:`Stats` table.

Every number comes from the one moments algorithm (``_moments``); where it is
computed is the engine's business (``_engine``: NumPy for host leaves, few
dispatches and one fetch for accelerator leaves, shard by shard for sharded
arrays). Under ``jit`` the traceable form runs in the traced program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ._flatten import flatten_with_paths
from ._keys import unbox
from ._leaves import is_array, readable
from ._messages import did_you_mean, quote_list
from ._moments import STAT_NAMES, finalize, jax_partials, leaf_rows, on_auto_axes
from ._render import metrics, stats_text
from ._typing import PyTree

__all__ = ['STAT_NAMES', 'Stats', 'stats']


def leaf_stats(x: jax.Array) -> jax.Array:
    """The ``STAT_NAMES`` of one array as a float array of shape (7,). Traceable.

    The one moments algorithm (``_moments``) in JAX: float32 accumulation
    (float64 for float64 leaves under x64), blocks shifted by their own mean,
    scaled by a power of two, merged with Chan et al.'s update. The non-finite
    rules are those of ``ptp.stats``.

    Args:
      x: A numeric or bool array.

    Returns:
      ``[mean, std, min, max, l2, nonfinite, zero_frac]``.
    """
    return finalize(jax_partials(x), jnp)


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
        """The column ``name`` (one of ``STAT_NAMES``) as an array over leaves.

        Raises:
          KeyError: For a name not in ``STAT_NAMES`` (the message lists them).
        """
        if name not in STAT_NAMES:
            raise KeyError(
                f'no statistic {name!r}; the statistics are {quote_list(STAT_NAMES)}.'
                + did_you_mean(name, STAT_NAMES)
            )
        return self.table[:, STAT_NAMES.index(name)]

    def __str__(self) -> str:
        return stats_text(self.paths, STAT_NAMES, self.table)

    def to_dict(
        self, prefix: str = '', *, stat_first: bool = False, drop_nan: bool = False
    ) -> dict[str, float]:
        """``{'path/stat': float}`` on the host (one transfer), for metric loggers.

        Args:
          prefix: Put before every key (e.g. ``'train/'``).
          stat_first: Keys ``'mean/dense/kernel'`` (grouped by statistic, as
            TensorBoard and W&B group by the first part) instead of
            ``'dense/kernel/mean'``.
          drop_nan: Leave out entries that are not finite (NaN or infinite:
            the statistics of a leaf holding NaN or Inf, an empty leaf's);
            ``nonfinite`` still counts them.

        Returns:
          ``{key: float}``.

        Example:
          >>> import jax.numpy as jnp, pytreeparams as ptp
          >>> s = ptp.stats({'w': jnp.array([1.0, jnp.inf])})
          >>> s.to_dict('train/', stat_first=True, drop_nan=True)['train/nonfinite/w']
          1.0
          >>> 'train/mean/w' in s.to_dict('train/', stat_first=True, drop_nan=True)
          False
        """
        t = np.asarray(jax.device_get(self.table))
        cells = (
            (p, s, float(t[i, j]))
            for i, p in enumerate(self.paths)
            for j, s in enumerate(STAT_NAMES)
        )
        return metrics(cells, prefix, stat_first, drop_nan)


def stats(tree: PyTree, *, local: bool = False) -> Stats:
    """Computes per-leaf statistics of ``tree`` as device arrays. Jittable.

    For every array leaf: mean, std, min, max, L2 norm, the number of
    non-finite values (NaN/Inf) and the fraction of exact zeros (subnormals
    are not zeros), all from the one moments algorithm (``_moments``): traced
    leaves inside ``jit`` in float32 (float64 for float64 leaves under x64),
    concrete leaves where they live, host leaves in float64 (so 64-bit NumPy
    leaves keep their precision, also as constants inside ``jit``; JAX itself
    converts 64-bit *arguments* of a jitted function to 32 bits when x64 is
    off, before this function sees them). Non-array leaves are skipped.

    What a leaf with non-finite values shows (on every path):

    ============  =====  =====  ========  ========  =====
    leaf holds    mean   std    min       max       l2
    ============  =====  =====  ========  ========  =====
    NaN           NaN    NaN    NaN       NaN       NaN
    +Inf only     +inf   NaN    data min  +inf      +inf
    -Inf only     -inf   NaN    -inf      data max  +inf
    both Infs     NaN    NaN    -inf      +inf      +inf
    ============  =====  =====  ========  ========  =====

    ``nonfinite`` is always the exact count of NaN/Inf values and
    ``zero_frac`` the exact fraction of zeros; an empty leaf gives NaN, 0, NaN.
    A value beyond float32's range (an L2 norm above 3.4e38) shows ``inf`` in
    the float32 table.

    An array sharded over several processes (multi-host) is reduced by each
    process on the shards it holds and the partials of all leaves exchanged
    once: a collective call, made by every process (``local=True``: this
    process's shards alone, no communication).

    Args:
      tree: Any pytree of arrays (boxes are transparent).
      local: For arrays sharded over several processes: the statistics of this
        process's shards only (replicas once), without communication.

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
    leaves, _, paths_ = flatten_with_paths(tree)
    names, xs = [], []
    for p, x in zip(paths_, readable([unbox(v) for v in leaves])):
        if is_array(x) and not isinstance(x, jax.ShapeDtypeStruct):
            names.append(p)
            xs.append(x)
    dtype = jnp.float64 if jax.config.read('jax_enable_x64') else jnp.float32
    if not xs:
        return Stats(table=jnp.zeros((0, len(STAT_NAMES)), dtype), paths=())
    # concrete leaves (also NumPy constants under jit) are computed where they
    # live, in float64 on the host; traced ones in the traced program
    host = leaf_rows(
        [None if isinstance(x, jax.core.Tracer) else x for x in xs], local, 'ptp.stats'
    )
    if all(h is not None for h in host):
        table = jnp.asarray(np.stack([h for h in host if h is not None]), dtype)
    else:
        rows = [
            jnp.asarray(h, dtype) if h is not None else on_auto_axes(leaf_stats, x).astype(dtype)
            for x, h in zip(xs, host)
        ]
        table = jnp.stack(rows)
    return Stats(table=table, paths=tuple(names))
