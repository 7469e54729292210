"""A single ``.safetensors`` file read into a ``like`` of sharded arrays (issue 25.6):
``load(path, like=)`` and ``load_into(path, like=)`` read each distinct slice that
this process's devices hold, once, from the memory-mapped file (as for sharded
checkpoints), never the whole tensor first."""

from __future__ import annotations

import numpy as np
from conftest import run_on_8_devices

import pytreeparams as ptp

_SLICES = """
import sys
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._files import _io, _shards

def check(cond, what):
    if not cond:
        raise AssertionError(what)

path = sys.argv[1]
w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
ptp.save(path, {'w': w, 'b': np.ones(8, np.float32)})
sliced, whole = [], []
real_slice, real_copy = _shards.read_slice, _io.own_copy
_shards.read_slice = lambda t, i: sliced.append(real_slice(t, i).nbytes) or real_slice(t, i)
def own_copy(x):
    if isinstance(x, np.ndarray):
        whole.append(x.nbytes)
    return real_copy(x)
_io.own_copy = own_copy
explicit = jax.make_mesh((4, 2), ('x', 'y'))
auto = Mesh(np.array(jax.devices()).reshape(4, 2), ('x', 'y'))
for mesh in (explicit, auto):
    for spec, copies in [(P('x', 'y'), 8), (P('x'), 4), (P(), 1), (P(None, 'y'), 2)]:
        sh = NamedSharding(mesh, spec)
        like = {'w': jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=sh),
                'b': jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P()))}
        for how in ('load', 'load_into'):
            sliced.clear(); whole.clear()
            if how == 'load':
                out = ptp.load(path, like=like)
            else:
                out, report = ptp.load_into(path, like=like)
                check(report.ok, report)
            check(out['w'].sharding == sh, (how, out['w'].sharding, spec))
            np.testing.assert_array_equal(np.asarray(out['w']), w)
            # each distinct slice read once (the tensor once in all), nothing copied whole
            check(len(sliced) == copies + 1 and sum(sliced) == w.nbytes + 32, (how, spec, sliced))
            check(whole == [], (how, spec, whole))
    to_bf16 = lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16, sharding=s.sharding)
    cast = ptp.load(path, like=jax.tree.map(to_bf16, like), cast=True)
    check(cast['w'].dtype == jnp.bfloat16 and cast['w'].sharding == like['w'].sharding, cast)
    np.testing.assert_array_equal(np.asarray(cast['w'], np.float32), w)
print('OK')
"""


def test_a_sharded_like_reads_a_safetensors_file_slice_by_slice(tmp_path):
    out = run_on_8_devices(_SLICES, str(tmp_path / 'p.safetensors'))
    assert out.strip().endswith('OK')


def test_a_like_without_shardings_gets_the_process_own_copies(tmp_path):
    """NumPy targets keep the old route: copies of the file's tensors, not views."""
    path = str(tmp_path / 'p.safetensors')
    w = np.arange(6, dtype=np.float32)
    ptp.save(path, {'w': w})
    out = ptp.load(path, like={'w': np.zeros(6, np.float32)})
    assert isinstance(out['w'], np.ndarray) and out['w'].flags.owndata
    np.testing.assert_array_equal(out['w'], w)
    into, report = ptp.load_into(path, like={'w': np.zeros(6, np.float32)})
    assert report.ok and isinstance(into['w'], np.ndarray)
    np.testing.assert_array_equal(into['w'], w)
