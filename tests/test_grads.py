"""Tests for _grads: grad_stats inside jit, against NumPy, sharded, as logger dicts."""

from __future__ import annotations

import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import det_mlp, run_on_8_devices

import pytreeparams as ptp

SHARDED = textwrap.dedent(
    """
    import os
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import pytreeparams as ptp
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))
    rng = np.random.default_rng(0)
    g = {'w': jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
         'b': jnp.asarray(rng.standard_normal(32), jnp.float32)}
    p = jax.tree_util.tree_map(lambda x: x * 3, g)
    sh = {'w': NamedSharding(mesh, P('d', 'm')), 'b': NamedSharding(mesh, P('m'))}
    gs_ = {k: jax.device_put(v, sh[k]) for k, v in g.items()}
    ps_ = {k: jax.device_put(v, sh[k]) for k, v in p.items()}
    a = ptp.grad_stats(g, p)
    b = jax.jit(ptp.grad_stats)(gs_, ps_)
    np.testing.assert_allclose(np.asarray(b.table), np.asarray(a.table), rtol=1e-5)
    print('OK')
    """
)


def test_grad_stats_match_numpy(maybe_jit):
    net, params = det_mlp()
    x = jnp.linspace(-1, 1, 8).reshape(2, 4)
    loss = lambda p: jnp.mean((net.apply(p, x) - 1.0) ** 2)  # noqa: E731
    grads = jax.grad(loss)(params)
    tx = optax.sgd(0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    gs = maybe_jit(ptp.grad_stats)(grads, params, updates)
    fg, fp, fu = ptp.flatten(grads), ptp.flatten(params), ptp.flatten(updates)
    assert gs.paths == tuple(fg)
    for i, path in enumerate(gs.paths):
        g = np.asarray(fg[path], np.float64).ravel()
        p = np.asarray(fp[path], np.float64).ravel()
        u = np.asarray(fu[path], np.float64).ravel()
        row = dict(zip(ptp.GRAD_STAT_NAMES, np.asarray(gs.table[i])))
        np.testing.assert_allclose(row['grad_norm'], np.linalg.norm(g), rtol=1e-5)
        np.testing.assert_allclose(row['grad_rms'], np.sqrt(np.mean(g**2)), rtol=1e-5)
        np.testing.assert_allclose(row['grad_max'], np.abs(g).max(), rtol=1e-6)
        np.testing.assert_allclose(row['grad_mean'], g.mean(), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(row['grad_zero_frac'], np.mean(g == 0))
        np.testing.assert_allclose(row['param_norm'], np.linalg.norm(p), rtol=1e-5)
        if np.linalg.norm(p) > 0:
            np.testing.assert_allclose(
                row['grad_to_param'], np.linalg.norm(g) / np.linalg.norm(p), rtol=1e-5
            )
            np.testing.assert_allclose(
                row['update_to_param'], np.linalg.norm(u) / np.linalg.norm(p), rtol=1e-5
            )
    np.testing.assert_allclose(gs.global_norm, optax.tree.norm(grads), rtol=1e-6)


def test_grad_stats_depth_combines_exactly():
    g = {'a': {'w': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}, 'c': {'w': jnp.ones(4)}}
    gs = jax.jit(ptp.grad_stats, static_argnames='depth')(g, depth=1)
    assert gs.paths == ('a', 'c')
    np.testing.assert_allclose(gs['grad_norm'], [5.0, 2.0])
    np.testing.assert_allclose(gs['grad_mean'], [7.0 / 3, 1.0])
    np.testing.assert_allclose(gs['grad_max'], [4.0, 1.0])
    np.testing.assert_allclose(gs['grad_zero_frac'], [1.0 / 3, 0.0])
    assert np.isnan(gs['param_norm']).all()


def test_grad_stats_structure_mismatch():
    with pytest.raises(ptp.StructureError, match="missing 'b'"):
        ptp.grad_stats({'a': jnp.ones(2), 'b': jnp.ones(2)}, {'a': jnp.ones(2)})


def test_zero_layer_with_norm_regularizer_gives_nan_at_one_leaf():
    params = {'a': {'w': jnp.zeros(3)}, 'b': {'w': jnp.ones(3)}}

    def loss(p):
        return jnp.linalg.norm(p['a']['w']) + jnp.sum(p['b']['w'] ** 2)

    grads = jax.grad(loss)(params)
    assert ptp.find_nonfinite(grads) == ['a/w']
    gs = ptp.grad_stats(grads)
    assert gs['grad_nonfinite'].tolist() == [3.0, 0.0]
    assert ptp.flag_layers(gs).nonfinite == ['a/w']


def test_sharded_grad_stats_on_8_devices():
    assert 'OK' in run_on_8_devices(SHARDED)


def test_logger_dict_groups_by_statistic_and_drops_what_was_not_computed(maybe_jit):
    g = {'h_0': {'fc': jnp.arange(6.0).reshape(2, 3)}, 'out': jnp.array([3.0, -4.0])}
    gs = maybe_jit(ptp.grad_stats)(g)
    d = gs.to_dict('train/', stat_first=True, drop_nan=True)
    assert 'train/grad_norm/h_0/fc' in d and 'train/param_norm/h_0/fc' not in d
    assert not any(v != v for v in d.values())
    # the global norm is the root of the summed squares (as optax), not a sum of norms
    chex.assert_trees_all_close(d['train/global_norm'], float(optax.tree.norm(g)), rtol=1e-6)
    plain = gs.to_dict()
    assert plain['out/grad_norm'] == 5.0 and plain['out/param_norm'] != plain['out/param_norm']


def test_grad_stats_outside_jit_is_one_program_compiled_once():
    """Called eagerly, grad_stats runs as one compiled program per tree structure
    (op by op it re-traced every lax.cond and platform branch on every call);
    a second call with new values compiles nothing, and the numbers equal the
    jitted call's."""
    from pytreeparams._engine import count_device_work

    g = {'a': {'w': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}, 'c': jnp.ones((2, 3))}
    ptp.grad_stats(g, g, g, depth=1)
    g2 = jax.tree_util.tree_map(lambda x: x * 2.0, g)
    with count_device_work() as work:
        eager = ptp.grad_stats(g2, g2, g2, depth=1)
        jax.block_until_ready(eager.table)
    assert work.compilations == 0
    jitted = jax.jit(ptp.grad_stats, static_argnames='depth')(g2, g2, g2, depth=1)
    chex.assert_trees_all_close(eager.table, jitted.table)
    assert eager.paths == jitted.paths == ('a', 'c')
    np.testing.assert_allclose(eager['grad_norm'], [10.0, 2 * np.sqrt(6.0)], rtol=1e-6)
