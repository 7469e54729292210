"""The one moments algorithm: every path gives the same numbers as float64 NumPy."""

from __future__ import annotations

import math
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeparams as ptp
from pytreeparams._moments import _jax_moments, _moments
from pytreeparams._moments._engine import (
    force_device_path,
    leaf_rows,
)

FLOAT32_LIKE = ['float32', 'bfloat16', 'float16']


def reference(x: np.ndarray) -> np.ndarray:
    """STAT_NAMES of ``x`` in float64 NumPy: the definition every path must meet."""
    a = np.asarray(x).astype(np.float64).ravel()
    if a.size == 0:
        return np.array([np.nan] * 5 + [0.0, np.nan])
    with np.errstate(all='ignore'):
        row = np.array(
            [
                a.mean(),
                a.std(),
                a.min(),
                a.max(),
                np.sqrt(np.sum(np.square(a / np.max(np.abs(a[np.isfinite(a)]), initial=1))))
                * np.max(np.abs(a[np.isfinite(a)]), initial=1),
                np.count_nonzero(~np.isfinite(a)),
                np.count_nonzero(a == 0) / a.size,
            ]
        )
    nan, pinf, ninf = np.isnan(a).any(), (a == np.inf).any(), (a == -np.inf).any()
    if nan:
        row[[0, 1, 2, 3, 4]] = np.nan
    elif pinf or ninf:
        row[0] = np.nan if (pinf and ninf) else (np.inf if pinf else -np.inf)
        row[1] = np.nan
        row[4] = np.inf
    return row


def assert_close(got, want, what: str, float32: bool = True) -> None:
    got = np.asarray(got, np.float64)
    if float32:  # a float32 table holds float32 values: compare with the rounded reference
        with np.errstate(over='ignore'):
            want = want.astype(np.float32).astype(np.float64)
    mean, std = want[0], want[1]
    for j, name in enumerate(_moments.STAT_NAMES):
        g, w = got[j], want[j]
        if np.isnan(w) or np.isinf(w):
            assert (np.isnan(g) and np.isnan(w)) or g == w, (what, name, got, want)
            continue
        if name == 'mean':
            tol = 1e-6 * (abs(mean) + std)
        elif name == 'std':
            tol = 1e-5 * std + 1e-6 * abs(mean)
        elif name == 'l2':
            tol = 1e-5 * abs(w)
        elif name == 'zero_frac':  # an exact count, divided (and rounded to float32)
            tol = 2.0**-23 * w  # one float32 rounding
        else:  # min, max, the non-finite count: exact
            tol = 0.0
        assert abs(g - w) <= tol, (what, name, g, w, tol)


@st.composite
def data(draw):
    kind = draw(
        st.sampled_from(
            [
                'normal',
                'outlier_first',
                'offset',
                'full_with_zero',
                'constant',
                'huge',
                'tiny',
                'planted',
                'ints',
            ]
        )
    )
    n = draw(st.sampled_from([0, 1, 2, 7, 128, 1000, 4099, 70_001]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    loc = draw(st.sampled_from([0.0, 1.0, -3.0, 1e3]))
    if kind == 'normal':
        x = loc + rng.standard_normal(n)
    elif kind == 'outlier_first':
        x = np.concatenate([[1e4], rng.standard_normal(max(n - 1, 0))])[:n]
    elif kind == 'offset':
        x = 1e6 + 1e-3 * rng.standard_normal(n)
    elif kind == 'full_with_zero':
        x = np.full(n, 1e6)
        x[:1] = 0
    elif kind == 'constant':
        x = np.full(n, loc)
    elif kind == 'huge':
        x = 1e30 + 1e28 * rng.standard_normal(n)
    elif kind == 'tiny':
        x = 1e-20 * rng.standard_normal(n)
    elif kind == 'ints':
        x = rng.integers(-100, 100, n).astype(np.float64)
    else:
        x = rng.standard_normal(n)
        for value in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0]), max_size=3)):
            if n:
                x[rng.integers(0, n)] = value
    dtype = draw(st.sampled_from(FLOAT32_LIKE if kind != 'ints' else ['int8', 'int32', 'bool']))
    with np.errstate(all='ignore'):
        if dtype == 'bool':
            return x > 0
        if dtype.startswith('int'):
            return np.clip(x, -100, 100).astype(dtype)
        arr = x.astype(jnp.dtype(dtype))
    return arr


_STATS_JIT = jax.jit(lambda x: ptp.stats({'x': x}))
_GRAD_JIT = jax.jit(_jax_moments.jax_grad_partials)


def _stats_jit(x):
    return _STATS_JIT(x).table[0]


def _summary_row(x):
    row = ptp.summary({'x': x}).rows[0]
    return np.array([getattr(row, k) for k in _moments.STAT_NAMES], np.float64)


# ('leaf_stats' is not a path of its own: jitted ``ptp.stats`` runs it on the traced leaf)
PATHS = ['host', 'device', 'stats', 'stats_jit', 'summary']


HALF = settings(max_examples=max(20, settings().max_examples // 2), deadline=None)


@pytest.mark.heavy
@HALF
@given(data())
def test_every_path_matches_float64_reference(x):
    want = reference(x)
    xj = jnp.asarray(x)
    got = {
        'host': leaf_rows([x])[0],
        'stats': ptp.stats({'x': xj}).table[0],
        'stats_jit': _stats_jit(xj),
        'summary': _summary_row(xj),
    }
    with force_device_path():
        got['device'] = leaf_rows([xj])[0]
    for path in PATHS:
        # host-side rows are float64; device and jitted tables float32
        assert_close(got[path], want, path, float32=path not in ('host', 'summary', 'device'))


@pytest.mark.heavy
@HALF
@given(data())
def test_grad_stats_agree_with_the_moments(x):
    """grad_norm is the L2 norm, grad_mean the mean, grad_max max |x|, the
    counts exact: the one branch-free kernel, on the leaf in its own shape."""
    xj = jnp.asarray(x)
    want = reference(x)
    with np.errstate(all='ignore'):
        amax = np.max(np.abs(np.asarray(x, np.float64))) if x.size else np.nan
    if x.size == 0:
        return
    ss, scale, mean, mx, zeros, nonfinite = _GRAD_JIT(xj)
    norm = float(jnp.sqrt(ss) * scale)
    w = want.astype(np.float32).astype(np.float64)
    if np.isfinite(w[4]) and np.isfinite(want[0]):
        assert abs(norm - w[4]) <= 1e-5 * w[4], (norm, w[4])
        tol = 1e-6 * (abs(want[0]) + want[1]) + 1e-6 * abs(want[0])
        assert abs(float(mean) - want[0]) <= tol, (mean, want)
        assert float(mx) == np.float32(amax), (mx, amax)
    assert float(nonfinite) == want[5]
    a = np.asarray(x, np.float64)
    assert float(zeros) == np.count_nonzero(a == 0)  # exact, NaN or not


def _mixed_leaves() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    with np.errstate(over='ignore'):
        return [
            rng.standard_normal((64, 16)).astype(np.float32),  # plain
            np.zeros(7, np.float32),
            np.full(3000, 1e30, np.float32),  # squares overflow float32: rescued
            (1e-30 * rng.standard_normal(3000)).astype(np.float32),  # squares underflow
            np.array([np.nan, 1.0, 0.0], np.float32),
            np.array([np.inf, 0.0, 0.0, 2.0], np.float32),
            np.zeros(0, np.float32),
            rng.standard_normal(70_001).astype(jnp.bfloat16),  # padded to whole blocks
            np.arange(-2, 3, dtype=np.int32),
            rng.standard_normal(1000).astype(np.float16),
        ]


@pytest.mark.heavy
@pytest.mark.parametrize('extras', [True, False])
def test_grad_partials_of_mixed_leaves_match_numpy(extras):
    """One jitted program over leaves of every kind (plain, rescued for range or
    non-finite values, empty, padded, integer, half precision): each leaf's norm,
    counts, mean and max |x| as float64 NumPy gives them; a leaf that needs the
    exact rescue leaves the others' values bit for bit as they are without it."""
    leaves = _mixed_leaves()

    def many(xs):
        parts = [_jax_moments.jax_grad_partials(x, extras) for x in xs]
        return _jax_moments.GradPartial(*(jnp.stack(f) for f in zip(*parts)))

    many = jax.jit(many)
    got = many(leaves)
    for i, x in enumerate(leaves):
        a = np.asarray(x, np.float64).ravel()
        want = reference(x)
        norm = float(np.sqrt(got.ss[i]) * got.scale[i])
        assert float(got.nonfinite[i]) == want[5], i
        if not a.size:  # an empty leaf adds nothing to a norm
            assert norm == 0.0
        elif np.isfinite(want[4]):
            assert abs(norm - want[4]) <= 1e-5 * want[4], (i, norm, want[4])
        else:
            assert np.isnan(norm) or norm == np.inf, (i, norm)
        if a.size:  # exact, also beside NaN
            assert float(got.zeros[i]) == np.count_nonzero(a == 0), i
            with np.errstate(invalid='ignore'):
                amax = np.nan if np.isnan(a).any() else np.abs(a).max()
            chex.assert_trees_all_equal(np.float32(got.amax[i]), np.float32(amax))
            if extras and np.isfinite(want[0]):
                assert abs(float(got.mean[i]) - want[0]) <= 1e-6 * (abs(want[0]) + want[1]) + 1e-30
    # the plain leaves alone, without the ones that need the rescue: the same bits
    plain = [0, 1, 7, 8, 9]
    alone = many([leaves[i] for i in plain])
    for j, i in enumerate(plain):
        for field in got._fields:
            chex.assert_trees_all_equal(getattr(alone, field)[j], getattr(got, field)[i])


@pytest.mark.parametrize(
    'values',
    [
        np.concatenate([[1e4], np.random.default_rng(0).standard_normal(10**6)]),  # std 10.0497
        1e6 + 1e-3 * np.random.default_rng(1).standard_normal(1000),
        np.where(np.arange(100_000) == 0, 0.0, 1e6),
        np.full(1000, 3e38),
        1e-20 * np.random.default_rng(2).standard_normal(1000),
        np.where(np.arange(6000) == 4000, np.nan, 1.0),  # NaN in a leaf of 5,000+ elements
        np.array([1e-45, 0.0, 1e-40, 2.0]),  # subnormals are not zeros
        1e30 + 1e28 * np.random.default_rng(3).standard_normal(70_001),  # host blocks, huge
    ],
    ids=[
        'outlier_first',
        'offset',
        'full_with_zero',
        '3e38',
        '1e-20',
        'nan_5000',
        'subnormal',
        'huge_blocks',
    ],
)
def test_reported_cases(values, maybe_jit):
    x = values.astype(np.float32)
    want = reference(x)
    got = maybe_jit(ptp.stats)({'x': jnp.asarray(x)}).table[0]
    assert_close(got, want, 'stats')
    assert_close(leaf_rows([x])[0], want, 'host', float32=False)


def test_64_bit_host_leaves_keep_their_precision():
    big = np.array([2**62, 2**62], np.int64)
    fine = 1e6 + 1e-3 * np.random.default_rng(0).standard_normal(1000)
    top = np.array([0, 2**64 - 1], np.uint64)
    s = ptp.summary({'big': big, 'fine': fine, 'top': top})
    assert s.rows[0].mean == 2.0**62
    np.testing.assert_allclose(s.rows[1].std, fine.std(), rtol=1e-9)
    assert s.rows[2].max == float(2**64 - 1)
    # also as constants inside jit: computed on the host, in float64
    t = jax.jit(lambda: ptp.stats({'big': big}).table)()
    assert float(t[0, 0]) == np.float32(2.0**62)


def test_big_endian_arrays_are_read():
    x = np.arange(5.0).astype('>f4')
    chex.assert_trees_all_close(ptp.summary({'x': x}).rows[0].mean, 2.0)
    assert ptp.stats({'x': x}).to_dict()['x/max'] == 4.0


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize(
    ('kwargs', 'per_leaf', 'pooled'),
    [
        ({}, 5 + 2 + 2, ('3', '6')),
        ({'extras': False}, 4 + 2 + 2, ('3', '5')),
        ({'norms_only': True}, 1 + 1 + 1, ('3',)),
    ],
    ids=['full', 'extras_false', 'norms_only'],
)
def test_accelerator_lowerings_count_reductions_per_leaf_and_have_no_branch(
    platform, kwargs, per_leaf, pooled
):
    """grad_stats(g, p, u) lowered for CUDA and TPU (no device needed): per leaf
    a fixed number of reductions over the data (gradient: max|g|, the scaled
    sum of squares, the sum, two integer counts; parameter and update: max|x|
    and a scaled sum of squares; norms_only: one sum of squares per tree, a
    norm's cost), over the leaf in its own shape (never flattened); in a
    process with one device the leaves of fewer than SMALL values are pooled
    by padded length (32 and 128 here): each pool's g, p, u rows stacked, one
    max over them and one sum over all the terms (norms_only: one sum), and no
    reduction of a small leaf of its own; no conditional, no loop."""
    assert jax.device_count() == 1  # the pooled form (several devices: tests/test_grads.py)
    big = (128, 64)
    assert math.prod(big) >= _jax_moments.SMALL
    tree = {'a': jnp.ones(big), 'b': jnp.ones(32), 'c': {'d': jnp.ones((3, 5, 7))}}

    def step(g):
        return ptp.grad_stats(g, g, g, **kwargs)

    text = jax.export.export(jax.jit(step), platforms=[platform])(tree).mlir_module()
    # the reductions over each leaf's data, by the shape they read
    reads = re.findall(r'stablehlo\.reduce\(.*?: \(tensor<([0-9x]+)x(?:f32|i1|i32|f16)>', text)
    # on a machine whose one device is a CPU the two counts are one variadic
    # reduction (their lowering for an accelerator is the same program)
    assert reads.count('128x64') == per_leaf - (
        _jax_moments.one_cpu() and not kwargs.get('norms_only', False)
    ), reads
    for length in ('32', '128'):  # one pool each: trees (or terms) x 1 leaf x padded length
        got = sorted(r.split('x')[0] for r in reads if r.endswith('x1x' + length))
        assert got == sorted(pooled), (length, reads)
    for shape in ('32', '3x5x7', '105'):
        assert shape not in reads, reads  # no reduction of a small leaf of its own
    for branch in ('stablehlo.case', 'stablehlo.if', 'stablehlo.while'):
        assert branch not in text
    assert 'tensor<8192xf32>' not in text  # the big leaf is never flattened


def test_the_package_is_pure_python_and_uses_no_private_jax():
    root = pathlib.Path(ptp.__file__).parent
    assert not list(root.glob('*.c')) and not list(root.glob('*.so'))
    assert not (root.parent / 'setup.py').exists()
    for f in root.glob('*.py'):
        assert 'jax._src' not in f.read_text(), f


_SMALL_FLOATS = [
    'float4_e2m1fn',
    'float8_e3m4',
    'float8_e4m3',
    'float8_e4m3b11fnuz',
    'float8_e4m3fn',
    'float8_e4m3fnuz',
    'float8_e5m2',
    'float8_e5m2fnuz',
    'float8_e8m0fnu',
]


@pytest.mark.parametrize('name', _SMALL_FLOATS)
def test_8_and_4_bit_floats_on_every_traced_route(name):
    """Issue 23.8: every ml_dtypes float jax supports, in grad_stats, watch's
    init, jitted stats and the device route: the top finite values (e4m3fn's
    448) are finite, the counts exact, the same numbers as their float32 values."""
    import ml_dtypes
    import optax

    dtype = jnp.dtype(getattr(ml_dtypes, name))
    top = float(ml_dtypes.finfo(dtype).max)
    x = jnp.asarray(np.array([0.0, 1.0, top, -2.0, 0.5], np.float32).astype(dtype))
    want = reference(np.asarray(x.astype(jnp.float32)))
    assert_close(jax.jit(ptp.stats)({'x': x}).table[0], want, name)
    with force_device_path():
        assert_close(leaf_rows([x])[0], want, name)
    gs = ptp.grad_stats({'x': x})
    assert float(gs['grad_nonfinite'][0]) == want[5]
    if not np.isnan(want[4]):
        assert float(gs['grad_max'][0]) == np.float32(np.max(np.abs(want[2:4])))
        assert float(gs['grad_zero_frac'][0]) == np.float32(want[6])
    assert ptp.watch(optax.sgd(0.1)).init({'x': x}).stats.table.shape == (1, 10)


def test_fnuz_nan_is_nan_and_not_zero():
    import ml_dtypes

    x = jnp.asarray(np.array([np.nan, 1.0], np.float32).astype(ml_dtypes.float8_e4m3fnuz))
    row = jax.jit(ptp.stats)({'x': x}).table[0]
    assert float(row[5]) == 1.0 and float(row[6]) == 0.0  # 0x80 is NaN, not -0
    assert float(ptp.grad_stats({'x': x})['grad_nonfinite'][0]) == 1.0


def test_complex_leaves_count_nan_and_inf_on_traced_routes(maybe_jit):
    """Issue 23.11: NaN and Inf in either part are counted (jit, grad_stats,
    device route); a complex64 whose modulus exceeds float32's range reads
    max=inf (its float32 rounding) but holds no non-finite value."""
    z = jnp.asarray(np.array([np.nan + 0j, 1j * np.inf, 1.0, 0.0], np.complex64))
    assert float(maybe_jit(ptp.stats)({'z': z}).table[0][5]) == 2.0
    assert float(ptp.grad_stats({'z': z})['grad_nonfinite'][0]) == 2.0
    with force_device_path():
        assert leaf_rows([z])[0][5] == 2.0
    big = jnp.asarray(np.array([3e38 + 3e38j, 1.0], np.complex64))
    row = jax.jit(ptp.stats)({'z': big}).table[0]
    assert float(row[3]) == np.inf and float(row[5]) == 0.0


def test_complex_leaves_agree_on_host_jit_and_device_routes():
    """Issue 23.11: the host route (NumPy) counts NaN and Inf of a complex leaf from
    its parts, as jax.jit(ptp.stats) and the device route do: an overflowing
    modulus reads max=inf with no non-finite value; small and blocked leaves."""
    nan, inf = np.nan, np.inf
    mixed = [1 + 2j, complex(nan, 1), complex(inf, 0), complex(inf, nan), 3e38 + 3e38j, 0j]
    huge = (np.arange(70_000, dtype=np.float32) * (1 - 2j)).astype(np.complex64)
    huge[[3, 60_000, 69_999]] = [complex(0, inf), 3e38 + 3e38j, complex(-inf, 2)]
    tree = {
        'over': np.array([3e38 + 3e38j], np.complex64),
        'over_big': np.full(5000, 3e38 - 3e38j, np.complex64),
        'mixed': np.array(mixed, np.complex64),
        'inf': np.array([1 + 2j, complex(0, -inf), 3 - 4j], np.complex64),
        'huge': huge,
    }
    stats = ptp.stats(tree)
    host = np.asarray(stats.table)
    rows = dict(zip(stats.paths, host))
    assert rows['over'][3] == np.inf and rows['over'][5] == 0.0  # nothing non-finite
    assert {p: float(r[5]) for p, r in rows.items()} == {
        'over': 0.0,
        'over_big': 0.0,
        'mixed': 3.0,
        'inf': 1.0,
        'huge': 2.0,
    }
    on_device = jax.tree.map(jnp.asarray, tree)
    chex.assert_trees_all_equal(np.asarray(jax.jit(ptp.stats)(on_device).table), host)
    with force_device_path():
        chex.assert_trees_all_equal(np.asarray(ptp.stats(on_device).table), host)


def test_int4_on_the_device_route_and_int32_extremes():
    """Issue 23.15: int4 over 65,536 elements on the device route (was a layout
    error); int32 min/max compared as integers."""
    i4 = np.arange(70_000) % 7 - 3
    with force_device_path():
        row = leaf_rows([jnp.asarray(i4, jnp.int4)])[0]
    assert_close(row, reference(i4.astype(np.float64)), 'int4')
    big = jnp.asarray(np.array([2**31 - 1, -(2**31), 5], np.int32))
    row = jax.jit(ptp.stats)({'i': big}).table[0]
    assert float(row[2]) == -(2.0**31) and float(row[3]) == np.float32(2**31 - 1)


@pytest.mark.heavy
def test_zero_count_is_exact_above_2_24_values():
    """Issue 23.15: zeros and non-finite counts of a leaf of more than 2**24
    values are exact (counts per row, then as integers)."""
    x = jnp.zeros((4097, 4096), jnp.float32).at[0, :3].set(1.0).at[5, 7].set(jnp.inf)
    gs = jax.jit(ptp.grad_stats)({'x': x})
    n = 4097 * 4096
    assert float(gs['grad_zero_frac'][0]) == np.float32((n - 4) / n)
    assert float(gs['grad_nonfinite'][0]) == 1.0
    row = jax.jit(ptp.stats)({'x': x}).table[0]
    assert float(row[6]) == np.float32((n - 4) / n)


@pytest.mark.parametrize('n', [1000, 300_000])
def test_large_offset_float32_within_1e_5_of_float64(n, maybe_jit):
    """Issue 24.5: 1e6 + 0.5 * N(0, 1) in float32, jitted and eagerly: the std
    within 1e-5 relative of float64 (a pivot subtracted before the sums)."""
    x = (1e6 + 0.5 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    want = x.astype(np.float64)
    row = maybe_jit(ptp.stats)({'x': jnp.asarray(x)}).table[0]
    np.testing.assert_allclose(float(row[1]), want.std(), rtol=1e-5)
    np.testing.assert_allclose(float(row[0]), want.mean(), rtol=1e-7)
