"""Tests for _orbax: checkpoints, managers, sharded restores, failures midway, fuzzed folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_8_devices
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_helpers import ALL_DTYPES, FUZZ, JSONISH, KEYS, arrays, assert_bit_exact

import pytreeparams as ptp
from pytreeparams._files import _orbax

SHARDED = textwrap.dedent(
    """
    import os, sys
    flags = os.environ.get('XLA_FLAGS', '')
    os.environ['XLA_FLAGS'] = flags + ' --xla_force_host_platform_device_count=8'
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


_ORBAX_FILES = ['pytreeparams.json', '_METADATA', '_CHECKPOINT_METADATA', '_sharding']


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


def test_orbax_sharded_restore_on_8_devices(tmp_path):
    assert 'OK' in run_on_8_devices(SHARDED, str(tmp_path / 'ckpt'))


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

        monkeypatch.setattr(_orbax, '_write_text', boom_meta)
    else:
        monkeypatch.setattr(_orbax.os, 'replace', replace)
    with pytest.raises(OSError, match='injected'):
        ptp.save(ck, {'w': jnp.arange(3.0) + 10})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ['ck']
    np.testing.assert_array_equal(ptp.load(ck)['w'], np.arange(3.0))


def test_orbax_shape_or_structure_mismatch_names_the_path(tmp_path):
    pytest.importorskip('orbax.checkpoint')
    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'a': jnp.ones(3), 'b': jnp.ones(2)})
    with pytest.raises(ptp.StructureError, match=r"'a' \(expected float32\[4\]"):
        ptp.load(ck, like={'a': jnp.ones(4), 'b': jnp.ones(2)})
    with pytest.raises(ptp.StructureError, match="missing 1 path: 'c'"):
        ptp.load(ck, like={'a': jnp.ones(3), 'b': jnp.ones(2), 'c': jnp.ones(1)})


@pytest.mark.heavy
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

    r = subprocess.run(
        [sys.executable, '-m', 'pytreeparams', 'summary', root, '--step', '0'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and '1 leaf, 3 parameters' in r.stdout, r.stderr


def test_load_select_is_an_orbax_partial_restore(tmp_path, monkeypatch):
    """select= on an Orbax checkpoint restores only the matching arrays (Orbax's
    partial restore: the full restore is never called), as nested dicts; no match
    names the nearest paths."""
    ocp = pytest.importorskip('orbax.checkpoint')
    tree = {f'block_{i}': {'w': jnp.full((8, 8), float(i)), 'b': jnp.arange(3.0)} for i in range(5)}
    ck = str(tmp_path / 'ck')
    ptp.save(ck, tree)

    def no_full_restore(*args, **kwargs):
        raise AssertionError('the whole checkpoint was restored')

    monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', no_full_restore)
    out = ptp.load(ck, select='block_3/**')
    assert sorted(ptp.paths(out)) == ['block_3/b', 'block_3/w']
    chex.assert_trees_all_equal(out['block_3'], tree['block_3'])
    only_w = ptp.load(ck, select=['block_1/w', 'block_4/w'])
    assert sorted(ptp.paths(only_w)) == ['block_1/w', 'block_4/w']
    with pytest.raises(ptp.PathError, match='Nearest paths'):
        ptp.load(ck, select='block_99/**')
