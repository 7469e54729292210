"""Tests for _patterns: select, mask, labels, update, partition, combine."""

from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import containers, trees
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st

import pytreeparams as ptp

MLP_PATHS = [
    'params/layers_0/bias',
    'params/layers_0/kernel',
    'params/layers_2/bias',
    'params/layers_2/kernel',
]


def test_update_and_map_with_path(mlp_params, maybe_jit):
    frozen = freeze(mlp_params)
    new = maybe_jit(lambda p: ptp.update(p, '**/bias', lambda b: b + 1))(frozen)
    assert isinstance(new, FrozenDict)
    chex.assert_trees_all_equal(new['params']['layers_0']['bias'], jnp.ones(8))
    chex.assert_trees_all_equal(
        new['params']['layers_0']['kernel'], frozen['params']['layers_0']['kernel']
    )
    chex.assert_trees_all_equal(frozen['params']['layers_0']['bias'], jnp.zeros(8))
    names = ptp.map_with_path(frozen, lambda p, x: p)
    assert names['params']['layers_2']['kernel'] == 'params/layers_2/kernel'


def test_select_glob_regex_and_lists(mlp_params):
    assert list(ptp.select(mlp_params, '**/kernel')) == [
        'params/layers_0/kernel',
        'params/layers_2/kernel',
    ]
    assert list(ptp.select(mlp_params, 'params/layers_[2]/*')) == [
        'params/layers_2/bias',
        'params/layers_2/kernel',
    ]
    assert list(ptp.select(mlp_params, re.compile(r'.*_0/b.*'))) == ['params/layers_0/bias']
    assert len(ptp.select(mlp_params, ['**/bias', re.compile('.*layers_2/kernel')])) == 3
    assert ptp.select(mlp_params, 'params/layers_?/bias').keys() == {
        'params/layers_0/bias',
        'params/layers_2/bias',
    }
    # '*' stays within one key, '**' crosses keys
    assert ptp.select(mlp_params, '*/kernel', missing_ok=True) == {}
    assert len(ptp.select(mlp_params, '**')) == 4
    assert len(ptp.select(mlp_params, 'params/**/bias')) == 2
    assert len(ptp.select({'bias': 1}, '**/bias')) == 1
    assert len(ptp.select(mlp_params, 'params/layers_[!0]/*')) == 2


def test_select_no_match_error_text(mlp_params):
    with pytest.raises(ptp.PathError) as e:
        ptp.select(mlp_params, 'params/layers_2')
    msg = str(e.value)
    assert "pattern 'params/layers_2' matches none of the 4 paths." in msg
    assert "write 'params/layers_2/**'" in msg
    assert 'missing_ok=True' in msg


def test_mask_with_optax_adamw_on_frozen_and_dict(mlp_params):
    for params in (mlp_params, freeze(mlp_params)):
        mask = ptp.mask(params, '**/kernel')
        assert type(mask) is type(params)
        tx = optax.adamw(learning_rate=0.1, weight_decay=0.5, mask=mask)
        state = tx.init(params)
        zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
        updates, _ = tx.update(zero_grads, state, params)
        # Zero gradients: only decayed (masked) leaves move.
        chex.assert_trees_all_close(
            updates['params']['layers_0']['kernel'],
            -0.1 * 0.5 * params['params']['layers_0']['kernel'],
        )
        for path in ('params/layers_0/bias', 'params/layers_2/bias'):
            np.testing.assert_array_equal(ptp.get(updates, path), 0.0)
        masked = optax.masked(optax.sgd(1.0), mask)
        upd, _ = masked.update(jax.tree_util.tree_map(jnp.ones_like, params), masked.init(params))
        np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/kernel'), -1.0)
        np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/bias'), 1.0)


def test_labels_with_multi_transform(mlp_params):
    params = freeze(mlp_params)
    lab = ptp.labels(params, [('**/bias', 'frozen'), ('params/layers_0/*', 'fast')], default='slow')
    assert isinstance(lab, FrozenDict)
    assert ptp.flatten(lab) == {
        'params/layers_0/bias': 'frozen',
        'params/layers_0/kernel': 'fast',
        'params/layers_2/bias': 'frozen',
        'params/layers_2/kernel': 'slow',
    }
    tx = optax.multi_transform(
        {'frozen': optax.set_to_zero(), 'fast': optax.sgd(1.0), 'slow': optax.sgd(0.5)}, lab
    )
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params))
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_0/bias'), 0.0)
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_0/kernel'), -1.0)
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/kernel'), -0.5)


def test_labels_errors(mlp_params):
    with pytest.raises(
        ptp.StructureError, match=r"no rule matches 2 paths: 'params/layers_0/bias'"
    ):
        ptp.labels(mlp_params, {'**/kernel': 'a'})
    with pytest.raises(ptp.PathError, match="labels: rule pattern '\\*\\*/scale' matches none"):
        ptp.labels(mlp_params, {'**/scale': 'a'}, default='b')


def test_partition_combine_under_grad(mlp_params, maybe_jit):
    x = jnp.ones((2, 4))
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    frozen_part, train_part = ptp.partition(mlp_params, 'params/layers_0/**')
    assert ptp.paths(frozen_part) == MLP_PATHS[:2]
    assert ptp.paths(train_part) == MLP_PATHS[2:]

    def loss(train):
        return jnp.sum(net.apply(ptp.combine(frozen_part, train), x) ** 2)

    g = maybe_jit(jax.grad(loss))(train_part)
    full = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(mlp_params)
    assert ptp.paths(g) == MLP_PATHS[2:]
    chex.assert_trees_all_close(
        ptp.get(g, 'params/layers_2/kernel'), ptp.get(full, 'params/layers_2/kernel')
    )
    chex.assert_trees_all_equal(ptp.combine(frozen_part, train_part), mlp_params)


def test_combine_errors():
    with pytest.raises(ptp.StructureError, match='two trees fill the same leaf'):
        ptp.combine({'a': 1}, {'a': 2})
    with pytest.raises(ptp.StructureError, match='different structures'):
        ptp.combine({'a': 1}, {'b': None})


@given(trees(), st.sampled_from(['**', '*', '**/0', '[ab]*/**', 'x']))
def test_partition_combine_round_trip(tree, pattern):
    matched, rest = ptp.partition(tree, pattern, missing_ok=True)
    back = ptp.combine(matched, rest)
    assert containers(back) == containers(tree)
    chex.assert_trees_all_equal(back, tree)
    m = ptp.mask(tree, pattern, missing_ok=True)
    assert ptp.paths(m) == ptp.paths(tree)
    assert [k for k, v in ptp.flatten(m).items() if v] == ptp.paths(matched)


def test_is_leaf_in_every_pattern_function():
    """``is_leaf`` stops the walk where jax.tree_util's would: a pattern then
    names the node, and the results have the walk's (prefix) structure, which
    optax takes as a mask."""
    params = {'emb': (jnp.ones(3), jnp.zeros(3)), 'head': {'w': jnp.ones(2), 'b': jnp.zeros(2)}}
    pair = lambda x: isinstance(x, tuple)  # noqa: E731
    assert list(ptp.select(params, 'emb', is_leaf=pair)) == ['emb']
    with pytest.raises(ptp.PathError):
        ptp.select(params, 'emb/0', is_leaf=pair)  # inside a leaf now
    assert ptp.select(params, 'emb/0') != {}  # without is_leaf the walk goes in
    m = ptp.mask(params, 'head/**', is_leaf=pair)
    assert m == {'emb': False, 'head': {'b': True, 'w': True}}
    tx = optax.masked(optax.sgd(1.0), m)  # a mask with is_leaf's structure: a prefix
    updates, _ = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_close(updates['head']['w'], -jnp.ones(2))
    chex.assert_trees_all_equal(updates['emb'], params['emb'])
    assert ptp.labels(params, {'emb': 'frozen'}, default='adam', is_leaf=pair) == {
        'emb': 'frozen',
        'head': {'b': 'adam', 'w': 'adam'},
    }
    swapped = ptp.update(params, 'emb', lambda t: (t[1], t[0]), is_leaf=pair)
    chex.assert_trees_all_equal(swapped['emb'], (params['emb'][1], params['emb'][0]))
    matched, rest = ptp.partition(params, 'emb', is_leaf=pair)
    assert rest['emb'] is None
    assert ptp.combine(matched, rest, is_leaf=pair)['emb'] is params['emb']
    kp = ptp.map_with_path(params, lambda p, x: p, key_paths=True, is_leaf=pair)
    assert kp['emb'] == (jax.tree_util.DictKey('emb'),)
    assert ptp.map_with_path(params, lambda p, x: p, is_leaf=pair)['emb'] == 'emb'
