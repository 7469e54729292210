"""save/load of the GPT-2-small-like tree: safetensors vs flax msgpack vs numpy, same run.

Run: python benchmarks/io.py [--rounds N]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args()
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
