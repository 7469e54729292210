"""Tests for grad_stats, flags, NaN hunting, inspect and History."""

from __future__ import annotations

import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_8_devices

import pytreeparams as ptp


def det_mlp():
    """A small MLP with deterministic (hand-set) weights."""
    net = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2), nn.relu, nn.Dense(1)])
    params = net.init(jax.random.key(0), jnp.ones((1, 4)))
    params = ptp.map_with_path(
        params,
        lambda p, x: jnp.asarray(
            np.linspace(-1, 1, x.size).reshape(x.shape) * (1 + len(p) % 3), jnp.float32
        ),
    )
    return net, params


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


def test_planted_nan_found_at_its_path_and_layer():
    net, params = det_mlp()
    bad = ptp.update(params, 'params/layers_2/kernel', lambda k: k.at[0, 0].set(jnp.nan))
    assert ptp.find_nonfinite(bad) == ['params/layers_2/kernel']
    assert ptp.find_nonfinite(params) == []
    with pytest.raises(ptp.NonFiniteError, match=r"'params/layers_2/kernel' \(1 of 6 values\)"):
        ptp.assert_finite(bad)
    x = jnp.ones((2, 4))
    assert ptp.first_nonfinite_activation(net, bad, x) == 'layers_2'
    assert ptp.first_nonfinite_activation(net, params, x) is None


def test_zero_layer_with_norm_regularizer_gives_nan_at_one_leaf():
    params = {'a': {'w': jnp.zeros(3)}, 'b': {'w': jnp.ones(3)}}

    def loss(p):
        return jnp.linalg.norm(p['a']['w']) + jnp.sum(p['b']['w'] ** 2)

    grads = jax.grad(loss)(params)
    assert ptp.find_nonfinite(grads) == ['a/w']
    gs = ptp.grad_stats(grads)
    assert gs['grad_nonfinite'].tolist() == [3.0, 0.0]
    assert ptp.flag_layers(gs).nonfinite == ['a/w']


def test_dead_layer_and_units_flagged():
    grads = {
        'l0': {'kernel': jnp.ones((4, 3))},
        'l1': {'kernel': jnp.ones((3, 3)) * 0.5},
        'l2': {'kernel': jnp.zeros((3, 2))},
        'l3': {'kernel': jnp.ones((2, 2)) * 1e5},
    }
    flags = ptp.flag_layers(ptp.grad_stats(grads))
    assert flags.vanishing == ['l2/kernel'] and flags.exploding == ['l3/kernel'] and flags
    k = np.ones((4, 3), np.float32)
    k[:, 1] = 0
    dead = jax.jit(ptp.dead_units)({'l0': {'kernel': jnp.asarray(k), 'bias': jnp.zeros(3)}})
    assert {p: int(v) for p, v in dead.items()} == {'l0/kernel': 1}


class FixedHiddenMLP(nn.Module):
    """The chapter's model: Python control flow on values (untraceable by jit)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(20)(x))
        x = nn.Dense(20)(x)
        while jnp.abs(x).sum() > 1:
            x /= 2
        return x.sum()


def test_inspect_jitted_and_fallback():
    net, params = det_mlp()
    x = jnp.ones((2, 4))
    r = ptp.inspect(lambda p, x: jnp.sum(net.apply(p, x) ** 2), params, x)
    assert r.jitted
    np.testing.assert_allclose(
        ptp.get(r.grads, 'params/layers_4/bias'),
        jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(params)['params']['layers_4']['bias'],
        rtol=1e-6,
    )
    text = str(r)
    assert 'grad_norm' in text and 'params/layers_4/kernel' in text and 'grad_to_param' in text
    assert 'params/layers_0/kernel/grad_norm' in r.table.to_dict()

    model = FixedHiddenMLP()
    v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    with pytest.warns(UserWarning, match='evaluating eagerly'):
        r2 = ptp.inspect(lambda p, x: model.apply(p, x), v, jnp.ones((1, 4)))
    assert not r2.jitted and np.isfinite(float(r2.loss))
    with pytest.raises(ValueError, match='cannot be traced by jax.jit'):
        ptp.inspect(lambda p, x: model.apply(p, x), v, jnp.ones((1, 4)), jit=True)


def test_history_matches_per_step_and_plots(tmp_path):
    net, params = det_mlp()
    x = jnp.linspace(-1, 1, 8).reshape(2, 4)
    tx = optax.sgd(0.05)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        grads = jax.grad(lambda p: jnp.mean((net.apply(p, x) - 1.0) ** 2))(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, ptp.grad_stats(grads, params, updates)

    h = ptp.History()
    per_step = []
    for i in range(20):
        params, opt, gs = step(params, opt)
        h.append(i, gs)
        per_step.append(np.asarray(gs['grad_norm']))
    assert len(h) == 20 and h.steps.tolist() == list(range(20))
    for j, p in enumerate(h.paths):
        np.testing.assert_array_equal(h.array(p, 'grad_norm'), [s[j] for s in per_step])
    assert h.as_dict()['params/layers_0/kernel/update_to_param'].shape == (20,)
    out = tmp_path / 'history.png'
    h.plot(str(out))
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(KeyError, match='no statistic'):
        h.array(h.paths[0], 'nope')


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


def test_sharded_grad_stats_on_8_devices():
    assert 'OK' in run_on_8_devices(SHARDED)


def test_first_nonfinite_activation_under_jit_is_a_clear_error():
    import flax.linen as nn

    net = nn.Sequential([nn.Dense(2), nn.Dense(1)])
    v = net.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(lambda v: ptp.first_nonfinite_activation(net, v, jnp.ones((1, 3))))(v)


def test_inspect_compiles_once_for_a_loss_function():
    from pytreeparams._engine import count_device_work

    def loss(p, x):
        return jnp.sum(p['w'] * x)

    params = {'w': jnp.ones(3)}
    ptp.inspect(loss, params, jnp.arange(3.0))
    x = jnp.arange(3.0) + 1
    with count_device_work() as work:
        r = ptp.inspect(loss, params, x)
    assert float(r.loss) == 6.0
    assert work.compilations == 0


def test_history_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    h = ptp.History()
    for step in range(3):
        h.append(step, ptp.grad_stats({'w': jnp.full(4, step + 1.0)}))
    fig = h.plot(str(tmp_path / 'h.png'))
    assert matplotlib.get_backend() == before
    assert (tmp_path / 'h.png').read_bytes()[:4] == b'\x89PNG' and fig.axes


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


@pytest.mark.parametrize('jit', [None, False])
def test_inspect_differentiates_only_the_float_leaves(jit):
    """An integer step counter or a PRNG key among the params is passed through,
    not differentiated (gradient None, no statistics row), eagerly and jitted."""
    params = {'w': jnp.arange(3.0), 'step': jnp.array(3), 'key': jax.random.key(0)}

    def loss(p, x):
        return jnp.sum(p['w'] * x) * (p['step'] - 2)

    r = ptp.inspect(loss, params, jnp.ones(3), jit=jit)
    assert r.grads['step'] is None and r.grads['key'] is None
    chex.assert_trees_all_close(r.grads['w'], jnp.ones(3))
    chex.assert_trees_all_close(r.loss, 3.0)
    assert r.stats.paths == ('w',)
    with pytest.raises(TypeError, match='no floating-point leaves'):
        ptp.inspect(loss, {'step': jnp.array(3)}, jnp.ones(3), jit=jit)


def test_history_as_dict_includes_the_global_norm():
    hist = ptp.History()
    for i, g in enumerate([jnp.array([3.0, 4.0]), jnp.array([6.0, 8.0])]):
        hist.append(i, ptp.grad_stats({'w': g}))
    d = hist.as_dict()
    np.testing.assert_allclose(d['global_norm'], [5.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(d['w/grad_norm'], d['global_norm'], rtol=1e-6)
