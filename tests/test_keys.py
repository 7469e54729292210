"""Tests for _keys: boxes, key spelling, describe, jax key paths."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.core import FrozenDict, freeze

import pytreeparams as ptp


def test_nnx_state_paths_and_boxes():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(2, 3, rngs=rngs)
            self.shared = self.l0
            self.blocks = nnx.List([nnx.Linear(3, 3, rngs=rngs)])

    state = nnx.state(Net(nnx.Rngs(0)))
    assert ptp.paths(state) == ['blocks/0/bias', 'blocks/0/kernel', 'l0/bias', 'l0/kernel']
    kernel = ptp.get(state, 'l0/kernel')
    assert isinstance(kernel, jax.Array) and kernel.shape == (2, 3)
    assert ptp.get(state, ('blocks', 0, 'bias')).shape == (3,)
    new = ptp.set(state, 'l0/bias', jnp.ones(3))
    assert type(new) is type(state)
    box = new['l0']['bias']
    assert isinstance(box, nnx.Param)
    np.testing.assert_array_equal(box.get_value(), np.ones(3))
    assert isinstance(state['l0']['bias'], nnx.Param)
    np.testing.assert_array_equal(state['l0']['bias'].get_value(), np.zeros(3))
    m = ptp.mask(state, '**/kernel')
    assert type(m) is type(state)
    assert ptp.flatten(m)['l0/kernel'] is True
    back = ptp.unflatten(ptp.flatten(state), like=state)
    assert isinstance(back['l0']['kernel'], nnx.Param)


def test_partitioned_boxes_are_transparent():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(
                3, kernel_init=nn.with_partitioning(nn.initializers.ones, (None, 'model'))
            )(x)

    variables = M().init(jax.random.key(0), jnp.ones((1, 2)))
    assert ptp.paths(variables) == ['params/Dense_0/bias', 'params/Dense_0/kernel']
    k = ptp.get(variables, 'params/Dense_0/kernel')
    assert isinstance(k, jax.Array) and k.shape == (2, 3)
    new = ptp.update(variables, '**/kernel', lambda x: x * 2)
    box = new['params']['Dense_0']['kernel']
    assert isinstance(box, nn.Partitioned) and box.names == (None, 'model')
    np.testing.assert_array_equal(box.value, 2.0)
    new2 = ptp.set(variables, 'params/Dense_0/kernel', jnp.zeros((2, 3)))
    assert isinstance(new2['params']['Dense_0']['kernel'], nn.Partitioned)


def test_describe():
    assert ptp.describe(jnp.zeros((4, 8))) == 'float32[4,8]'
    assert ptp.describe(jnp.zeros((), jnp.bfloat16)) == 'bfloat16[]'
    assert ptp.describe(jax.ShapeDtypeStruct((3,), jnp.int8)) == 'int8[3]'
    assert ptp.describe(None) == 'None'
    assert ptp.describe('x') == 'str'


def test_jax_key_paths_are_paths_too():
    """Path strings equal jax's keystr(simple, '/'); a jax key path works wherever a
    path does; map_with_path can hand fn the key path. On NNX and optax trees."""
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    trees_ = [
        nnx.state(model),
        optax.adam(1e-3).init({'w': jnp.ones(2), 'b': [jnp.zeros(1)]}),
        freeze({'params': {'layers_0': {'kernel': jnp.ones((2, 2))}}}),
    ]

    def is_box(x):  # boxes (NNX Variables) are transparent in paths, as the docs say
        return isinstance(x, nnx.Variable)

    entries = (jax.tree_util.DictKey, jax.tree_util.SequenceKey, jax.tree_util.GetAttrKey)

    def is_kp(x):
        return isinstance(x, tuple) and bool(x) and all(isinstance(e, entries) for e in x)

    for tree in trees_:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)
        want = [jax.tree_util.keystr(kp, simple=True, separator='/') for kp, _ in flat]
        assert ptp.paths(tree) == want
        for kp, box in flat:
            leaf = box.get_value() if isinstance(box, nnx.Variable) else box
            got = ptp.get(tree, kp)
            assert got is leaf or np.array_equal(got, leaf)
        kps = ptp.map_with_path(tree, lambda kp, x: kp, key_paths=True)
        assert jax.tree.leaves(kps, is_leaf=is_kp) == [kp for kp, _ in flat]
    kp = jax.tree_util.tree_flatten_with_path(trees_[2])[0][0][0]
    new = ptp.set(trees_[2], kp, jnp.zeros((2, 2)))
    assert isinstance(new, FrozenDict) and float(new['params']['layers_0']['kernel'].sum()) == 0
