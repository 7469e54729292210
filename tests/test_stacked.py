"""Stacked (scanned) layers give one row per layer (_stacked)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pytreeparams as ptp


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.tanh(nn.Dense(4, name='mlp')(x)), None


class Scanned(nn.Module):
    """Three Dense layers stacked on axis 0 by nn.scan, then a head."""

    @nn.compact
    def __call__(self, x):
        layers = nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params': True}, length=3)(
            name='layers'
        )
        x, _ = layers(x, None)
        return nn.Dense(1, name='head')(x)


def _scanned():
    net = Scanned()
    x = jax.random.normal(jax.random.key(1), (5, 4))
    params = jax.jit(net.init)(jax.random.key(0), x)
    loss = lambda p: jnp.mean(net.apply(p, x) ** 2)  # noqa: E731
    return params, jax.jit(jax.grad(loss))(params)


@pytest.mark.heavy
@pytest.mark.parametrize('jit', [False, True])
def test_grad_stats_of_scanned_layers_one_row_per_layer(jit):
    params, grads = _scanned()
    assert ptp.get(params, 'params/layers/mlp/kernel').shape == (3, 4, 4)

    def stats(g, p):
        return ptp.grad_stats(g, p, depth=None, stacked={'params/layers': 0})

    gs = (jax.jit(stats) if jit else stats)(grads, params)
    want_paths = [f'params/layers/{i}/mlp/{leaf}' for leaf in ('bias', 'kernel') for i in range(3)]
    assert list(gs.paths) == ['params/head/bias', 'params/head/kernel', *want_paths]
    for row, path in enumerate(gs.paths):
        keys = path.split('/')
        if keys[1] == 'layers':
            i = int(keys[2])
            g = np.asarray(grads['params']['layers']['mlp'][keys[4]][i], np.float64)
            p = np.asarray(params['params']['layers']['mlp'][keys[4]][i], np.float64)
        else:
            g = np.asarray(ptp.get(grads, path), np.float64)
            p = np.asarray(ptp.get(params, path), np.float64)
        np.testing.assert_allclose(gs['grad_norm'][row], np.linalg.norm(g), rtol=1e-5)
        np.testing.assert_allclose(gs['grad_max'][row], np.abs(g).max(), rtol=1e-6)
        np.testing.assert_allclose(gs['param_norm'][row], np.linalg.norm(p), rtol=1e-5)
    # the split changes rows, not the global norm
    chex.assert_trees_all_close(gs.global_norm, optax.tree.norm(grads), rtol=1e-6)
    edges = ptp.log_bins(1e-4, 1.0, per_decade=1)
    by_layer = ptp.grad_stats(grads, depth=3, stacked={'params/layers': 0}, histogram=edges)
    layers = ('params/layers/0', 'params/layers/1', 'params/layers/2')
    assert by_layer.paths == ('params/head/bias', 'params/head/kernel', *layers)
    for row, i in zip(by_layer.histogram[2:], range(3)):  # one histogram per layer
        values = np.concatenate(
            [np.ravel(grads['params']['layers']['mlp'][k][i]) for k in ('bias', 'kernel')]
        )
        idx = np.searchsorted(np.asarray(edges, np.float32), values, side='right')
        np.testing.assert_array_equal(row, np.bincount(idx, minlength=len(edges) + 1))


def test_summary_and_watch_split_stacked_layers():
    params, grads = _scanned()
    s = ptp.summary(params, stacked={'params/layers': 0})
    rows = {r.path: r for r in s.rows}
    k1 = np.asarray(params['params']['layers']['mlp']['kernel'][1], np.float64)
    assert rows['params/layers/1/mlp/kernel'].size == 16
    np.testing.assert_allclose(rows['params/layers/1/mlp/kernel'].l2, np.linalg.norm(k1), rtol=1e-6)
    assert s.totals.size == ptp.count(params)  # the same parameters, counted once
    # the totals count the tree's leaves: a stacked leaf shown as 3 layer rows is one
    n_leaves = len(jax.tree.leaves(params))
    assert s.totals.leaves == n_leaves < len(s.rows) and f'{n_leaves} leaves' in repr(s)
    assert str(s).splitlines()[-1].split()[1:3] == [str(n_leaves), 'leaves']
    one = ptp.summary(params, stacked={'params/layers': 0}, select='params/layers/1/**')
    assert one.totals.leaves == len(one.rows) == len(jax.tree.leaves(params['params']['layers']))
    abstract = ptp.summary(jax.eval_shape(lambda: params), stacked={'params/layers': 0})
    assert [r.path for r in abstract.rows] == [r.path for r in s.rows]

    tx = ptp.watch(optax.sgd(0.1), stacked={'params/layers': 0}, depth=3)
    state = tx.init(params)
    _, state = jax.jit(tx.update)(grads, state, params)
    layers = ('params/layers/0', 'params/layers/1', 'params/layers/2')
    assert ptp.watched(state).paths[2:] == layers


def test_stacked_errors_name_what_exists():
    params, grads = _scanned()
    with pytest.raises(ptp.PathError, match='params/layers'):
        ptp.grad_stats(grads, stacked={'params/layyers': 0})
    with pytest.raises(ptp.StructureError, match='no layer axis 3'):
        ptp.grad_stats(grads, stacked={'params/layers': 3})
    with pytest.raises(ptp.StructureError, match='one number of layers'):
        ptp.summary({'s': {'a': np.zeros((3, 2)), 'b': np.zeros((2, 3))}}, stacked={'s': 0})


class AnnotatedBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        init = nn.with_partitioning(nn.initializers.lecun_normal(), ('embed', 'mlp'))
        return nn.tanh(nn.Dense(4, kernel_init=init, name='mlp')(x)), None


class AnnotatedScan(nn.Module):
    """nn.scan with flax's scan metadata: the kernels' partition names get 'layers'."""

    @nn.compact
    def __call__(self, x):
        scan = nn.scan(
            AnnotatedBlock,
            variable_axes={'params': 0},
            split_rngs={'params': True},
            length=3,
            metadata_params={nn.PARTITION_NAME: 'layers'},
        )
        x, _ = scan(name='layers')(x, None)
        return nn.Dense(1, name='head')(x)


def test_stacked_subtree_read_from_flax_scan_metadata():
    """stacked='layers' (the partition name given to nn.scan) finds the stacked
    subtree and axis in the leaves' nn.Partitioned names: the same rows as
    naming them by hand, in grad_stats (also under jit) and summary; without
    such metadata, an error that says how to name the subtree."""
    net = AnnotatedScan()
    x = jnp.ones((2, 4))
    params = net.init(jax.random.key(0), x)
    kernel = params['params']['layers']['mlp']['kernel']
    assert isinstance(kernel, nn.Partitioned) and kernel.names == ('layers', 'embed', 'mlp')
    grads = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(params)
    by_hand = ptp.grad_stats(grads, params, stacked={'params/layers/mlp': 0})
    auto = jax.jit(lambda g, p: ptp.grad_stats(g, p, stacked='layers'))(grads, params)
    assert auto.paths == by_hand.paths and 'params/layers/mlp/2/bias' in auto.paths
    chex.assert_trees_all_close(auto.table, by_hand.table)
    rows = [r.path for r in ptp.summary(params, stacked='layers').rows]
    assert rows == [r.path for r in ptp.summary(params, stacked={'params/layers/mlp': 0}).rows]
    with pytest.raises(ptp.PathError, match=r"metadata_params=\{nn.PARTITION_NAME: 'stack'\}"):
        ptp.grad_stats(grads, stacked='stack')


def test_stacked_subtree_read_from_nnx_vmap_metadata():
    """NNX: layers made by nnx.vmap(transform_metadata={nnx.PARTITION_NAME: 'layers'})
    carry the axis in their partitioned parameters' metadata (a one-device mesh
    here); stacked='layers' gives one row per layer, as the hand-named subtree."""
    from flax import nnx
    from jax.sharding import Mesh

    class Layer(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('embed', None))
            self.lin = nnx.Linear(4, 4, kernel_init=init, rngs=rngs)

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('embed', 'layers'))
    with jax.sharding.set_mesh(mesh):

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
        def make(rngs):
            return Layer(rngs)

        state = nnx.state(make(nnx.Rngs(0)))
    rows = [r.path for r in ptp.summary(state, stacked='layers').rows]
    assert rows == [f'lin/{i}/{k}' for k in ('bias', 'kernel') for i in range(3)]
    assert rows == [r.path for r in ptp.summary(state, stacked={'lin': 0}).rows]
    stats = ptp.grad_stats(state, stacked='layers')
    kernel = np.asarray(state['lin']['kernel'][...], np.float64)
    want = np.linalg.norm(kernel, axis=(1, 2))
    np.testing.assert_allclose(stats['grad_norm'][3:], want, rtol=1e-5)


def test_stacked_as_a_static_jit_argument():
    """A FrozenDict (hashable) or a partition name passes as a static argument."""
    from flax.core import FrozenDict

    params, grads = _scanned()
    f = jax.jit(ptp.grad_stats, static_argnames=('stacked', 'depth'))
    got = f(grads, stacked=FrozenDict({'params/layers': 0}))
    want = ptp.grad_stats(grads, stacked={'params/layers': 0})
    assert got.paths == want.paths and 'params/layers/2/mlp/kernel' in got.paths
    chex.assert_trees_all_close(got.table, want.table, rtol=1e-6)
