"""save/load of the GPT-2-small-like tree: safetensors vs flax msgpack vs numpy, same run.

Run: python benchmarks/io.py [--rounds N]
     python benchmarks/io.py --lazy   (peak memory of partial reads of a 2 GB file)
     python benchmarks/io.py --lazy --dtype float16   (the summary of a 1 GB float16 file)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import jax
import numpy as np
import trees
from _common import fmt_s, interleaved
from flax import serialization

import pytreeparams as ptp

_CHILD = """
import sys
import pytreeparams as ptp


def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])


before = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS
if sys.argv[2] == 'select':
    out = ptp.load(sys.argv[1], select='t_042')
    assert float(out['t_042'].sum()) != 0
elif sys.argv[2] == 'load_into':
    import jax
    import numpy as np

    like = {'t_042': jax.ShapeDtypeStruct((2048, 2560), np.float32)}
    out, report = ptp.load_into(sys.argv[1], like=like, strict=False)
    assert float(out['t_042'].sum()) != 0 and len(report.unexpected) == 99
elif sys.argv[2] == 'orbax_select':
    out = ptp.load(sys.argv[1], select='t_042')
    assert float(out['t_042'].sum()) != 0 and list(out) == ['t_042']
elif sys.argv[2] == 'summary':
    s = ptp.summary(ptp.load(sys.argv[1], mmap=True))  # what `pytreeparams summary FILE` does
    assert s.totals.size == 100 * 2048 * 2560
else:
    out = ptp.load(sys.argv[1])
    total = sum(float(v.sum()) for v in out.values())  # every byte read once
print(before, status('VmHWM:'))
"""


def _big_tree(dtype: str = 'float32') -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        f't_{i:03d}': rng.standard_normal((2048, 2560), np.float32).astype(dtype)
        for i in range(100)
    }


def _peak_growth(path: str, what: str) -> int:
    """Peak RSS growth in bytes of one read, in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, '-c', _CHILD, path, what], capture_output=True, text=True, check=True
    ).stdout.split()
    return (int(out[1]) - int(out[0])) * 1024


def lazy(dtype: str = 'float32') -> None:
    """Peak resident memory growth (VmHWM after a reset, in a fresh process) of
    reading 1 of 100 tensors of a 2 GB safetensors file and Orbax checkpoint, of a
    summary of the file, and of reading every tensor, against the file size. With
    another ``dtype``: the summary of a file of 100 such tensors only."""
    folder = tempfile.mkdtemp(prefix='ptp-lazy-')
    path = os.path.join(folder, 'big.safetensors')
    ptp.save(path, _big_tree(dtype))
    size = os.path.getsize(path)
    tensor = 2048 * 2560 * np.dtype(dtype).itemsize / 2**20
    print(f'file: {size / 2**30:.2f} GiB, 100 {dtype} tensors of {tensor:.0f} MiB')
    print('| read | peak RSS growth | / file size |')
    print('|---|---|---|')
    label = {
        'select': "load(path, select='t_042') (1 tensor)",
        'load_into': 'load_into(path, like={1 tensor}, strict=False)',
        'summary': f'summary(load(path, mmap=True)), as the CLI (largest: {tensor:.0f} MiB)',
        'all': 'load(path), every tensor summed',
        'orbax_select': "Orbax folder: load(folder, select='t_042') (partial restore)",
    }
    if dtype != 'float32':
        grown = _peak_growth(path, 'summary')
        print(f'| {label["summary"]} | {grown / 2**20:.0f} MiB | {grown / size:.1%} |')
        return shutil.rmtree(folder)
    for what in ('select', 'load_into', 'summary', 'all'):
        grown = _peak_growth(path, what)
        print(f'| {label[what]} | {grown / 2**20:.0f} MiB | {grown / size:.1%} |', flush=True)
    os.remove(path)
    orbax = os.path.join(folder, 'big_orbax')
    ptp.save(orbax, _big_tree())
    grown = _peak_growth(orbax, 'orbax_select')
    print(f'| {label["orbax_select"]} | {grown / 2**20:.0f} MiB | {grown / size:.1%} |', flush=True)
    shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--lazy', action='store_true')
    ap.add_argument('--dtype', default='float32', help='with --lazy: the tensors dtype')
    args = ap.parse_args()
    if args.lazy:
        return lazy(args.dtype)
    tree = jax.tree.map(np.asarray, trees.make('gpt2'))
    flat = ptp.flatten(tree)
    folder = tempfile.mkdtemp(prefix='ptp-io-')
    st, mp = os.path.join(folder, 'p.safetensors'), os.path.join(folder, 'p.msgpack')
    npd = os.path.join(folder, 'npy')
    os.makedirs(npd)

    def np_save():
        for i, v in enumerate(flat.values()):
            np.save(os.path.join(npd, f'{i}.npy'), v)

    def np_load():
        return [np.load(os.path.join(npd, f'{i}.npy')) for i in range(len(flat))]

    def mp_save():
        with open(mp, 'wb') as f:
            f.write(serialization.to_bytes(tree))

    def mp_load():
        with open(mp, 'rb') as f:
            return serialization.msgpack_restore(f.read())

    res = interleaved(
        {
            'ptp save': lambda: ptp.save(st, tree),
            'msgpack save': mp_save,
            'numpy save': np_save,
            'ptp load': lambda: ptp.load(st),
            'msgpack load': mp_load,
            'numpy load': np_load,
        },
        rounds=args.rounds,
    )
    size = os.path.getsize(st)
    print(f'GPT-2-small-like tree: {ptp.count(tree):,} params, {size / 1e6:.0f} MB file')
    print('| op | ptp (.safetensors) | flax msgpack | ratio | numpy save/load | ratio |')
    print('|---|---|---|---|---|---|')
    for op in ('save', 'load'):
        o, m, n = res[f'ptp {op}'], res[f'msgpack {op}'], res[f'numpy {op}']
        print(f'| {op} | {fmt_s(o)} | {fmt_s(m)} | {o / m:.2f} | {fmt_s(n)} | {o / n:.2f} |')
    shutil.rmtree(folder)


if __name__ == '__main__':
    main()
