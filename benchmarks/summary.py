"""ptp.summary(stats=True) against clu.parameter_overview and reading the bytes once.

Run: python benchmarks/summary.py [--trees resnet50,gpt2,...] [--rounds N] [--device-path]
Needs `pip install clu` (benchmark only).

``--device-path`` sends the (CPU-resident) leaves down the accelerator route
(small leaves fetched in one ``device_get``, large ones through the size-class
kernels) and prints, per tree, the XLA compilations, executable dispatches and
device-to-host fetches of the first and of a warm call: what costs on a GPU,
counted on a machine without one.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import trees
from _common import block, fmt_s, interleaved

import pytreeparams as ptp
from pytreeparams import _flatten, _patterns
from pytreeparams._moments import (
    clear_programs,
    count_device_work,
    force_device_path,
    wait_compiled,
)


def first_call(fn, ours: bool = True) -> float:
    """Seconds of ``fn``'s first call after clearing jax's caches (and ours)."""
    jax.clear_caches()
    if ours:
        _flatten.PATHS_CACHE.clear()
        _patterns.MATCH_CACHE.clear()
        clear_programs()
    t0 = time.perf_counter()
    block(fn())
    t = time.perf_counter() - t0
    wait_compiled()  # on an accelerator, what the first call left compiling for the next
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--trees', default=','.join(trees.SPECS))
    ap.add_argument('--rounds', type=int, default=7)
    ap.add_argument('--device-path', action='store_true')
    args = ap.parse_args()
    if args.device_path:
        return device_path(args)
    from clu import parameter_overview

    print(f'jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}')
    print(
        '| tree | read once (warm) | ptp warm | ptp/read | clu warm | clu/read | '
        'ptp first | clu first | ptp first/clu first | tree_leaves only / read |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|')
    for name in args.trees.split(','):
        tree = trees.make(name)
        buf = trees.flat_buffer_like(tree)
        read = jax.jit(jnp.sum)

        def ours(tree=tree):
            return ptp.summary(tree, stats=True).totals

        def clu(tree=tree):
            return parameter_overview.get_parameter_overview(tree, include_stats=True)

        t_ours_first = first_call(ours)
        t_clu_first = first_call(clu, ours=False)
        block(read(buf))
        slow = name.startswith('llama')
        res = interleaved(
            {
                'read': lambda read=read, buf=buf: read(buf),
                'ptp': ours,
                # the floor of any function that takes the tree: listing its leaves
                'leaves': lambda tree=tree: jax.tree_util.tree_leaves(tree),
                **({} if slow else {'clu': clu}),
            },
            rounds=args.rounds,
        )
        if slow:
            res['clu'] = t_clu_first  # clu takes ~20 s here; its warm call equals its first
        r = res['read']
        print(
            f'| {name} | {fmt_s(r)} | {fmt_s(res["ptp"])} | {res["ptp"] / r:.1f}x | '
            f'{fmt_s(res["clu"])} | {res["clu"] / r:.1f}x | {fmt_s(t_ours_first)} | '
            f'{fmt_s(t_clu_first)} | {t_ours_first / t_clu_first:.2f} | '
            f'{res["leaves"] / r:.2f}x |',
            flush=True,
        )
        del tree, buf


def device_path(args) -> None:
    """The accelerator route forced on CPU arrays: counts, and times against
    the host route of the same run. "host-first" is what runs on an
    accelerator: a first call fetches the large leaves while their programs
    compile in the background; "compiled at once" compiles them in the call."""
    print(f'jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}')
    print(
        '| tree | first call, host-first | its compilations in the call | its fetched arrays '
        '| first call, compiled at once | compilations | dispatches | fetches (arrays) | warm | '
        'warm compilations | warm dispatches | warm fetches | host route warm | device / host |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for name in args.trees.split(','):
        tree = trees.make(name)

        def dev(tree=tree, host_first=False):
            with force_device_path(host_first=host_first):
                return ptp.summary(tree, stats=True).totals

        def host(tree=tree):
            return ptp.summary(tree, stats=True).totals

        jax.clear_caches()
        clear_programs()
        with count_device_work() as hf:
            t0 = time.perf_counter()
            block(dev(host_first=True))
            t_hf = time.perf_counter() - t0
        wait_compiled()
        with count_device_work() as first:
            t_first = first_call(dev)
        with count_device_work() as warm:
            dev()
        res = interleaved({'device': dev, 'host': host}, rounds=args.rounds)
        print(
            f'| {name} | {fmt_s(t_hf)} | {hf.compilations} | {hf.fetched_arrays} | '
            f'{fmt_s(t_first)} | {first.compilations} | {first.dispatches} | '
            f'{first.fetches} ({first.fetched_arrays}) | {fmt_s(res["device"])} | '
            f'{warm.compilations} | {warm.dispatches} | {warm.fetches} | {fmt_s(res["host"])} | '
            f'{res["device"] / res["host"]:.2f} |',
            flush=True,
        )
        del tree


if __name__ == '__main__':
    main()
