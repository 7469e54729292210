"""Tests for _paths: get and set by path, with errors that say what exists."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import containers, trees
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st

import pytreeparams as ptp


def test_get_leaf_and_subtree(mlp_params):
    chex.assert_trees_all_equal(
        ptp.get(mlp_params, 'params/layers_2/bias'), mlp_params['params']['layers_2']['bias']
    )
    sub = ptp.get(freeze(mlp_params), ('params', 'layers_0'))
    assert isinstance(sub, FrozenDict)
    assert ptp.get(mlp_params, '') is mlp_params


def test_get_sequence_index_by_string_or_int():
    tree = {'blocks': [{'w': 1}, {'w': 2}]}
    assert ptp.get(tree, 'blocks/1/w') == 2
    assert ptp.get(tree, ('blocks', 1, 'w')) == 2


def test_get_error_names_keys_and_nearest_path(mlp_params):
    with pytest.raises(ptp.PathError) as e:
        ptp.get(mlp_params, 'params/layers_1/bias')
    msg = str(e.value)
    assert msg.startswith("no key 'layers_1' under 'params'")
    assert "(while resolving 'params/layers_1/bias')" in msg
    assert "Keys there: 'layers_0', 'layers_2'." in msg
    assert "Did you mean 'params/layers_" in msg
    assert isinstance(e.value, KeyError)


def test_get_error_descending_into_leaf(mlp_params):
    with pytest.raises(ptp.PathError, match=r"'params/layers_2/bias' is a leaf \(float32\[1\]\)"):
        ptp.get(mlp_params, 'params/layers_2/bias/x')


def test_leading_slash_is_rejected():
    with pytest.raises(ptp.PathError, match="Did you mean 'a/b'"):
        ptp.get({'a': {'b': 1}}, '/a/b')


def test_error_never_prints_whole_tree():
    tree = {f'k{i}': {'w': np.zeros(3)} for i in range(100)}
    with pytest.raises(ptp.PathError) as e:
        ptp.get(tree, 'nope/w')
    assert '(88 more)' in str(e.value)
    assert len(str(e.value)) < 600


def test_set_returns_new_tree_and_shares_subtrees(mlp_params):
    frozen = freeze(mlp_params)
    new = ptp.set(frozen, 'params/layers_2/bias', jnp.ones(1))
    assert isinstance(new, FrozenDict)
    assert isinstance(new['params'], FrozenDict)
    chex.assert_trees_all_equal(new['params']['layers_2']['bias'], jnp.ones(1))
    chex.assert_trees_all_equal(frozen['params']['layers_2']['bias'], jnp.zeros(1))
    assert new['params']['layers_0']['kernel'] is frozen['params']['layers_0']['kernel']


def test_set_checks_shape_dtype_and_structure(mlp_params):
    with pytest.raises(ptp.StructureError, match=r'expected float32\[1\], got float32\[2\]'):
        ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(2))
    with pytest.raises(ptp.StructureError, match=r'expected float32\[1\], got int32\[1\]'):
        ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(1, jnp.int32))
    with pytest.raises(ptp.StructureError, match="missing 1 path: 'kernel'"):
        ptp.set(mlp_params, 'params/layers_2', {'bias': jnp.ones(1)})
    new = ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(2), check=False)
    assert new['params']['layers_2']['bias'].shape == (2,)


def test_set_missing_path_is_path_error(mlp_params):
    with pytest.raises(ptp.PathError, match="no key 'layers_3'"):
        ptp.set(mlp_params, 'params/layers_3/bias', jnp.ones(1))


def test_get_set_under_jit(mlp_params, maybe_jit):
    @maybe_jit
    def f(p):
        b = ptp.get(p, 'params/layers_2/bias')
        return ptp.set(p, 'params/layers_2/bias', b + 2.0)

    out = f(mlp_params)
    chex.assert_trees_all_close(out['params']['layers_2']['bias'], jnp.full(1, 2.0))


@given(trees(), st.data())
def test_set_get_round_trip(tree, data):
    paths = ptp.paths(tree)
    if not paths:
        return
    p = data.draw(st.sampled_from(paths))
    value = np.zeros_like(ptp.get(tree, p))
    new = ptp.set(tree, p, value)
    assert ptp.get(new, p) is value
    assert containers(new) == containers(tree)
    others = {k: v for k, v in ptp.flatten(tree).items() if k != p}
    for k, v in others.items():
        assert ptp.get(new, k) is v


def test_set_takes_what_get_gives_on_frozendicts():
    fd = FrozenDict({'p': {'d': {'x': jnp.ones(2)}}})
    back = ptp.set(fd, 'p/d', ptp.get(fd, 'p/d'))
    assert isinstance(back, FrozenDict)
    chex.assert_trees_all_equal(back, fd)
    plain = {'p': {'d': {'x': jnp.ones(2)}}}
    assert type(ptp.set(plain, 'p', FrozenDict(plain['p']))['p']) is dict
