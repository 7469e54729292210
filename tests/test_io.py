"""Tests for save/load: formats, bit-exact round trips, atomicity, fuzzing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import run_on_8_devices
from flax.core import FrozenDict, freeze
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytreeparams as ptp
from pytreeparams import _orbax, _safetensors

ALL_DTYPES = [
    'float32',
    'float16',
    'bfloat16',
    'float64',
    'int8',
    'int16',
    'int32',
    'int64',
    'uint8',
    'bool',
]


@st.composite
def arrays(draw):
    name = draw(st.sampled_from(ALL_DTYPES))
    dtype = np.dtype(jnp.dtype(name))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = int(np.prod(shape))
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    if name == 'bool':
        return np.frombuffer(bytes(b & 1 for b in raw), np.bool_).reshape(shape).copy()
    return np.frombuffer(raw, dtype).reshape(shape).copy()  # any bit pattern, NaNs included


KEYS = st.text('abcdxyz_', min_size=1, max_size=4)


@st.composite
def trees(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(arrays())
    kind = draw(st.sampled_from(['dict', 'frozen', 'list', 'tuple']))
    child = trees(depth=depth - 1)
    if kind in ('dict', 'frozen'):
        d = draw(st.dictionaries(KEYS, child, min_size=1, max_size=3))
        return FrozenDict(d) if kind == 'frozen' else d
    items = draw(st.lists(child, min_size=1, max_size=3))
    return items if kind == 'list' else tuple(items)


def bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_bit_exact(got, want):
    fg, fw = ptp.flatten(got), ptp.flatten(want)
    assert list(fg) == list(fw)
    for k in fw:
        assert bits_equal(fg[k], fw[k]), k


def types_of(tree):
    return [
        type(x).__name__ for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: x is None)
    ] + [str(jax.tree_util.tree_structure(tree))]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees())
def test_safetensors_round_trip_bit_exact(tmp_path, tree):
    path = tmp_path / 't.safetensors'
    ptp.save(path, tree)
    back = ptp.load(path)
    assert_bit_exact(back, tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert_bit_exact(ptp.load(path, like=tree), tree)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees())
def test_msgpack_round_trip_bit_exact(tmp_path, tree):
    path = tmp_path / 't.msgpack'
    ptp.save(path, tree)
    back = ptp.load(path, like=tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert_bit_exact(back, tree)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(KEYS, arrays().filter(lambda a: a.size > 0), min_size=1, max_size=4))
def test_orbax_round_trip_bit_exact(tmp_path, tree):
    import uuid

    path = tmp_path / f'ckpt-{uuid.uuid4().hex}'
    ptp.save(path, tree)
    assert_bit_exact(ptp.load(path, like=tree), tree)


def test_orbax_rejects_empty_arrays_before_writing(tmp_path):
    with pytest.raises(ValueError, match="'e' is an empty array .* nothing was written"):
        ptp.save(tmp_path / 'ckpt', {'w': np.ones(2), 'e': np.zeros((0, 3))})
    assert os.listdir(tmp_path) == []


def test_orbax_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tree = {name: (rng.standard_normal(5) * 100).astype(jnp.dtype(name)) for name in ALL_DTYPES}
    tree['scalar'] = np.array(3.5, np.float32)
    path = tmp_path / 'ckpt'
    ptp.save(path, tree)
    assert_bit_exact(ptp.load(path, like=tree), tree)
    ptp.save(path, jax.tree_util.tree_map(lambda x: x * 0, tree))  # overwrite atomically
    assert os.listdir(tmp_path) == ['ckpt']


def test_safetensors_readable_by_other_readers(tmp_path):
    from safetensors import safe_open

    tree = {'params': {'dense': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    path = str(tmp_path / 'p.safetensors')
    ptp.save(path, tree)
    with safe_open(path, framework='np') as f:
        assert list(f.keys()) == ['params/dense/kernel']
        np.testing.assert_array_equal(
            f.get_tensor('params/dense/kernel'), tree['params']['dense']['kernel']
        )


def test_safetensors_loaded_by_pytorch(tmp_path):
    torch = pytest.importorskip('torch')
    from safetensors.torch import load_file

    tree = {'w': np.arange(4, dtype=np.float32), 'b': np.ones(2, ml_dtypes.bfloat16)}
    path = str(tmp_path / 'p.safetensors')
    ptp.save(path, tree)
    sd = load_file(path)
    assert sd['w'].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert sd['b'].dtype == torch.bfloat16


def test_foreign_safetensors_file_nests_keys(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / 'foreign.safetensors')
    save_file({'0.weight': np.ones((2, 2), np.float32), '0.bias': np.zeros(2, np.float32)}, path)
    assert ptp.paths(ptp.load(path)) == ['0/bias', '0/weight']


def test_unsupported_dtype_fails_before_writing(tmp_path):
    path = tmp_path / 'c.safetensors'
    ptp.save(path, {'w': np.ones(2, np.float32)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'z' has dtype complex64, which safetensors cannot hold"):
        ptp.save(path, {'w': np.ones(2, np.float32), 'z': np.ones(2, np.complex64)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['c.safetensors']


def test_load_like_mismatch_names_every_path(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'a': np.ones(2, np.float32), 'b': np.ones(3, np.float32), 'x': np.ones(1)})
    like = {'a': jnp.ones(3), 'b': jnp.ones(3, jnp.int32), 'c': jnp.ones(1)}
    with pytest.raises(ptp.StructureError) as e:
        ptp.load(path, like=like)
    msg = str(e.value)
    assert "missing 1: 'c'" in msg and "unexpected 1: 'x'" in msg
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


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'w': np.ones(3, np.float32)})
    before = path.read_bytes()

    def failing_write(target, write):
        def half(tmp):
            write(tmp)  # the real writer fills the temp file, then the disk "fills up"
            with open(tmp, 'r+b') as f:
                f.truncate(20)
            raise OSError(28, 'No space left on device')

        return real(target, half)

    real = _safetensors.atomic_write_path
    monkeypatch.setattr(_safetensors, 'atomic_write_path', failing_write)
    with pytest.raises(OSError, match='No space left'):
        ptp.save(path, {'w': np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['p.safetensors']
    monkeypatch.undo()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(KeyboardInterrupt):
        ptp.save(path, {'w': np.zeros(3, np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['p.safetensors']


def test_killed_writer_leaves_previous_file(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'w': np.ones(3, np.float32)})
    before = path.read_bytes()
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from pytreeparams import _atomic
        def die(f):
            f.write(b'x' * 100)
            f.flush()
            os._exit(9)
        _atomic.atomic_write({str(path)!r}, die)
        """
    )
    proc = subprocess.run([sys.executable, '-c', code])
    assert proc.returncode == 9
    assert path.read_bytes() == before
    assert ptp.load(path)['w'].tolist() == [1.0, 1.0, 1.0]


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


def _valid_bytes(tmp_path, suffix):
    tree = {
        'a': {'w': np.arange(12, dtype=np.float32).reshape(3, 4)},
        'b': [np.ones(2, np.int8)],
        'n': 2,
    }
    path = tmp_path / f'v.{suffix}'
    ptp.save(path, tree)
    return path.read_bytes()


FUZZ = settings(
    max_examples=int(os.environ.get('PTP_FUZZ_EXAMPLES', '1000')),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


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
        assert list(f.keys()) == ['params/wte/embedding']


SHARDED = textwrap.dedent(
    """
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import pytreeparams as ptp
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))
    sh = {'w': NamedSharding(mesh, P('d', 'm')), 'b': NamedSharding(mesh, P('m'))}
    tree = {'w': jax.device_put(jnp.arange(128.0).reshape(16, 8), sh['w']),
            'b': jax.device_put(jnp.arange(8, dtype=jnp.bfloat16), sh['b'])}
    path = sys.argv[1]
    ptp.save(path, tree)
    like = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in tree.items()}
    back = ptp.load(path, like=like)
    for k in tree:
        assert back[k].sharding == sh[k], back[k].sharding
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(tree[k]))
    print('OK')
    """
)


def test_orbax_sharded_restore_on_8_devices(tmp_path):
    assert 'OK' in run_on_8_devices(SHARDED, str(tmp_path / 'ckpt'))


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


# --------------------------------------------------------------------------
# Hardening (issue 13): nothing lost.


def test_orbax_save_refuses_a_folder_or_file_that_is_no_checkpoint(tmp_path):
    pytest.importorskip('orbax.checkpoint')
    results = tmp_path / 'results'
    results.mkdir()
    (results / 'thesis.txt').write_text('x')
    with pytest.raises(FileExistsError, match='not a checkpoint'):
        ptp.save(str(results), {'w': jnp.ones(2)})
    assert (results / 'thesis.txt').read_text() == 'x'
    makefile = tmp_path / 'Makefile'
    makefile.write_text('all:')
    with pytest.raises(FileExistsError, match='is a file'):
        ptp.save(str(makefile), {'w': jnp.ones(2)})
    assert makefile.read_text() == 'all:'


@pytest.mark.parametrize('fail', ['write', 'metadata', 'first_rename', 'second_rename'])
def test_orbax_failure_midway_keeps_the_old_checkpoint_and_no_temporary(
    tmp_path, monkeypatch, fail
):
    ocp = pytest.importorskip('orbax.checkpoint')

    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'w': jnp.arange(3.0)})
    real_replace = os.replace
    calls = []

    def replace(a, b):
        calls.append((a, b))
        if (fail == 'first_rename' and len(calls) == 1) or (
            fail == 'second_rename' and len(calls) == 2
        ):
            raise OSError('injected')
        return real_replace(a, b)

    if fail == 'write':

        def boom(self, *a, **k):
            raise OSError('injected disk error')

        monkeypatch.setattr(ocp.StandardCheckpointer, 'save', boom)
    elif fail == 'metadata':  # after Orbax finalized the new folder, before it is moved in

        def boom_meta(*a, **k):
            raise OSError('injected: disk full writing pytreeparams.json')

        monkeypatch.setattr(_orbax.json, 'dump', boom_meta)
    else:
        monkeypatch.setattr(_orbax.os, 'replace', replace)
    with pytest.raises(OSError, match='injected'):
        ptp.save(ck, {'w': jnp.arange(3.0) + 10})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ['ck']
    np.testing.assert_array_equal(ptp.load(ck)['w'], np.arange(3.0))


def test_save_through_a_symlink_writes_the_target(tmp_path):
    target = tmp_path / 'real.safetensors'
    link = tmp_path / 'link.safetensors'
    ptp.save(str(target), {'w': jnp.zeros(2)})
    link.symlink_to(target)
    ptp.save(str(link), {'w': jnp.ones(2)})
    assert link.is_symlink()
    np.testing.assert_array_equal(ptp.load(str(target))['w'], np.ones(2))


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist') as e:
        ptp.save(str(tmp_path / 'nope' / 'x.safetensors'), {'w': jnp.ones(2)})
    assert '.tmp' not in str(e.value)


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


def test_foreign_names_that_collide_are_format_errors(tmp_path):
    from safetensors.numpy import save_file

    for i, names in enumerate([['a.b', 'a/b'], ['a', 'a.b'], ['', 'x'], ['a..b'], ['/a']]):
        path = str(tmp_path / f'foreign{i}.safetensors')
        save_file({n: np.ones(2, np.float32) for n in names}, path)
        with pytest.raises(ptp.FormatError, match='cannot be placed|empty part'):
            ptp.load(path)


def test_msgpack_takes_every_tree_kind_and_refuses_what_it_cannot_hold(tmp_path):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(3.0))

    state = nnx.state(Net())
    path = str(tmp_path / 's.msgpack')
    ptp.save(path, state)
    back = ptp.load(path, like=state)
    assert type(back) is type(state)
    np.testing.assert_array_equal(ptp.get(back, 'w'), np.arange(3.0))
    for bad in ({'x': object()}, {'x': jax.ShapeDtypeStruct((2,), jnp.float32)}):
        with pytest.raises(ValueError, match='nothing was written|abstract'):
            ptp.save(str(tmp_path / 'b.msgpack'), bad)
    assert not (tmp_path / 'b.msgpack').exists()


def test_orbax_shape_or_structure_mismatch_names_the_path(tmp_path):
    pytest.importorskip('orbax.checkpoint')
    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'a': jnp.ones(3), 'b': jnp.ones(2)})
    with pytest.raises(ptp.StructureError, match=r"'a' \(expected float32\[4\]"):
        ptp.load(ck, like={'a': jnp.ones(4), 'b': jnp.ones(2)})
    with pytest.raises(ptp.StructureError, match="missing 1: 'c'"):
        ptp.load(ck, like={'a': jnp.ones(3), 'b': jnp.ones(2), 'c': jnp.ones(1)})


# Structured attacks: well-formed containers with hostile contents.
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)


def _safetensors_bytes(header: dict) -> bytes:
    import json

    body = json.dumps(header).encode()
    return len(body).to_bytes(8, 'little') + body


@FUZZ
@given(data=st.data())
def test_fuzz_structured_safetensors_headers(tmp_path, data):
    """Hostile header fields (shapes as floats, strings or dicts, huge or many
    dimensions, infinite offsets, nested JSON, corrupt structure and ties
    metadata, colliding names): every failure is a FormatError naming the file."""
    import json

    name = data.draw(st.sampled_from(['a', 'a.b', 'a/b', '', '/a', 'a..b']))
    entry = {
        'dtype': data.draw(st.sampled_from(['F32', 'BF16', 'I64', 'X9']) | JSONISH),
        'shape': data.draw(
            st.sampled_from([[2], [2**62, 4, 0], [1] * 70, [1.5], '1', {'1': 2}, [-1]]) | JSONISH
        ),
        'data_offsets': data.draw(st.sampled_from([[0, 8], [0, float('inf')], [0]]) | JSONISH),
    }
    header: dict = {name: entry}
    if data.draw(st.booleans()):
        header['a.b' if name != 'a.b' else 'a/b'] = {
            'dtype': 'F32',
            'shape': [2],
            'data_offsets': [8, 16],
        }
    meta = data.draw(
        st.sampled_from(
            [
                None,
                json.dumps({'structure': {'t': 'dict', 'k': [['a', {'t': 'array'}]]}}),
                json.dumps({'structure': [1, 2]}),
                json.dumps({'structure': {'t': 'dict', 'k': []}, 'ties': [['x']]}),
                json.dumps({'structure': {'t': 'dict', 'k': []}, 'ties': {'b': ['a', 'nope']}}),
                '[' * 5000 + ']' * 5000,
                json.dumps([1]),
            ]
        )
    )
    if meta is not None:
        header['__metadata__'] = {'pytreeparams': meta}
    path = tmp_path / 'f.safetensors'
    path.write_bytes(_safetensors_bytes(header) + bytes(16))
    try:
        out = ptp.load(path)
    except ptp.FormatError as e:
        assert path.name in str(e)
    else:
        assert isinstance(ptp.paths(out), list)


@FUZZ
@given(record=JSONISH)
def test_fuzz_structured_msgpack_and_orbax_records(tmp_path, record):
    import json

    from flax import serialization

    path = tmp_path / 'f.msgpack'
    state = {'__pytreeparams__': json.dumps(record), 'tree': {'w': np.ones(2, np.float32)}}
    path.write_bytes(serialization.msgpack_serialize(state))
    try:
        ptp.load(path)
    except ptp.FormatError as e:
        assert path.name in str(e)


_ORBAX_FILES = ['pytreeparams.json', '_METADATA', '_CHECKPOINT_METADATA', '_sharding']


@FUZZ
@given(
    target=st.sampled_from(_ORBAX_FILES),
    record=JSONISH,
    cut=st.one_of(st.none(), st.integers(0, 400)),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 400), st.integers(1, 255))),
)
def test_fuzz_structured_orbax_folders(tmp_path, target, record, cut, flip):
    """An Orbax folder whose metadata files hold hostile JSON, or are truncated
    or bit-flipped: every failure is a FormatError naming the folder."""
    import json

    pytest.importorskip('orbax.checkpoint')
    ck = tmp_path / 'ck'
    if not ck.exists():
        ptp.save(str(ck), {'w': jnp.arange(3.0), 'b': {'c': jnp.zeros(2, jnp.bfloat16)}})
    file = ck / target
    original = file.read_bytes()
    data = json.dumps(record).encode() if cut is None and flip is None else original
    if cut is not None:
        data = data[:cut]
    if flip is not None and data:
        i = flip[0] % len(data)
        data = data[:i] + bytes([data[i] ^ flip[1]]) + data[i + 1 :]
    file.write_bytes(data)
    try:
        out = ptp.load(str(ck))
    except ptp.FormatError as e:
        assert 'ck' in str(e)
    else:
        assert sorted(ptp.paths(out)) == ['b/c', 'w']
    finally:
        file.write_bytes(original)


def test_orbax_checkpoint_manager_folders(tmp_path):
    ocp = pytest.importorskip('orbax.checkpoint')
    root = str(tmp_path / 'mgr')
    mgr = ocp.CheckpointManager(root)
    for step in (0, 5):
        mgr.save(step, args=ocp.args.StandardSave({'w': jnp.ones(3) * step}))
    mgr.wait_until_finished()
    mgr.close()
    assert ptp.load(root)['w'].tolist() == [5.0, 5.0, 5.0]  # the latest step
    assert ptp.load(root, step=0)['w'].tolist() == [0.0, 0.0, 0.0]
    assert ptp.load(os.path.join(root, '0'))['w'].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(FileNotFoundError, match=r'steps: \[0, 5\]'):
        ptp.load(root, step=3)
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, '-m', 'pytreeparams', 'summary', root, '--step', '0'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and '1 leaves, 3 parameters' in r.stdout, r.stderr


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


def test_load_select_reads_only_the_selected_tensors(tmp_path):
    """select= gives the matching leaves as nested dicts (a safetensors file is
    memory-mapped: the peak memory is measured in benchmarks/io.py --lazy)."""
    tree = {f'block_{i}': {'w': np.full((64, 64), i, np.float32)} for i in range(20)}
    path = tmp_path / 'big.safetensors'
    ptp.save(str(path), tree)
    out = ptp.load(str(path), select='block_3/**')
    assert list(ptp.paths(out)) == ['block_3/w']
    np.testing.assert_array_equal(out['block_3']['w'], tree['block_3']['w'])
    with pytest.raises(ptp.PathError, match='Nearest paths'):
        ptp.load(str(path), select='block_99/**')
    with pytest.raises(ValueError, match='not both'):
        ptp.load(str(path), select='block_3/**', like=tree)
