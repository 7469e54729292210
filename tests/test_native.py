"""The one-pass C kernel of the host statistics against NumPy references."""

from __future__ import annotations

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pytreeparams as ptp
from pytreeparams import _stats

native = pytest.mark.skipif(_stats._native is None, reason='built without the C kernel')


def reference(x: np.ndarray) -> np.ndarray:
    """``STAT_NAMES`` of ``x`` in float64 NumPy, NaN propagating as documented."""
    a = np.abs(x) if np.iscomplexobj(x) else x
    a = np.asarray(a).astype(np.float64).ravel()
    if a.size == 0:
        return np.array([np.nan] * 5 + [0.0, np.nan])
    with np.errstate(all='ignore'):
        return np.array(
            [
                a.mean(),
                a.std(),
                a.min(),
                a.max(),
                np.sqrt(np.sum(a * a)),
                np.count_nonzero(~np.isfinite(a)),
                np.count_nonzero(a == 0) / a.size,
            ]
        )


def check(got: np.ndarray, ref: np.ndarray) -> None:
    assert got[5] == ref[5] and got[6] == ref[6] or np.isnan(ref[6])  # counts are exact
    if ref[5] > 0:  # documented: moments inf or NaN, min and max as NumPy gives them
        assert not np.isfinite(got[[0, 1, 4]]).any()
        np.testing.assert_array_equal(got[2:4], ref[2:4])
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = np.isfinite(ref)
    scale = np.maximum(np.abs(ref[finite]), 1e-6)
    np.testing.assert_array_less(np.abs(got[finite] - ref[finite]) / scale, 2e-4)


def test_ci_builds_the_kernel():
    """CI sets PTP_REQUIRE_NATIVE=1: there the kernel must have been built."""
    if os.environ.get('PTP_REQUIRE_NATIVE') == '1':
        assert _stats._native is not None


@native
@pytest.mark.parametrize('dtype', ['float32', 'float64', 'bfloat16', 'float16', 'int32', 'bool'])
def test_every_dtype_with_zeros_nan_inf(dtype):
    rng = np.random.default_rng(0)
    base = (3.0 + rng.standard_normal(10_001)).astype(np.float64)
    base[[1, 50, 9_999]] = 0.0
    if dtype == 'bool':
        x = base > 3.0
    elif dtype == 'int32':
        x = (base * 1000).astype(np.int32)
    else:
        x = base.astype(jnp.dtype(dtype))
    leaves = [x, jnp.asarray(x)]
    if dtype in ('float32', 'float64', 'bfloat16', 'float16'):
        y = x.copy()
        y[[7, 8000]] = np.nan
        y[100] = np.inf
        z = x.copy()
        z[[3, 4]] = [np.inf, -np.inf]  # Inf without NaN: min/max are the infinities
        leaves += [y, jnp.asarray(y), z]
    got = _stats.native_stats_many(leaves)
    for g, leaf in zip(got, leaves):
        check(g, reference(np.asarray(leaf)))


@native
def test_large_leaves_split_over_threads_agree_with_one_thread():
    rng = np.random.default_rng(1)
    big = (1.0 + 0.01 * rng.standard_normal(3 * _stats._PIECE + 17)).astype(np.float32)
    big[[5, 2 * _stats._PIECE + 3]] = 0.0
    leaves = [np.ones(10, np.float32), big, jnp.asarray(big.astype(ml_dtypes.bfloat16)), big[:3]]
    many = _stats.native_stats_many(leaves, workers=3)
    one = _stats.native_stats_many(leaves, workers=1)
    for a, b, leaf in zip(many, one, leaves):
        check(a, reference(np.asarray(leaf)))
        np.testing.assert_allclose(a, b, rtol=1e-6)
    big[2 * _stats._PIECE + 11] = np.nan  # NaN in the second piece only
    got = _stats.native_stats_many([big], workers=3)[0]
    assert got[5] == 1 and np.isnan(got[0]) and np.isnan(got[2]) and np.isnan(got[3])


@native
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_variance_does_not_cancel_for_any_offset(dtype):
    """An outlier first (hypothesis found 641 then zeros) and a large common offset."""
    rng = np.random.default_rng(3)
    outlier = np.zeros(5000, np.float32)
    outlier[0] = 1e4
    offset = (1e3 + rng.standard_normal(300_000)).astype(np.float32)
    for x in (outlier, offset):
        x = x.astype(jnp.dtype(dtype))
        got = _stats.native_stats_many([x, jnp.asarray(x)], workers=2)
        ref = np.asarray(x).astype(np.float64)
        for row in got:
            assert abs(row[1] - ref.std()) / ref.std() < 1e-5
            assert abs(row[0] - ref.mean()) / abs(ref.mean()) < 1e-6


@native
def test_unaligned_and_strided_views():
    x = (1.0 + np.arange(1001, dtype=np.float32)).tobytes()
    unaligned = np.frombuffer(b'ab' + x, np.float32, offset=2)  # not 4-byte aligned
    assert not unaligned.flags.aligned
    strided = np.arange(64, dtype=np.float32).reshape(8, 8)[:, ::3]
    got = _stats.native_stats_many([unaligned, strided])
    check(got[0], reference(unaligned))
    check(got[1], reference(strided))


@native
def test_empty_scalar_and_complex_leaves():
    leaves = [np.zeros((0, 3), np.float32), 2.5, 7, np.float32(-1.0), np.array([3 + 4j, 0j])]
    got = _stats.native_stats_many(leaves)
    for g, leaf in zip(got, leaves):
        check(g, reference(np.asarray(leaf)))
    assert _stats.native_stats_many([]).shape == (0, 7)


@native
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=70),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    st.sampled_from(['float32', 'float64', 'bfloat16', 'float16', 'int8']),
)
def test_native_matches_numpy_fallback_and_reference(values, dtype):
    if dtype == 'int8':
        values = np.clip(values, -128, 127)
    x = values.astype(jnp.dtype(dtype))
    got = _stats.native_stats_many([x])[0]
    ref = reference(x)
    check(got, ref)
    fallback = _stats.host_stats_batch(np.asarray(x).reshape(1, -1))[0]
    check(fallback, ref)


def test_summary_same_with_and_without_kernel(monkeypatch):
    rng = np.random.default_rng(2)
    tree = {
        'a': jnp.asarray(rng.standard_normal((300, 400)), jnp.float32),
        'b': jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        'c': jnp.arange(10),
    }
    first = ptp.summary(tree)
    monkeypatch.setattr(_stats, '_native', None)
    second = ptp.summary(tree)
    for r1, r2 in zip(first.rows, second.rows):
        for name in ptp.STAT_NAMES:
            np.testing.assert_allclose(getattr(r1, name), getattr(r2, name), rtol=1e-5)


@native
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=8),
    st.integers(1, 5),
    st.sampled_from(['float32', 'bfloat16', 'float64']),
)
def test_any_split_over_threads_matches_reference(sizes, workers, dtype):
    """Cut points fall anywhere: inside leaves, on their edges, next to empty leaves."""
    rng = np.random.default_rng(sum(sizes) + workers)
    leaves = [(2.0 + rng.standard_normal(n)).astype(jnp.dtype(dtype)) for n in sizes]
    old = _stats._PIECE
    _stats._PIECE = 4  # so that tiny trees are cut for several threads
    try:
        # float64 as NumPy arrays (jax keeps float64 off by default), the rest as jax arrays
        xs = [x if dtype == 'float64' else jnp.asarray(x) for x in leaves]
        got = _stats.native_stats_many(xs, workers=workers)
    finally:
        _stats._PIECE = old
    for g, leaf in zip(got, leaves):
        check(g, reference(np.asarray(leaf)))
