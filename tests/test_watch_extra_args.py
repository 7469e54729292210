"""ptp.watch around optax transformations that take extra arguments (issue 26.12)."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import pytreeparams as ptp

PARAMS = {'w': jnp.array([1.0, -2.0, 3.0])}


def _loss(p):
    return jnp.sum(p['w'] ** 2)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize(
    'make',
    [optax.lbfgs, lambda: optax.chain(optax.adam(0.1), optax.contrib.reduce_on_plateau())],
    ids=['lbfgs', 'reduce_on_plateau'],
)
def test_watch_passes_optax_extra_arguments(make, jit):
    tx, watched_tx = make(), ptp.watch(make())
    assert isinstance(watched_tx, optax.GradientTransformationExtraArgs)
    value, grads = jax.value_and_grad(_loss)(PARAMS)

    def step(tx, grads, state, value):
        return tx.update(grads, state, PARAMS, value=value, grad=grads, value_fn=_loss)

    run = jax.jit(step, static_argnums=0) if jit else step
    want, _ = run(tx, grads, tx.init(PARAMS), value)
    got, state = run(watched_tx, grads, watched_tx.init(PARAMS), value)
    chex.assert_trees_all_close(got, want)  # the updates pass through unchanged
    chex.assert_trees_all_close(ptp.watched(state).global_norm, jnp.sqrt(4 * 14.0), rtol=1e-6)


def test_a_plain_transformation_stays_plain():
    sgd = optax.sgd(0.1)
    plain = optax.GradientTransformation(sgd.init, lambda u, s, p=None: sgd.update(u, s, p))
    tx = ptp.watch(plain)
    assert not isinstance(tx, optax.GradientTransformationExtraArgs)
    # in a chain with one that takes extra arguments, optax hands them to both
    chain = optax.chain(tx, optax.contrib.reduce_on_plateau())
    state = chain.init(PARAMS)
    updates, _ = chain.update(PARAMS, state, PARAMS, value=jnp.array(1.0))
    chex.assert_trees_all_close(updates, jax.tree.map(lambda x: -0.1 * x, PARAMS))


@pytest.mark.parametrize('jit', [False, True])
def test_gradients_of_another_structure_are_a_structure_error(jit):
    tx = ptp.watch(optax.adam(0.1))
    state = tx.init(PARAMS)
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(
        ptp.StructureError,
        match=r"watch: the gradients do not match the parameters: missing 1 path: 'w'; "
        r"unexpected 1 path: 'v'",
    ):
        update({'v': jnp.ones(3)}, state, PARAMS)
