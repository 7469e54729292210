"""Tests for _msgpack: Flax msgpack files of every tree kind, hostile records."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from io_helpers import FUZZ, JSONISH, assert_bit_exact
from io_helpers import file_trees as trees

import pytreeparams as ptp


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


@pytest.mark.heavy
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
