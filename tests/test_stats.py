"""Tests for ptp.stats and Stats (_stats): per-leaf statistics, jitted or not."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp


def test_empty_and_non_array_leaves():
    s = ptp.stats({'e': jnp.zeros((0,)), 'x': jnp.ones(2), 's': 'text'})
    assert s.paths == ('e', 'x')
    row = np.asarray(s.table[0])
    assert np.isnan(row[:5]).all() and row[5] == 0 and np.isnan(row[6])
    with pytest.raises(KeyError, match="the statistics are 'mean'"):
        s['mena']


@pytest.mark.parametrize('jit', [False, True])
def test_stats_table_and_columns(jit):
    tree = {'a': jnp.array([1.0, 2.0, 3.0]), 'b': {'c': jnp.array([[0.0, -4.0]])}}
    s = (jax.jit(ptp.stats) if jit else ptp.stats)(tree)
    assert s.paths == ('a', 'b/c')
    chex.assert_trees_all_close(s['mean'], jnp.array([2.0, -2.0]))
    chex.assert_trees_all_close(s['min'], jnp.array([1.0, -4.0]))
    chex.assert_trees_all_close(s['l2'], jnp.array([np.sqrt(14.0), 4.0]))
    assert 'path' in str(s) and 'b/c' in str(s)
