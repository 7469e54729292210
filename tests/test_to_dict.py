"""The flat dicts for metric loggers: the same options on every table, and no
inf or NaN where drop_nan=True (issue 26: items 15, 18)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp

_TREE = {'dense': {'bias': jnp.zeros(3), 'kernel': jnp.array([[1.0, 2.0], [jnp.inf, 4.0]])}}


def test_grad_stats_drop_nan_drops_infinite_ratios_of_zero_biases():
    """update_to_param and grad_to_param of a zero-initialised bias are inf."""
    params = {'bias': jnp.zeros(3), 'kernel': jnp.ones((2, 3))}
    grads = jax.tree.map(jnp.ones_like, params)
    d = ptp.grad_stats(grads, params, updates=grads).to_dict('t/', drop_nan=True)
    assert all(math.isfinite(v) for v in d.values()), d
    assert 't/bias/grad_norm' in d and 't/bias/grad_to_param' not in d
    assert 't/kernel/grad_to_param' in d
    full = ptp.grad_stats(grads, params, updates=grads).to_dict('t/')
    assert full['t/bias/grad_to_param'] == float('inf')


def test_stats_to_dict_takes_prefix_stat_first_and_drop_nan():
    s = ptp.stats(_TREE)
    d = s.to_dict('train/', stat_first=True, drop_nan=True)
    assert d['train/mean/dense/bias'] == 0.0 and d['train/nonfinite/dense/kernel'] == 1.0
    assert 'train/mean/dense/kernel' not in d and 'train/max/dense/kernel' not in d
    assert all(math.isfinite(v) for v in d.values())
    assert s.to_dict()['dense/kernel/max'] == float('inf')  # the default keeps everything
    assert list(s.to_dict()) == [f'{p}/{n}' for p in s.paths for n in ptp.STAT_NAMES]


def test_summary_to_dict_takes_prefix_stat_first_and_drop_nan():
    s = ptp.summary(_TREE)
    d = s.to_dict('train/', stat_first=True, drop_nan=True)
    assert d['train/size/dense/kernel'] == 4.0 and d['train/nonfinite/total'] == 1.0
    assert 'train/mean/dense/kernel' not in d and 'train/mean/total' not in d
    assert all(math.isfinite(v) for v in d.values())
    plain = s.to_dict()
    assert plain['dense/kernel/max'] == float('inf') and plain['total/size'] == 7.0
    np.testing.assert_allclose(plain['dense/bias/l2'], 0.0)
