"""Meshes as jax makes them (issue 25.5): every function on ``jax.make_mesh`` (Explicit
axes, jax 0.10's default) and ``Mesh`` (Auto) meshes; and summaries for sharded models
(25.7): bytes per device and logical axis names beside the partition spec."""

from __future__ import annotations

import html

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_8_devices

import pytreeparams as ptp

EIGHT_DEVICES = """
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp

def check(cond, what):
    if not cond:
        raise AssertionError(what)

for kind in ('explicit', 'auto'):
    if kind == 'explicit':
        mesh = jax.make_mesh((4, 2), ('a', 'b'))
        check(mesh.axis_types == (AxisType.Explicit,) * 2, mesh)
    else:
        mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('a', 'b'))
    put = lambda v, spec: jax.device_put(v, NamedSharding(mesh, spec))
    rng = np.random.default_rng(0)
    ref = {'layers': {'w': rng.normal(size=(4, 8, 2)).astype(np.float32)},
           'twod': rng.normal(size=(8, 4)).astype(np.float32)}
    tree = {'layers': {'w': put(ref['layers']['w'], P('a', None, 'b'))},
            'twod': put(ref['twod'], P('a', 'b'))}
    # summary, stacked on a sharded layer axis, stats eager and under jit
    s = ptp.summary(tree, stacked={'layers': 0}, sharding=True)
    check([r.path for r in s.rows] == [f'layers/{i}/w' for i in range(4)] + ['twod'], s.rows)
    for i in range(4):
        check(np.isclose(s.rows[i].mean, ref['layers']['w'][i].astype(np.float64).mean()), kind)
    check(s.rows[-1].device_bytes == 16 and s.totals.device_bytes is not None, s.rows)
    want = [ref['layers']['w'].astype(np.float64).std(), ref['twod'].astype(np.float64).std()]
    for f in (ptp.stats, jax.jit(ptp.stats)):
        check(np.allclose(np.asarray(f(tree)['std']), want, rtol=1e-5), (kind, f))
    # find_nonfinite, assert_finite
    bad = dict(tree, nan=put(np.array([0.0, np.nan] * 4, np.float32), P('a')))
    check(ptp.find_nonfinite(tree) == [] and ptp.find_nonfinite(bad) == ['nan'], kind)
    try:
        ptp.assert_finite(bad)
        raise AssertionError('assert_finite passed')
    except ptp.NonFiniteError:
        pass
    # diff of differently sharded arrays; find_ties, tie, untie
    other = dict(tree, twod=put(ref['twod'] * 2, P('b', 'a')))
    check(ptp.diff(tree, other).moved() == ['twod'], kind)
    tied = {'a': tree['twod'], 'b': put(ref['twod'], P('b')), 'c': put(ref['twod'].T.copy(), P())}
    groups = ptp.find_ties(tied, transposed=True)
    check(groups == [ptp.TieGroup('a', ('b',), ('c',))], groups)
    ties = groups[0].to_ties()
    compact = ptp.untie(tied, ties)
    check(sorted(compact) == ['a'] and ptp.diff(tied, ptp.tie(compact, ties)).same, kind)
    # reinit keeps each leaf's sharding (made by one jit with out_shardings)
    new = ptp.reinit(tree, jax.random.key(0), {'twod': jax.nn.initializers.normal(1.0)})
    check(new['twod'].sharding == tree['twod'].sharding, new['twod'].sharding)
    want = jax.random.normal(ptp.path_key(jax.random.key(0), 'twod'), (8, 4))
    check(np.allclose(np.asarray(new['twod']), np.asarray(want), atol=1e-6), kind)
    # inspect (grad_stats inside jit; 'layers/w' is unused by the loss: a zero gradient)
    ins = ptp.inspect(lambda p: jnp.sum(p['twod'] ** 2), tree)
    norms = [dict(r.extra)['grad_norm'] for r in ins.table.rows]
    want = 2 * np.linalg.norm(ref['twod'].astype(np.float64))
    check(norms[0] == 0.0 and np.isclose(norms[1], want, rtol=1e-5), (kind, norms))
    check(np.isclose(dict(ins.table.totals.extra)['grad_norm'], want, rtol=1e-5), kind)
print('OK')
"""


@pytest.mark.heavy
def test_every_function_on_make_mesh_and_mesh():
    """summary (stacked= on a sharded layer axis), stats (eager, jit), find_nonfinite,
    assert_finite, diff, find_ties, tie, untie, reinit, inspect on an Explicit and an Auto
    mesh."""
    assert 'OK' in run_on_8_devices(EIGHT_DEVICES)


def _logical_params():
    init = nn.with_logical_partitioning(nn.initializers.ones, ('embed', 'mlp'))
    return {'dense': {'kernel': init(jax.random.key(0), (4, 8)), 'bias': jnp.zeros(8)}}


def test_summary_shows_logical_axes_and_bytes_per_device():
    """25.7: the logical names of nn.with_logical_partitioning beside the partition spec,
    bytes per device from the addressable shards; in rows, text, HTML and to_dict."""
    s = ptp.summary(_logical_params(), sharding=True)
    rows = {r.path: r for r in s.rows}
    assert rows['dense/kernel'].logical_axes == ('embed', 'mlp')
    assert rows['dense/bias'].logical_axes is None
    assert rows['dense/kernel'].device_bytes == 128 and rows['dense/bias'].device_bytes == 32
    assert s.totals.device_bytes == 160
    text = str(s)
    assert 'logical' in text and "('embed', 'mlp')" in text and 'per device' in text
    assert '160 B' in text.splitlines()[-1]
    assert html.escape("('embed', 'mlp')") in s._repr_html_()
    assert s.to_dict()['dense/kernel/device_bytes'] == 128.0
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(s)
    shown = console.export_text()
    assert 'per device' in shown and "('embed', 'mlp')" in shown, shown
    assert ptp.summary(_logical_params()).rows[1].logical_axes is None  # only with sharding=


def test_summary_shows_nnx_sharding_names():
    """25.7: an NNX variable's sharding metadata (nnx.with_partitioning) as its axis names."""
    from flax import nnx

    mesh = jax.make_mesh((1, 1), ('embed', 'mlp'))
    with jax.set_mesh(mesh):
        init = nnx.with_partitioning(nnx.initializers.ones, ('embed', 'mlp'))
        layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    s = ptp.summary(nnx.state(layer), sharding=True)
    rows = {r.path: r for r in s.rows}
    assert rows['kernel'].logical_axes == ('embed', 'mlp')
    assert "('embed', 'mlp')" in str(s)


def test_local_summary_of_addressable_arrays_is_the_summary():
    """local=True changes nothing for arrays this process holds whole."""
    tree = {'w': jnp.arange(6.0)}
    s = ptp.summary(tree, local=True)
    assert not s.local and 'shards only' not in str(s)
    assert s.rows[0].mean == ptp.summary(tree).rows[0].mean == 2.5
    assert np.asarray(ptp.stats(tree, local=True)['mean']).tolist() == [2.5]
