"""``diff``: what differs between two trees (paths, shapes, dtypes, values)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._flatten import flatten
from ._keys import describe, torch_as_numpy
from ._leaves import is_array, is_key_array
from ._moments import as_auto, fetch_replicated, is_global
from ._render import html_table, treescope_repr
from ._typing import PyTree

__all__ = ['DiffReport', 'diff']


@dataclasses.dataclass(frozen=True)
class DiffReport:
    """What differs between two trees (see :func:`diff`).

    Attributes:
      only_a: Paths only in the first tree.
      only_b: Paths only in the second tree.
      changed: ``{path: (type in a, type in b)}`` where shape or dtype differ.
      rel_change: ``{path: ||a - b|| / ||a||}`` for common leaves of equal type
        (``inf`` where ``a`` is zero and ``b`` is not).
      abs_change: ``{path: ||a - b||}`` for the common numeric leaves of
        ``rel_change`` (computed in float64; not for PRNG keys).

    Example:
      >>> import pytreeparams as ptp
      >>> r = ptp.diff({'w': 1.0}, {'w': 1.0, 'b': 0.0})
      >>> r.only_b, r.same
      (('b',), False)
    """

    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    changed: dict[str, tuple[str, str]]
    rel_change: dict[str, float]
    abs_change: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def same(self) -> bool:
        """True when structure, types and values are identical."""
        return (
            not self.only_a
            and not self.only_b
            and not self.changed
            and all(v == 0 for v in self.rel_change.values())
        )

    def moved(self, tol: float = 0.0) -> list[str]:
        """Paths whose relative change exceeds ``tol``."""
        return [p for p, v in self.rel_change.items() if not v <= tol]

    def _repr_html_(self) -> str:
        cells = [[p, 'only in a', ''] for p in self.only_a]
        cells += [[p, 'only in b', ''] for p in self.only_b]
        cells += [[p, 'changed type', f'{ta} -> {tb}'] for p, (ta, tb) in self.changed.items()]
        cells += [
            [p, 'changed value', self._change(p, v)] for p, v in self.rel_change.items() if v != 0
        ]
        return html_table(
            ['path', 'difference', 'detail'], cells, [str(self).splitlines()[-1], '', '']
        )

    def __treescope_repr__(self, path: Any, subtree_renderer: Any) -> Any:
        attributes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return treescope_repr(self, attributes, path, subtree_renderer)

    def _change(self, path: str, rel: float) -> str:
        """``relative change 5.000e-01, absolute 1.000e+00`` (absolute where known)."""
        text = f'relative change {rel:.3e}'
        if path in self.abs_change:
            text += f', absolute {self.abs_change[path]:.3e}'
        return text

    def __str__(self) -> str:
        lines = []
        for p in self.only_a:
            lines.append(f'- {p}  (only in a)')
        for p in self.only_b:
            lines.append(f'+ {p}  (only in b)')
        for p, (ta, tb) in self.changed.items():
            lines.append(f'~ {p}  {ta} -> {tb}')
        for p, v in self.rel_change.items():
            if v != 0:
                lines.append(f'  {p}  {self._change(p, v)}')
        same = sum(1 for v in self.rel_change.values() if v == 0)
        lines.append(
            f'{len(self.only_a)} only in a, {len(self.only_b)} only in b, '
            f'{len(self.changed)} changed type, {len(self.rel_change) - same} changed value, '
            f'{same} identical'
        )
        return '\n'.join(lines)


def diff(a: PyTree, b: PyTree) -> DiffReport:
    """Compares two trees path by path.

    Args:
      a: The reference tree (e.g. parameters before a step).
      b: The other tree.

    Returns:
      A :class:`DiffReport`: paths only in ``a`` / only in ``b``, changed shape
      or dtype, and the relative change ``||a-b|| / ||a||`` of common leaves
      (computed in float64 on the host; for arrays sharded over several
      processes by one jitted reduction where they lie, in float32 or better,
      which makes the call collective: every process calls it).

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> r = ptp.diff({'w': jnp.ones(4), 'b': 0.0}, {'w': jnp.ones(4) * 1.5, 'c': 0.0})
      >>> r.only_a, r.only_b, r.rel_change
      (('b',), ('c',), {'w': 0.5})
    """
    fa = {p: torch_as_numpy(x) for p, x in flatten(a).items()}
    fb = {p: torch_as_numpy(x) for p, x in flatten(b).items()}
    only_a = tuple(p for p in fa if p not in fb)
    only_b = tuple(p for p in fb if p not in fa)
    changed: dict[str, tuple[str, str]] = {}
    rel: dict[str, float] = {}
    sharded: dict[str, tuple[Any, Any]] = {}  # pairs of global arrays, reduced together
    absolute: dict[str, float] = {}
    for p, xa in fa.items():
        if p not in fb:
            continue
        xb = fb[p]
        if describe(xa) != describe(xb):
            changed[p] = (describe(xa), describe(xb))
            continue
        if is_key_array(xa) and is_key_array(xb):
            same = np.array_equal(jax.random.key_data(xa), jax.random.key_data(xb))
            rel[p] = 0.0 if same else float('inf')
            continue
        if not (is_array(xa) and is_array(xb)):
            rel[p] = 0.0 if xa == xb else float('inf')
            continue
        if is_global(xa) or is_global(xb):
            rel[p] = float('nan')  # placeholder that keeps flatten order
            sharded[p] = (xa, xb)
            continue
        va = np.asarray(jax.device_get(xa)).astype(np.float64)
        vb = np.asarray(jax.device_get(xb)).astype(np.float64)
        if np.array_equal(va, vb, equal_nan=True):  # NaN in the same places is no change
            rel[p] = absolute[p] = 0.0
            continue
        num = absolute[p] = float(np.linalg.norm((va - vb).ravel()))
        den = float(np.linalg.norm(va.ravel()))
        rel[p] = num / den if den > 0 else (0.0 if num == 0 else float('inf'))
    for p, (r, a_change) in _global_changes(sharded).items() if sharded else ():
        rel[p], absolute[p] = r, a_change
    return DiffReport(only_a, only_b, changed, rel, absolute)


def _pair_change(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[equal, ||a - b||, ||a||]`` of one pair, scaled so that no square overflows."""
    dtype = jnp.float64 if jax.config.read('jax_enable_x64') else jnp.float32
    a, b = a.astype(dtype), b.astype(dtype)
    equal = jnp.all((a == b) | (jnp.isnan(a) & jnp.isnan(b)))
    d = a - b

    def norm(x: jax.Array) -> jax.Array:
        m = jnp.max(jnp.abs(x), initial=0.0)
        s = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
        return s * jnp.sqrt(jnp.sum(jnp.square(x / s)))

    return jnp.stack([equal.astype(dtype), norm(d), norm(a)])


@jax.jit
def _pair_changes(pairs: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
    return jnp.stack([_pair_change(a, b) for a, b in pairs])


def _global_changes(pairs: dict[str, tuple[Any, Any]]) -> dict[str, tuple[float, float]]:
    """Relative and absolute changes of pairs of arrays sharded over several processes: one
    jitted program (XLA reduces each shard where it lies), one small result."""
    args = []
    for xa, xb in pairs.values():
        xa, xb = as_auto(xa), as_auto(xb)
        if getattr(xa, 'sharding', None) != getattr(xb, 'sharding', None):
            xb = jax.device_put(xb, xa.sharding) if is_global(xa) else xb
            xa = jax.device_put(xa, xb.sharding) if not is_global(xa) else xa
        args.append((xa, xb))
    table = fetch_replicated(_pair_changes(args)).astype(np.float64)
    out: dict[str, tuple[float, float]] = {}
    for p, (equal, num, den) in zip(pairs, table):
        if equal:
            out[p] = (0.0, 0.0)
        else:
            r = float(num / den) if den > 0 else (0.0 if num == 0 else float('inf'))
            out[p] = (r, float(num))
    return out
