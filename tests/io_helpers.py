"""Strategies and checks shared by the file-format tests (safetensors, msgpack, Orbax, io)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from hypothesis import HealthCheck, settings
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
def file_trees(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(arrays())
    kind = draw(st.sampled_from(['dict', 'frozen', 'list', 'tuple']))
    child = file_trees(depth=depth - 1)
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
