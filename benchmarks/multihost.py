"""ptp.summary of global arrays in a real 2-process jax.distributed job on CPU.

Run: python benchmarks/multihost.py [--mesh explicit|auto] [--leaves N]

Two processes x 4 simulated CPU devices, one (4, 2) mesh over all 8, ``--leaves``
leaves sharded five ways in turn (full, partially replicated, replicated, 2-D, minor
axis). Process 0 prints the seconds and the XLA compilations, dispatches and fetches
(``count_device_work``) of the first and of a second ``summary`` call. Compare two
checkouts by running it with ``PYTHONPATH`` set to each.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

JOB = """
import sys, time
import numpy as np
import jax
jax.distributed.initialize(coordinator_address='localhost:' + sys.argv[2], num_processes=2,
                           process_id=int(sys.argv[1]), initialization_timeout=60)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._moments import count_device_work

mesh_kind, n = sys.argv[3], int(sys.argv[4])
if mesh_kind == 'explicit':
    mesh = jax.make_mesh((4, 2), ('a', 'b'))
else:
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('a', 'b'))
specs = [P(('a', 'b')), P('a'), P(), P('a', 'b'), P(None, 'a')]
tree = {}
for i in range(n):
    full = np.random.default_rng(i).normal(size=(64, 32)).astype(np.float32)
    s = NamedSharding(mesh, specs[i % 5])
    tree[f'leaf{i}'] = jax.make_array_from_callback(full.shape, s, lambda idx: full[idx])
for name in ('first', 'second'):
    t0 = time.perf_counter()
    with count_device_work() as work:
        ptp.summary(tree)
    if jax.process_index() == 0:
        print(f'{name:6s} {time.perf_counter() - t0:7.3f} s  compilations {work.compilations}  '
              f'dispatches {work.dispatches}  fetches {work.fetches}')
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mesh', default='explicit', choices=['explicit', 'auto'])
    parser.add_argument('--leaves', type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=4'
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', JOB, str(i), port, args.mesh, str(args.leaves)],
            env=env,
            cwd=os.path.dirname(os.path.abspath(__file__)),  # not a checkout's root
            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    out, _ = procs[0].communicate(timeout=600)
    procs[1].wait(timeout=60)
    print('\n'.join(line for line in out.splitlines() if not line.startswith('[Gloo]')))


if __name__ == '__main__':
    main()
