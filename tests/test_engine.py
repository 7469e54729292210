"""Tests for _engine: where statistics are computed (compilations, dispatches, fetches; shards)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import run_on_8_devices

import pytreeparams as ptp
from pytreeparams._moments import _engine
from pytreeparams._moments._engine import (
    clear_programs,
    count_device_work,
    force_device_path,
    leaf_rows,
    size_class,
    wait_compiled,
)


def test_sharded_arrays_agree_and_show_nan_in_min_max():
    out = run_on_8_devices(
        """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._moments._engine import force_device_path, count_device_work
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('a', 'b'))
rng = np.random.default_rng(0)
x = (3.0 + rng.standard_normal((256, 512))).astype(np.float32)
x[0, 0] = 1e4
y = x.copy(); y[100, 7] = np.nan
sh = NamedSharding(mesh, P('a', 'b'))
rep = NamedSharding(mesh, P('a', None))  # replicated over 'b': replicas counted once
tree = {'x': jax.device_put(x, sh), 'y': jax.device_put(y, sh), 'r': jax.device_put(x, rep)}
plain = ptp.summary({'x': x, 'y': y, 'r': x})
for force in (False, True):
    if force:
        with force_device_path(), count_device_work() as work:
            s = ptp.summary(tree)
        assert work.fetches == 1, work
    else:
        s = ptp.summary(tree)
    for a, b in zip(s.rows, plain.rows):
        for k in ('mean', 'std', 'min', 'max', 'l2', 'nonfinite', 'zero_frac'):
            u, v = getattr(a, k), getattr(b, k)
            ok = (u != u and v != v) or abs(u - v) <= 1e-5 * (abs(v) + 1)
            assert ok, (force, a.path, k, u, v)
    y_row = s.rows[[r.path for r in s.rows].index('y')]
    assert y_row.min != y_row.min and y_row.max != y_row.max and y_row.nonfinite == 1
g = jax.jit(ptp.grad_stats)(tree).to_dict()
g0 = ptp.grad_stats({'x': x, 'y': y, 'r': x}).to_dict()
for k in g0:
    u, v = g[k], g0[k]
    assert (u != u and v != v) or abs(u - v) <= 1e-5 * (abs(v) + 1), (k, u, v)
print('OK')
"""
    )
    assert 'OK' in out


def test_new_shapes_of_a_seen_size_class_compile_only_their_pack():
    """The device route's compilations, counted on the CPU (forced device path).

    A tree's first large shapes compile one tiny pack program each plus one
    statistics kernel per size class; a second tree with *new* shapes of the
    same size class compiles only its packs (the kernel is shared); small
    leaves of any shape never compile (they are fetched with the rest); a
    repeated call compiles nothing. Every call fetches once.
    """
    assert size_class(90_000) == size_class(93_000) == 98_304
    a = {'w': jnp.ones((300, 300)), 'v': jnp.ones((300, 301)), 'b': jnp.zeros(300)}
    b = {'w': jnp.ones((310, 300)), 'v': jnp.ones((450, 200)), 'b': jnp.zeros(301)}
    b['c'] = jnp.ones((7, 9))
    jax.clear_caches()
    clear_programs()
    counts = []
    with force_device_path():
        for tree in (a, b, b):
            with count_device_work() as work:
                ptp.summary(tree)
            counts.append(work)
    assert [w.compilations for w in counts] == [3, 2, 0]
    assert all(w.fetches == 1 and w.dispatches == 4 for w in counts)


def test_first_call_compiles_nothing_and_the_next_reduces_on_the_device(monkeypatch):
    """On an accelerator a large leaf whose programs are not compiled yet is
    fetched (one device_get with the small leaves) while its programs compile
    on a background thread; the next call reduces it on the device with no
    compilation. Same numbers both ways. Over the per-call byte budget a leaf
    is compiled for at once instead."""
    rng = np.random.default_rng(3)
    tree = {
        'w': jnp.asarray(rng.standard_normal((300, 303)), jnp.float32),
        'e': jnp.asarray(2 + rng.standard_normal((70_001,)), jnp.bfloat16),
        'b': jnp.zeros(300),
    }
    leaves = jax.tree.leaves(tree)
    clear_programs()
    with force_device_path(host_first=True):
        with count_device_work() as first:
            rows_first = leaf_rows(leaves)
        wait_compiled()
        with count_device_work() as second:
            rows_next = leaf_rows(leaves)
    assert (first.compilations, first.dispatches, first.fetches) == (0, 0, 1), first
    assert first.fetched_arrays == 3
    assert (second.compilations, second.background_compilations) == (0, 0), second
    assert (second.dispatches, second.fetches) == (4, 1), second
    assert second.fetched_arrays == 2  # the small leaf and the one table
    for a, b in zip(rows_first, rows_next):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    clear_programs()
    monkeypatch.setattr(_engine, 'HOST_FIRST_BYTES', 400_000)  # room for 'e' alone
    with force_device_path(host_first=True), count_device_work() as work:
        leaf_rows(leaves)
    assert (work.dispatches, work.fetched_arrays) == (2, 3), work  # 'w' kernelled, 'e' fetched
    wait_compiled()
