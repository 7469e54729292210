"""Where statistics are computed: on the host, on the device, shard by shard.

``leaf_table`` takes concrete leaves and returns their merged partial moments
(``_moments.Partial``), each computed where it lives with the one algorithm:

- **Host leaves** (NumPy arrays, scalars, jax arrays on a CPU device: there
  the host *is* the device) are read in place by NumPy (``host_table``):
  no compilation, no dispatch, no transfer.
- **Leaves on an accelerator** cost little in dispatches, compilations and
  transfers, the three things that cost on a GPU or TPU:

  * small leaves (up to ``HOST_STAGE`` elements: biases, norms, small
    kernels) are fetched together in one ``jax.device_get`` and reduced by
    NumPy: no compilation and no dispatch, whatever their shapes;
  * large leaves are flattened and padded (with one of their own values) to a
    *size class* (four per octave, so at most 25% padding) by a tiny
    program per shape, and reduced by one statistics kernel per size class
    and dtype, shared by every leaf of that class in any tree; each kernel
    call writes its row into one donated table per device, fetched in the
    same single ``device_get`` as the small leaves. The first time a large
    leaf's programs are needed they are compiled on a background thread and
    the leaf is fetched with the small ones (up to ``HOST_FIRST_BYTES`` per
    call): one GPU compilation costs more than fetching a gigabyte, so a
    first call compiles nothing and later calls reduce on the device.

- **Sharded arrays** are reduced shard by shard where each shard lives (the
  two routes above, replicas counted once) and the shards' partials merged
  on the host with the same merge: an array is never gathered. Arrays not
  fully addressable from this process (multi-host, ``_global``): each process
  reduces the shards it owns by the same routes, and the partials of all such
  leaves are exchanged in one all-gather per call (collective), or, with
  ``local=True``, only this process's shards are reduced (no exchange).

``count_device_work()`` counts XLA compilations, executable dispatches and
device-to-host fetches of this module (``benchmarks/summary.py --device-path``
prints them); ``force_device_path()`` sends host-resident jax arrays down the
device route, so that it can be measured and tested on a CPU-only machine;
``wait_compiled()`` waits for the background compilations and
``clear_programs()`` forgets the compiled programs (to measure a first call).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import math
import os
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from .._leaves import is_concrete_array
from ._global import STATS_CALL, exchange, shard_plan
from ._host_moments import host_partials_many, host_table
from ._jax_moments import JAX_BLOCK, jax_partials
from ._moments import N_PARTIAL, Partial, finalize, merge

__all__ = [
    'DeviceWork',
    'clear_programs',
    'count_device_work',
    'force_device_path',
    'leaf_rows',
    'leaf_table',
    'wait_compiled',
]

HOST_STAGE = 1 << 16  # device leaves up to this many elements are fetched to the host
HOST_FIRST_BYTES = 1 << 30  # per call, large leaves fetched while their programs compile
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


@dataclasses.dataclass
class DeviceWork:
    """What the device route cost: counted by :func:`count_device_work`.

    Attributes:
      compilations: XLA compilations in the calling threads (of any program, by
        any caller); a program read from JAX's persistent compilation cache
        counts too (JAX times both as one event).
      background_compilations: The engine's compilations on its background
        thread (programs for the next call) that ran inside the block.
      dispatches: Executable launches by the engine (pack and kernel calls).
      fetches: ``jax.device_get`` calls by the engine.
      fetched_arrays: Arrays those calls fetched.
    """

    compilations: int = 0
    background_compilations: int = 0
    dispatches: int = 0
    fetches: int = 0
    fetched_arrays: int = 0


_ACTIVE: list[DeviceWork] = []
# force_device_path's host_first flags, innermost last: per thread (and asyncio
# task), so that one thread's forcing never changes another thread's route
_FORCE: contextvars.ContextVar[tuple[bool, ...]] = contextvars.ContextVar(
    'pytreeparams_force_device_path', default=()
)
_PROGRAMS: dict[tuple, Any] = {}  # compiled pack and kernel programs, by shape, class, device
_PENDING: dict[tuple, concurrent.futures.Future] = {}  # programs compiling in the background
_LOCK = threading.Lock()
_COMPILER_NAME = 'pytreeparams-compile'
_LISTENING: list[bool] = []


class _Background:
    """Jobs run in order on one thread of their own, started when a job is queued
    and ended when the queue is empty (so an idle process holds no thread).

    Once the main thread has finished (the interpreter is exiting) queued jobs
    are dropped, their futures cancelled: exit waits for the one job running,
    never for compilations nobody will use. A forked child starts afresh (see
    ``_after_fork``): it inherits the queue but not the thread.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.jobs: collections.deque[tuple[concurrent.futures.Future, Any, tuple]] = (
            collections.deque()
        )
        self.thread: threading.Thread | None = None

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.jobs.append((future, fn, args))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name)
                self.thread.start()
        return future

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.jobs:
                    self.thread = None
                    return
                future, fn, args = self.jobs.popleft()
            if not threading.main_thread().is_alive():  # exiting: nobody will use it
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the waiter
                    future.set_exception(e)

    def reset(self) -> None:
        """Forgets the queue and the thread (in a forked child, which has neither)."""
        self.lock = threading.Lock()
        self.jobs = collections.deque()
        self.thread = None


_COMPILER = _Background(_COMPILER_NAME)


def _after_fork() -> None:
    """In a forked child: locks and queued compilations of the parent's threads
    are not the child's (they would wait forever); the programs are kept."""
    global _LOCK
    _LOCK = threading.Lock()
    _PENDING.clear()
    _COMPILER.reset()


if hasattr(os, 'register_at_fork'):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)


def _on_compile(event: str, duration_secs: float, **_: str | int) -> None:
    if event == _COMPILE_EVENT:
        what = (
            'background_compilations'
            if threading.current_thread().name.startswith(_COMPILER_NAME)
            else 'compilations'
        )
        _count(what)


@contextlib.contextmanager
def count_device_work() -> Iterator[DeviceWork]:
    """Counts compilations, dispatches and fetches inside the ``with`` block.

    Example:
      >>> import numpy as np, pytreeparams as ptp
      >>> from pytreeparams._moments._engine import count_device_work
      >>> with count_device_work() as work:
      ...     _ = ptp.summary({'w': np.ones(3)})
      >>> work.dispatches, work.fetches  # a host leaf is read in place
      (0, 0)
    """
    if not _LISTENING:
        jax.monitoring.register_event_duration_secs_listener(_on_compile)
        _LISTENING.append(True)
    work = DeviceWork()
    _ACTIVE.append(work)
    try:
        yield work
    finally:
        _ACTIVE.remove(work)


@contextlib.contextmanager
def force_device_path(host_first: bool = False) -> Iterator[None]:
    """Treats jax arrays on CPU devices as accelerator arrays (for measuring).

    Args:
      host_first: Whether large leaves whose programs are not compiled yet are
        fetched while they compile in the background, as on an accelerator
        (default: compiled at once, so that compilations can be counted).

    The forcing holds in the calling thread (and ``contextvars`` context) only:
    other threads keep their routes.
    """
    token = _FORCE.set((*_FORCE.get(), host_first))
    try:
        yield
    finally:
        _FORCE.reset(token)


def _count(what: str, k: int = 1) -> None:
    for w in _ACTIVE:
        setattr(w, what, getattr(w, what) + k)


_KIND: dict[Any, str] = {}


def _where(x: Any) -> str:
    """'host', 'device', 'sharded' or 'global' (not fully addressable)."""
    if not isinstance(x, jax.Array):
        return 'host'
    sharding = x.sharding
    kind = _KIND.get(sharding)
    if kind is None:
        devices = sharding.device_set
        if len(devices) > 1:
            kind = 'sharded' if x.is_fully_addressable else 'global'
        else:
            kind = 'host' if all(getattr(d, 'platform', '') == 'cpu' for d in devices) else 'device'
        _KIND[sharding] = kind
    return 'device' if (kind == 'host' and _FORCE.get()) else kind


def _pieces(x: jax.Array) -> list[jax.Array]:
    """The distinct addressable shards of ``x`` (replicas once)."""
    seen, out = set(), []
    for shard in x.addressable_shards:
        key = tuple((s.start, s.stop, s.step) for s in shard.index)
        if key not in seen:
            seen.add(key)
            out.append(shard.data)
    return out


def size_class(n: int) -> int:
    """The padded size for ``n`` elements: ``2**k * (4 + j) / 4``, a multiple of
    ``JAX_BLOCK``, at least ``n`` (at most 25% more)."""
    n = max(n, JAX_BLOCK)
    top = 1 << (n - 1).bit_length()
    for j in (5, 6, 7, 8):
        s = top // 8 * j
        if s >= n and s % JAX_BLOCK == 0:
            return s
    return top  # pragma: no cover - top is always a multiple of JAX_BLOCK here


def _packed_dtype(dtype: Any) -> Any:
    """The dtype the kernel reads: sub-byte integers as int8 (a packed int4
    array's layout differs between programs: passing one fails)."""
    return np.dtype(np.int8) if dtype in (jnp.int4, jnp.uint4) else dtype


def _pack_impl(x: jax.Array, size: int) -> jax.Array:
    flat = x.reshape(-1).astype(_packed_dtype(x.dtype))
    return jnp.pad(flat, (0, size - flat.shape[0]), mode='edge')


_pack = jax.jit(_pack_impl, static_argnums=1)


def _kernel_impl(table: jax.Array, xpad: jax.Array, n: jax.Array, i: jax.Array) -> jax.Array:
    row = jnp.stack(jax_partials(xpad, n)).astype(table.dtype)
    return table.at[i].set(row)


_kernel = jax.jit(_kernel_impl, donate_argnums=0)


def _table_dtype() -> Any:
    return np.float64 if jax.config.read('jax_enable_x64') else np.float32


class PackKey(NamedTuple):
    """The program that flattens one shape and pads it to its size class, on one device."""

    shape: tuple[int, ...]
    dtype: Any
    size: int
    device: Any


class KernelKey(NamedTuple):
    """The statistics kernel of one size class and dtype, writing a ``rows``-row table."""

    size: int
    dtype: Any
    rows: int
    table_dtype: Any
    device: Any


def _compile(key: PackKey | KernelKey) -> Any:
    """The AOT-compiled pack or kernel program of ``key``."""
    sharding = SingleDeviceSharding(key.device)
    if isinstance(key, PackKey):
        shape = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding)
        return _pack.lower(shape, key.size).compile()
    scalar = jax.ShapeDtypeStruct((), np.int32, sharding=sharding)
    return _kernel.lower(
        jax.ShapeDtypeStruct((key.rows, N_PARTIAL), key.table_dtype, sharding=sharding),
        jax.ShapeDtypeStruct((key.size,), key.dtype, sharding=sharding),
        scalar,
        scalar,
    ).compile()


def _program(key: PackKey | KernelKey) -> Any:
    """The compiled program of ``key``: cached, awaited if compiling, else compiled now."""
    with _LOCK:
        program = _PROGRAMS.get(key)
        pending = _PENDING.get(key)
    if program is not None:
        return program
    if pending is not None:
        with contextlib.suppress(concurrent.futures.CancelledError):
            return pending.result()  # cancelled: dropped at exit, compiled here
    program = _compile(key)
    with _LOCK:
        _PROGRAMS[key] = program
    return program


def _compile_later(keys: list[PackKey | KernelKey]) -> None:
    """Compiles ``keys`` on a background thread (each once), for the next call."""

    def job(key: PackKey | KernelKey) -> Any:
        try:
            program = _compile(key)
            with _LOCK:
                _PROGRAMS[key] = program
            return program
        finally:
            with _LOCK:
                _PENDING.pop(key, None)

    with _LOCK:
        for key in keys:
            if key not in _PROGRAMS and key not in _PENDING:
                _PENDING[key] = _COMPILER.submit(job, key)


def wait_compiled() -> None:
    """Waits for the programs that are compiling in the background."""
    with _LOCK:
        pending = list(_PENDING.values())
    concurrent.futures.wait(pending)


def clear_programs() -> None:
    """Forgets the compiled programs (to measure a first call)."""
    wait_compiled()
    with _LOCK:
        _PROGRAMS.clear()


def _device_partials(pieces: list[jax.Array]) -> list[Partial]:
    """Partials of single-device arrays: small ones fetched, large ones kernelled.

    A large array whose programs are not compiled yet is fetched with the
    small ones (up to ``HOST_FIRST_BYTES`` per call) while its programs
    compile on a background thread: on a GPU one compilation costs more than
    fetching a gigabyte, so a first call compiles nothing and the next call
    reduces on the device.
    """
    host_first = _FORCE.get()[-1] if _FORCE.get() else True
    staged: list[int] = []
    large: dict[Any, list[int]] = {}
    for j, x in enumerate(pieces):
        if math.prod(x.shape) <= HOST_STAGE:
            staged.append(j)
        else:
            large.setdefault(next(iter(x.devices())), []).append(j)
    table_dtype = _table_dtype()
    budget = HOST_FIRST_BYTES if host_first else 0
    tables: list[Any] = []
    order: list[Any] = []
    later: list[Any] = []
    for device, idx in large.items():
        rows = 1 << max(3, (len(idx) - 1).bit_length())
        kernelled = []
        for j in idx:
            x = pieces[j]
            size = size_class(math.prod(x.shape))
            keys = (
                PackKey(x.shape, x.dtype, size, device),
                KernelKey(size, _packed_dtype(x.dtype), rows, table_dtype, device),
            )
            with _LOCK:
                ready = all(k in _PROGRAMS for k in keys)
            if not ready and x.nbytes <= budget:
                budget -= x.nbytes
                staged.append(j)
                later += keys
            else:
                kernelled.append((j, keys))
        if not kernelled:
            continue
        table = jax.device_put(np.zeros((rows, N_PARTIAL), table_dtype), device)
        for r, (j, (pack_key, kernel_key)) in enumerate(kernelled):
            x = pieces[j]
            xpad = _program(pack_key)(x)
            table = _program(kernel_key)(table, xpad, np.int32(math.prod(x.shape)), np.int32(r))
            _count('dispatches', 2)
        tables.append(table)
        order.append([j for j, _ in kernelled])
    if later:
        _compile_later(later)
    fetched = jax.device_get([*(pieces[j] for j in staged), *tables]) if pieces else []
    if fetched:
        _count('fetches')
        _count('fetched_arrays', len(fetched))
    out: list[Any] = [None] * len(pieces)
    for j, p in zip(staged, host_partials_many(fetched[: len(staged)])):
        out[j] = p
    for idx, table in zip(order, fetched[len(staged) :]):
        t = np.asarray(table, np.float64)
        for r, j in enumerate(idx):
            out[j] = Partial(*t[r])
    return out


def leaf_table(
    leaves: list[Any], local: bool = False, what: str = STATS_CALL
) -> tuple[np.ndarray, np.ndarray]:
    """Merged partial moments of each concrete array leaf, where it lives.

    Args:
      leaves: Concrete leaves (NumPy or jax arrays, scalars); None entries
        are skipped.
      local: Arrays sharded over several processes: only this process's
        shards (replicas once), no exchange; by default the statistics of the
        whole array, from one exchange with every other process (collective).
      what: The call, named in the warning of a process left waiting.

    Returns:
      ``(table, has)``: a float64 ``(len(leaves), N_PARTIAL)`` table of merged
      partials, and a bool mask of the rows that hold a leaf.
    """
    table = np.zeros((len(leaves), N_PARTIAL))
    has = np.zeros(len(leaves), bool)
    host: list[int] = []
    pieces: list[jax.Array] = []
    owner: list[int] = []
    glob: list[int] = []
    for i, x in enumerate(leaves):
        if x is None:
            continue
        has[i] = True
        where = _where(x)
        if where == 'host':
            host.append(i)
        elif where == 'device':
            pieces.append(x)
            owner.append(i)
        elif where == 'sharded' or local:
            for piece in _pieces(x):
                pieces.append(piece)
                owner.append(i)
        else:
            glob.append(i)
    if host:
        table[host] = host_table([leaves[i] for i in host])
    if pieces:
        on_host = [not _FORCE.get() and _where(p) == 'host' for p in pieces]
        parts: list[Any] = [None] * len(pieces)
        host_idx = [j for j, h in enumerate(on_host) if h]
        dev_idx = [j for j, h in enumerate(on_host) if not h]
        for j, p in zip(host_idx, host_partials_many([pieces[j] for j in host_idx])):
            parts[j] = p
        for j, p in zip(dev_idx, _device_partials([pieces[j] for j in dev_idx])):
            parts[j] = p
        grouped: dict[int, list[Partial]] = {}
        for i, p in zip(owner, parts):
            grouped.setdefault(i, []).append(p)
        for i, ps in grouped.items():
            stacked = Partial(*(np.asarray(c, np.float64) for c in zip(*ps)))
            table[i] = np.asarray(ps[0] if len(ps) == 1 else merge(stacked, np), np.float64)
    if glob:
        table[glob] = _global_table([leaves[i] for i in glob], what)
    return table, has


def _global_table(leaves: list[jax.Array], what: str) -> np.ndarray:
    """Merged partials of arrays sharded over several processes (collective): this
    process reduces the shards it owns by the routes above, then one exchange."""
    plan = shard_plan(leaves)
    own = leaf_table(list(plan.pieces))[0]
    table = exchange(plan, own, what)
    _count('dispatches')
    _count('fetches')
    _count('fetched_arrays')
    return table


def leaf_rows(
    leaves: list[Any], local: bool = False, what: str = STATS_CALL
) -> list[np.ndarray | None]:
    """``STAT_NAMES`` rows (float64 NumPy) of concrete array leaves; None for the
    other leaves (None, non-arrays, tracers, ``ShapeDtypeStruct``).

    ``local`` and ``what`` as :func:`leaf_table` takes them.

    Example:
      >>> import numpy as np
      >>> from pytreeparams._moments._engine import leaf_rows
      >>> leaf_rows([np.array([3.0, 4.0]), None])[0].tolist()
      [3.5, 0.5, 3.0, 4.0, 5.0, 0.0, 0.0]
    """
    table, has = leaf_table([x if is_concrete_array(x) else None for x in leaves], local, what)
    stats = finalize(Partial(*table.T), np)
    return [row if h else None for row, h in zip(stats, has)]
