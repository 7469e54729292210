"""ptp.summary(module, *inputs), the per-call view with statistics, against flax's
nn.tabulate (the same calls, no statistics) and ptp.summary(params) (statistics,
no calls), in the same run, on the GPT-2-small-like model (124M parameters); and
ptp.summary(model, tokens) without variables= (statistics of a fresh init).

Run: python benchmarks/calls.py [--rounds N]   (from benchmarks/)
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
from _common import fmt_s, interleaved
from models import GPT2

import pytreeparams as ptp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args()
    model = GPT2()
    tokens = jnp.zeros((1, 16), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens)
    tabulate = nn.tabulate(model, jax.random.key(0), console_kwargs={'width': 250})
    calls = ptp.summary(model, tokens, variables=params)
    print(f'{len(calls.calls)} calls, {calls.totals.size:,} parameters')
    fns = {
        'nn.tabulate(model)(tokens)': lambda: tabulate(tokens),
        'ptp.summary(params)': lambda: ptp.summary(params).totals.size,
        'ptp.summary(model, tokens, variables=params)': lambda: (
            ptp.summary(model, tokens, variables=params).totals.size
        ),
        # no variables: a fresh init each call (its jitted program cached per input shapes)
        'ptp.summary(model, tokens)': lambda: ptp.summary(model, tokens).totals.size,
    }
    t = interleaved(fns, rounds=args.rounds)
    base = t['nn.tabulate(model)(tokens)']
    print('| call | median | / nn.tabulate |')
    print('|---|---|---|')
    for name, s in t.items():
        print(f'| `{name}` | {fmt_s(s)} | {s / base:.2f} |')


if __name__ == '__main__':
    main()
