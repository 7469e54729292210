"""Tests for _flags: vanishing, exploding and dead layers and units."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp


def test_dead_layer_and_units_flagged():
    grads = {
        'l0': {'kernel': jnp.ones((4, 3))},
        'l1': {'kernel': jnp.ones((3, 3)) * 0.5},
        'l2': {'kernel': jnp.zeros((3, 2))},
        'l3': {'kernel': jnp.ones((2, 2)) * 1e5},
    }
    flags = ptp.flag_layers(ptp.grad_stats(grads))
    assert flags.vanishing == ['l2/kernel'] and flags.exploding == ['l3/kernel'] and flags
    k = np.ones((4, 3), np.float32)
    k[:, 1] = 0
    dead = jax.jit(ptp.dead_units)({'l0': {'kernel': jnp.asarray(k), 'bias': jnp.zeros(3)}})
    assert {p: int(v) for p, v in dead.items()} == {'l0/kernel': 1}
