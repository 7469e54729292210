"""Tests for _inspect: loss, gradients and statistics in one jitted call."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import det_mlp

import pytreeparams as ptp


class FixedHiddenMLP(nn.Module):
    """The chapter's model: Python control flow on values (untraceable by jit)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(20)(x))
        x = nn.Dense(20)(x)
        while jnp.abs(x).sum() > 1:
            x /= 2
        return x.sum()


@pytest.mark.heavy
def test_inspect_jitted_and_fallback():
    net, params = det_mlp()
    x = jnp.ones((2, 4))
    r = ptp.inspect(lambda p, x: jnp.sum(net.apply(p, x) ** 2), params, x)
    assert r.jitted
    np.testing.assert_allclose(
        ptp.get(r.grads, 'params/layers_4/bias'),
        jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2)))(params)['params']['layers_4'][
            'bias'
        ],
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


def test_inspect_compiles_once_for_a_loss_function():
    from pytreeparams._moments._engine import count_device_work

    def loss(p, x):
        return jnp.sum(p['w'] * x)

    params = {'w': jnp.ones(3)}
    ptp.inspect(loss, params, jnp.arange(3.0))
    x = jnp.arange(3.0) + 1
    with count_device_work() as work:
        r = ptp.inspect(loss, params, x)
    assert float(r.loss) == 6.0
    assert work.compilations == 0


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
