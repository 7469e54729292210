"""The gradient pass over a whole tree (_grad_pass): one rescue branch on XLA:CPU."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp
from pytreeparams._grad_pass import grad_pass_cpu, grad_pass_default, layer_view


def _conditionals(k: int) -> int:
    tree = {f'l{i}': jnp.ones((8, 8)) for i in range(k)}
    text = jax.jit(lambda g: ptp.grad_stats(g, g, g)).lower(tree).compile().as_text()
    return text.count(' conditional(')


def test_cpu_program_has_one_rescue_branch_whatever_the_number_of_leaves():
    """XLA:CPU compiles a compare-and-count reduction in 40-90 ms: the exact
    rescue is one lax.cond for the whole tree (gradients, parameters and
    updates), not one per leaf (it was 2 per leaf: 60 for 30 leaves)."""
    assert _conditionals(3) == _conditionals(30) == 1


def test_stacked_rows_equal_the_layers_as_separate_leaves():
    """A leaf of 3 stacked layers gives the rows that its 3 layers give as leaves,
    bit for bit, on both passes; a rescued layer (Inf) changes no other row."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5, 7)).astype(np.float32)
    w[1, 2, 3] = np.inf
    small = rng.standard_normal(11).astype(np.float32)
    for tree_pass in (grad_pass_cpu, grad_pass_default):
        run = jax.jit(lambda views, tree_pass=tree_pass: tree_pass(views, [True])[0])
        stacked = run([[layer_view(w, 0), layer_view(small, None)]])
        separate = run([[layer_view(w[i], None) for i in range(3)] + [layer_view(small, None)]])
        chex.assert_trees_all_equal(stacked, separate)
        assert stacked.nonfinite.tolist() == [0.0, 1.0, 0.0, 0.0]
        norms = np.sqrt(np.asarray(stacked.ss)) * np.asarray(stacked.scale)
        want = [np.linalg.norm(w[0]), np.inf, np.linalg.norm(w[2]), np.linalg.norm(small)]
        np.testing.assert_allclose(norms, want, rtol=1e-6)
