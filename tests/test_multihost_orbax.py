"""Orbax checkpoints from a real 2-process ``jax.distributed`` job (2 x 4 CPU devices):
one checkpoint written by every process, read back onto each process's own devices
or ``like``'s global shardings, ``CheckpointManager`` folders, and a failure on one
process reported to both without a hang and without losing the old checkpoint."""

from __future__ import annotations

import pytest
from conftest import run_processes

pytest.importorskip('orbax.checkpoint')

SAVE_AND_LOAD = """
import os
import numpy as np, jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp

folder = ARGS[0]
explicit = jax.make_mesh((4, 2), ('d', 'm'))  # Explicit axes, jax's default
auto = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))  # Auto axes
sh = {
    'w': NamedSharding(explicit, P('d', 'm')),
    'b': NamedSharding(auto, P('m')),
    'r': NamedSharding(auto, P()),
}
full = {'w': np.arange(128.0, dtype=np.float32).reshape(16, 8),
        'b': np.arange(8, dtype=np.float32), 'r': np.ones(3, np.float32)}
tree = {k: jax.make_array_from_callback(v.shape, sh[k], lambda i, v=v: v[i])
        for k, v in full.items()}
tree['step'] = 7
ck = os.path.join(folder, 'ck')
ptp.save(ck, tree)
ptp.save(ck, {**tree, 'step': 8})  # replaces the checkpoint from every process
assert sorted(os.listdir(folder)) == ['ck'], os.listdir(folder)

like = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in full.items()}
like['step'] = 0
back = ptp.load(ck, like=like)
assert back['step'] == 8
for k in full:
    assert back[k].sharding == sh[k], (k, back[k].sharding)
    np.testing.assert_array_equal(jax.experimental.multihost_utils.process_allgather(
        back[k], tiled=True), full[k])

sel = ptp.load(ck, select='w')  # onto this process's own device, whole
assert list(sel) == ['w'] and sel['w'].sharding.device_set <= set(jax.local_devices())
np.testing.assert_array_equal(np.asarray(sel['w']), full['w'])

whole = ptp.load(ck)
assert whole['step'] == 8 and sorted(whole) == ['b', 'r', 'step', 'w']

mgr_dir = os.path.join(folder, 'mgr')
with ocp.CheckpointManager(mgr_dir) as mgr:
    for step in (1, 2):
        mgr.save(step, args=ocp.args.StandardSave({'w': tree['w'] * step}))
    mgr.wait_until_finished()
got = ptp.load(mgr_dir, select='w')  # the latest step
np.testing.assert_array_equal(np.asarray(got['w']), full['w'] * 2)
got = ptp.load(mgr_dir, step=1, like={'w': like['w']})
assert got['w'].sharding == sh['w']
print('OK', PROCESS)
"""

FAILURES = """
import os
import numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._files import _orbax

folder = ARGS[0]
mesh = jax.make_mesh((8,), ('d',))
w = jax.make_array_from_callback((8,), NamedSharding(mesh, P('d')), lambda i: np.arange(8.0)[i])
ck = os.path.join(folder, 'ck')
ptp.save(ck, {'w': w})

def expect_error(what):
    try:
        ptp.save(ck, {'w': w + 100})
    except OSError as e:
        print(what, 'ERROR', PROCESS, e)
    else:
        raise AssertionError(f'{what}: save did not fail on process {PROCESS}')

# 1. process 1 alone cannot use the target (e.g. it sees another filesystem)
real_check = _orbax._check_target
def check_target(path):
    if PROCESS == 1:
        raise OSError('injected: process 1 cannot reach the folder')
    return real_check(path)
_orbax._check_target = check_target
expect_error('check')
_orbax._check_target = real_check

# 2. the primary host fails to move the new checkpoint in, after Orbax wrote it
real_move = _orbax._move
def move(a, b):
    if os.path.basename(a).startswith('.ck.'):
        raise OSError('injected: rename failed on the primary host')
    return real_move(a, b)
_orbax._move = move
expect_error('finalize')
_orbax._move = real_move

back = ptp.load(ck, select='w')  # the old checkpoint, on both processes
np.testing.assert_array_equal(np.asarray(back['w']), np.arange(8.0))
jax.experimental.multihost_utils.sync_global_devices('checked')
assert sorted(os.listdir(folder)) == ['ck'], os.listdir(folder)
print('OK', PROCESS)
"""


def test_two_processes_save_one_checkpoint_and_load_it_every_way(tmp_path):
    outs = run_processes(SAVE_AND_LOAD, str(tmp_path), timeout=150)
    assert all(f'OK {i}' in out for i, out in enumerate(outs)), outs


def test_a_failure_on_one_process_fails_the_save_on_both_and_keeps_the_old(tmp_path):
    outs = run_processes(FAILURES, str(tmp_path), timeout=150)
    assert all(f'OK {i}' in out for i, out in enumerate(outs)), outs
    # the failed process gives its own error, the other one names it
    assert 'check ERROR 1 injected: process 1 cannot reach' in outs[1]
    assert 'check ERROR 0 save: checking' in outs[0] and 'failed on process 1' in outs[0]
    assert 'finalize ERROR 0 injected: rename failed' in outs[0]
    assert 'finalize ERROR 1 save: moving the new checkpoint' in outs[1]
    assert 'failed on process 0' in outs[1]
