"""Tests for ptp.watch and ptp.watched (_watch): statistics kept by the optimizer."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_8_devices, tanh_mlp
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


def test_watch_passes_extra_args_and_every_n_reads_the_outgoing_updates():
    """watch is a GradientTransformationExtraArgs: extra keyword arguments of
    update (optax.contrib.reduce_on_plateau's value=) reach the wrapped
    transformation, also with every=N, whose statistics are those of the
    outgoing updates."""
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


def _trained(tx, steps=2):
    state = tx.init(PARAMS)
    for k in range(steps):
        grads = jax.tree.map(lambda g, k=k: g * (k + 1) - 0.5, GRADS)
        _, state = tx.update(grads, state, PARAMS)
    return state


@pytest.mark.parametrize('name', ['state.safetensors', 'state.msgpack', 'orbax'])
def test_resume_across_adding_and_removing_watch(tmp_path, name):
    """A plain adam state resumes into watch(adam) (statistics from zeros), and a
    watch(adam) state into plain adam, by ptp.load(like=) and ptp.load_into in
    every format, the inner state bit-exact; the wrapped state keeps its paths."""
    adam = optax.adam(1e-2)
    tx = ptp.watch(adam, histogram=ptp.log_bins(1e-8, 1.0))
    assert ptp.paths(tx.init(PARAMS))[: len(ptp.paths(adam.init(PARAMS)))] == ptp.paths(
        adam.init(PARAMS)
    )
    plain, watched_state = _trained(adam), _trained(tx)
    zeros = tx.init(PARAMS)
    for i, (saved, like, inner_of, want) in enumerate(
        [
            (plain, tx.init(PARAMS), lambda s: s.inner, plain),  # watch added
            (watched_state, adam.init(PARAMS), lambda s: s, watched_state.inner),  # removed
            (watched_state, tx.init(PARAMS), lambda s: s, watched_state),  # kept
        ]
    ):
        path = str(tmp_path / f'{i}{name}')
        ptp.save(path, saved)
        abstract = jax.eval_shape(lambda like=like: like)
        for got in (
            ptp.load(path, like=like),
            ptp.load(path, like=abstract),
            ptp.load_into(path, like=like)[0],
        ):
            assert type(got) is type(like)
            chex.assert_trees_all_equal(inner_of(got), want)
            if saved is plain:  # the statistics start from zeros
                chex.assert_trees_all_equal((got.stats, got.count), (zeros.stats, zeros.count))
    resumed = ptp.load(str(tmp_path / f'0{name}'), like=tx.init(PARAMS))
    _, resumed = tx.update(GRADS, resumed, PARAMS)
    assert int(resumed.inner[0].count) == 3 and int(resumed.count) == 1
    assert float(ptp.watched(resumed).global_norm) > 0


def test_resume_keeps_other_mismatches_errors(tmp_path):
    """Only watch's statistics are optional: another missing leaf is still an error."""
    path = str(tmp_path / 'sgd.safetensors')
    ptp.save(path, optax.sgd(0.1, momentum=0.9).init(PARAMS))
    with pytest.raises(ptp.StructureError, match=r"missing .*'0/mu/b'"):
        ptp.load(path, like=ptp.watch(optax.adam(1e-2)).init(PARAMS))


@pytest.mark.parametrize('name', ['w.safetensors', 'w.msgpack', 'orbax'])
def test_resume_across_changing_watch_options(tmp_path, name):
    """Statistics of another watch(...) setup (depth=, histogram=: other shapes, a
    leaf more) start afresh from like's zeros, count included, all of them, not a
    mixture; the inner state loads as saved."""
    adam = optax.adam(1e-2)
    saved = _trained(ptp.watch(adam))
    path = str(tmp_path / name)
    ptp.save(path, saved)
    other = ptp.watch(adam, depth=0, histogram=(0.0,))
    like = other.init(PARAMS)
    for got in (ptp.load(path, like=like), ptp.load_into(path, like=like)[0]):
        chex.assert_trees_all_equal(got.inner, saved.inner)
        chex.assert_trees_all_equal((got.stats, got.count), (like.stats, like.count))


def test_watch_every_n_keeps_no_gradient_alive_on_the_steps_it_skips():
    """watch(every=10) around adam, compiled for a jitted step: the temporary
    memory stays below the parameter bytes (one conditional per leaf: 0.53x
    here; one conditional for the whole tree kept every gradient alive to its
    end: 2.14x, allocated on every step)."""
    import jax.numpy as jnp
    import optax

    import pytreeparams as ptp

    model = tanh_mlp(8, 128)
    x = jnp.ones((16, 128))
    params = model.init(jax.random.key(0), x)
    nbytes = sum(v.nbytes for v in jax.tree.leaves(params))

    def temp(tx):
        def step(params, state):
            grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        compiled = jax.jit(step).lower(params, tx.init(params)).compile()
        return compiled.memory_analysis().temp_size_in_bytes / nbytes

    skipped = temp(ptp.watch(optax.adam(1e-3), every=10))
    assert skipped < 1.0, skipped
