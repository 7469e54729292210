"""Tests for reinit and setting values directly (_init)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict, freeze

import pytreeparams as ptp

init = jax.nn.initializers


def chapter_custom(key, shape, dtype=jnp.float32):
    """D2L's custom init: U(5,10) w.p. 1/4, 0 w.p. 1/2, U(-10,-5) w.p. 1/4."""
    x = jax.random.uniform(key, shape, dtype, -10.0, 10.0)
    return x * (jnp.abs(x) >= 5)


def test_chapter_initializations(mlp_params, maybe_jit):
    key = jax.random.key(42)
    normal = maybe_jit(
        lambda p: ptp.reinit(p, key, [('**/kernel', init.normal(0.01)), ('**/bias', init.zeros)])
    )(mlp_params)
    k = np.asarray(ptp.get(normal, 'params/layers_0/kernel'))
    assert abs(k.std() - 0.01) < 0.006 and not np.array_equal(
        k, mlp_params['params']['layers_0']['kernel']
    )
    np.testing.assert_array_equal(ptp.get(normal, 'params/layers_0/bias'), 0.0)
    const = ptp.reinit(mlp_params, key, {'**/kernel': init.constant(1.0), '**/bias': init.zeros})
    np.testing.assert_array_equal(ptp.get(const, 'params/layers_2/kernel'), 1.0)
    mixed = ptp.reinit(
        mlp_params,
        key,
        [
            ('params/layers_0/kernel', init.xavier_uniform()),
            ('params/layers_2/kernel', init.constant(42.0)),
        ],
    )
    np.testing.assert_array_equal(ptp.get(mixed, 'params/layers_2/kernel'), 42.0)
    bound = np.sqrt(6 / (4 + 8))
    assert np.abs(np.asarray(ptp.get(mixed, 'params/layers_0/kernel'))).max() <= bound
    assert ptp.get(mixed, 'params/layers_0/bias') is mlp_params['params']['layers_0']['bias']


def test_reinit_jit_equals_eager_and_is_path_keyed(mlp_params):
    rules = [('**/kernel', init.lecun_normal())]
    key = jax.random.key(1)
    eager = ptp.reinit(mlp_params, key, rules)
    jitted = jax.jit(lambda p: ptp.reinit(p, key, rules))(mlp_params)
    # the same random bits; a GPU may round the scaling differently inside a fusion
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
    # a leaf's new value does not depend on which other leaves exist
    only = ptp.reinit({'params': {'layers_2': mlp_params['params']['layers_2']}}, key, rules)
    chex.assert_trees_all_equal(
        only['params']['layers_2']['kernel'], eager['params']['layers_2']['kernel']
    )


def test_reinit_kernels_only_keeps_biases_bit_identical(mlp_params):
    frozen = freeze(mlp_params)
    new = ptp.reinit(frozen, jax.random.key(0), {'**/kernel': init.normal(1.0)})
    assert isinstance(new, FrozenDict)
    for p in ('params/layers_0/bias', 'params/layers_2/bias'):
        assert ptp.get(new, p) is ptp.get(frozen, p)
    assert not np.array_equal(
        ptp.get(new, 'params/layers_0/kernel'), ptp.get(frozen, 'params/layers_0/kernel')
    )
    assert ptp.shapes(new) == ptp.shapes(frozen)


def test_reinit_rule_matching_nothing_is_an_error(mlp_params):
    with pytest.raises(ptp.PathError, match="reinit: rule pattern '\\*\\*/scale' matches none"):
        ptp.reinit(mlp_params, jax.random.key(0), {'**/scale': init.ones})


def test_custom_distribution_fractions():
    x = np.asarray(chapter_custom(jax.random.key(0), (200_000,)))
    n = x.size
    zero, pos, neg = np.mean(x == 0), np.mean(x > 0), np.mean(x < 0)
    se = np.sqrt(0.25 * 0.75 / n)
    assert abs(zero - 0.5) < 5 * np.sqrt(0.25 / n)
    assert abs(pos - 0.25) < 5 * se and abs(neg - 0.25) < 5 * se
    assert x[x > 0].min() >= 5 and x[x > 0].max() <= 10
    assert x[x < 0].max() <= -5 and x[x < 0].min() >= -10


def test_setting_values_directly_leaves_original_unchanged(mlp_params):
    before = jax.tree_util.tree_map(np.array, mlp_params)
    plus = ptp.update(mlp_params, 'params/layers_0/kernel', lambda w: w + 1)
    set42 = ptp.update(plus, 'params/layers_0/kernel', lambda w: w.at[0, 0].set(42.0))
    k = np.asarray(ptp.get(set42, 'params/layers_0/kernel'))
    assert k[0, 0] == 42.0
    np.testing.assert_allclose(k[1:], before['params']['layers_0']['kernel'][1:] + 1)
    chex.assert_trees_all_equal(mlp_params, before)
