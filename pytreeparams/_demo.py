"""The terminal tour behind ``python -m pytreeparams demo``.

It tells the story of the parameter-management chapter of "Dive into Deep
Learning" with pytreeparams: access, summaries, initialization, tying,
watching gradients during training, and saving for PyTorch.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any


class _Out:
    """Prints headings, text and tables through rich when it is installed."""

    def __init__(self, plain: bool):
        self.console = None
        if not plain:
            try:
                from rich.console import Console

                self.console = Console(highlight=False)
            except ImportError:
                self.console = None

    def heading(self, text: str) -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.rule(f'[bold]{escape(text)}')
        else:
            print(f'\n== {text} ==')

    def print(self, obj: Any = '') -> None:
        if self.console is None:
            print(obj)
        elif isinstance(obj, str):
            self.console.print(obj, markup=False, soft_wrap=True)
        else:
            self.console.print(obj)

    def progress(self, total: int, label: str):
        """A context manager yielding ``advance(n)``: rich bar or plain dots."""
        import contextlib

        if self.console is not None:
            from rich.progress import Progress

            @contextlib.contextmanager
            def bar():
                with Progress(console=self.console, transient=False) as p:
                    task = p.add_task(label, total=total)
                    yield lambda n=1: p.advance(task, n)

            return bar()

        @contextlib.contextmanager
        def dots():
            done = [0]
            print(f'{label}: ', end='', flush=True)

            def advance(n: int = 1) -> None:
                before = done[0] * 20 // total
                done[0] += n
                print('#' * (done[0] * 20 // total - before), end='', flush=True)

            yield advance
            print(f' {done[0]}/{total}')

        return dots()


def run_demo(steps: int = 300, out: str | None = None, plain: bool = False) -> int:
    """Runs the tour of the D2L parameter-management chapter; returns 0.

    Without ``out`` its files go to a temporary folder that is removed at the end.
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix='pytreeparams-demo-') as tmp:
            code = _run_demo(steps, tmp, plain)
        print('(the files above were in a temporary folder, now removed; --out DIR keeps them)')
        return code
    return _run_demo(steps, out, plain)


def _run_demo(steps: int, out: str, plain: bool) -> int:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import pytreeparams as ptp

    t0 = time.perf_counter()
    o = _Out(plain)
    os.makedirs(out, exist_ok=True)

    # 1. Parameter access --------------------------------------------------
    o.heading('1. The MLP: nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]) on a (2, 4) input')
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    x = jax.random.uniform(jax.random.key(1), (2, 4))
    params = net.init(jax.random.key(0), x)
    o.print("The second dense layer: ptp.get(params, 'params/layers_2')")
    for path, leaf in ptp.flatten(ptp.get(params, 'params/layers_2')).items():
        o.print(f'  {path}: {ptp.describe(leaf)}')
    bias = 'params/layers_2/bias'
    o.print(f"Its bias: ptp.get(params, '{bias}') = {ptp.get(params, bias)}")
    grads = jax.grad(lambda p: jnp.sum(net.apply(p, x)))(params)
    o.print(f"Gradient of that bias: ptp.get(grads, '{bias}') = {ptp.get(grads, bias)}")
    o.print('Every path with its shape: ptp.flatten(params)')
    for path, leaf in ptp.flatten(params).items():
        o.print(f'  {path:<24} {ptp.describe(leaf)}')
    s = ptp.summary(params)
    o.print(s)
    o.print(f'Total: {s.totals.size} parameters, {s.totals.nbytes} bytes')

    # 2. Nested blocks ------------------------------------------------------
    o.heading('2. Nested blocks: a block factory nested 4 deep, summarized by module')

    def block1():
        return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4), nn.relu])

    def block2():
        return nn.Sequential([block1() for _ in range(4)])

    rgnet = nn.Sequential([block2(), nn.Dense(1)])
    rg_params = rgnet.init(jax.random.key(0), x)
    o.print(ptp.summary(rg_params, depth=3))
    deep = 'params/layers_0/layers_1/layers_0/bias'
    o.print(f"One bias deep inside: ptp.get(rg_params, '{deep}') = {ptp.get(rg_params, deep)}")

    # 3. Initialization -------------------------------------------------------
    o.heading('3. Initialization by pattern, a custom initializer, setting values directly')
    init = jax.nn.initializers
    key = jax.random.key(42)
    normal = ptp.reinit(params, key, [('**/kernel', init.normal(0.01)), ('**/bias', init.zeros)])
    std = float(ptp.get(normal, 'params/layers_0/kernel').std())
    o.print(f'normal(0.01), zero biases: kernel std {std:.4f}')
    mixed = ptp.reinit(
        params,
        key,
        [
            ('params/layers_0/kernel', init.xavier_uniform()),
            ('params/layers_2/kernel', init.constant(42.0)),
        ],
    )
    o.print(
        f'Xavier on layer 0, 42 on layer 2: {ptp.get(mixed, "params/layers_2/kernel").ravel()[:4]}'
    )

    def chapter_init(key, shape, dtype=jnp.float32):
        w = jax.random.uniform(key, shape, dtype, -10.0, 10.0)
        return w * (jnp.abs(w) >= 5)

    custom = ptp.reinit(params, key, {'**/kernel': chapter_init})
    o.print(f'Custom U(5,10)/0/U(-10,-5): {ptp.get(custom, "params/layers_0/kernel")[0]}')
    plus = ptp.update(custom, 'params/layers_0/kernel', lambda w: w + 1)
    set42 = ptp.update(plus, 'params/layers_0/kernel', lambda w: w.at[0, 0].set(42.0))
    o.print(f'+1 then [0, 0] = 42: {ptp.get(set42, "params/layers_0/kernel")[0]}')

    o.print('Fine-tuning: load the MLP into a model with a new 3-output head')
    new_net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    target = new_net.init(jax.random.key(5), x)
    loaded, report = ptp.load_into(params, like=target, skip='params/layers_2/**')
    o.print(f'  {report}')

    # 4. Tied parameters ------------------------------------------------------
    o.heading('4. Tied parameters')
    shared = nn.Dense(8)
    tied_net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
    tied_params = tied_net.init(jax.random.key(0), x)
    stored = len(tied_params['params'])
    o.print(f'Flax shared module: {stored} stored layers: {list(tied_params["params"])}')
    for m in ptp.shared_modules(tied_net, x):
        o.print(f'  {m.path} is called {m.calls} times ({", ".join(m.call_sites)}), stored once')

    vocab, d = 20, 6
    emb = jax.random.normal(jax.random.key(3), (vocab, d))
    lm = {'params': {'wte': {'embedding': emb}, 'lm_head': {'kernel': emb.T}}}
    lm_ties = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})
    compact = ptp.untie(lm, lm_ties)
    o.print(
        f'Tied embedding/output projection: {ptp.count(lm)} parameters untied, '
        f'{ptp.count(compact)} stored ({ptp.nbytes(lm) - ptp.nbytes(compact)} bytes saved)'
    )

    # 5. Training a network with a shared layer --------------------------------
    o.heading(f'5. Training an MLP with a shared layer for {steps} steps')

    class Twin(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(8, name='layers_0')(x))
            x = nn.relu(nn.Dense(8, name='layers_2')(x))
            x = nn.relu(nn.Dense(8, name='layers_4')(x))
            return nn.Dense(1, name='layers_6')(x)

    twin = Twin()
    ties = ptp.Ties({'params/layers_4': 'params/layers_2'})
    full0 = twin.init(jax.random.key(0), x)
    full0 = ptp.set(full0, 'params/layers_4', ptp.get(full0, 'params/layers_2'))
    compact = ptp.untie(full0, ties)
    xs = jax.random.normal(jax.random.key(7), (256, 4))
    ys = jnp.sin(xs.sum(axis=1, keepdims=True))

    def loss_fn(full, xb, yb):
        return jnp.mean((twin.apply(full, xb) - yb) ** 2)

    tx = optax.adam(1e-2)
    opt = tx.init(compact)

    @jax.jit
    def step(compact, opt):
        loss, g = jax.value_and_grad(lambda c: loss_fn(ptp.tie(c, ties), xs, ys))(compact)
        updates, opt = tx.update(g, opt, compact)
        new = optax.apply_updates(compact, updates)
        return new, opt, loss, ptp.grad_stats(g, compact, updates, depth=2)

    history = ptp.History()
    report_every = max(1, steps // 3)
    with o.progress(steps, 'training') as advance:
        for i in range(steps):
            compact, opt, loss, gs = step(compact, opt)
            history.append(i, gs)
            advance(1)
    for i in sorted({0, report_every, 2 * report_every, steps - 1}):
        if i < steps:
            norms = ', '.join(f'{p}: {history.array(p, "grad_norm")[i]:.3g}' for p in history.paths)
            o.print(f'  step {i:4d}  grad norms  {norms}')
    o.print(f'  final loss {float(loss):.4f}')
    full = ptp.tie(compact, ties)
    full_grads = jax.grad(lambda f: loss_fn(f, xs, ys))(full)
    compact_grads = jax.grad(lambda c: loss_fn(ptp.tie(c, ties), xs, ys))(compact)
    parts = ptp.tied_grads(full_grads, ties)['params/layers_2/kernel']
    use1, use2 = parts['params/layers_2/kernel'], parts['params/layers_4/kernel']
    err = float(jnp.max(jnp.abs(use1 + use2 - compact_grads['params']['layers_2']['kernel'])))
    o.print(
        f'Shared layer gradient = sum of its two uses: |g1| {float(jnp.linalg.norm(use1)):.4g} + '
        f'|g2| {float(jnp.linalg.norm(use2)):.4g} -> '
        f'max difference from the compact gradient {err:.2e}'
    )
    plot_path = os.path.join(out, 'grad_history.png')
    try:
        history.plot(plot_path)
        o.print(f'History plot (grad norm, param norm, update ratio per layer): {plot_path}')
    except ImportError:
        o.print('matplotlib is not installed: pip install pytreeparams[plot] for the plot')

    # 6. Saving for other software -------------------------------------------
    o.heading('6. Saving: safetensors, and the same MLP in PyTorch')
    st_path = os.path.join(out, 'mlp.safetensors')
    try:
        ptp.save(st_path, params)
        back = ptp.load(st_path, like=params)
        same = all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params))
        )
        o.print(f'Saved {st_path}; loaded back bit-identical: {same}')
    except ImportError:
        o.print('safetensors is not installed: pip install pytreeparams[safetensors]')
    sd = ptp.to_torch_state_dict(params)
    o.print('PyTorch layout: ' + ', '.join(f'{k} {tuple(v.shape)}' for k, v in sd.items()))
    try:
        import torch

        tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
        with torch.no_grad():
            t_out = tm(torch.from_numpy(np.array(x))).numpy()
        diff = float(np.abs(t_out - np.asarray(net.apply(params, x))).max())
        o.print(f'The same MLP run in PyTorch: max |torch - flax| = {diff:.2e}')
    except ImportError:
        o.print('(torch is not installed: the PyTorch run is skipped)')
    o.print(f'Done in {time.perf_counter() - t0:.1f} s.')
    return 0
