"""Files from a real 2-process jax.distributed job (issue 25.4, 25.6): global
arrays saved to single files (refused, or gathered and written by process 0),
and sharded checkpoints and single safetensors files read slice by slice into
global arrays."""

from __future__ import annotations

from conftest import run_processes

_JOB = """
import os
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._files import _shards

folder = ARGS[0]
w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
explicit = jax.make_mesh((8,), ('x',))
auto = Mesh(np.array(jax.devices()), ('x',))
for m, mesh in enumerate((explicit, auto)):
    sharding = NamedSharding(mesh, P('x'))
    tree = {'w': jax.make_array_from_callback(w.shape, sharding, lambda i: w[i]),
            'b': jax.device_put(np.ones(8, np.float32), NamedSharding(mesh, P())), 'step': 3}
    assert not tree['w'].is_fully_addressable
    for name in ('p.safetensors', 'p.msgpack', 'hf'):
        path = os.path.join(folder, f'{m}_{name}')
        try:  # refused with the library's error, naming the routes
            ptp.save(path, tree, max_shard_size=256 if name == 'hf' else None)
            raise SystemExit('no error')
        except ptp.FormatError as e:
            text = str(e)
            assert "save: 'w' (float32[16,8]) is a global jax.Array" in text, text
            assert f'this process ({PROCESS} of 2) holds 4 of its 8 devices' in text, text
            assert 'Save to a folder instead (Orbax' in text and 'gather=True' in text, text
        assert not os.path.exists(path)
        ptp.save(path, tree, gather=True, max_shard_size=256 if name == 'hf' else None)
        back = ptp.load(path)  # written by process 0, readable by both on return
        np.testing.assert_array_equal(back['w'], w)
        assert back['step'] == 3
    # a replicated global array needs no gather: each process holds it whole
    path = os.path.join(folder, f'{m}_replicated.safetensors')
    ptp.save(path, {'b': tree['b']})
    np.testing.assert_array_equal(ptp.load(path)['b'], np.ones(8, np.float32))
    # a sharded checkpoint into global arrays: each process reads its own rows
    copied = []
    real = _shards.read_slice
    _shards.read_slice = lambda t, i: copied.append(real(t, i).nbytes) or real(t, i)
    like = jax.tree.map(lambda x: x, tree)
    out = ptp.load(os.path.join(folder, f'{m}_hf'), like=like)
    _shards.read_slice = real
    assert out['w'].sharding == sharding
    assert sum(copied) == w.nbytes // 2 + 32, copied  # half of w, and b (replicated) once
    for s in out['w'].addressable_shards:
        np.testing.assert_array_equal(np.asarray(s.data), w[s.index])
    params, report = ptp.load_into(os.path.join(folder, f'{m}_hf'), like=like)
    assert report.ok and params['w'].sharding == sharding
    # a single safetensors file too, by load and load_into: this process's rows only
    for how in ('load', 'load_into'):
        copied.clear()
        _shards.read_slice = lambda t, i: copied.append(real(t, i).nbytes) or real(t, i)
        single = os.path.join(folder, f'{m}_p.safetensors')
        out = ptp.load(single, like=like) if how == 'load' else ptp.load_into(single, like=like)[0]
        _shards.read_slice = real
        assert out['w'].sharding == sharding and out['step'] == 3, (how, out)
        assert sum(copied) == w.nbytes // 2 + 32, (how, copied)
        for s in out['w'].addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data), w[s.index])
# a failure on process 0 (its folder is missing) raises on every process, no hang
try:
    ptp.save(os.path.join(folder, 'missing', 'p.safetensors'), tree, gather=True)
    raise SystemExit('no error')
except FileNotFoundError as e:
    assert PROCESS == 0, e
except ptp.FormatError as e:
    assert PROCESS == 1 and 'process 0 failed to write' in str(e), e
print('OK', PROCESS)
"""


def test_global_arrays_to_single_files_and_back(tmp_path):
    outs = run_processes(_JOB, str(tmp_path), timeout=180)
    assert [o.strip().splitlines()[-1] for o in outs] == ['OK 0', 'OK 1']
