"""Global arrays in a real multi-controller job (issue 25): 2 processes x 4 CPU devices,
one mesh over all 8, a tree sharded five ways (full, partially replicated, replicated,
2-D, minor axis). Every launch runs many checks (a launch costs 5-10 s); a hang fails
by ``run_processes``' timeout."""

from __future__ import annotations

import pytest
from conftest import run_processes

pytestmark = pytest.mark.heavy

# Defines MESH (ARGS[0]: 'explicit' = jax.make_mesh, 'auto' = Mesh), TREE of global
# arrays and REF (the same values as NumPy, on every process), and check().
SETUP = """
import time, warnings
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._moments import count_device_work

assert jax.process_count() == 2 and jax.device_count() == 8
if ARGS[0] == 'explicit':
    MESH = jax.make_mesh((4, 2), ('a', 'b'))
    assert MESH.axis_types == (AxisType.Explicit,) * 2
else:
    MESH = Mesh(np.array(jax.devices()).reshape(4, 2), ('a', 'b'))
SPECS = {'full': ((16, 6), P(('a', 'b'))), 'part': ((8, 6), P('a')), 'repl': ((5,), P()),
         'twod': ((8, 4), P('a', 'b')), 'minor': ((3, 8), P(None, 'a'))}

def put(full, spec):
    return jax.make_array_from_callback(full.shape, NamedSharding(MESH, spec), lambda i: full[i])

REF = {k: (np.random.default_rng(i).normal(size=shape) * (i + 1) + i).astype(np.float32)
       for i, (k, (shape, spec)) in enumerate(SPECS.items())}
TREE = {k: put(REF[k], SPECS[k][1]) for k in SPECS}
assert not any(x.is_fully_addressable for x in TREE.values())

def check(cond, what):
    if not cond:
        raise AssertionError(what)

FAILED = []

def section(name, code):
    # one section; a failure is recorded and the next section runs
    try:
        exec(code, globals())
    except Exception as e:
        FAILED.append(f'{name}: {type(e).__name__}: {str(e)[:400]}')
"""

STATISTICS = """
def ref_stats(v):
    v = v.astype(np.float64)
    return [v.mean(), v.std(), v.min(), v.max(), np.sqrt((v * v).sum())]

with count_device_work() as first:
    s = ptp.summary(TREE)
with count_device_work() as again:
    s2 = ptp.summary(TREE, sharding=True)
# 25.3: the partials of all leaves exchanged ONCE per call: one collective (at most one
# compilation, the first time), one fetch; the shards this process owns read in place
check((first.dispatches, first.fetches) == (1, 1), first)
check(first.compilations <= 1, first)
check((again.compilations, again.dispatches, again.fetches) == (0, 1, 1), again)
for r in s.rows:
    got = [r.mean, r.std, r.min, r.max, r.l2]
    check(np.allclose(got, ref_stats(REF[r.path]), rtol=1e-6, atol=1e-6), (r.path, got))
    check(r.size == REF[r.path].size and r.nonfinite == 0, r)
check(s.totals.size == sum(v.size for v in REF.values()), s.totals)
check(ptp.count(TREE) == s.totals.size and ptp.nbytes(TREE) == 4 * s.totals.size, 'count')
layers = ptp.summary({'layers': {'w': TREE['minor']}}, stacked={'layers': 0})
check([r.path for r in layers.rows] == [f'layers/{i}/w' for i in range(3)], layers.rows)
for i, r in enumerate(layers.rows):
    check(np.isclose(r.mean, REF['minor'][i].astype(np.float64).mean(), atol=1e-6), r)
st = ptp.stats(TREE)
check(np.allclose(np.asarray(st['mean']), [REF[p].astype(np.float64).mean() for p in st.paths],
                  rtol=1e-6, atol=1e-6), 'stats')
# 25.7: bytes per device from the addressable shards, beside the partition spec
per_device = {r.path: r.device_bytes for r in s2.rows}
check(per_device == {'full': 48, 'minor': 24, 'part': 48, 'repl': 20, 'twod': 16}, per_device)
check('per device' in str(s2) and "P(('a', 'b'),) on 8 devices" in str(s2), str(s2))

bad = dict(TREE, nan=put(np.array([[0.0, np.nan]] * 8, np.float32), P('a')))
check(ptp.find_nonfinite(TREE) == [] and ptp.find_nonfinite(bad) == ['nan'], 'nonfinite')
try:
    ptp.assert_finite(bad)
    raise AssertionError('assert_finite passed')
except ptp.NonFiniteError as e:
    check("'nan'" in str(e), str(e))
# inspect on both mesh kinds; 'part', 'repl' and 'minor' are unused by the loss (zero grads)
ins = ptp.inspect(lambda p: jnp.sum(p['full'] ** 2) + jnp.sum(p['twod']), TREE)
norms = {r.path: dict(r.extra)['grad_norm'] for r in ins.table.rows}
want = {'full': 2 * np.linalg.norm(REF['full'].astype(np.float64)), 'twod': np.sqrt(32.0),
        'part': 0.0, 'repl': 0.0, 'minor': 0.0}
check(all(np.isclose(norms[k], v, rtol=1e-5) for k, v in want.items()), norms)
"""

LOCAL = """
# 25.3: one process alone: local=True covers its own shards and does not wait
if PROCESS == 0:
    loc = ptp.summary(TREE, local=True)
    check(loc.local and "process 0's shards only (local=True)" in str(loc), str(loc))
    mine = {}
    for k, x in TREE.items():
        seen = {}
        for sh in x.addressable_shards:
            seen.setdefault(tuple((i.start, i.stop) for i in sh.index), np.asarray(sh.data))
        mine[k] = np.concatenate([v.ravel() for v in seen.values()])
    for r in loc.rows:
        check(np.isclose(r.mean, mine[r.path].astype(np.float64).mean(), atol=1e-6), r)
    check(np.isclose(loc.rows[3].mean, REF['repl'].astype(np.float64).mean()), 'replicated')
"""

WAITING = """
# the usual idiom without local=: the process left waiting says why, then proceeds
import pytreeparams._moments._global as g
from jax.experimental import multihost_utils
g.WAIT_WARNING_S = 1.0
multihost_utils.sync_global_devices('waiting')  # both here; process 0 then waits ~4 s
if PROCESS == 1:
    time.sleep(4)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    ptp.summary(TREE)
if PROCESS == 0:
    text = ' '.join(str(w.message) for w in caught)
    check('call it on every process and print on one' in text.lower(), text)
    check('local=True' in text, text)
"""

DIFF = """
# 25.4: diff, find_ties, untie checks as jitted reductions on the global arrays
other = dict(TREE, part=put(REF['part'] * 1.5, P('a')), twod=put(REF['twod'], P('b', 'a')))
d = ptp.diff(TREE, other)
check(list(d.rel_change) == sorted(SPECS), d.rel_change)
check(abs(d.rel_change['part'] - 0.5) < 1e-6, d.rel_change)
check(all(v == 0 for k, v in d.rel_change.items() if k != 'part'), d.rel_change)
check(ptp.diff(TREE, TREE).same, 'same')
"""

TIES = """
w = put(REF['twod'], P('a', 'b'))
tied = {'a': w, 'b': put(REF['twod'], P('b')), 'c': put(REF['twod'].T.copy(), P('a', 'b')),
        'd': put(REF['twod'] + 1, P('a'))}
groups = ptp.find_ties(tied, transposed=True)
check(groups == [ptp.TieGroup('a', ('b',), ('c',))], groups)
ties = ptp.Ties({'b': 'a', 'c': ('a', ptp.transpose)})
compact = ptp.untie(tied, ties)
check(sorted(compact) == ['a', 'd'], compact)
try:
    ptp.untie(dict(tied, b=tied['d']), ties)
    raise AssertionError('untie passed')
except ptp.StructureError as e:
    check("differ from their source: 'b'" in str(e), str(e))
full = ptp.tie(compact, ties)
check(ptp.diff(tied, full).same, 'tie')
"""

REINIT = """
# reinit: each leaf made where its shards lie (one jitted call with out_shardings)
calls = []
def init(key, shape, dtype):
    calls.append(isinstance(key, jax.core.Tracer))
    return jax.random.normal(key, shape, dtype)
new = ptp.reinit(TREE, jax.random.key(0), {'full': init, 'twod': init})
check(calls and all(calls), f'the initializer ran eagerly: {calls}')
for k in SPECS:
    check(new[k].sharding == TREE[k].sharding, (k, new[k].sharding))
from jax.experimental import multihost_utils
got = multihost_utils.process_allgather(new['full'], tiled=True)
want = jax.random.normal(ptp.path_key(jax.random.key(0), 'full'), (16, 6))
check(np.allclose(got, np.asarray(want), atol=1e-6), 'reinit values')
check(ptp.diff(TREE, new).moved() == ['full', 'twod'], 'reinit kept the others')
"""

TORCH = """
# to_torch_state_dict: a library error that names the Orbax route
try:
    ptp.to_torch_state_dict({'params': {'dense': {'kernel': TREE['twod']}}})
    raise AssertionError('to_torch_state_dict passed')
except ptp.StructureError as e:
    check('sharded over several processes' in str(e) and 'Orbax' in str(e), str(e))
"""

SECTIONS = {
    'statistics': STATISTICS,
    'local': LOCAL,
    'waiting': WAITING,
    'diff': DIFF,
    'ties': TIES,
    'reinit': REINIT,
    'torch': TORCH,
}
JOB = (
    SETUP
    + ''.join(f'section({name!r}, {code!r})\n' for name, code in SECTIONS.items())
    + "print('FAILED', FAILED, 'DONE', PROCESS)\n"
)


@pytest.mark.parametrize('mesh', ['explicit', 'auto'])
def test_global_arrays_in_a_two_process_job(mesh):
    """25.1, 25.3, 25.4, 25.5, 25.7 in one launch per mesh kind (jax.make_mesh, Mesh)."""
    outs = run_processes(JOB, mesh, timeout=150)
    for i, out in enumerate(outs):
        assert f'FAILED [] DONE {i}' in out, out[-3000:]


GRAD_STATS_JOB = """
import re
import numpy as np
import jax, jax.numpy as jnp, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp

assert jax.process_count() == 2 and jax.device_count() == 8
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
specs = {'a': P(None, 'model'), 'b': P('data', 'model'), 'c': P('model', 'data'), 'd': P('model')}
shapes = {'a': (64, 128), 'b': (128, 64), 'c': (64, 128), 'd': (64,)}
rng = np.random.default_rng(0)
ref = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
ref['a'][3, 5] = np.nan
ref['a'][7, 9] = np.inf
ref['b'][:4] = 0.0
ref['c'] *= 1e-20
ref['d'][2] = 0.0
g = {k: jax.make_array_from_callback(v.shape, NamedSharding(mesh, specs[k]), lambda i, v=v: v[i])
     for k, v in ref.items()}
assert not any(x.is_fully_addressable for x in g.values())

def plain(g):
    return jax.tree.map(lambda x: x * 2.0, g)

for kw in ({}, {'extras': False}, {'norms_only': True}):
    f = jax.jit(lambda g: (plain(g), ptp.grad_stats(g, g, plain(g), **kw)))
    text = f.lower(g).compile().as_text()
    base = jax.jit(plain).lower(g).compile().as_text()
    gathers = len(re.findall(r'all-gather(-start)?[(]', text))
    assert gathers <= len(re.findall(r'all-gather(-start)?[(]', base)), (kw, gathers)
    assert 'conditional(' not in text, kw
    _, st = f(g)
    table = np.asarray(jax.device_get(st.table))  # replicated: every process has it
    for i, k in enumerate(st.paths):
        v = ref[k].astype(np.float64)
        fin = v[np.isfinite(v)]
        norm = np.inf if np.isinf(v).any() and not np.isnan(v).any() else np.sqrt((v * v).sum())
        got = table[i, 0]
        if np.isnan(v).any():
            assert np.isnan(got), (kw, k, got)
        elif kw.get('norms_only') and k == 'c':  # unscaled squares of 1e-20 underflow (documented)
            assert got == 0.0, (kw, k, got)
        else:
            assert abs(got - norm) <= 1e-5 * norm, (kw, k, got, norm)
        if not kw.get('norms_only'):
            assert table[i, 5] == np.count_nonzero(~np.isfinite(v)), (kw, k, table[i, 5])
            assert table[i, 4] * v.size == np.count_nonzero(v == 0), (kw, k, table[i, 4])
            if not np.isnan(v).any():
                assert table[i, 2] == np.float32(np.abs(v).max()), (kw, k, table[i, 2])
print('GRAD_STATS OK', PROCESS)
"""


def test_grad_stats_of_arrays_sharded_over_two_processes():
    """grad_stats inside jit on arrays sharded over 2 processes x 4 devices
    (kernels P(None, 'model'), P('data', 'model'), P('model', 'data'), a
    vector P('model')), holding NaN, Inf, zero rows and 1e-20 values: norms,
    max |g| and the exact counts match NumPy on every process, in every tier,
    and the compiled step has no all-gather the plain step lacks and no
    conditional (issue 24)."""
    outs = run_processes(GRAD_STATS_JOB, timeout=150)
    for i, out in enumerate(outs):
        assert f'GRAD_STATS OK {i}' in out, out[-3000:]
