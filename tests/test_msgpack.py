"""Tests for _msgpack: Flax msgpack files of every tree kind, hostile records."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytreeparams as ptp

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


FUZZ = settings(
    max_examples=int(os.environ.get('PTP_FUZZ_EXAMPLES', '1000')),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees())
def test_msgpack_round_trip_bit_exact(tmp_path, tree):
    path = tmp_path / 't.msgpack'
    ptp.save(path, tree)
    back = ptp.load(path, like=tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert_bit_exact(back, tree)


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
