"""Tests for _summary: rows, groups and exact totals, statistics against float64."""

from __future__ import annotations

import json
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_8_devices
from flax.core import freeze

import pytreeparams as ptp


def ref_stats(x) -> dict[str, float]:
    a = np.asarray(x).astype(np.float64).ravel()
    return {
        'mean': a.mean(),
        'std': a.std(),
        'min': a.min(),
        'max': a.max(),
        'l2': np.sqrt(np.sum(a * a)),
        'nonfinite': float(np.sum(~np.isfinite(a))),
        'zero_frac': float(np.mean(a == 0)),
    }


class ResNetLike(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        for i in range(2):
            y = nn.Conv(8, (3, 3), name=f'block{i}_conv')(x)
            y = nn.BatchNorm(use_running_average=not train, name=f'block{i}_bn')(y)
            x = nn.relu(x + y)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


SHARDED = textwrap.dedent(
    """
    import os
    flags = os.environ.get('XLA_FLAGS', '')
    os.environ['XLA_FLAGS'] = flags + ' --xla_force_host_platform_device_count=8'
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import pytreeparams as ptp
    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
    rng = np.random.default_rng(0)
    tree = {
        'w': jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
        'e': jnp.asarray(1 + rng.standard_normal((128, 16)), jnp.bfloat16),
        'b': jnp.asarray(rng.standard_normal(32), jnp.float32),
    }
    specs = {'w': P('data', 'model'), 'e': P('data', None), 'b': P('model')}
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
    assert len(sharded['w'].sharding.device_set) == 8
    a = ptp.summary(tree)
    b = ptp.summary(sharded, sharding=True)
    c = jax.jit(ptp.stats)(sharded)
    out = {
        'plain': [r.stats() for r in a.rows],
        'sharded': [r.stats() for r in b.rows],
        'jit': np.asarray(c.table).tolist(),
        'sharding': [r.sharding for r in b.rows],
        'text': str(b),
    }
    print(json.dumps(out))
    """
)


def test_mlp_rows_and_totals_exact(mlp_params):
    s = ptp.summary(mlp_params)
    assert [(r.path, r.shape, r.dtype, r.size, r.nbytes) for r in s.rows] == [
        ('params/layers_0/bias', (8,), 'float32', 8, 32),
        ('params/layers_0/kernel', (4, 8), 'float32', 32, 128),
        ('params/layers_2/bias', (1,), 'float32', 1, 4),
        ('params/layers_2/kernel', (8, 1), 'float32', 8, 32),
    ]
    assert (s.totals.size, s.totals.nbytes, s.totals.leaves) == (49, 196, 4)
    assert isinstance(s.totals.size, int)
    k = np.asarray(mlp_params['params']['layers_0']['kernel'])
    ref = ref_stats(k)
    row = s.rows[1]
    for name in ptp.STAT_NAMES:
        np.testing.assert_allclose(getattr(row, name), ref[name], rtol=1e-6, atol=1e-7)


@pytest.mark.heavy
def test_resnet_like_subtotals_match_recomputation():
    variables = ResNetLike().init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    rng = np.random.default_rng(1)  # NumPy noise: no compilation per leaf shape
    variables = jax.tree_util.tree_map(
        lambda x: np.asarray(x) + rng.standard_normal(x.shape).astype(x.dtype), variables
    )
    s = ptp.summary(variables, depth=2)
    flat = ptp.flatten(variables)
    params = {p: x for p, x in flat.items() if p.startswith('params/')}
    # the totals are the parameters; batch_stats are other state, pooled apart
    assert s.totals.size == sum(x.size for x in params.values())
    assert s.totals.nbytes == sum(x.nbytes for x in params.values())
    assert s.totals.size + s.state.size == sum(x.size for x in flat.values())
    for g in s.groups:
        members = [np.asarray(v).ravel() for p, v in flat.items() if p.startswith(g.path + '/')]
        ref = ref_stats(np.concatenate(members))
        assert g.size == sum(m.size for m in members)
        assert g.leaves == len(members)
        for name in ptp.STAT_NAMES:
            np.testing.assert_allclose(getattr(g, name), ref[name], rtol=2e-5, atol=1e-6)
    assert {g.path for g in s.groups} >= {'params/block0_conv', 'batch_stats/block1_bn'}
    ref = ref_stats(np.concatenate([np.asarray(v).ravel() for v in params.values()]))
    np.testing.assert_allclose(s.totals.std, ref['std'], rtol=2e-5)


@pytest.mark.parametrize(
    'dtype', ['float32', 'float16', 'bfloat16', 'int8', 'int32', 'uint8', 'bool', 'float64']
)
def test_stats_every_dtype_against_float64_reference(dtype, maybe_jit, host_path):
    rng = np.random.default_rng(0)
    if dtype == 'bool':
        x = rng.random(5000) < 0.3
    elif dtype.startswith(('int', 'uint')):
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -100), min(info.max, 100), 5000).astype(dtype)
    else:
        # mean near 1 (LayerNorm-scale-like) stresses cancellation in the variance
        x = (1.0 + 0.01 * rng.standard_normal((50, 100))).astype(jnp.dtype(dtype))
    if dtype == 'float64':
        x = x.astype(np.float32)  # jax without x64 keeps float32
    arr = jnp.asarray(x)
    ref = ref_stats(np.asarray(arr))
    got = maybe_jit(ptp.stats)({'x': arr})
    for name in ptp.STAT_NAMES:
        np.testing.assert_allclose(float(got[name][0]), ref[name], rtol=1e-3, atol=1e-6)
    # the eager summary path agrees too (host path and kernel path)
    for big in (False, True):
        leaf = jnp.tile(arr.ravel(), 20) if big else arr
        r = ptp.summary({'x': leaf}).rows[0]
        ref2 = ref_stats(np.asarray(leaf))
        for name in ptp.STAT_NAMES:
            np.testing.assert_allclose(getattr(r, name), ref2[name], rtol=1e-3, atol=1e-6)


def test_bfloat16_std_within_1e3_of_float64(host_path):
    x = jnp.asarray(
        (1.0 + 0.02 * np.random.default_rng(1).standard_normal(1 << 18)).astype(jnp.bfloat16)
    )
    ref = np.asarray(x).astype(np.float64)
    row = ptp.summary({'x': x}).rows[0]
    assert abs(row.std - ref.std()) / ref.std() < 1e-3
    assert abs(row.mean - ref.mean()) / abs(ref.mean()) < 1e-6


def test_nan_and_inf_planted(host_path):
    x = np.ones(2048, np.float32)
    x[[3, 100]] = np.nan
    x[7] = np.inf
    big = np.ones(300_000, np.float32)  # past the batched path: the chunked host path
    big[[5, 299_999]] = np.nan
    big[1000] = -np.inf
    tree = {'a': jnp.asarray(x), 'b': jnp.ones(3), 'c': jnp.asarray(x[:200]), 'd': jnp.asarray(big)}
    s = ptp.summary(tree)
    rows = {r.path: r for r in s.rows}
    assert rows['a'].nonfinite == 3 and np.isnan(rows['a'].mean)
    assert rows['c'].nonfinite == 3
    assert rows['b'].nonfinite == 0
    assert rows['d'].nonfinite == 3 and np.isnan(rows['d'].min) and np.isnan(rows['d'].std)
    assert s.totals.nonfinite == 9
    st = jax.jit(ptp.stats)(tree)
    assert st['nonfinite'].tolist() == [3.0, 0.0, 3.0, 3.0]


def test_abstract_tree_and_70b_count(mlp_params):
    abstract = jax.eval_shape(lambda: mlp_params)
    s = ptp.summary(abstract)
    assert (s.totals.size, s.totals.nbytes, s.has_stats) == (49, 196, False)
    assert s.rows[0].mean is None
    layers = 80
    llama70 = {
        'embed': jax.ShapeDtypeStruct((128256, 8192), jnp.bfloat16),
        'layers': [
            {
                'wq': jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16),
                'wkv': jax.ShapeDtypeStruct((8192, 2048), jnp.bfloat16),
                'wo': jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16),
                'mlp': jax.ShapeDtypeStruct((3, 8192, 28672), jnp.bfloat16),
                'norms': jax.ShapeDtypeStruct((2, 8192), jnp.bfloat16),
            }
            for _ in range(layers)
        ],
        'head': jax.ShapeDtypeStruct((8192, 128256), jnp.bfloat16),
    }
    per_layer = 2 * 8192 * 8192 + 8192 * 2048 + 3 * 8192 * 28672 + 2 * 8192
    expected = 2 * 128256 * 8192 + layers * per_layer
    assert expected > 2**36
    assert ptp.count(llama70) == expected
    assert ptp.summary(llama70).totals.size == expected
    assert ptp.nbytes(llama70) == 2 * expected


def test_empty_and_non_array_trees():
    s = ptp.summary({})
    assert s.rows == () and (s.totals.size, s.totals.nbytes) == (0, 0)
    assert 'total' in str(s)
    s = ptp.summary({'name': 'relu', 'w': jnp.ones(2), 'n': 3, 'empty': jnp.zeros((0, 4))})
    rows = {r.path: r for r in s.rows}
    assert rows['name'].dtype == 'str' and rows['name'].size == 0
    assert rows['n'].size == 1 and rows['n'].mean == 3.0
    assert rows['empty'].size == 0 and np.isnan(rows['empty'].mean)
    assert s.totals.size == 3
    assert 'relu' not in str(s) and 'str' in str(s)
    st = ptp.stats({'name': 'relu', 'w': jnp.ones(2)})
    assert st.paths == ('w',)
    # a NumPy array of strings is shown as what it is, with or without statistics
    tree = {'labels': np.array(['cat', 'dog']), 'w': np.ones(3, np.float32)}
    for with_stats in (True, False):
        rows = {r.path: r for r in ptp.summary(tree, stats=with_stats).rows}
        assert rows['labels'].shape is None and rows['labels'].size == 0
        assert rows['w'].shape == (3,) and rows['w'].nbytes == 12
        assert (rows['w'].mean == 1.0) is with_stats


def test_count_nbytes_shapes_describe(mlp_params):
    assert ptp.count(mlp_params) == 49
    assert ptp.nbytes(mlp_params) == 196
    sh = ptp.shapes(freeze(mlp_params))
    assert sh == freeze(jax.tree_util.tree_map(lambda x: x.shape, mlp_params))
    assert type(sh).__name__ == 'FrozenDict'


def test_select_and_depth_validation(mlp_params):
    s = ptp.summary(mlp_params, select='**/kernel')
    assert [r.path for r in s.rows] == ['params/layers_0/kernel', 'params/layers_2/kernel']
    assert s.totals.size == 40
    with pytest.raises(ptp.PathError, match='matches none'):
        ptp.summary(mlp_params, select='**/scale')
    with pytest.raises(ValueError, match='positive integer'):
        ptp.summary(mlp_params, depth=0)


def test_stats_to_dict_and_jit(mlp_params, maybe_jit):
    st = maybe_jit(ptp.stats)(mlp_params)
    chex.assert_shape(st.table, (4, 7))
    d = st.to_dict()
    ref = ref_stats(mlp_params['params']['layers_2']['kernel'])
    np.testing.assert_allclose(d['params/layers_2/kernel/l2'], ref['l2'], rtol=1e-6)


def test_sharded_summary_on_8_devices():
    out = json.loads(run_on_8_devices(SHARDED).strip().splitlines()[-1])
    for plain, sharded, jitted in zip(out['plain'], out['sharded'], out['jit']):
        for i, name in enumerate(ptp.STAT_NAMES):
            np.testing.assert_allclose(sharded[name], plain[name], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(jitted[i], plain[name], rtol=1e-5, atol=1e-6)
    assert "P('data', 'model') on 8 devices" in out['sharding']
    assert 'sharding' in out['text']


def test_summary_of_nnx_state_groups_modules():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

    s = ptp.summary(nnx.state(Net(nnx.Rngs(0))), depth=1)
    # the BatchNorm's statistics are a group of their own, apart from its parameters
    assert [(g.path, g.size, g.note) for g in s.groups] == [
        ('bn', 6, ''),
        ('bn', 6, 'other state'),
        ('l0', 15, ''),
    ]
    assert s.totals.size == 21 and s.totals.nbytes == 84 and s.state.size == 6


def test_prng_key_leaves_are_shown_counted_and_compared():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 2, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)))
    s = ptp.summary(state)
    key_row = next(r for r in s.rows if r.dtype.startswith('key<'))
    assert key_row.type == 'key<fry>[]' and key_row.nbytes == 8 and key_row.mean is None
    assert ptp.summary(state, stats=False).rows
    assert ptp.describe(jax.random.split(jax.random.key(0), 3)) == 'key<fry>[3]'
    assert ptp.nbytes({'k': jax.random.split(jax.random.key(0), 3)}) == 24
    assert ptp.diff(state, state).same
    other = {'k': jax.random.key(1)}
    assert ptp.diff({'k': jax.random.key(0)}, other).rel_change == {'k': float('inf')}
    out, report = ptp.load_into(
        {**other, 'w': jnp.zeros(2)}, like={'k': jax.random.key(0), 'w': jnp.ones(2)}
    )
    assert report.ok
    assert (jax.random.key_data(out['k']) == jax.random.key_data(other['k'])).all()


def test_is_leaf_stops_the_walk_as_jax_tree_util_does():
    """summary, count and nbytes take is_leaf: a node for which it is true is one
    row (not an array: its type shown, nothing counted); an optax state too."""
    import optax

    params = {'enc': {'w': jnp.ones((2, 3))}, 'frozen': {'w': jnp.ones(4), 'b': jnp.ones(2)}}
    stop = lambda x: isinstance(x, dict) and 'b' in x  # noqa: E731
    s = ptp.summary(params, is_leaf=stop)
    assert [r.path for r in s.rows] == ['enc/w', 'frozen']
    assert s.totals.size == 6 == ptp.count(params, is_leaf=stop)
    assert ptp.nbytes(params, is_leaf=stop) == 24 and ptp.nbytes(params) == 48
    state = optax.adam(1e-3).init(params)
    adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    assert [r.path for r in ptp.summary(state, is_leaf=adam).rows] == ['0']  # EmptyState: none
    assert ptp.count(state, is_leaf=adam) == 0 and ptp.count(state) == 2 * 12 + 1


def test_summary_of_a_mapped_file_releases_each_block_once_read(tmp_path, monkeypatch):
    """A safetensors file loaded with mmap=True is memory-mapped: summary reads each block of a
    large tensor once and releases its pages (benchmarks/io.py --lazy: 11 MiB peak
    growth for a 2 GB file of 20 MiB tensors); the numbers and the data are the
    same as for the array in memory. Arrays in memory release nothing."""
    from pytreeparams._moments import _host_moments

    rng = np.random.default_rng(0)
    tree = {'big': rng.standard_normal(300_001).astype(np.float32), 'small': np.ones(3, np.float32)}
    path = str(tmp_path / 'f.safetensors')
    ptp.save(path, tree)
    released = []
    real = _host_moments.release_pages
    monkeypatch.setattr(
        _host_moments,
        'release_pages',
        lambda a, lo, hi: (released.append((a.size, lo, hi)), real(a, lo, hi)),
    )
    ptp.summary(tree)  # in memory: nothing to release
    assert released == []
    loaded = ptp.load(path, mmap=True)  # the zero-copy view of the file
    got = ptp.summary(loaded)
    covered = np.zeros(300_001, bool)
    for size, lo, hi in released:
        assert size == 300_001
        covered[lo:hi] = True
    assert covered.all()  # every block of the mapped tensor
    want = ptp.summary(tree)
    assert [r.stats() for r in got.rows] == [r.stats() for r in want.rows]
    np.testing.assert_array_equal(loaded['big'], tree['big'])  # read again from the file


def test_count_summary_and_nbytes_agree_on_key_arrays():
    tree = {'key': jax.random.split(jax.random.key(0), 3), 'w': jnp.ones(2)}
    s = ptp.summary(tree)
    assert ptp.count(tree) == s.totals.size == 5
    assert ptp.nbytes(tree) == s.totals.nbytes == 3 * 8 + 8


@pytest.mark.parametrize('dtype', ['float16', 'float8_e5m2', 'float8_e4m3fn'])
def test_narrow_floats_are_widened_block_by_block(dtype):
    """A large float16 or 8-bit float leaf is read in place and widened one block
    at a time (a memory-mapped one is never copied whole): the same statistics,
    NaN and Inf counts included, as its float32 copy gives. float8_e4m3fn (NumPy
    kind 'V') counted no NaN before."""
    import ml_dtypes

    from pytreeparams._moments import _host_moments

    rng = np.random.default_rng(1)
    x = (rng.standard_normal(3 * _host_moments.HOST_BLOCK + 77) * 3).astype(
        np.dtype(getattr(ml_dtypes, dtype, dtype))
    )
    x[[5, 70_000]] = np.nan
    if dtype != 'float8_e4m3fn':  # it has no Inf
        x[100] = np.inf
    assert np.shares_memory(_host_moments.host_array(x), x)  # no whole copy
    got = ptp.summary({'x': x}).rows[0].stats()
    want = ptp.summary({'x': x.astype(np.float32)}).rows[0].stats()
    assert got == pytest.approx(want, nan_ok=True, rel=1e-12)
    assert got['nonfinite'] == (2 if dtype == 'float8_e4m3fn' else 3)
    small = np.array([1.0, np.nan, 2.0]).astype(x.dtype)  # ml_dtypes' kind-'V' floats too
    assert ptp.summary({'x': small}).rows[0].nonfinite == 1
