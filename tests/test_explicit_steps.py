"""A jitted training step on a ``jax.make_mesh`` mesh (Explicit axes, jax 0.10's
default) and on a ``Mesh`` (Auto): ``grad_stats`` and ``watch`` give the NumPy values
(issue 25.5); and gradients XLA knows to be zero (a parameter the loss does not use,
under ``jit``) read zero, not NaN."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_8_devices

import pytreeparams as ptp

STEP = """
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp

def check(cond, what):
    if not cond:
        raise AssertionError(what)

if sys.argv[1] == 'make_mesh':
    mesh = jax.make_mesh((4, 2), ('d', 'm'))
    check(mesh.axis_types == (AxisType.Explicit,) * 2, mesh)
else:
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))
put = lambda v, spec: jax.device_put(v, NamedSharding(mesh, spec))
rng = np.random.default_rng(0)
ref = {'w': rng.normal(size=(16, 8)).astype(np.float32),
       'b': rng.normal(size=(8,)).astype(np.float32),
       'head': rng.normal(size=(8, 4)).astype(np.float32)}
specs = {'w': P('d', 'm'), 'b': P('m'), 'head': P(None, 'd')}
params = {k: put(v, specs[k]) for k, v in ref.items()}
x = put(rng.normal(size=(4, 16)).astype(np.float32), P('d'))

def loss(p, x):  # 'head' unused: its gradient is a zero XLA knows
    return jnp.sum(jnp.tanh(x @ p['w'] + p['b']) ** 2)

tx = ptp.watch(optax.adam(1e-2))

@jax.jit
def step(p, s, x):
    g = jax.grad(loss)(p, x)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, g, u, ptp.grad_stats(g, p, u)

new, state, g, u, gs = step(params, tx.init(params), x)
check(new['w'].sharding.is_equivalent_to(params['w'].sharding, 2), new['w'].sharding)
G = {k: np.asarray(v, np.float64) for k, v in g.items()}
U = {k: np.asarray(v, np.float64) for k, v in u.items()}
check(gs.paths == ('b', 'head', 'w'), gs.paths)
for i, k in enumerate(gs.paths):
    row = dict(zip(ptp.GRAD_STAT_NAMES, np.asarray(gs.table[i], np.float64)))
    want = {'grad_norm': np.linalg.norm(G[k]), 'grad_max': np.abs(G[k]).max(),
            'grad_mean': G[k].mean(), 'grad_zero_frac': np.mean(G[k] == 0),
            'param_norm': np.linalg.norm(ref[k].astype(np.float64)),
            'update_norm': np.linalg.norm(U[k])}
    for name, v in want.items():
        check(np.isclose(row[name], v, rtol=1e-5, atol=1e-7), (sys.argv[1], k, name, row[name], v))
check(np.asarray(gs.table[1])[0] == 0.0, 'the unused head reads a zero norm')
global_norm = np.sqrt(sum((v * v).sum() for v in G.values()))
check(np.isclose(float(gs.global_norm), global_norm, rtol=1e-5), (gs.global_norm, global_norm))
w = ptp.watched(state)
check(w.paths == gs.paths, w.paths)
check(np.allclose(np.asarray(w.table)[:, :3], np.asarray(gs.table)[:, :3], rtol=1e-6), w.table)
check(np.isclose(float(w.global_norm), global_norm, rtol=1e-5), w.global_norm)
print('OK')
"""


@pytest.mark.heavy
@pytest.mark.parametrize('mesh', ['make_mesh', 'Mesh'])
def test_grad_stats_and_watch_in_a_jitted_step_on_both_meshes(mesh):
    """One jitted step (grad, watch(adam), grad_stats) on 8 devices with leaves
    sharded P('d', 'm'), P('m'), P(None, 'd'): the NumPy values of every statistic,
    the watched state's equal to grad_stats', a zero norm for the unused leaf."""
    assert 'OK' in run_on_8_devices(STEP, mesh)


def _unused_head(p):
    return jnp.sum(p['w'] ** 2)


PARAMS = {'head': jnp.ones((4, 3)), 'w': jnp.arange(1.0, 4.0)}


def test_a_parameter_the_loss_does_not_use_reads_zero_under_jit():
    """XLA folds the constant-zero gradient of 'head'; its norm was 0 * inf = NaN."""
    r = ptp.inspect(_unused_head, PARAMS)
    rows = dict(zip(r.stats.paths, np.asarray(r.stats.table)))
    chex.assert_trees_all_close(rows['head'][:3], np.zeros(3, np.float32))
    chex.assert_trees_all_close(r.stats.global_norm, 2 * np.linalg.norm([1.0, 2.0, 3.0]))
    assert dict(r.table.rows[0].extra)['grad_norm'] == 0.0 and 'nan' not in str(r).split()[-1]


@pytest.mark.parametrize('value', [0.0, 1e-30, 1e-3, 3.0, 1e30])
def test_norms_of_leaves_known_at_compile_time(value):
    """grad_stats and stats of a leaf that is a compile-time constant, under jit,
    equal those of the same leaf passed as an argument."""
    leaf = np.full(5, value, np.float32)
    want = np.sqrt(5) * np.float64(np.float32(value))
    const = jax.jit(lambda: ptp.grad_stats({'g': jnp.asarray(leaf)}).table)()
    arg = jax.jit(lambda a: ptp.grad_stats({'g': a}).table)(jnp.asarray(leaf))
    chex.assert_trees_all_close(const[0, 0], arg[0, 0], np.float32(want), rtol=1e-6)
    l2 = jax.jit(lambda: ptp.stats({'g': jnp.asarray(leaf)})['l2'])()
    chex.assert_trees_all_close(l2[0], np.float32(want), rtol=1e-6)
    tx = ptp.watch(optax.sgd(0.1))
    _, state = jax.jit(lambda: tx.update({'g': jnp.asarray(leaf)}, tx.init({'g': leaf})))()
    chex.assert_trees_all_close(ptp.watched(state).table[0, 0], np.float32(want), rtol=1e-6)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('size', [1e-20, 1e-30, 1e20])
def test_global_norm_of_tiny_and_huge_gradients(jit, size):
    """The global norm pools the leaves at the largest leaf's scale, not at a
    scale of at least 1: gradients of 1e-20 gave a global norm of 0."""
    g = {'a': jnp.full((4,), size, jnp.float32), 'b': jnp.full((9,), 2 * size, jnp.float32)}
    fn = jax.jit(ptp.grad_stats) if jit else ptp.grad_stats
    want = np.sqrt(4 * size**2 + 9 * (2 * size) ** 2)
    got = float(fn(g).global_norm)
    np.testing.assert_allclose(got, want, rtol=1e-5)
