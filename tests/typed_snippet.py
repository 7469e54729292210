"""A typed user snippet: ``mypy`` (in ``.ci/run``) checks that the public API
type-checks as users call it. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.core import FrozenDict

import pytreeparams as ptp

flat: dict[str, jax.Array] = {'params/w': jnp.ones(3), 'params/b': jnp.zeros(2)}
tree = ptp.unflatten(flat)
back: dict[str, jax.Array] = ptp.flatten(tree)
kernel: jax.Array = ptp.get(tree, 'params/w')
tree2 = ptp.set(tree, 'params/b', jnp.ones(2))
mask = ptp.mask(tree2, '**/w')
labels = ptp.labels(tree2, {'**/w': 'decay'}, default='no_decay')
stats: ptp.GradStats = ptp.grad_stats(tree2, tree2, depth=1, histogram=ptp.log_bins())
logged: dict[str, float] = stats.to_dict('train/', stat_first=True, drop_nan=True)
summary: ptp.Summary = ptp.summary(tree2)
n: int = ptp.count(tree2)

# Trees are typed as chex.ArrayTree (mypy follows chex here, see pyproject):
# a FrozenDict, an optax state (NamedTuples) and a chex-typed tree go in as they are.

frozen: FrozenDict[str, jax.Array] = FrozenDict({'w': jnp.ones(2)})
frozen_flat: dict[str, jax.Array] = ptp.flatten(frozen)
opt_state = optax.adam(1e-3).init(tree2)
opt_leaves: int = ptp.count(opt_state, is_leaf=None)
typed_tree: chex.ArrayTree = {'a': [jnp.ones(2), np.zeros(3)]}
typed_summary: ptp.Summary = ptp.summary(typed_tree, depth=1)
key: chex.PRNGKey = ptp.path_key(jax.random.key(0), 'params/w')
calls: ptp.Summary = ptp.summary(nn.Dense(2), jnp.ones((1, 3)), depth=1)
first_call: ptp.Call = calls.calls[0]
nnx_calls: ptp.Summary = ptp.summary(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 3)))
nnx_count: int = ptp.count(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))  # an NNX module is a pytree
