"""Per-leaf value statistics: ``ptp.stats`` and the :class:`Stats` table.

Every number comes from the one moments algorithm (``_moments``); where it is
computed is the engine's business (``_engine``: NumPy for host leaves, few
dispatches and one fetch for accelerator leaves, shard by shard for sharded
arrays). Under ``jit`` the traceable form runs in the traced program.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ._engine import leaf_rows
from ._flatten import flatten_with_paths
from ._jax_moments import jax_partials
from ._keys import unbox
from ._messages import did_you_mean
from ._moments import STAT_NAMES, finalize
from ._render import stats_text
from ._typing import PyTree

__all__ = ['STAT_NAMES', 'Stats', 'stats']

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


def from_torch(x: Any) -> Any:
    """A torch tensor as a NumPy array (a CPU tensor without a copy; bfloat16
    through its bits), anything else as it is. torch is imported only for tensors.

    Example:
      >>> import numpy as np
      >>> from_torch(np.ones(2)).tolist()
      [1.0, 1.0]
    """
    if type(x).__module__.split('.')[0] != 'torch' or not hasattr(x, 'detach'):
        return x
    import torch

    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def readable(leaves: list[Any]) -> list[Any]:
    """``leaves`` with torch tensors read as NumPy arrays (see :func:`from_torch`)."""
    if any(type(x).__module__.split('.')[0] == 'torch' for x in leaves):
        return [from_torch(x) for x in leaves]
    return leaves


def eager_leaf_stats(leaves: list[Any]) -> list[np.ndarray | None]:
    """Statistics of concrete leaves, each computed where it lives (``_engine``).

    Non-array leaves and abstract leaves give None.
    """
    keep = [x if _concrete_array(x) else None for x in leaves]
    return leaf_rows(keep)


def _concrete_array(x: Any) -> bool:
    return is_array(x) and not isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))


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
                f'no statistic {name!r}; the statistics are {", ".join(STAT_NAMES)}.'
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
        out = {}
        for i, p in enumerate(self.paths):
            for j, s in enumerate(STAT_NAMES):
                v = float(t[i, j])
                if not (drop_nan and not math.isfinite(v)):
                    out[prefix + (f'{s}/{p}' if stat_first else f'{p}/{s}')] = v
        return out


def stats(tree: PyTree) -> Stats:
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
    host = leaf_rows([None if isinstance(x, jax.core.Tracer) else x for x in xs])
    if all(h is not None for h in host):
        table = jnp.asarray(np.stack([h for h in host if h is not None]), dtype)
    else:
        rows = [
            jnp.asarray(h, dtype) if h is not None else leaf_stats(x).astype(dtype)
            for x, h in zip(xs, host)
        ]
        table = jnp.stack(rows)
    return Stats(table=table, paths=tuple(names))
