"""Tests for _history: statistics over steps, logger dicts, plots."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import det_mlp

import pytreeparams as ptp


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


def test_history_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    h = ptp.History()
    for step in range(3):
        h.append(step, ptp.grad_stats({'w': jnp.full(4, step + 1.0)}))
    fig = h.plot(str(tmp_path / 'h.png'))
    assert matplotlib.get_backend() == before
    assert (tmp_path / 'h.png').read_bytes()[:4] == b'\x89PNG' and fig.axes


def test_history_as_dict_includes_the_global_norm():
    hist = ptp.History()
    for i, g in enumerate([jnp.array([3.0, 4.0]), jnp.array([6.0, 8.0])]):
        hist.append(i, ptp.grad_stats({'w': g}))
    d = hist.as_dict()
    np.testing.assert_allclose(d['global_norm'], [5.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(d['w/grad_norm'], d['global_norm'], rtol=1e-6)
