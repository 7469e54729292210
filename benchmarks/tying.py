"""ptp.tie inside the loss against Embed.attend: GPT-2-small-like training step, same run.

Run: python benchmarks/tying.py [--rounds N]
"""

from __future__ import annotations

import argparse

import jax
import optax
from _common import fmt_s, interleaved
from models import GPT2, lm_loss

import pytreeparams as ptp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq', type=int, default=64)
    args = ap.parse_args()
    tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq), 0, 50257)
    attend, dense = GPT2(head='attend'), GPT2(head='dense')
    compact = attend.init(jax.random.key(1), tokens)  # Embed.attend: no lm_head entry
    ties = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})
    full = ptp.tie(compact, ties)
    assert ptp.paths(ptp.untie(full, ties)) == ptp.paths(compact)
    tx = optax.adamw(1e-4)

    def make(loss):
        @jax.jit
        def step(params, opt):
            g = jax.grad(loss)(params)
            upd, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, upd), opt

        return step

    step_attend = make(lambda p: lm_loss(attend.apply(p, tokens), tokens))
    step_tie = make(lambda c: lm_loss(dense.apply(ptp.tie(c, ties), tokens), tokens))
    opt = tx.init(compact)
    a = step_attend(compact, opt)[0]
    b = step_tie(compact, opt)[0]
    err = max(
        float(abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )

    def op_counts(step):
        import collections
        import re

        text = step.lower(compact, opt).compile().as_text()
        return collections.Counter(re.findall(r'= \S+ ([a-z-]+)\(', text))

    same_program = op_counts(step_attend) == op_counts(step_tie)
    res = interleaved(
        {
            'attend': lambda: step_attend(compact, opt),
            'tie': lambda: step_tie(compact, opt),
        },
        rounds=args.rounds,
    )
    alias_bytes = ptp.nbytes(ptp.select(full, 'params/lm_head/kernel'))
    print(
        f'jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch} x {args.seq}'
    )
    print(
        '| step | Embed.attend | ptp.tie in loss | ratio tie/attend | max param diff after 1 step |'
    )
    print('|---|---|---|---|---|')
    print(
        f'| GPT-2 small adamw | {fmt_s(res["attend"])} | {fmt_s(res["tie"])} | '
        f'{res["tie"] / res["attend"]:.3f} | {err:.1e} |'
    )
    print(f'\ncompiled programs have identical HLO op counts: {same_program}')
    print(
        f'\nparameter bytes: untied {ptp.nbytes(full):,}, compact {ptp.nbytes(compact):,}, '
        f'alias {alias_bytes:,}; compact == untied - alias: '
        f'{ptp.nbytes(compact) == ptp.nbytes(full) - alias_bytes}; '
        f'optimizer state bytes {ptp.nbytes(opt):,} (one copy of the shared matrix)'
    )


if __name__ == '__main__':
    main()
