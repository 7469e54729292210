"""Tests for _safetensors: bit-exact files other readers take, hostile headers, lazy reads."""

from __future__ import annotations

import os

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_helpers import FUZZ, JSONISH, assert_bit_exact
from io_helpers import file_trees as trees

import pytreeparams as ptp


def _safetensors_bytes(header: dict) -> bytes:
    import json

    body = json.dumps(header).encode()
    return len(body).to_bytes(8, 'little') + body


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees())
def test_safetensors_round_trip_bit_exact(tmp_path, tree):
    path = tmp_path / 't.safetensors'
    ptp.save(path, tree)
    back = ptp.load(path)
    assert_bit_exact(back, tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert_bit_exact(ptp.load(path, like=tree), tree)


def test_safetensors_readable_by_other_readers(tmp_path):
    from safetensors import safe_open

    tree = {'params': {'dense': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    path = str(tmp_path / 'p.safetensors')
    ptp.save(path, tree)
    with safe_open(path, framework='np') as f:
        assert list(f.keys()) == ['params.dense.kernel']  # Hugging Face's Flax names
        assert f.metadata()['format'] == 'flax'
        np.testing.assert_array_equal(
            f.get_tensor('params.dense.kernel'), tree['params']['dense']['kernel']
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
    with pytest.raises(ValueError, match="'z' has dtype complex128, which safetensors cannot hold"):
        ptp.save(path, {'w': np.ones(2, np.float32), 'z': np.ones(2, np.complex128)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['c.safetensors']


def test_foreign_names_that_collide_are_format_errors(tmp_path):
    from safetensors.numpy import save_file

    for i, names in enumerate([['a.b', 'a/b'], ['a', 'a.b'], ['', 'x'], ['a..b'], ['/a']]):
        path = str(tmp_path / f'foreign{i}.safetensors')
        save_file({n: np.ones(2, np.float32) for n in names}, path)
        with pytest.raises(ptp.FormatError, match='cannot be placed|empty part'):
            ptp.load(path)


@pytest.mark.heavy
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
