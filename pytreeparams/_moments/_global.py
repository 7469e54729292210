"""Global arrays: arrays sharded over the devices of several processes.

JAX's multi-controller runtime runs one process per host; a global
``jax.Array`` has shards that no one process can address. Everything here is
*collective*: every process of the job makes the same call with the same tree
(and one of them prints), as for any JAX computation on global arrays.

- **Statistics** (:func:`shard_plan`, :func:`exchange`): each distinct shard of
  a leaf (replicas once, over the whole job) is *owned* by the process of the
  first device, in the sharding's device order, that holds it. Each process
  reduces the shards it owns through the engine's routes (NumPy in place on
  CPU, the device kernels elsewhere) and the partial moments of all leaves are
  exchanged in ONE small all-gather per call
  (``multihost_utils.process_allgather`` of a ``(pieces, 2 * N_PARTIAL)``
  uint32 array: float64 partials by their bits, so x64 need not be on); every
  process then merges the same rows in the same order with ``_moments.merge``
  and gets the same numbers. A process that waits there longer than
  ``WAIT_WARNING_S`` seconds (the others never call: ``if
  jax.process_index() == 0: print(ptp.summary(tree))``) warns with the fix.
- **Comparisons** (:func:`as_auto`, :func:`fetch_replicated`): ``diff``,
  ``find_ties`` and ``untie`` compare global arrays by jitted reductions whose
  small results are replicated on every device; :func:`as_auto` first moves an
  array on an ``Explicit`` mesh (``jax.make_mesh``'s default) to the same
  devices and spec with ``Auto`` axes, so that XLA may partition elementwise
  work between differently sharded operands.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._moments import N_PARTIAL, Partial, merge

__all__ = [
    'STATS_CALL',
    'WAIT_WARNING_S',
    'GlobalPlan',
    'as_auto',
    'exchange',
    'fetch_replicated',
    'is_global',
    'not_addressable_message',
    'on_auto_axes',
    'shard_plan',
]

WAIT_WARNING_S = 20.0  # a process waiting this long in the exchange warns
STATS_CALL = 'a statistics call (ptp.summary, ptp.stats, ptp.find_nonfinite, ptp.find_ties)'


def is_global(x: Any) -> bool:
    """Whether ``x`` is a concrete ``jax.Array`` that this process cannot fully address.

    Example:
      >>> import jax.numpy as jnp
      >>> is_global(jnp.ones(3)), is_global(1.0)
      (False, False)
    """
    return (
        isinstance(x, jax.Array)
        and not isinstance(x, jax.core.Tracer)
        and not x.is_fully_addressable
    )


def _index_key(index: tuple[slice, ...]) -> tuple[tuple[Any, Any, Any], ...]:
    return tuple((s.start, s.stop, s.step) for s in index)


@dataclasses.dataclass(frozen=True)
class GlobalPlan:
    """Who reduces which shard of some global arrays (the same on every process).

    Attributes:
      pieces: The shard data this process owns, one single-device array each.
      slots: The exchange row of each of ``pieces``.
      owners: The owning process of every exchange row.
      spans: For each leaf, its ``(start, stop)`` rows.
    """

    pieces: tuple[jax.Array, ...]
    slots: tuple[int, ...]
    owners: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]


def shard_plan(leaves: list[jax.Array]) -> GlobalPlan:
    """Assigns every distinct shard of ``leaves`` to one process (see the module doc).

    Args:
      leaves: Global arrays.

    Returns:
      A :class:`GlobalPlan`; ``pieces`` are this process's.
    """
    pieces: list[jax.Array] = []
    slots: list[int] = []
    owners: list[int] = []
    spans: list[tuple[int, int]] = []
    for x in leaves:
        start = len(owners)
        first: dict[Any, Any] = {}  # distinct index -> its first device
        for device, index in x.sharding.devices_indices_map(x.shape).items():
            first.setdefault(_index_key(index), device)
        row = {key: start + r for r, key in enumerate(first)}
        owners.extend(d.process_index for d in first.values())
        for shard in x.addressable_shards:
            key = _index_key(shard.index)
            if first[key] == shard.device:
                pieces.append(shard.data)
                slots.append(row[key])
        spans.append((start, len(owners)))
    return GlobalPlan(tuple(pieces), tuple(slots), tuple(owners), tuple(spans))


def _warn_waiting(what: str) -> None:
    warnings.warn(
        f'pytreeparams: process {jax.process_index()} has waited {WAIT_WARNING_S:g} s for the '
        f'other {jax.process_count() - 1} process(es) in {what}: statistics of arrays sharded '
        'over several processes are collective. Call it on every process and print on one '
        '(s = ptp.summary(tree); if jax.process_index() == 0: print(s)), or pass local=True '
        "for the statistics of this process's shards alone.",
        RuntimeWarning,
        stacklevel=1,
    )


def exchange(plan: GlobalPlan, partials: np.ndarray, what: str = STATS_CALL) -> np.ndarray:
    """Merged partial moments of each leaf of ``plan``, from every process's shards.

    One all-gather for all leaves (collective: every process calls it).

    Args:
      plan: The :class:`GlobalPlan` of the leaves.
      partials: A float64 ``(len(plan.pieces), N_PARTIAL)`` table of this
        process's pieces' partials.
      what: The call, named in the warning of a process left waiting.

    Returns:
      A float64 ``(len(plan.spans), N_PARTIAL)`` table, the same on every process.
    """
    local = np.zeros((len(plan.owners), N_PARTIAL), np.float64)
    local[list(plan.slots)] = partials
    timer = threading.Timer(WAIT_WARNING_S, _warn_waiting, (what,))
    timer.daemon = True
    timer.start()
    try:
        gathered = np.asarray(multihost_utils.process_allgather(local.view(np.uint32)))
    finally:
        timer.cancel()
    rows = gathered.view(np.float64)[np.asarray(plan.owners, int), np.arange(len(plan.owners))]
    out = np.zeros((len(plan.spans), N_PARTIAL))
    for i, (a, b) in enumerate(plan.spans):
        part = rows[a:b]
        out[i] = part[0] if b - a == 1 else np.asarray(merge(Partial(*part.T), np), np.float64)
    return out


_AUTO_MESH: dict[Any, Mesh] = {}


def as_auto(x: Any) -> Any:
    """``x`` on the same devices and spec with ``Auto`` mesh axes (``x`` if not explicit).

    ``jax.make_mesh`` gives ``Explicit`` axes (jax 0.10's default), where an
    operation whose output sharding is ambiguous (``a - b`` of differently
    sharded arrays, a gather along a sharded axis) raises ``ShardingTypeError``;
    on ``Auto`` axes XLA chooses.

    Example:
      >>> import jax.numpy as jnp
      >>> as_auto(jnp.ones(2)).tolist()
      [1.0, 1.0]
    """
    sharding = getattr(x, 'sharding', None)
    if not isinstance(sharding, NamedSharding) or isinstance(x, jax.core.Tracer):
        return x
    mesh = sharding.mesh
    types = getattr(mesh, 'axis_types', ())
    if not any(t == AxisType.Explicit for t in types):
        return x
    auto = _AUTO_MESH.get(mesh)
    if auto is None:
        auto = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(types))
        _AUTO_MESH[mesh] = auto
    return jax.device_put(x, NamedSharding(auto, sharding.spec))


def on_auto_axes(fn: Callable[[Any], Any], x: Any) -> Any:
    """``fn(x)`` for a traced ``x`` whose mesh axes are ``Explicit``, run with
    ``Auto`` axes (``jax.sharding.auto_axes``) so that XLA partitions its
    reshapes and reductions as on a ``Mesh``; replicated result. ``fn(x)`` otherwise.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> jax.jit(lambda x: on_auto_axes(jnp.sum, x))(jnp.ones(3)).tolist()
      3.0
    """
    aval = jax.typeof(x) if isinstance(x, jax.core.Tracer) else None
    mesh = getattr(getattr(aval, 'sharding', None), 'mesh', None)
    if mesh is None or not any(t == AxisType.Explicit for t in getattr(mesh, 'axis_types', ())):
        return fn(x)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.sharding.auto_axes(fn, out_sharding=PartitionSpec())(x)


def fetch_replicated(x: jax.Array) -> np.ndarray:
    """The value of a (replicated) result on this process, also when it is global."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))


def not_addressable_message(what: str, path: str) -> str:
    """The error text for a call that needs a whole array on one process.

    Example:
      >>> not_addressable_message('save', 'w').split(' (')[0]
      "save: 'w' is sharded over several processes"
    """
    return (
        f'{what}: {path!r} is sharded over several processes (a global jax.Array that this '
        f'process, {jax.process_index()} of {jax.process_count()}, cannot fully address), and '
        f'{what} needs every value on one process. Save it with Orbax from every process '
        "(ptp.save('folder', tree), a checkpoint folder) and read that on one host, or gather "
        'it first: jax.experimental.multihost_utils.process_allgather(tree, tiled=True).'
    )
