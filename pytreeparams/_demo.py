"""The terminal tour behind ``python -m pytreeparams demo``.

It runs the code cells of the tour (``_tour.py``, the same cells as the
notebook) in one namespace, in order, and shows what a notebook would: the
section headings and text, what each cell prints, and the value of its last
expression (tables through rich when it is installed).
"""

from __future__ import annotations

import ast
import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

from ._tour import CELLS

__all__ = ['run_demo']


class _Out:
    """Prints headings, text and values through rich when it is installed."""

    def __init__(self, plain: bool):
        self.console: Any = None
        if not plain:
            try:
                from rich.console import Console

                self.console = Console(highlight=False)
            except ImportError:
                self.console = None

    def heading(self, text: str) -> None:
        if self.console is None:
            print(f'\n== {text} ==')
        else:
            from rich.markup import escape

            self.console.rule(f'[bold]{escape(text)}')

    def text(self, text: str) -> None:
        if self.console is None:
            print(text)
        else:
            self.console.print(text, markup=False, soft_wrap=True, style='dim')

    def value(self, obj: Any) -> None:
        if self.console is None or isinstance(obj, str):
            print(obj if isinstance(obj, str) else _shown(obj))
        else:
            self.console.print(obj if hasattr(obj, '__rich_console__') else _shown(obj))


def _shown(obj: Any) -> Any:
    """What a cell's last value shows in a terminal (a figure is named, not drawn)."""
    if type(obj).__name__ == 'Figure':
        return '(a matplotlib figure: saved in the output folder)'
    return obj if hasattr(obj, '__rich_console__') else repr(obj)


def _markdown(o: _Out, source: str) -> None:
    """A markdown cell: its heading as a rule, its text as it is."""
    lines = source.strip().splitlines()
    if lines and lines[0].startswith('#'):
        o.heading(lines[0].lstrip('#').strip())
        lines = lines[1:]
    text = '\n'.join(lines).strip()
    if text:
        o.text(text)


def _run_cell(o: _Out, source: str, namespace: dict[str, Any]) -> None:
    """Runs a code cell; shows the value of its last expression, as a notebook does."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    assert last is None or isinstance(last, ast.Expr)
    exec(compile(tree, '<tour>', 'exec'), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), '<tour>', 'eval'), namespace)
        if value is not None:
            o.value(value)


@contextlib.contextmanager
def _quiet_plots() -> Iterator[None]:
    """No window and no warning from ``plt.show()`` in a terminal (Agg, this process only)."""
    try:
        import matplotlib
    except ImportError:
        yield
        return
    old = matplotlib.get_backend()
    matplotlib.use('Agg')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*non-interactive.*')
        try:
            yield
        finally:
            matplotlib.use(old)


def _run_tour(steps: int, out: str, plain: bool) -> int:
    o = _Out(plain)
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    settings = {'STEPS': steps, 'OUT': out}
    namespace: dict[str, Any] = {'__name__': '__tour__', **settings}
    skipping = False  # the rest of a section whose optional package is missing
    with _quiet_plots():
        for kind, source in CELLS:
            if kind == 'markdown':
                skipping = skipping and not source.startswith('## ')
                _markdown(o, source)
                continue
            if skipping:
                continue
            try:
                _run_cell(o, source, namespace)
            except ImportError as e:  # an optional package (torch, matplotlib): say so, go on
                o.text(f'(skipped: {e}; `pip install pytreeparams[all]` and torch run it)')
                skipping = True
            namespace.update(settings)  # the demo's own settings win over the cell's
    o.text(f'Done in {time.perf_counter() - t0:.1f} s; files in {out}.')
    return 0


def run_demo(steps: int = 300, out: str | None = None, plain: bool = False) -> int:
    """Runs the tour of the D2L parameter-management chapter; returns 0.

    Args:
      steps: Training steps of the shared-layer MLP (section 5).
      out: Folder for the plot and the saved files; without it they go to a
        temporary folder that is removed at the end.
      plain: Plain text even where rich is installed.

    Returns:
      0 (the exit code).

    Example:
      >>> import pytreeparams as ptp
      >>> from pytreeparams._demo import run_demo
      >>> callable(run_demo)
      True
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix='pytreeparams-demo-') as tmp:
            code = _run_tour(steps, tmp, plain)
        print('(the files above were in a temporary folder, now removed; --out DIR keeps them)')
        return code
    return _run_tour(steps, out, plain)
