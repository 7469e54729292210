"""Tests for _find_ties: tied, duplicated and transposed leaves found."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp


def test_find_ties():
    w = jnp.arange(12.0).reshape(3, 4)
    tree = {'a': w, 'b': w + 0, 'c': w.T, 'd': w + 1, 'e': jnp.ones(3), 'f': jnp.ones(3), 'same': w}
    groups = ptp.find_ties(tree, transposed=True, constants=True)
    assert groups == [
        ptp.TieGroup('a', ('b', 'same'), ('c',)),
        ptp.TieGroup('e', ('f',), ()),
    ]
    assert ptp.find_ties(tree, transposed=True) == groups[:1]  # constant leaves: not ties
    assert ptp.find_ties(tree)[0] == ptp.TieGroup('a', ('b', 'same'), ())
    ties = groups[0].to_ties()
    chex.assert_trees_all_equal(ptp.tie(ptp.untie(tree, ties), ties), tree)


def test_find_ties_5000_leaves_is_bucketed():
    rng = np.random.default_rng(0)
    tree = {f'l{i}': rng.standard_normal(16).astype(np.float32) for i in range(5000)}
    tree['dup'] = tree['l4321'].copy()
    groups = ptp.find_ties(tree)
    # the tree's own (insertion) order: 'l4321' came first, though 'dup' sorts first
    assert groups == [ptp.TieGroup('l4321', ('dup',), ())]


def test_nan_holding_aliases_are_ties():
    x = jnp.array([1.0, jnp.nan])
    tree = {'a': x, 'b': x, 'c': jnp.array([1.0, jnp.nan])}
    (group,) = ptp.find_ties(tree)
    assert group.source == 'a' and group.aliases == ('b', 'c')
    assert ptp.untie(tree, ptp.Ties({'b': 'a'})).keys() == {'a', 'c'}


def test_constant_leaves_are_not_ties_unless_asked():
    zeros = jnp.zeros(4)
    tree = {'a': {'bias': jnp.zeros(4)}, 'b': {'bias': jnp.zeros(4)}, 'c': zeros, 'd': zeros}
    groups = ptp.find_ties(tree)
    assert [(g.source, g.aliases) for g in groups] == [('c', ('d',))]  # the same object only
    assert ptp.find_ties(tree, constants=True)[0].aliases == ('b/bias', 'c', 'd')
