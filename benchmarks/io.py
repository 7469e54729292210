"""save/load of the GPT-2-small-like tree: safetensors vs flax msgpack vs numpy, same run.

Run: python benchmarks/io.py [--rounds N]
     python benchmarks/io.py --lazy   (peak memory of partial reads of a 2 GB file)
     python benchmarks/io.py --lazy --dtype float16   (the summary of a 1 GB float16 file)
     python benchmarks/io.py --lazy --orbax-only --tensors 20   (an Orbax folder of 400 MB:
         select= and `pytreeparams summary FOLDER --no-stats`, peak RSS against the interpreter's)
     python benchmarks/io.py --sharded   (the same reads of a sharded checkpoint; --no-stats)
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
    out = ptp.load(sys.argv[1], select='t_000')
    assert float(out['t_000'].sum()) != 0 and list(out) == ['t_000']
elif sys.argv[2] == 'orbax_meta':  # the baseline: the interpreter, Orbax and the metadata
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        assert len(ckptr.metadata(sys.argv[1]).item_metadata.tree) > 0
elif sys.argv[2] == 'orbax_cli_no_stats':  # `pytreeparams summary FOLDER --no-stats`
    import contextlib, io
    from pytreeparams._cli import main

    with contextlib.redirect_stdout(io.StringIO()) as text:
        assert main(['summary', sys.argv[1], '--no-stats', '--plain']) == 0
    assert 't_000' in text.getvalue()
elif sys.argv[2] == 'orbax_full_no_stats':  # what the command line did before: every array read
    s = ptp.summary(ptp.load(sys.argv[1]), stats=False)
    assert s.totals.leaves > 0
elif sys.argv[2] == 'summary':
    s = ptp.summary(ptp.load(sys.argv[1], mmap=True))  # what `pytreeparams summary FILE` does
    assert s.totals.size == 100 * 2048 * 2560
elif sys.argv[2] == 'summary_nostats':
    s = ptp.summary(ptp.load(sys.argv[1]), stats=False)
    assert s.totals.size == 100 * 2048 * 2560
elif sys.argv[2] == 'cli_nostats':
    import contextlib, io
    from pytreeparams._cli import main

    with contextlib.redirect_stdout(io.StringIO()) as text:
        assert main(['summary', sys.argv[1], '--no-stats', '--plain']) == 0
    assert '524,288,000 parameters' in text.getvalue()
else:
    out = ptp.load(sys.argv[1])
    total = sum(float(v.sum()) for v in out.values())  # every byte read once
print(before, status('VmHWM:'))
"""


def _big_tree(dtype: str = 'float32', n: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        f't_{i:03d}': rng.standard_normal((2048, 2560), np.float32).astype(dtype) for i in range(n)
    }


def _peak_growth(path: str, what: str, absolute: bool = False) -> int:
    """Peak RSS growth in bytes of one read, in a fresh process (``absolute``: the
    process's peak RSS)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, '-c', _CHILD, path, what], capture_output=True, text=True, check=True
    ).stdout.split()
    return (int(out[1]) - (0 if absolute else int(out[0]))) * 1024


def _du(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
    )


def orbax_lazy(n: int, folder: str | None = None) -> None:
    """Peak resident memory (VmHWM, each in a fresh process) of reading an Orbax
    folder of ``n`` float32 tensors of 20 MiB: ``select=`` of one (growth), and the
    command line's ``summary FOLDER --no-stats`` against the interpreter's own peak
    with Orbax imported and the checkpoint's metadata read (the baseline), and
    against a summary of every array restored (what the command line did before)."""
    own = folder is None
    folder = folder or tempfile.mkdtemp(prefix='ptp-lazy-orbax-')
    orbax = os.path.join(folder, 'big_orbax')
    ptp.save(orbax, _big_tree(n=n))
    size = _du(orbax)
    print(f'Orbax folder: {size / 2**20:.0f} MiB, {n} float32 tensors of 20 MiB')
    grown = _peak_growth(orbax, 'orbax_select')
    print('| read | peak RSS | / baseline |')
    print('|---|---|---|')
    base = _peak_growth(orbax, 'orbax_meta', absolute=True)
    print(
        f'| baseline: interpreter, pytreeparams, Orbax, metadata read | {base / 2**20:.0f} MiB '
        '| 1.00 |',
        flush=True,
    )
    rows = {
        'orbax_cli_no_stats': '`pytreeparams summary FOLDER --no-stats` (metadata only)',
        'orbax_full_no_stats': 'summary(load(folder), stats=False) (every array restored)',
    }
    for what, label in rows.items():
        peak = _peak_growth(orbax, what, absolute=True)
        print(f'| {label} | {peak / 2**20:.0f} MiB | {peak / base:.2f} |', flush=True)
    print(
        f"load(folder, select='t_000'): peak RSS growth {grown / 2**20:.0f} MiB "
        f'({grown / size:.1%} of the folder)'
    )
    shutil.rmtree(orbax if not own else folder)


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
        'orbax_select': "Orbax folder: load(folder, select='t_000') (partial restore)",
    }
    if dtype != 'float32':
        grown = _peak_growth(path, 'summary')
        print(f'| {label["summary"]} | {grown / 2**20:.0f} MiB | {grown / size:.1%} |')
        return shutil.rmtree(folder)
    for what in ('select', 'load_into', 'summary', 'all'):
        grown = _peak_growth(path, what)
        print(f'| {label[what]} | {grown / 2**20:.0f} MiB | {grown / size:.1%} |', flush=True)
    os.remove(path)
    orbax_lazy(100, folder)
    shutil.rmtree(folder)


def sharded() -> None:
    """The reads of :func:`lazy` from a sharded Hugging Face checkpoint of the same
    tensors (``max_shard_size='500MB'``: 5 shards and an index), and the summaries
    without statistics (``--no-stats``) of it and of the single file."""
    folder = tempfile.mkdtemp(prefix='ptp-sharded-')
    hf, single = os.path.join(folder, 'hf'), os.path.join(folder, 'big.safetensors')
    tree = _big_tree()
    ptp.save(hf, tree, max_shard_size='500MB')
    ptp.save(single, tree)
    del tree
    size = os.path.getsize(single)
    print(f'{size / 2**30:.2f} GiB; {len(os.listdir(hf)) - 1} shards and an index')
    print('| read | peak RSS growth | / file size |')
    print('|---|---|---|')
    rows = [
        (hf, 'select', "sharded: load(folder, select='t_042') (1 tensor)"),
        (hf, 'load_into', 'sharded: load_into(folder, like={1 tensor}, strict=False)'),
        (hf, 'summary', 'sharded: summary(load(folder)), statistics of every tensor'),
        (hf, 'summary_nostats', 'sharded: summary(load(folder), stats=False)'),
        (hf, 'cli_nostats', 'sharded: `pytreeparams summary folder --no-stats`'),
        (single, 'summary', 'one file: summary(load(path)), statistics of every tensor'),
        (single, 'summary_nostats', 'one file: summary(load(path), stats=False)'),
        (single, 'cli_nostats', 'one file: `pytreeparams summary path --no-stats`'),
    ]
    for path, what, label in rows:
        grown = _peak_growth(path, what)
        print(f'| {label} | {grown / 2**20:.1f} MiB | {grown / size:.2%} |', flush=True)
    shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--lazy', action='store_true')
    ap.add_argument('--sharded', action='store_true')
    ap.add_argument('--dtype', default='float32', help='with --lazy: the tensors dtype')
    ap.add_argument('--orbax-only', action='store_true', help='with --lazy: the Orbax rows only')
    ap.add_argument('--tensors', type=int, default=100, help='with --orbax-only: 20 MiB each')
    args = ap.parse_args()
    if args.lazy and args.orbax_only:
        return orbax_lazy(args.tensors)
    if args.lazy:
        return lazy(args.dtype)
    if args.sharded:
        return sharded()
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
