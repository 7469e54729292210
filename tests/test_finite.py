"""Tests for _finite: NaN/Inf found at their paths, first non-finite activation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from conftest import det_mlp

import pytreeparams as ptp


def test_planted_nan_found_at_its_path_and_layer():
    net, params = det_mlp()
    bad = ptp.update(params, 'params/layers_2/kernel', lambda k: k.at[0, 0].set(jnp.nan))
    assert ptp.find_nonfinite(bad) == ['params/layers_2/kernel']
    assert ptp.find_nonfinite(params) == []
    with pytest.raises(ptp.NonFiniteError, match=r"'params/layers_2/kernel' \(1 of 6 values\)"):
        ptp.assert_finite(bad)
    x = jnp.ones((2, 4))
    assert ptp.first_nonfinite_activation(net, bad, x) == 'layers_2'
    assert ptp.first_nonfinite_activation(net, params, x) is None


def test_first_nonfinite_activation_under_jit_is_a_clear_error():

    net = nn.Sequential([nn.Dense(2), nn.Dense(1)])
    v = net.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(lambda v: ptp.first_nonfinite_activation(net, v, jnp.ones((1, 3))))(v)
