"""first_nonfinite_activation on nn.scan models and NNX modules (issue 26.8)."""

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn
from flax import nnx

import pytreeparams as ptp

X = jnp.ones((1, 3))


class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.Dense(3)(x), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, name='inp')(x)
        stack = nn.scan(Layer, variable_axes={'params': 0}, split_rngs={'params': True}, length=2)
        x = stack(name='layers')(x, None)[0]
        return nn.Dense(2, name='out')(x)


@pytest.mark.parametrize(
    ('where', 'value', 'expected'),
    [
        (None, None, None),
        ('params/inp/bias', jnp.array([jnp.nan, 0, 0]), 'inp'),
        ('params/layers/Dense_0/bias', jnp.array([[0, 0, 0], [jnp.inf, 0, 0]]), 'layers'),
        ('params/out/bias', jnp.array([jnp.nan, 0]), 'out'),
    ],
)
def test_a_scanned_model_names_the_layer_or_the_scan(where, value, expected):
    net = Scanned()
    variables = net.init(jax.random.key(0), X)
    if where is not None:
        variables = ptp.set(variables, where, value)
    assert ptp.first_nonfinite_activation(net, variables, X) == expected


class Block(nnx.Module):
    def __init__(self, rngs):
        self.b = nnx.Linear(3, 3, rngs=rngs)
        self.a = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return self.a(self.b(x))


class Model(nnx.Module):
    def __init__(self, rngs):
        self.z = nnx.Linear(3, 3, rngs=rngs)
        self.blk = Block(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.y = nnx.Linear(3, 2, rngs=rngs)

    def head(self, x):
        return self.y(x)

    def __call__(self, x):
        return self.head(self.bn(self.drop(self.blk(self.z(x)))))


def _host(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


@pytest.mark.parametrize(
    ('where', 'expected'),
    [(None, None), ('z', 'z'), ('blk/a', 'blk/a'), ('blk/b', 'blk/b'), ('y', 'y')],
)
def test_an_nnx_module_in_call_order_and_nothing_changes(where, expected):
    model = Model(nnx.Rngs(0))
    if where is not None:
        lin = model
        for k in where.split('/'):
            lin = getattr(lin, k)
        lin.bias[...] = lin.bias[...].at[0].set(jnp.nan)
    before = jax.tree.map(_host, nnx.state(model))
    call, linear_call = Model.__call__, nnx.Linear.__call__
    assert ptp.first_nonfinite_activation(model, X) == expected
    # the model ran on a copy: its RNG counts and batch statistics are as before,
    # and no class is left instrumented
    chex.assert_trees_all_equal(jax.tree.map(_host, nnx.state(model)), before)
    assert Model.__call__ is call and nnx.Linear.__call__ is linear_call


def test_another_method_is_named_and_jit_and_other_objects_are_refused():
    model = Model(nnx.Rngs(0))

    class Inf(nnx.Module):
        def __call__(self, x):
            return x / 0.0

    model.y = Inf()
    assert ptp.first_nonfinite_activation(model, X) == 'y'

    class DividingHead(Model):
        def head(self, x):
            return self.y(x) / 0.0

    assert ptp.first_nonfinite_activation(DividingHead(nnx.Rngs(0)), X) == 'head'
    with pytest.raises(TypeError, match='cannot run under jax.jit'):
        jax.jit(lambda x: ptp.first_nonfinite_activation(model, x))(X)
    with pytest.raises(TypeError, match='takes a flax linen or NNX module, got dict'):
        ptp.first_nonfinite_activation({'w': 1}, X)
