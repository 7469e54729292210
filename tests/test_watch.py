"""Tests for ptp.watch and ptp.watched (_watch): statistics kept by the optimizer."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_8_devices
from flax import nnx

import pytreeparams as ptp

PARAMS = {'enc': {'w': jnp.ones((3, 2))}, 'b': jnp.ones(2)}
GRADS = {'enc': {'w': jnp.full((3, 2), 2.0)}, 'b': jnp.array([3.0, 4.0])}


@pytest.mark.parametrize('jit', [False, True])
def test_watch_in_a_chain_sees_the_gradients_before_clipping(jit):
    """watch() first in a chain: the recorded norm is the unclipped one
    (optax.tree.norm), the updates are exactly the unwatched chain's."""
    plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    watched_tx = optax.chain(ptp.watch(), optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    upd = jax.jit(watched_tx.update) if jit else watched_tx.update
    state = watched_tx.init(PARAMS)
    assert float(ptp.watched(state).global_norm) == 0.0  # nothing seen yet
    updates, state = upd(GRADS, state, PARAMS)
    want, _ = plain.update(GRADS, plain.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(updates, want)
    stats = ptp.watched(state)
    chex.assert_trees_all_close(stats.global_norm, optax.tree.norm(GRADS), rtol=1e-6)
    assert stats.paths == ('b', 'enc/w')
    chex.assert_trees_all_close(stats['grad_norm'], jnp.array([5.0, np.sqrt(24.0)]), rtol=1e-6)
    chex.assert_trees_all_close(stats['param_norm'], jnp.array([np.sqrt(2.0), np.sqrt(6.0)]))


def test_watch_around_the_optimizer_records_its_final_updates():
    tx = ptp.watch(optax.sgd(0.5), depth=1)
    updates, state = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
    stats = ptp.watched(state)
    assert stats.paths == ('b', 'enc')
    chex.assert_trees_all_close(stats['update_norm'], 0.5 * stats['grad_norm'], rtol=1e-6)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.5 * g, GRADS))


def test_watch_inside_multisteps_records_the_accumulated_gradient():
    tx = optax.MultiSteps(ptp.watch(optax.adam(1e-3)), every_k_schedule=2)
    state = tx.init(PARAMS)
    other = jax.tree.map(lambda g: -g, GRADS)
    upd = jax.jit(tx.update)
    _, state = upd(GRADS, state, PARAMS)
    assert float(ptp.watched(state).global_norm) == 0.0  # the inner step has not run yet
    _, state = upd(jax.tree.map(lambda g: 3 * g, GRADS), state, PARAMS)
    mean = jax.tree.map(lambda a, b: (a + 3 * b) / 2, GRADS, GRADS)
    chex.assert_trees_all_close(ptp.watched(state).global_norm, optax.tree.norm(mean), rtol=1e-6)
    del other


def test_watch_with_an_nnx_optimizer():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)

        def __call__(self, x):
            return self.lin(x)

    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, ptp.watch(optax.sgd(0.1)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        opt.update(model, grads)
        return grads

    grads = step(model, opt, jnp.ones((4, 2)))
    stats = ptp.watched(opt)
    assert stats.paths == ('lin/bias', 'lin/kernel')
    chex.assert_trees_all_close(stats.global_norm, optax.tree.norm(grads), rtol=1e-6)
    assert ptp.watched(optax.adam(1e-3).init(PARAMS)) is None


def test_watch_on_8_devices_with_sharded_parameters():
    assert 'OK' in run_on_8_devices(
        """
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))
sh = NamedSharding(mesh, P('d', 'm'))
params = {'w': jax.device_put(jnp.ones((16, 8)), sh)}
grads = {'w': jax.device_put(jnp.arange(128.0).reshape(16, 8), sh)}
tx = ptp.watch(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
assert updates['w'].sharding.is_equivalent_to(sh, 2)
got = float(ptp.watched(state).global_norm)
want = float(optax.tree.norm(grads))
assert abs(got - want) <= 1e-5 * want, (got, want)
print('OK')
"""
    )


def test_watch_every_n_updates_keeps_the_last_statistics_between():
    tx = ptp.watch(optax.sgd(0.1), every=3)
    state = tx.init(PARAMS)
    upd = jax.jit(tx.update)
    seen = []
    for k in range(1, 6):
        _, state = upd(jax.tree.map(lambda g, k=k: k * g, GRADS), state, PARAMS)
        seen.append(float(ptp.watched(state).global_norm))
    base = float(optax.tree.norm(GRADS))
    np.testing.assert_allclose(seen, [base, base, base, 4 * base, 4 * base], rtol=1e-6)
    assert int(state.count) == 5
    with pytest.raises(ValueError, match='positive'):
        ptp.watch(every=0)


def test_watch_keeps_histograms_of_the_gradients():
    """watch(histogram=edges): the histogram of the incoming gradients is kept in
    the state, under jit, equal to grad_stats' on the same gradients."""
    edges = ptp.log_bins(1e-3, 10.0, per_decade=1)
    tx = ptp.watch(optax.sgd(0.1), histogram=edges)
    state = tx.init(PARAMS)
    assert ptp.watched(state).histogram.tolist() == [[0] * (len(edges) + 1)] * 2
    _, state = jax.jit(tx.update)(GRADS, state, PARAMS)
    got = ptp.watched(state)
    want = ptp.grad_stats(GRADS, histogram=edges)
    assert got.bin_edges == edges
    chex.assert_trees_all_equal(got.histogram, want.histogram)
    assert list(got.histograms()) == ['grad_hist/b', 'grad_hist/enc/w']
    with pytest.raises(ValueError, match='strictly increasing'):
        ptp.watch(histogram=[0.0, float('nan')])


def test_watch_passes_extra_args_and_every_n_recomputes_in_its_branch():
    """watch is a GradientTransformationExtraArgs: extra keyword arguments of
    update (optax.contrib.reduce_on_plateau's value=) reach the wrapped
    transformation, also inside the every=N branch, whose statistics are those
    of the outgoing updates."""
    import jax.numpy as jnp
    import optax

    import pytreeparams as ptp

    def scale_by_factor():
        def update(updates, state, params=None, *, factor=1.0, **_):
            return jax.tree.map(lambda g: g * factor, updates), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    params = {'w': jnp.ones(3)}
    for every in (1, 3):
        tx = ptp.watch(scale_by_factor(), every=every)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        state = tx.init(params)
        g = {'w': jnp.array([3.0, 4.0, 0.0])}
        updates, state = jax.jit(tx.update)(g, state, params, factor=2.0)
        assert updates['w'].tolist() == [6.0, 8.0, 0.0]
        assert float(ptp.watched(state)['update_norm'][0]) == 10.0


def test_watch_norms_only_tier():
    import jax.numpy as jnp
    import optax

    import pytreeparams as ptp

    tx = ptp.watch(optax.sgd(1.0), norms_only=True)
    params = {'w': jnp.ones(2)}
    _, state = jax.jit(tx.update)({'w': jnp.array([3.0, 4.0])}, tx.init(params), params)
    gs = ptp.watched(state)
    assert float(gs['grad_norm'][0]) == 5.0 and float(gs['update_norm'][0]) == 5.0
    assert np.isnan(float(gs['grad_max'][0])) and np.isnan(float(gs['grad_nonfinite'][0]))


def test_resume_across_adding_and_removing_watch(tmp_path):
    """A run saved without watch resumes with it (and the reverse) by the
    recipe of watch's docstring: the wrapped state is WatchState.inner."""
    import jax.numpy as jnp
    import optax

    import pytreeparams as ptp

    params = {'w': jnp.ones(3)}
    adam = optax.adam(1e-2)
    state = adam.init(params)
    _, state = adam.update({'w': jnp.array([1.0, 2.0, 3.0])}, state, params)
    path = str(tmp_path / 'plain.safetensors')
    ptp.save(path, state)
    tx = ptp.watch(adam)
    resumed = tx.init(params)._replace(inner=ptp.load(path, like=adam.init(params)))
    chex.assert_trees_all_close(resumed.inner, state)
    updates, resumed = tx.update({'w': jnp.ones(3)}, resumed, params)
    assert int(resumed.inner[0].count) == 2
    path2 = str(tmp_path / 'watched.safetensors')
    ptp.save(path2, resumed)
    back = ptp.load(path2, like=tx.init(params)).inner
    chex.assert_trees_all_close(back, resumed.inner)
