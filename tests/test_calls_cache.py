"""summary(linen_module, *inputs) without variables= compiles its init once per
module and input shapes, not on every call (issue 26.14)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

import pytreeparams as ptp
from pytreeparams._calls import _INIT_CACHE


class Net(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dropout(0.5, deterministic=not train)(nn.Dense(self.width)(x))


def _cached(net):
    return [fn for key, fn in list(_INIT_CACHE.items()) if key[0] is net or key[0] == net]


def test_init_is_compiled_once_per_module_and_input_shapes():
    net = Net(width=5)
    x = jnp.ones((2, 3))
    first = ptp.summary(net, x, train=False)
    again = ptp.summary(net, x, train=False)
    (fn,) = _cached(net)
    assert fn._cache_size() == 1  # the second call reused the compiled init
    chex.assert_trees_all_equal(
        [r.mean for r in first.rows], [r.mean for r in again.rows]
    )  # fmt: skip
    want = ptp.summary(jax.jit(lambda k: net.init(k, x, train=False))(jax.random.key(0)))
    assert [r.mean for r in first.rows] == [r.mean for r in want.rows]
    ptp.summary(net, jnp.ones((7, 3)), train=False)  # other shapes: one more program
    assert fn._cache_size() == 2
    ptp.summary(
        net, x, train=True, rngs={'params': jax.random.key(0), 'dropout': jax.random.key(1)}
    )
    assert len(_cached(net)) == 2  # another static argument: another jitted init
