"""Layers that look wrong: vanishing or exploding gradients, dead units."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import PathError
from ._flatten import flatten_with_paths
from ._grads import GRAD_STAT_NAMES, GradStats
from ._messages import no_match_message
from ._patterns import pattern_texts, select
from ._typing import Pattern, PyTree

__all__ = ['LayerFlags', 'dead_units', 'flag_layers']


@dataclasses.dataclass(frozen=True)
class LayerFlags:
    """Layers whose gradients look wrong (see :func:`flag_layers`).

    Attributes:
      vanishing: Paths whose gradient norm is below ``vanishing`` x the median.
      exploding: Paths whose gradient norm is above ``exploding`` x the median.
      nonfinite: Paths with NaN or Inf gradients.
      median: The median layer gradient norm.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> flags = ptp.flag_layers(ptp.grad_stats({'a': jnp.ones(3), 'b': jnp.zeros(3)}))
      >>> flags.vanishing, bool(flags)
      (['b'], True)
    """

    vanishing: list[str]
    exploding: list[str]
    nonfinite: list[str]
    median: float

    def __bool__(self) -> bool:
        return bool(self.vanishing or self.exploding or self.nonfinite)


def flag_layers(stats: GradStats, *, vanishing: float = 1e-3, exploding: float = 1e3) -> LayerFlags:
    """Flags vanishing, exploding and non-finite layers (on the host).

    Args:
      stats: From :func:`grad_stats` (per leaf or per module).
      vanishing: A layer is vanishing below this multiple of the median norm
        (an all-zero gradient always is).
      exploding: A layer is exploding above this multiple of the median norm.

    Returns:
      A :class:`LayerFlags`.

    Raises:
      Nothing for well-formed statistics; NaN norms are reported as non-finite.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'a': jnp.ones(4), 'b': jnp.ones(4), 'c': jnp.zeros(4), 'd': 1e5 * jnp.ones(4)}
      >>> f = ptp.flag_layers(ptp.grad_stats(g))
      >>> f.vanishing, f.exploding
      (['c'], ['d'])
    """
    table = np.asarray(jax.device_get(stats.table))
    norms = table[:, GRAD_STAT_NAMES.index('grad_norm')]
    nonfinite_col = table[:, GRAD_STAT_NAMES.index('grad_nonfinite')]
    finite = np.isfinite(norms)
    median = float(np.median(norms[finite])) if finite.any() else float('nan')
    van, exp, bad = [], [], []
    for p, nrm, nf in zip(stats.paths, norms, nonfinite_col):
        if nf > 0 or not np.isfinite(nrm):
            bad.append(p)
        elif nrm == 0 or nrm < vanishing * median:
            van.append(p)
        elif nrm > exploding * median:
            exp.append(p)
    return LayerFlags(van, exp, bad, median)


def dead_units(grads: PyTree, pattern: Pattern = '**/kernel') -> dict[str, jax.Array]:
    """Counts output units whose whole gradient column is exactly zero. Jittable.

    A ReLU unit that never activates gets no gradient: its column of the
    kernel (last axis) is all zeros.

    Args:
      grads: Gradients of the parameters.
      pattern: Which leaves are kernels with units on the last axis.

    Returns:
      ``{path: number of dead units}`` as device int32 scalars.

    Raises:
      PathError: If ``pattern`` matches no leaf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> g = {'dense': {'kernel': jnp.array([[1.0, 0.0, 0.0], [2.0, 0.0, 1.0]])}}
      >>> int(ptp.dead_units(g)['dense/kernel'])
      1
    """

    chosen = select(grads, pattern, missing_ok=True)
    if not chosen:  # dead_units takes no missing_ok: its message does not suggest it
        raise PathError(no_match_message(pattern_texts(pattern), flatten_with_paths(grads)[2]))
    out = {}
    for p, g in chosen.items():
        g = jnp.asarray(g)
        cols = g.reshape(-1, g.shape[-1]) if g.ndim else g.reshape(1, 1)
        out[p] = jnp.sum(jnp.all(cols == 0, axis=0)).astype(jnp.int32)
    return out
