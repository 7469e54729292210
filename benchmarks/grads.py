"""Step-time cost of ptp.grad_stats inside a jitted SGD step, same run.

Run: python benchmarks/grads.py [--rounds N] [--skip-gpt2] [--gpt2-big] [--compile] [--width W]
(``--sharded``, with XLA_FLAGS=--xla_force_host_platform_device_count=8: compile-only figures)
Ratio = (SGD step that also returns ptp.grad_stats(grads, params, updates)) / (plain step).
``--gpt2-big`` adds the realistic row, GPT-2 small at batch 32 x 256 (on by
default on an accelerator; on a 2-core CPU one step takes about a minute).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from _common import fmt_s, interleaved
from models import GPT2, DeepMLP, lm_loss

import pytreeparams as ptp


def steps(loss_fn, params, batch):
    tx = optax.sgd(1e-3)
    state = tx.init(params)

    @jax.jit
    def plain(params, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates)

    @jax.jit
    def with_stats(params, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), ptp.grad_stats(grads, params, updates)

    @jax.jit
    def with_norms(params, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), ptp.grad_stats(
            grads, params, updates, extras=False
        )

    @jax.jit
    def with_global_norm(params, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), optax.tree.norm(grads)

    def sumsq(tree):
        return jnp.stack([jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)])

    @jax.jit
    def read_g(params, batch):
        # the floor of any per-leaf gradient statistic: reading every gradient once
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), sumsq(grads)

    @jax.jit
    def read_gpu(params, batch):
        # the floor of grad_stats(grads, params, updates): reading each of the three once
        grads = jax.grad(loss_fn)(params, batch)
        updates, _ = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), (
            sumsq(grads),
            sumsq(params),
            sumsq(updates),
        )

    return plain, with_stats, with_norms, with_global_norm, read_g, read_gpu


def bench(name, loss_fn, params, batch, rounds, number):
    plain, with_stats, norms, gnorm, read_g, read_gpu = steps(loss_fn, params, batch)
    for f in (plain, with_stats, norms, gnorm, read_g, read_gpu):
        jax.block_until_ready(f(params, batch))
    res = interleaved(
        {
            'plain': lambda: plain(params, batch),
            'grad_stats': lambda: with_stats(params, batch),
            'norms': lambda: norms(params, batch),
            'global_norm': lambda: gnorm(params, batch),
            'read_g': lambda: read_g(params, batch),
            'read_gpu': lambda: read_gpu(params, batch),
        },
        rounds=rounds,
        number=number,
    )
    print(
        f'| {name} | {fmt_s(res["plain"])} | {fmt_s(res["grad_stats"])} | '
        f'{res["grad_stats"] / res["plain"]:.3f} | {res["norms"] / res["plain"]:.3f} | '
        f'{res["global_norm"] / res["plain"]:.3f} | {res["read_g"] / res["plain"]:.3f} | '
        f'{res["read_gpu"] / res["plain"]:.3f} |',
        flush=True,
    )


def bench_watch(loss_fn, params, batch, rounds, number) -> None:
    """ptp.watch around adam: every step, every 10th step, against the plain step."""

    def make(tx):
        state = [tx.init(params)]  # advanced by every call, so that every=N takes its turns

        @jax.jit
        def step(params, state, batch):
            grads = jax.grad(loss_fn)(params, batch)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        def run():
            new, state[0] = step(params, state[0], batch)
            return new

        return run

    fns = {
        'plain': make(optax.adam(1e-3)),
        'watch': make(ptp.watch(optax.adam(1e-3))),
        'watch10': make(ptp.watch(optax.adam(1e-3), every=10)),
    }
    for f in fns.values():
        jax.block_until_ready(f())
    res = interleaved(fns, rounds=rounds, number=number)
    print(
        f'| adam step | {fmt_s(res["plain"])} | {res["watch"] / res["plain"]:.3f} | '
        f'{res["watch10"] / res["plain"]:.3f} |',
        flush=True,
    )


def compile_costs(name, loss_fn, params, batch, rounds) -> None:
    """Compile seconds (best of ``rounds``, caches cleared, variants interleaved)
    and temporary memory of the SGD step returning: nothing more (plain); the
    per-leaf norms ``sqrt(sum(x * x))`` of g, p and u (the anchor); and
    ``grad_stats(g, p, u)`` in its three tiers. Ratios against the anchor."""
    tx = optax.sgd(1e-3)
    state = tx.init(params)

    def make(kind):
        def step(params, batch):
            grads = jax.grad(loss_fn)(params, batch)
            updates, _ = tx.update(grads, state, params)
            out = optax.apply_updates(params, updates)
            if kind == 'plain':
                return out
            if kind == 'anchor':
                trees = (grads, params, updates)
                leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
                return out, [jnp.sqrt(jnp.sum(x * x)) for x in leaves]
            kw = {'full': {}, 'extras=False': {'extras': False}, 'norms_only': {'norms_only': True}}
            return out, ptp.grad_stats(grads, params, updates, **kw[kind])

        return step

    kinds = ['plain', 'anchor', 'full', 'extras=False', 'norms_only']
    best = dict.fromkeys(kinds, float('inf'))
    temp = {}
    for _ in range(rounds):
        for kind in kinds:
            lowered = jax.jit(make(kind)).lower(params, batch)
            jax.clear_caches()
            t = time.perf_counter()
            compiled = lowered.compile()
            best[kind] = min(best[kind], time.perf_counter() - t)
            mem = compiled.memory_analysis()
            temp[kind] = mem.temp_size_in_bytes if mem is not None else float('nan')
    nbytes = max(1, _nbytes(params))
    for kind in kinds:
        print(
            f'| {name} | {kind} | {fmt_s(best[kind])} | {best[kind] / best["plain"]:.2f} | '
            f'{best[kind] / best["anchor"]:.2f} | {(temp[kind] - temp["plain"]) / nbytes:.3f} |',
            flush=True,
        )


def sharded_costs() -> None:
    """Compile-only, LLaMA-7B-shaped: a (4096, 11008) float32 kernel on 8 devices
    (run with XLA_FLAGS=--xla_force_host_platform_device_count=8): temporary
    memory per device, all-gathers and conditionals of the traced statistics."""
    import re

    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from pytreeparams._moments import jax_partials

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('data', 'model'))
    print(
        '| kernel sharding | program | shard per device | temp per device | all-gathers '
        '| conditionals |'
    )
    print('|---|---|---|---|---|---|')
    programs = {
        'grad_stats(g, p, u)': lambda g: ptp.grad_stats({'w': g}, {'w': g}, {'w': g}).table,
        'grad_stats(g, p, u, norms_only=True)': lambda g: (
            ptp.grad_stats({'w': g}, {'w': g}, {'w': g}, norms_only=True).table
        ),
        'jitted ptp.stats / global kernel': lambda g: jnp.stack(jax_partials(g)),
    }
    for spec in (P(None, 'model'), P('data', 'model'), P('model', 'data')):
        s = jax.ShapeDtypeStruct((4096, 11008), jnp.float32, sharding=NamedSharding(mesh, spec))
        shard = 4096 * 11008 * 4 / (4 if spec == P(None, 'model') else 8)
        for name, f in programs.items():
            c = jax.jit(f).lower(s).compile()
            t = c.as_text()
            print(
                f'| `{spec}` | {name} | {shard / 2**20:.1f} MiB | '
                f'{c.memory_analysis().temp_size_in_bytes / 2**20:.3f} MiB | '
                f'{len(re.findall(r"all-gather(-start)?[(]", t))} | '
                f'{len(re.findall(r"conditional[(]", t))} |',
                flush=True,
            )


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _mlp(width: int = 1024):
    """The MLP benchmark: (loss, params, batch) of 24 x Dense(width) at batch 64."""
    mlp = DeepMLP(width=width)
    x = jax.random.normal(jax.random.key(0), (64, width))
    y = jax.random.normal(jax.random.key(1), (64, 1))
    params = mlp.init(jax.random.key(2), x)
    return lambda p, b: jnp.mean((mlp.apply(p, b[0]) - b[1]) ** 2), params, (x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=15)
    ap.add_argument('--skip-gpt2', action='store_true')
    ap.add_argument('--gpt2-big', action='store_true')
    ap.add_argument('--compile', action='store_true', help='compile time and memory only')
    ap.add_argument('--width', type=int, default=1024, help='width of the MLP')
    ap.add_argument('--sharded', action='store_true', help='LLaMA-shaped, 8 devices, compile only')
    args = ap.parse_args()
    print(f'jax {jax.__version__}, backend {jax.default_backend()}')
    if args.sharded:
        sharded_costs()
        return
    if args.compile:
        print(
            '| model | step returns | compile | x plain | x anchor (per-leaf norms) | '
            'added temp / parameter bytes |'
        )
        print('|---|---|---|---|---|---|')
        loss, p, batch = _mlp(args.width)
        compile_costs(f'MLP 24 x Dense({args.width})', loss, p, batch, min(args.rounds, 3))
        if args.skip_gpt2:
            return
        gpt = GPT2()
        tokens = jax.random.randint(jax.random.key(3), (4, 64), 0, 50257)
        gp = gpt.init(jax.random.key(4), tokens[:1])
        gloss = lambda p, t: lm_loss(gpt.apply(p, t), t)  # noqa: E731
        compile_costs('GPT-2 small', gloss, gp, tokens, min(args.rounds, 3))
        times = []
        for _ in range(2):  # outside jit: the first call compiles, the second reuses
            t = time.perf_counter()
            jax.block_until_ready(ptp.grad_stats(p, p, p).table)
            times.append(time.perf_counter() - t)
        print(
            f'\ngrad_stats outside jit on the MLP: first call {fmt_s(times[0])}, '
            f'second {fmt_s(times[1])}'
        )
        return
    print(
        '| model | plain step | step + grad_stats | ratio (all stats) | ratio (extras=False) '
        '| ratio optax.tree.norm (reference) | floor: read grads once | '
        'floor: read grads, params, updates once |'
    )
    print('|---|---|---|---|---|---|---|---|')
    loss, p, batch = _mlp()
    print('\nptp.watch(adam) on the MLP (the every=10 step computes statistics in 1 of 10):')
    print('| step | plain | watch / plain | watch(every=10) / plain |')
    print('|---|---|---|---|')
    bench_watch(loss, p, batch, args.rounds, 10)
    print()
    bench('MLP 24 x Dense(1024), batch 64', loss, p, batch, args.rounds, 5)
    gpt2_batches = [] if args.skip_gpt2 else [(4, 64)]
    if not args.skip_gpt2 and (args.gpt2_big or jax.default_backend() != 'cpu'):
        gpt2_batches.append((32, 256))
    gpt = GPT2()
    for i, (batch, length) in enumerate(gpt2_batches):
        tokens = jax.random.randint(jax.random.key(3 + 2 * i), (batch, length), 0, 50257)
        gp = gpt.init(jax.random.key(4 + 2 * i), tokens[:1])
        bench(
            f'GPT-2 small, batch {batch} x {length}',
            lambda p, t: lm_loss(gpt.apply(p, t), t),
            gp,
            tokens,
            max(5, args.rounds // 2),
            1,
        )


if __name__ == '__main__':
    main()
