"""Files that other software reads, and files that cannot hurt: issues 23 and 26.

Arrays from ``load`` that the file cannot change, devices and hostile ``.npz``
members refused before any allocation, Hugging Face's Flax layout in
safetensors, Flax-readable msgpack, 0-d parameters, 64-bit values, every
safetensors dtype, modes that follow the umask, ``select=`` over tied names,
torch tensors as leaves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_helpers import FUZZ, assert_bit_exact, bits_equal

import pytreeparams as ptp

# ---------------------------------------------------------------- 23.3: no aliasing


def _big(value: float) -> dict:
    return {'a': {'w': np.full((64, 64), value, np.float32)}, 'b': np.full(1024, value, np.int32)}


def _replace_in_place(path, tree) -> None:
    """``cp new.safetensors path``: the same inode, rewritten."""
    new = str(path) + '.new.safetensors'
    ptp.save(new, tree)
    with open(new, 'rb') as src, open(path, 'r+b') as dst:
        dst.write(src.read())
    os.unlink(new)


def test_loaded_arrays_do_not_change_when_the_file_is_replaced(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, _big(1.0))
    whole = ptp.load(path)
    picked = ptp.load(path, select='a/**')
    sd = ptp.read_state_dict(path)
    into, _ = ptp.load_into(
        path, like={'a': {'w': np.zeros((64, 64), np.float32)}, 'b': np.zeros(1024, np.int32)}
    )
    _replace_in_place(path, _big(7.0))
    for got in (whole, picked, into):
        assert float(np.asarray(got['a']['w']).max()) == 1.0
    assert float(sd['a.w'].max()) == 1.0 and int(whole['b'].max()) == 1


def test_mmap_true_gives_the_zero_copy_view_that_follows_the_file(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, _big(1.0))
    lazy = ptp.load(path, mmap=True)
    sd = ptp.read_state_dict(path, mmap=True)
    _replace_in_place(path, _big(7.0))
    assert float(lazy['a']['w'].max()) == 7.0 and float(sd['a.w'].max()) == 7.0
    assert not lazy['a']['w'].flags.writeable


def test_truncating_the_file_after_load_keeps_the_process_alive(tmp_path):
    path = str(tmp_path / 'p.safetensors')
    ptp.save(path, _big(3.0))
    code = textwrap.dedent(
        f"""
        import os, numpy as np, pytreeparams as ptp
        path = {path!r}
        t = ptp.load(path)
        s = ptp.load(path, select='b')
        sd = ptp.read_state_dict(path)
        into, _ = ptp.load_into(path, like={{'a': {{'w': np.zeros((64, 64), np.float32)}},
                                             'b': np.zeros(1024, np.int32)}})
        os.truncate(path, 0)
        print(float(t['a']['w'].sum()), int(s['b'].sum()), float(sd['a.w'].sum()),
              float(into['a']['w'].sum()))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['12288.0', '3072', '12288.0', '12288.0']


# ---------------------------------------------------------------- 23.9: hostile files


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack', 'npz'])
def test_a_device_is_refused_not_read_until_memory_runs_out(tmp_path, suffix):
    link = tmp_path / f'x.{suffix}'
    os.symlink('/dev/zero', link)
    with pytest.raises(ptp.FormatError, match='is not a regular file'):
        ptp.load(link)
    if suffix != 'msgpack':
        with pytest.raises(ptp.FormatError, match='is not a regular file'):
            ptp.read_state_dict(link)


def _npy(arr_or_header: np.ndarray | bytes) -> bytes:
    if isinstance(arr_or_header, bytes):
        return arr_or_header
    buf = io.BytesIO()
    np.save(buf, arr_or_header, allow_pickle=True)
    return buf.getvalue()


def _npz(path, members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a duplicate name warns
        with zipfile.ZipFile(path, 'w', compress) as z:
            for name, data in members:
                z.writestr(name, data)


def _npy_header(shape: tuple, descr: str = '<f8') -> bytes:
    header = repr({'descr': descr, 'fortran_order': False, 'shape': shape}).encode()
    header += b' ' * (63 - len(header) % 64) + b'\n'
    return b'\x93NUMPY\x01\x00' + len(header).to_bytes(2, 'little') + header


def test_hostile_npz_files_are_format_errors_naming_what_is_wrong(tmp_path):
    good = tmp_path / 'good.npz'
    np.savez(good, w=np.arange(6.0))
    raw = good.read_bytes()
    cases = {
        'truncated': (raw[: len(raw) // 2], 'not a complete zip archive'),
        'not a zip': (b'hello, not an archive at all', 'not a complete zip archive'),
        'huge': (
            [('w.npy', _npy_header((2**40,)) + bytes(16))],
            r'declares float64\[1099511627776\]',
        ),
        'not npy': (
            [('w.npy', _npy(np.ones(2))), ('notes.txt', b'hi')],
            "'notes.txt' is not a .npy",
        ),
        'twice': (
            [('w.npy', _npy(np.ones(2))), ('w.npy', _npy(np.zeros(2)))],
            'two of its members',
        ),
        'object': ([('w.npy', _npy(np.array([{}], object)))], r'pickled \(object\) data'),
        'short': ([('w.npy', _npy(np.ones(8))[:-8])], 'ends after 56 of its 64 bytes'),
        'long': ([('w.npy', _npy(np.ones(2)) + b'xx')], 'more bytes than'),
        'bomb': (
            [('w.npy', _npy_header((2**20,)) + bytes(8 * 2**20))],
            None,  # a valid, highly compressed member loads
        ),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / f'{name.replace(" ", "_")}.npz'
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _npz(path, content, zipfile.ZIP_DEFLATED if name == 'bomb' else zipfile.ZIP_STORED)
        if words is None:
            assert ptp.load(path)['w'].shape == (2**20,)
            continue
        for read in (ptp.load, ptp.read_state_dict):
            with pytest.raises(ptp.FormatError, match=words) as e:
                read(path)
            assert path.name in str(e.value), name


def test_npz_member_claiming_more_than_deflate_can_give_is_refused(tmp_path):
    path = tmp_path / 'claim.npz'
    _npz(path, [('w.npy', _npy(np.ones(4)))], zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    # raise the central directory's uncompressed size of the member to 1 TiB
    at = raw.rfind(b'PK\x01\x02')
    raw[at + 24 : at + 28] = (2**32 - 1).to_bytes(4, 'little')
    path.write_bytes(bytes(raw))
    with pytest.raises(ptp.FormatError, match='claims 4,294,967,295 bytes'):
        ptp.load(path)


NPZ_NAMES = st.sampled_from(['w.npy', 'a.b.npy', 'a/b.npy', 'a.npy', '.npy', 'x', 'w.npy'])


@pytest.mark.heavy
@FUZZ
@given(data=st.data())
def test_fuzz_structured_npz_members(tmp_path, data):
    """Members with colliding or foreign names, hostile headers (huge, negative or
    odd shapes, object and unknown dtypes, Fortran order), short or long data,
    stored or deflated: each file loads as a tree or is a FormatError naming it."""
    members = []
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(NPZ_NAMES)
        shape = data.draw(
            st.sampled_from([(2,), (2**40,), (-1,), (2, 3), (), (0,), (2**62, 4)])
            | st.lists(st.integers(0, 4), max_size=3).map(tuple)
        )
        descr = data.draw(st.sampled_from(['<f8', '<i4', '|O', '<V2', 'xx', '|b1']))
        body = _npy_header(shape, descr) if descr != 'xx' else b'\x93NUMPY\x01\x00\x02\x00{}'
        body += data.draw(st.binary(max_size=64))
        members.append((name, body))
    path = tmp_path / 'f.npz'
    _npz(path, members, data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    if data.draw(st.booleans()):
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        out = ptp.load(path)
    except ptp.FormatError as e:
        assert path.name in str(e)
    else:
        assert len(ptp.paths(out)) == len({n for n, _ in members})


NAMES = st.lists(
    st.sampled_from(['a', 'a.b', 'a/b', 'b', 'a/b/c', 'a.b.c', 'a..b', '0', '__metadata__']),
    min_size=1,
    max_size=4,
    unique=True,
)


@pytest.mark.heavy
@FUZZ
@given(names=NAMES, fmt=st.sampled_from(['safetensors', 'msgpack', 'npz', 'foreign']))
def test_fuzz_names_that_collide_in_every_format(tmp_path, names, fmt):
    """Keys holding '.', '/', or a name a format reserves: every name comes
    back exactly with its own value, or the save (or load) is refused with a
    library error; never one value under two names or a name lost."""
    tree = {n: np.full(2, i, np.float32) for i, n in enumerate(names)}
    path = tmp_path / f'f.{"safetensors" if fmt == "foreign" else fmt}'
    try:
        if fmt == 'npz':
            np.savez(path, **tree)
        elif fmt == 'foreign':
            from safetensors.numpy import save_file

            save_file(tree, str(path))
        else:
            ptp.save(path, tree)
    except (ptp.StructureError, ValueError) as e:
        assert (
            fmt in ('safetensors', 'msgpack', 'foreign') and 'metadata' in str(e) or 'a/b' in str(e)
        )
        return
    try:
        back = ptp.load(path)
    except ptp.FormatError as e:
        assert fmt in ('npz', 'foreign') and path.name in str(e)
        return
    flat = ptp.flatten(back)
    assert len(flat) == len(names)
    if fmt in ('safetensors', 'msgpack'):
        assert_bit_exact(back, tree)
    values = sorted(float(v[0]) for v in flat.values())
    assert values == list(range(len(names)))


# ---------------------------------------------------------------- 23.12, 26.1: torch route


@pytest.mark.parametrize('dtype', [np.int64, np.float64, np.uint64])
def test_from_torch_keeps_64_bit_values_as_load_into_does(dtype):
    torch = pytest.importorskip('torch')
    big = np.array([2**40 + 1, 3], dtype)
    sd = {'w': torch.from_numpy(big.copy())}
    for like in ({'w': np.zeros(2, dtype)}, {'w': jax.ShapeDtypeStruct((2,), dtype)}):
        back, report = ptp.from_torch_state_dict(sd, like=like, rules=[('w', 'w', None)])
        assert report.ok
        assert back['w'].dtype == dtype and back['w'].tolist() == big.tolist()
        into, _ = ptp.load_into({'w': big}, like=like)
        assert into['w'].tolist() == big.tolist()


def test_zero_d_parameters_keep_their_shape_on_every_route(tmp_path):
    torch = pytest.importorskip('torch')
    params = {'s': jnp.array(2.0), 'w': jnp.ones((2, 2))}
    sd = ptp.to_torch_state_dict(params)
    assert sd['s'].shape == ()
    back, report = ptp.from_torch_state_dict(sd, like=params)
    assert report.ok and back['s'].shape == () and float(back['s']) == 2.0
    back, report = ptp.from_torch_state_dict(
        ptp.to_torch_state_dict(params, tensors=True), like=params
    )
    assert report.ok and back['s'].shape == ()
    for suffix in ('safetensors', 'msgpack'):
        path = tmp_path / f'p.{suffix}'
        ptp.save(path, params)
        assert ptp.load(path)['s'].shape == ()
        assert ptp.load_into(path, like=params)[0]['s'].shape == ()
    from safetensors import safe_open

    with safe_open(str(tmp_path / 'p.safetensors'), framework='np') as f:
        assert f.get_tensor('s').shape == ()  # the file itself says [], not [1]
    ptp.save(tmp_path / 'sd.safetensors', sd)
    back, report = ptp.from_torch_state_dict(tmp_path / 'sd.safetensors', like=params)
    assert report.ok and back['s'].shape == ()
    # a 0-d source for a (1,) target is a mismatch the report shows
    _, report = ptp.from_torch_state_dict(
        sd, like={'s': jnp.ones(1), 'w': jnp.ones((2, 2))}, strict=False
    )
    assert list(report.shape_mismatch) == ['s']
    del torch


# ------------------------------------------------ 23.14, 23.15: refused before writing


def test_metadata_named_tensor_is_refused_before_writing(tmp_path):
    path = tmp_path / 'm.safetensors'
    for tree in (
        {'__metadata__': np.ones(2)},
        {'__metadata__': np.ones(2), 'b': {'c': np.ones(1)}},
    ):
        with pytest.raises(ptp.StructureError, match="named '__metadata__'.*nothing was written"):
            ptp.save(path, tree)
        assert not path.exists()
    nested = {'x': {'__metadata__': np.ones(2)}}
    ptp.save(path, nested)
    assert_bit_exact(ptp.load(path), nested)
    ptp.save(tmp_path / 'm.msgpack', {'__metadata__': np.ones(2)})
    assert ptp.paths(ptp.load(tmp_path / 'm.msgpack')) == ['__metadata__']


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
def test_ties_naming_a_missing_path_are_refused_before_writing(tmp_path, suffix):
    path = tmp_path / f't.{suffix}'
    tree = {'head': np.ones(2, np.float32), 'x': np.ones(1, np.float32)}
    with pytest.raises(
        ptp.StructureError,
        match=r"save\(ties=\): the source 'wte' of the tie 'head' -> 'wte' is not in the "
        r'tree.*nothing was written',
    ):
        ptp.save(path, tree, ties=ptp.Ties({'head': 'wte'}))
    with pytest.raises(ptp.StructureError, match="the alias 'lm' of the tie"):
        ptp.save(path, tree, ties=ptp.Ties({'lm': 'x'}))
    assert not path.exists()


def test_save_under_a_file_says_the_parent_is_a_file(tmp_path):
    (tmp_path / 'f').write_text('')
    for target in ('f/x.safetensors', 'f/sub/x.msgpack'):
        with pytest.raises(NotADirectoryError, match=r"'.*/f' is a file, not a folder"):
            ptp.save(tmp_path / target, {'a': np.ones(1)})
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ptp.save(tmp_path / 'no' / 'x.safetensors', {'a': np.ones(1)})


# ---------------------------------------------------------------- 26.2, 26.3: files others read


def _hf_flax_safetensors(path):
    """What transformers' Flax ``from_pretrained`` does with a .safetensors file
    (modeling_flax_utils.load_flax_weights): safetensors.flax.load_file, then
    flax.traverse_util.unflatten_dict(sep='.')."""
    from flax.traverse_util import unflatten_dict
    from safetensors import safe_open
    from safetensors.flax import load_file

    with safe_open(str(path), framework='np') as f:
        label = (f.metadata() or {}).get('format')
    return label, unflatten_dict(load_file(str(path)), sep='.')


GPT2ISH = {
    'transformer': {
        'wte': {'embedding': np.arange(12, dtype=np.float32).reshape(4, 3)},
        'h': {'0': {'attn': {'c_attn': {'kernel': np.ones((3, 9), np.float32)}}}},
        'ln_f': {'scale': np.ones(3, np.float32), 'bias': np.zeros(3, np.float32)},
    }
}


def test_safetensors_labelled_flax_loads_in_hugging_face_flax(tmp_path):
    path = tmp_path / 'flax_model.safetensors'
    ptp.save(path, GPT2ISH)
    label, state = _hf_flax_safetensors(path)
    assert label == 'flax'
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), GPT2ISH)
    assert_bit_exact(ptp.load(path), GPT2ISH)
    # a PyTorch state dict keeps its names and its label
    sd = {'h.0.attn.weight': np.ones((2, 2), np.float32), 's': np.array(1.0, np.float32)}
    ptp.save(tmp_path / 'pt.safetensors', sd)
    label, _ = _hf_flax_safetensors(tmp_path / 'pt.safetensors')
    assert label == 'pt' and set(ptp.read_state_dict(tmp_path / 'pt.safetensors')) == set(sd)


def test_keys_with_dots_or_slashes_round_trip_and_drop_a_false_label(tmp_path):
    for tree, label in (
        ({'a': {'c': np.ones(2)}, 'd': np.zeros(1)}, 'flax'),
        ({'enc.layer': {'w': np.ones(2)}, 'enc': {'layer.w': np.zeros(2)}}, None),
        ({'a.b': np.ones(1), 'a': {'b': np.zeros(1)}}, None),
    ):
        path = tmp_path / 'k.safetensors'
        ptp.save(path, tree)
        got_label, state = _hf_flax_safetensors(path)
        assert got_label == label
        if label == 'flax':
            chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), tree)
        assert_bit_exact(ptp.load(path), tree)
        assert_bit_exact(ptp.load(path, like=tree), tree)


def _flax_trees():
    import optax
    from flax import nnx

    params = {'dense': {'kernel': jnp.arange(6.0).reshape(2, 3), 'bias': jnp.zeros(3)}}
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    return {
        'dict': params,
        'frozen': FrozenDict({'params': params}),
        'list': [jnp.ones(2), {'a': jnp.zeros(1)}],
        'nnx': nnx.state(model),
        'optax': optax.adam(1e-3).init(params),
        'variables': {'params': params, 'batch_stats': {'mean': jnp.ones(3)}, 'step': 3},
    }


def test_ptp_msgpack_reads_back_in_flax_serialization(tmp_path):
    from flax import nnx, serialization

    for name, tree in _flax_trees().items():
        path = tmp_path / f'{name}.msgpack'
        ptp.save(path, tree)
        data = path.read_bytes()
        target = tree.to_pure_dict() if isinstance(tree, nnx.State) else tree
        restored = serialization.from_bytes(target, data)
        chex.assert_trees_all_equal(
            jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, target)
        )
        want = serialization.to_state_dict(target)
        got = serialization.msgpack_restore(data)
        chex.assert_trees_all_equal(  # exactly Flax's state dict, nothing beside it
            jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want)
        )
        back = ptp.load(path, like=tree)
        assert type(back) is type(tree)
        assert_bit_exact(back, tree)
        assert jax.tree_util.tree_structure(
            ptp.load(path, like=tree)
        ) == jax.tree_util.tree_structure(tree)


def test_msgpack_written_by_flax_and_by_older_ptp_still_load(tmp_path):
    from flax import serialization

    params = {'w': np.arange(3.0, dtype=np.float32), 'sub': {'b': np.ones(1, np.float32)}}
    (tmp_path / 'flax.msgpack').write_bytes(serialization.to_bytes(params))
    assert_bit_exact(ptp.load(tmp_path / 'flax.msgpack'), params)
    old = {
        '__pytreeparams__': json.dumps(
            {'structure': {'t': 'frozen', 'k': [['w', {'t': 'array', 's': [3]}]]}}
        ),
        'tree': {'w': params['w']},
    }
    (tmp_path / 'old.msgpack').write_bytes(serialization.msgpack_serialize(old))
    back = ptp.load(tmp_path / 'old.msgpack')
    assert type(back) is FrozenDict and bits_equal(back['w'], params['w'])
    ptp.save(tmp_path / 'leaf.msgpack', np.arange(2.0))  # a root with no key keeps the wrapper
    assert bits_equal(ptp.load(tmp_path / 'leaf.msgpack'), np.arange(2.0))


# ---------------------------------------------------------------- 26.7: torch tensors as leaves


def test_torch_state_dicts_are_readable_trees():
    torch = pytest.importorskip('torch')
    a = {'w': torch.ones(2, 3), 'b': torch.zeros(3, dtype=torch.bfloat16), 'n': torch.tensor(4)}
    b = {'w': torch.ones(2, 3) * 2, 'b': torch.zeros(3, dtype=torch.bfloat16), 'n': torch.tensor(4)}
    assert ptp.shapes(a) == {'w': (2, 3), 'b': (3,), 'n': ()}
    assert ptp.describe(a['b']) == 'bfloat16[3]' and ptp.describe(a['w']) == 'float32[2,3]'
    report = ptp.diff(a, b)
    assert report.changed == {} and report.rel_change['w'] == pytest.approx(1.0)
    assert report.rel_change['b'] == 0.0
    like = {'w': jnp.zeros((2, 3)), 'b': jnp.zeros(3, jnp.bfloat16), 'n': np.zeros((), np.int64)}
    out, report = ptp.load_into(a, like=like)
    assert report.ok and float(out['w'].sum()) == 6.0 and out['b'].dtype == jnp.bfloat16


# ---------------------------------------------------------------- 26.10: select over tied names


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
def test_select_on_a_tied_file_works_over_the_tied_names(tmp_path, suffix):
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    tree = {
        'wte': {'embedding': emb},
        'head': {'kernel': emb.T.copy()},
        'b': np.ones(2, np.float32),
    }
    ties = ptp.Ties({'head/kernel': ('wte/embedding', ptp.transpose)})
    path = tmp_path / f't.{suffix}'
    ptp.save(path, tree, ties=ties)
    got = ptp.load(path, select='head/**')
    assert ptp.paths(got) == ['head/kernel']
    assert bits_equal(got['head']['kernel'], emb.T)
    assert ptp.paths(ptp.load(path, select='wte/**')) == ['wte/embedding']
    assert ptp.paths(ptp.load(path, select='b')) == ['b']
    assert ptp.paths(ptp.load(path, select=['b', '*/kernel'])) == ['b', 'head/kernel']
    with pytest.raises(ptp.PathError, match='matches none|match none|no leaf'):
        ptp.load(path, select='nothing/**')


# ---------------------------------------------------------------- 26.13: every dtype


ST_DTYPES = [
    'float64', 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8',
    'uint64', 'uint32', 'uint16', 'uint8', 'bool', 'float8_e4m3fn', 'float8_e5m2',
    'float8_e4m3fnuz', 'float8_e5m2fnuz', 'float8_e8m0fnu', 'complex64',
]  # fmt: skip


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name, None) or name)


@st.composite
def any_bits(draw):
    dtype = _dtype(draw(st.sampled_from(ST_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = int(np.prod(shape)) * dtype.itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    if dtype == np.bool_:
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dtype).reshape(shape).copy()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(st.sampled_from(['a', 'b', 'c', 'd']), any_bits(), min_size=1))
def test_every_safetensors_dtype_round_trips_bit_exactly(tmp_path, tree):
    path = tmp_path / 'd.safetensors'
    ptp.save(path, {'p': tree})
    assert_bit_exact(ptp.load(path), {'p': tree})
    assert_bit_exact(ptp.load(path, mmap=True), {'p': tree})
    ptp.save(tmp_path / 'd.msgpack', {'p': tree})
    assert_bit_exact(ptp.load(tmp_path / 'd.msgpack'), {'p': tree})


def test_safetensors_files_of_earlier_versions_with_slash_names_still_load(tmp_path):
    from safetensors.numpy import save_file

    spec = {'t': 'dict', 'k': [['a', {'t': 'frozen', 'k': [['w', {'t': 'array', 's': [2]}]]}]]}
    meta = {'version': 1, 'structure': spec}
    path = str(tmp_path / 'old.safetensors')
    save_file({'a/w': np.ones(2, np.float32)}, path, metadata={'pytreeparams': json.dumps(meta)})
    back = ptp.load(path)
    assert type(back['a']) is FrozenDict and bits_equal(back['a']['w'], np.ones(2, np.float32))


def test_safetensors_dtypes_written_by_the_reference_writer_are_read(tmp_path):
    from safetensors.numpy import save_file

    tree = {name: np.arange(4).astype(_dtype(name)) for name in ST_DTYPES if name != 'bool'}
    path = str(tmp_path / 'ref.safetensors')
    save_file(tree, path)
    sd = ptp.read_state_dict(path)
    for name, arr in tree.items():
        assert bits_equal(sd[name], arr), name


# ---------------------------------------------------------------- 26.17: modes


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
def test_saved_files_get_the_umask_mode_and_keep_a_replaced_files_mode(tmp_path, suffix):
    path = tmp_path / f'm.{suffix}'
    old = os.umask(0o022)
    try:
        ptp.save(path, {'w': np.ones(2)})
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
        os.chmod(path, 0o640)
        ptp.save(path, {'w': np.zeros(2)})
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)
        os.umask(0o077)
        ptp.save(tmp_path / f'private.{suffix}', {'w': np.ones(2)})
        assert oct(os.stat(tmp_path / f'private.{suffix}').st_mode & 0o777) == oct(0o600)
    finally:
        os.umask(old)


@pytest.mark.parametrize('suffix', ['safetensors', 'msgpack'])
def test_64_bit_values_survive_like_with_a_sharding(tmp_path, suffix):
    big = np.array([2**40 + 1, 3], np.int64)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = {'w': jax.ShapeDtypeStruct((2,), np.int64, sharding=sharding)}
    path = tmp_path / f'b.{suffix}'
    ptp.save(path, {'w': big})
    assert ptp.load(path, like=like)['w'].tolist() == big.tolist()
    assert ptp.load_into(path, like=like)[0]['w'].tolist() == big.tolist()
    assert ptp.load_into({'w': big}, like=like)[0]['w'].tolist() == big.tolist()


def test_hugging_face_loads_ptp_files_where_transformers_is_installed(tmp_path):
    """With transformers (4.46.3 checked, outside this venv): both the Flax and
    the PyTorch GPT-2 read ptp's model.safetensors, and the Flax one its
    flax_model.msgpack, with identical weights (not random ones and a warning)."""
    transformers = pytest.importorskip('transformers')
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
    model = transformers.FlaxGPT2LMHeadModel(cfg, seed=0)
    for name in ('model.safetensors', 'flax_model.msgpack'):
        folder = tmp_path / name.split('.')[1]
        cfg.save_pretrained(folder)
        ptp.save(folder / name, model.params)
        back = transformers.FlaxGPT2LMHeadModel.from_pretrained(folder, seed=1)
        chex.assert_trees_all_equal(back.params, model.params)
    if pytest.importorskip('torch'):
        pt = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'safetensors')
        wte = model.params['transformer']['wte']['embedding']
        assert np.array_equal(pt.transformer.wte.weight.detach().numpy(), np.asarray(wte))


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack', ''])
def test_select_without_the_prng_keys_of_a_file(tmp_path, suffix):
    if not suffix:
        pytest.importorskip('orbax.checkpoint')
    path = str(tmp_path / f'c{suffix}')
    ptp.save(path, {'w': np.ones(2, np.float32), 'rng': jax.random.key(0)})
    assert ptp.paths(ptp.load(path, select='w')) == ['w']
    key = ptp.load(path, select='rng')['rng']
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
