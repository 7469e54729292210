"""Tests for _io: save and load across formats (like=, cast=, ties, PRNG keys, containers)."""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st
from io_helpers import FUZZ, assert_bit_exact

import pytreeparams as ptp


def _valid_bytes(tmp_path, suffix):
    tree = {
        'a': {'w': np.arange(12, dtype=np.float32).reshape(3, 4)},
        'b': [np.ones(2, np.int8)],
        'n': 2,
    }
    path = tmp_path / f'v.{suffix}'
    ptp.save(path, tree)
    return path.read_bytes()


def test_load_like_mismatch_names_every_path(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'a': np.ones(2, np.float32), 'b': np.ones(3, np.float32), 'x': np.ones(1)})
    like = {'a': jnp.ones(3), 'b': jnp.ones(3, jnp.int32), 'c': jnp.ones(1)}
    with pytest.raises(ptp.StructureError) as e:
        ptp.load(path, like=like)
    msg = str(e.value)
    assert "missing 1 path: 'c'" in msg and "unexpected 1 path: 'x'" in msg
    assert "'a' (expected float32[3], file has float32[2])" in msg
    assert "'b' (expected int32[3], file has float32[3])" in msg
    assert 'ptp.load_into' in msg


def test_load_like_keeps_frozen_and_jax_arrays(tmp_path, mlp_params):
    frozen = freeze(mlp_params)
    path = tmp_path / 'm.safetensors'
    ptp.save(path, frozen)
    back = ptp.load(path, like=frozen)
    assert isinstance(back, FrozenDict)
    assert isinstance(ptp.get(back, 'params/layers_0/kernel'), jax.Array)


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
def test_bad_files_give_format_error(tmp_path, suffix):
    path = tmp_path / f'bad.{suffix}'
    for content in (
        b'',
        b'\x00' * 3,
        b'not a checkpoint at all',
        (10**15).to_bytes(8, 'little') + b'{}',
    ):
        path.write_bytes(content)
        with pytest.raises(ptp.FormatError, match=str(path.name)):
            ptp.load(path)
    with pytest.raises(FileNotFoundError):
        ptp.load(tmp_path / f'missing.{suffix}')


@pytest.mark.heavy
@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
@FUZZ
@given(data=st.data())
def test_fuzz_loaders(tmp_path, suffix, data):
    raw = bytearray(_valid_bytes(tmp_path, suffix))
    op = data.draw(st.sampled_from(['truncate', 'flip', 'insert', 'length']))
    if op == 'truncate':
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == 'flip':
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif op == 'insert':
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, 'little')
    path = tmp_path / f'f.{suffix}'
    path.write_bytes(bytes(raw))
    try:
        out = ptp.load(path)
    except ptp.FormatError as e:
        assert str(path) in str(e) or path.name in str(e)
    else:
        assert isinstance(ptp.paths(out), list)  # a still-valid file loads as a tree


def test_tied_tree_saved_once_and_loaded_tied(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    tree = {'params': {'wte': {'embedding': emb}, 'lm_head': {'kernel': emb.T.copy()}}}
    ties = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})
    for name in ('t.safetensors', 't.msgpack'):
        path = tmp_path / name
        ptp.save(path, tree, ties=ties)
        back = ptp.load(path)
        np.testing.assert_array_equal(back['params']['lm_head']['kernel'], emb.T)
        assert ptp.paths(back) == ptp.paths(tree)
        liked = ptp.load(path, like=tree)
        np.testing.assert_array_equal(liked['params']['lm_head']['kernel'], emb.T)
    from safetensors import safe_open

    with safe_open(str(tmp_path / 't.safetensors'), framework='np') as f:
        assert list(f.keys()) == ['params.wte.embedding']


def test_nnx_state_and_partitioned_boxes_round_trip(tmp_path):
    import flax.linen as nn
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)))
    path = tmp_path / 's.safetensors'
    ptp.save(path, state)
    back = ptp.load(path, like=state)
    assert type(back) is type(state) and isinstance(back['l0']['kernel'], nnx.Param)
    assert_bit_exact(back, state)

    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.ones, (None, 'model'))
            return nn.Dense(3, kernel_init=init)(x)

    v = M().init(jax.random.key(0), jnp.ones((1, 2)))
    ptp.save(path, v)
    box = ptp.load(path, like=v)['params']['Dense_0']['kernel']
    assert isinstance(box, nn.Partitioned) and box.names == (None, 'model')


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack', ''])
def test_dtype_mismatch_is_an_error_in_every_format_unless_cast(tmp_path, suffix):
    if not suffix:
        pytest.importorskip('orbax.checkpoint')
    path = str(tmp_path / f'f{suffix}')
    ptp.save(path, {'a': jnp.array([1.7, -2.5])})
    like = {'a': jnp.zeros(2, jnp.int32)}
    with pytest.raises(ptp.StructureError, match='cast=True'):
        ptp.load(path, like=like)
    out = ptp.load(path, like=like, cast=True)
    assert out['a'].dtype == jnp.int32 and out['a'].tolist() == [1, -2]


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack'])
def test_names_that_would_not_round_trip_are_refused_before_writing(tmp_path, suffix):
    path = tmp_path / f'c{suffix}'
    with pytest.raises(ptp.StructureError, match='contains "/"'):
        ptp.save(str(path), {'a/b': jnp.ones(2), 'a': {'b': jnp.ones(3)}})
    with pytest.raises(ptp.StructureError, match='is empty'):
        ptp.save(str(path), {'a': {'': jnp.ones(2)}})
    with pytest.raises(ptp.StructureError, match='float'):
        ptp.save(str(path), {1.5: jnp.ones(2)})
    assert not path.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack', ''])
def test_prng_keys_round_trip_in_every_format(tmp_path, suffix):
    """Key leaves are stored as their key data with the implementation recorded,
    and come back as keys (same impl, same bits), with and without like; an
    NNX model's state with Rngs and Dropout keys too."""
    from flax import nnx

    if not suffix:
        pytest.importorskip('orbax.checkpoint')
    tree = {
        'w': jnp.arange(3.0),
        'rng': jax.random.key(3),
        'rbg': jax.random.split(jax.random.key(1, impl='rbg'), 2),
        'u': {'k': jax.random.key(5, impl='unsafe_rbg')},
    }
    path = str(tmp_path / f'k{suffix}')
    ptp.save(path, tree)
    for back in (ptp.load(path), ptp.load(path, like=tree)):
        for p in ('rng', 'rbg', 'u/k'):
            a, b = ptp.get(back, p), ptp.get(tree, p)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
        np.testing.assert_array_equal(back['w'], tree['w'])

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0, dropout=1)))
    path = str(tmp_path / f'nnx{suffix}')
    ptp.save(path, state)
    back = ptp.load(path, like=state)
    assert isinstance(back, nnx.State)
    for (pa, a), (pb, b) in zip(ptp.flatten(back).items(), ptp.flatten(state).items()):
        assert pa == pb and a.dtype == b.dtype
        if ptp.is_key_dtype(a.dtype) if hasattr(ptp, 'is_key_dtype') else 'key' in str(a.dtype):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


def test_load_without_like_gives_the_same_containers_in_every_format(tmp_path):
    """One rule for every format: dicts, FrozenDicts, lists and tuples come back
    as saved; other nodes (optax states, namedtuples, NNX State) as dicts keyed
    by their field names; Python scalars as Python scalars."""
    import optax
    from flax import nnx

    params = FrozenDict({'w': jnp.arange(3.0), 'b': jnp.zeros(2)})
    tree = {
        'params': params,
        'opt': optax.adam(1e-3).init(params),
        'lst': [jnp.ones(1), jnp.ones(2)],
        'tup': (jnp.int32(4),),
        'nnx': nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0))),
        'step': 3,
    }
    backs = []
    for suffix in ('.safetensors', '.msgpack', ''):
        if not suffix:
            pytest.importorskip('orbax.checkpoint')
        path = str(tmp_path / f'c{suffix}')
        ptp.save(path, tree)
        back = ptp.load(path)
        assert type(back['params']) is FrozenDict
        assert type(back['lst']) is list and type(back['tup']) is tuple
        assert type(back['opt']) is tuple and sorted(back['opt'][0]) == ['count', 'mu', 'nu']
        assert type(back['opt'][0]['mu']) is FrozenDict
        assert type(back['nnx']) is dict and sorted(back['nnx']) == ['bias', 'kernel']
        assert back['step'] == 3 and type(back['step']) is int
        backs.append(back)
    for back in backs[1:]:
        assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(backs[0])
        chex.assert_trees_all_equal(
            jax.tree.map(np.asarray, back), jax.tree.map(np.asarray, backs[0])
        )
