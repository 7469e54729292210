"""Tests for _shared: Flax sub-modules used at several places (linen and NNX)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import pytreeparams as ptp


def test_shared_modules_linen_chapter_network():
    shared = nn.Dense(8)
    net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
    x = jnp.ones((2, 4))
    params = net.init(jax.random.key(0), x)
    assert len(params['params']) == 3
    (m,) = ptp.shared_modules(net, x)
    assert m.path == 'layers_2' and m.calls == 2
    assert m.call_sites == ('<root> #2', '<root> #3')
    assert m.param_paths == ('params/layers_2/bias', 'params/layers_2/kernel')


def test_shared_modules_nnx():
    """NNX: every path that reaches a shared layer, the path NNX stores its
    parameters under, calls counted by an abstract forward pass (or paths
    without inputs); parameterless modules (dropout) are not shared weights;
    the model is left as it was."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.first = nnx.Linear(4, 4, rngs=rngs)
            self.wte = nnx.Linear(4, 4, rngs=rngs)
            self.head_embed = self.wte  # NNX stores it under 'head_embed' (sorted first)
            self.layers = nnx.List([self.first, self.wte, self.wte])
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.drop_again = self.drop

        def __call__(self, x):
            for _ in range(3):
                x = self.wte(self.drop(x))
            return self.head_embed(self.first(self.drop_again(x)))

    net = Net(nnx.Rngs(0, dropout=1))
    before = nnx.state(net)
    linear_call, net_call = nnx.Linear.__call__, Net.__call__
    stored = {p.rsplit('/', 1)[0] for p in ptp.paths(nnx.state(net, nnx.Param))}
    found = {m.path: m for m in ptp.shared_modules(net)}
    assert sorted(found) == ['first', 'head_embed'] and set(found) <= stored
    assert found['head_embed'].call_sites == ('head_embed', 'layers/1', 'layers/2', 'wte')
    assert found['head_embed'].calls == 4  # without inputs: the paths that reach it
    assert found['head_embed'].param_paths == ('head_embed/bias', 'head_embed/kernel')
    called = {m.path: m.calls for m in ptp.shared_modules(net, jnp.ones((2, 4)))}
    assert called == {'first': 1, 'head_embed': 4}
    chex.assert_trees_all_equal(nnx.state(net), before)
    assert nnx.Linear.__call__ is linear_call and Net.__call__ is net_call  # unpatched


def test_shared_modules_linen_leaves_out_parameterless_modules():
    drop = nn.Dropout(0.5, deterministic=True)
    dense = nn.Dense(3)
    net = nn.Sequential([dense, drop, dense, drop])
    assert [m.path for m in ptp.shared_modules(net, jnp.ones((1, 3)))] == ['layers_0']
