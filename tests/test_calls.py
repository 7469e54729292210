"""summary(module, *inputs): the per-call view of nn.tabulate / nnx.tabulate beside statistics."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pytreeparams as ptp


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(4)  # called twice: listed once, as nn.tabulate lists it
        return dense(dense(x)) + self.param('s', nn.initializers.ones, (4,))


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(4)(x)
        x = Block()(x)
        return nn.BatchNorm(use_running_average=not train)(x), x.sum()


X = jnp.ones((2, 3))


def _own(tree, prefixes, exclude=()):
    """The values of the leaves under any of ``prefixes`` and none of ``exclude``."""
    flat = ptp.flatten(tree)
    keep = [
        np.asarray(v, np.float64).ravel()
        for p, v in flat.items()
        if any(p.startswith(q + '/') for q in prefixes)
        and not any(p.startswith(q + '/') for q in exclude)
    ]
    return np.concatenate(keep) if keep else np.zeros(0)


def _check_row(row, values):
    assert row.size == values.size
    if values.size:
        np.testing.assert_allclose(row.mean, values.mean(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(row.std, values.std(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(row.l2, np.sqrt((values**2).sum()), rtol=1e-6)
        assert (row.min, row.max) == (values.min(), values.max())


def test_linen_calls_match_flax_and_own_their_variables():
    net = Net()
    key = jax.random.key(1)
    s = ptp.summary(net, X, rngs=key, call_kwargs={'train': True})
    # the calls are flax's: the same module paths as linen's own Module.module_paths
    paths = net.module_paths(key, X, train=True)
    assert [c.path for c in s.calls] == list(paths)
    assert [c.module for c in s.calls] == [type(m).__name__ for m in paths.values()]
    assert {c.method for c in s.calls} == {'__call__'}
    by_path = {c.path: c for c in s.calls}
    assert by_path['Dense_0'].inputs == 'float32[2,3]'
    assert by_path['Dense_0'].outputs == 'float32[2,4]'
    assert by_path[''].inputs == 'float32[2,3], train=True'
    root_out = jax.eval_shape(
        lambda v: net.apply(v, X, train=True, mutable=['batch_stats'])[0],
        jax.eval_shape(net.init, key, X),
    )
    assert by_path[''].outputs == ', '.join(
        f'{o.dtype.name}[{",".join(map(str, o.shape))}]' for o in jax.tree.leaves(root_out)
    )
    # statistics of the variables each call owns, from the same init
    variables = jax.jit(lambda k: net.init(k, X, train=True))(key)
    cols = ('params', 'batch_stats')
    _check_row(by_path['Dense_0'].params, _own(variables, [f'{c}/Dense_0' for c in cols]))
    _check_row(
        by_path['Block_0'].params,
        _own(variables, ['params/Block_0'], exclude=['params/Block_0/Dense_0']),
    )
    _check_row(by_path['Block_0/Dense_0'].params, _own(variables, ['params/Block_0/Dense_0']))
    # a BatchNorm's parameters and its batch statistics are pooled apart (issue 26.5)
    _check_row(by_path['BatchNorm_0'].params, _own(variables, ['params/BatchNorm_0']))
    _check_row(by_path['BatchNorm_0'].state, _own(variables, ['batch_stats/BatchNorm_0']))
    assert by_path[''].params.size == 0 and by_path['Dense_0'].state is None
    # every leaf is owned once: the calls add up to the totals
    assert sum(c.params.size for c in s.calls) == s.totals.size == ptp.count(variables['params'])
    assert sum(c.params.nbytes for c in s.calls) == s.totals.nbytes
    assert s.state.size == ptp.count(variables['batch_stats'])


def test_linen_depth_variables_and_abstract():
    net = Net()
    params = jax.tree.map(
        lambda s: jnp.full(s.shape, 2.0, s.dtype), jax.eval_shape(net.init, jax.random.key(0), X)
    )
    s = ptp.summary(net, X, depth=1, variables=params)
    assert [c.path for c in s.calls] == ['', 'Dense_0', 'Block_0', 'BatchNorm_0']
    block = {c.path: c for c in s.calls}['Block_0'].params
    assert block.size == 4 + 20 + 0 and block.leaves == 3  # s, and its Dense below the depth
    assert (block.mean, block.std, block.min, block.max) == (2.0, 0.0, 2.0, 2.0)
    # one collection's variables, without the collection key, go to the same calls
    only = ptp.summary(net, X, depth=1, variables=params['params'])
    assert [c.params.size for c in only.calls] == [0, 16, 24, 8]
    # without statistics, init is abstract: counts and types only
    a = ptp.summary(net, X, stats=False)
    assert not a.has_stats and a.calls[1].params.mean is None
    assert [c.params.size for c in a.calls] == [c.params.size for c in ptp.summary(net, X).calls]


class Encoder(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)

    def encode(self, x):
        return self.lin(x)


class Model(nnx.Module):
    def __init__(self, rngs):
        self.enc = Encoder(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.bn(self.drop(self.enc.encode(x))))


def _host(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def test_nnx_calls_statistics_and_nothing_changes():
    model = Model(nnx.Rngs(0))
    before = jax.tree.map(_host, nnx.state(model))
    s = ptp.summary(model, X)
    rows = [(c.path, c.module, c.method, c.inputs, c.outputs) for c in s.calls]
    assert rows == [
        ('', 'Model', '__call__', 'float32[2,3]', 'float32[2,2]'),
        ('enc', 'Encoder', 'encode', 'float32[2,3]', 'float32[2,4]'),
        ('enc/lin', 'Linear', '__call__', 'float32[2,3]', 'float32[2,4]'),
        ('drop', 'Dropout', '__call__', 'float32[2,4]', 'float32[2,4]'),
        ('bn', 'BatchNorm', '__call__', 'float32[2,4]', 'float32[2,4]'),
        ('head', 'Linear', '__call__', 'float32[2,4]', 'float32[2,2]'),
    ]
    by_path = {c.path: c for c in s.calls}
    state = nnx.state(model)
    _check_row(by_path['enc/lin'].params, _own(state, ['enc/lin']))
    params, rest = nnx.state(model, nnx.Param, ...)
    _check_row(by_path['bn'].params, _own(params, ['bn']))
    _check_row(by_path['bn'].state, _own(rest, ['bn']))
    assert by_path['enc'].params.size == 0
    assert sum(c.params.size for c in s.calls) == s.totals.size == ptp.count(params)
    assert s.totals.size + s.state.size == ptp.count(model)
    # the model ran on a copy: its batch statistics and RNG counts are as before
    chex.assert_trees_all_equal(jax.tree.map(_host, nnx.state(model)), before)
    # alone, an NNX module is the tree of its variables
    assert ptp.summary(model).calls == ()
    assert [r.path for r in ptp.summary(model).rows] == [r.path for r in s.rows]


def test_call_tables_render_and_errors():
    s = ptp.summary(Net(), X)
    text = str(s)
    header = text.splitlines()[0].split()
    assert header[:6] == ['path', 'module', 'inputs', 'outputs', 'size', 'bytes']
    assert 'Block_0/Dense_0' in text and 'float32[2,3]' in text
    assert text.splitlines()[-1].split()[:3] == ['total', str(s.totals.leaves), 'leaves']
    assert '<td>BatchNorm</td>' in s._repr_html_()
    table = s.rich_table(200)
    assert [c.header for c in table.columns][:4] == ['path', 'module', 'inputs', 'outputs']
    assert table.row_count == len(s.calls)
    assert 'Module calls' in str(table.title)
    with pytest.raises(TypeError, match=r'summary\(module, \*inputs\)'):
        ptp.summary(Net())
    with pytest.raises(TypeError, match='are for a flax module'):
        ptp.summary({'w': jnp.ones(2)}, X)
    with pytest.raises(ValueError, match='NNX module holds its variables'):
        ptp.summary(Model(nnx.Rngs(0)), X, variables={'w': jnp.ones(2)})


def test_call_view_renders_in_treescope():
    import treescope

    text = treescope.render_to_text(ptp.summary(Net(), X))
    assert 'calls=' in text and "module='BatchNorm'" in text and "outputs='float32[2,4]'" in text


class ScanLayer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.Dense(3)(x), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            ScanLayer, variable_axes={'params': 0}, split_rngs={'params': True}, length=4
        )
        return stack()(x, None)[0]


def test_stacked_layers_belong_to_the_module_inside_the_scan():
    """With ``stacked=``, the rows are per layer, and every layer's variables
    belong to the call of the module that holds them inside the scan."""
    net = Scanned()
    s = ptp.summary(net, X, stacked={'params/ScanScanLayer_0': 0})
    assert len(s.rows) == 2 * 4 and s.totals.leaves == 2
    by_path = {c.path: c for c in s.calls}
    inner = by_path['ScanScanLayer_0/Dense_0'].params
    variables = jax.jit(net.init)(jax.random.key(0), X)
    _check_row(inner, _own(variables, ['params/ScanScanLayer_0/Dense_0']))
    assert inner.size == 4 * (3 * 3 + 3) and by_path['ScanScanLayer_0'].params.size == 0


class AutoEncoder(nn.Module):
    def setup(self):
        self.enc = nn.Dense(2)
        self.dec = nn.Dense(3)

    def __call__(self, x):
        return self.dec(self.enc(x))

    def encode(self, x):
        return self.enc(x)


def test_method_as_tabulate_takes_it():
    """method= calls another method than __call__, for linen and NNX alike."""
    ae = AutoEncoder()
    variables = jax.jit(ae.init)(jax.random.key(0), X)
    s = ptp.summary(ae, X, variables=variables, method='encode')
    assert [(c.path, c.module, c.method, c.outputs) for c in s.calls] == [
        ('', 'AutoEncoder', 'encode', 'float32[2,2]'),
        ('enc', 'Dense', '__call__', 'float32[2,2]'),
    ]
    assert s.calls[0].params.size == 2 * 3 + 3  # dec's: no call of it ran, the root holds them
    assert 'AutoEncoder.encode' in str(s)
    n = ptp.summary(Encoder(nnx.Rngs(0)), X, method='encode')
    assert [(c.path, c.method) for c in n.calls] == [('', 'encode'), ('lin', '__call__')]


def test_older_flax_gets_a_clear_error_or_its_nnx_base(monkeypatch):
    """A flax whose nnx.tabulate has no row_filter: a clear error (the variables
    alone still work); one without nnx.Pytree (before 0.12): the alias uses nnx.Object."""
    import importlib
    import typing

    from pytreeparams import _typing

    monkeypatch.setattr(nnx, 'tabulate', lambda obj, *args, depth=None, method='__call__': '')
    model = Model(nnx.Rngs(0))
    with pytest.raises(TypeError, match=r'row_filter.*flax >= 0.12'):
        ptp.summary(model, X)
    assert ptp.summary(model).totals.size == ptp.count(nnx.state(model, nnx.Param))
    monkeypatch.delattr(nnx, 'Pytree')
    try:
        old = importlib.reload(_typing)
        assert nnx.Object in typing.get_args(old.PyTree)
    finally:
        monkeypatch.undo()
        importlib.reload(_typing)
    assert nnx.Pytree in typing.get_args(_typing.PyTree)
