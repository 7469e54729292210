"""The terminal tour behind ``python -m pytreeparams demo``."""

from __future__ import annotations

import os
import tempfile


class _Out:
    """Prints headings and text through rich when it is installed."""

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

    def print(self, obj: object = '') -> None:
        if self.console is not None:
            self.console.print(obj, markup=False) if isinstance(obj, str) else self.console.print(
                obj
            )
        else:
            print(obj)


def run_demo(steps: int = 300, out: str | None = None, plain: bool = False) -> int:
    """Runs the tour of the D2L parameter-management chapter; returns 0."""
    import flax.linen as nn
    import jax

    import pytreeparams as ptp

    o = _Out(plain)
    out = out or tempfile.mkdtemp(prefix='pytreeparams-demo-')
    os.makedirs(out, exist_ok=True)

    o.heading('1. The MLP: nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]) on a (2, 4) input')
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    x = jax.random.uniform(jax.random.key(1), (2, 4))
    params = net.init(jax.random.key(0), x)
    o.print("Parameters of the second dense layer: ptp.get(params, 'params/layers_2')")
    for path, leaf in ptp.flatten(ptp.get(params, 'params/layers_2')).items():
        o.print(f'  {path}: {ptp.describe(leaf)} = {leaf.ravel().tolist()}')
    o.print("Its bias: ptp.get(params, 'params/layers_2/bias')")
    o.print(f'  {ptp.get(params, "params/layers_2/bias")}')
    o.print('Every path with its shape: ptp.flatten(params)')
    for path, leaf in ptp.flatten(params).items():
        o.print(f'  {path:<24} {ptp.describe(leaf)}')
    n = sum(int(leaf.size) for leaf in ptp.flatten(params).values())
    o.print(f'Total: {n} parameters')
    return 0
