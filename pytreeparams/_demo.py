"""The terminal tour behind ``python -m pytreeparams demo``.

It runs the code cells of the tour (``_tour.py``, the same cells as the
notebook) in one namespace, in order, and shows what a notebook would: the
section headings and text (markdown rendered by rich, or as plain text), each
cell's code, what it prints, and the value of its last expression (tables
through rich when it is installed).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

from ._tour import CELLS

__all__ = ['run_demo']


class _Out:
    """Prints headings, text, code and values through rich when it is installed."""

    def __init__(self, plain: bool, figures: str = 'saved in the output folder'):
        self.figures = figures  # what a figure value says in place of the drawing
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
        """Markdown: rendered by rich, or as plain text without its markup."""
        if self.console is None:
            print(plain_markdown(text))
        else:
            from rich.markdown import Markdown

            self.console.print(Markdown(text))

    def note(self, text: str) -> None:
        if self.console is None:
            print(text)
        else:
            self.console.print(text, markup=False, soft_wrap=True, style='dim')

    def code(self, source: str) -> None:
        """A code cell's source, shown before what it prints (as a notebook shows it)."""
        if self.console is None:
            first, *rest = source.splitlines() or ['']
            print('\n'.join(['>>> ' + first, *('... ' + ln for ln in rest)]))
        else:
            from rich.syntax import Syntax

            self.console.print(Syntax(source, 'python', background_color='default'))

    def value(self, obj: Any) -> None:
        if self.console is None or isinstance(obj, str):
            print(obj if isinstance(obj, str) else self._shown(obj))
        else:
            self.console.print(obj if hasattr(obj, '__rich_console__') else self._shown(obj))

    def _shown(self, obj: Any) -> Any:
        """What a cell's last value shows in a terminal (a figure is named, not drawn)."""
        if type(obj).__name__ == 'Figure':
            return f'(a matplotlib figure, not drawn in a terminal: {self.figures})'
        return obj if hasattr(obj, '__rich_console__') else repr(obj)


_LINK = re.compile(r'\[([^\]]+)\]\(([^)]+)\)')
_EMPHASIS = re.compile(r'\*([^*\s][^*]*)\*')


def plain_markdown(text: str) -> str:
    """Markdown as plain text: links as ``text (url)``, no ``**``, backticks or ``$``.

    Example:
      >>> plain_markdown('See [D2L](https://d2l.ai), **bold**, *a pytree*, `code`, $U(5, 10)$.')
      'See D2L (https://d2l.ai), bold, a pytree, code, U(5, 10).'
    """
    text = _EMPHASIS.sub(r'\1', _LINK.sub(r'\1 (\2)', text).replace('**', ''))
    return text.replace('`', '').replace('$', '')


def _markdown(o: _Out, source: str) -> None:
    """A markdown cell: its heading as a rule, its text rendered."""
    lines = source.strip().splitlines()
    if lines and lines[0].startswith('#'):
        o.heading(lines[0].lstrip('#').strip())
        lines = lines[1:]
    text = '\n'.join(lines).strip()
    if text:
        o.text(text)


def _run_cell(o: _Out, source: str, namespace: dict[str, Any]) -> None:
    """Runs a code cell; shows the value of its last expression, as a notebook does."""
    o.code(source)
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


_EXTRAS = {'torch': 'torch', 'matplotlib': 'plot', 'safetensors': 'safetensors'}


def _install_hint(e: ImportError) -> str:
    """The install command for a missing optional package (``[all]`` has no torch)."""
    found = re.search(r"No module named '([\w.]+)'", str(e))
    name = (e.name or (found.group(1) if found else '')).split('.')[0]
    extra = _EXTRAS.get(name)
    return f"`pip install 'pytreeparams[{extra}]'`" if extra else f'`pip install {name}`'


def _run_tour(steps: int, out: str, plain: bool, kept: bool = True) -> int:
    figures = f'saved in {out}' if kept else '`pytreeparams demo --out DIR` keeps it as a file'
    o = _Out(plain, figures)
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
                o.note(f'(skipped: {e}; {_install_hint(e)} runs it)')
                skipping = True
            namespace.update(settings)  # the demo's own settings win over the cell's
    o.note(f'Done in {time.perf_counter() - t0:.1f} s; files in {out}.')
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
            code = _run_tour(steps, tmp, plain, kept=False)
        print('(the files above were in a temporary folder, now removed; --out DIR keeps them)')
        return code
    return _run_tour(steps, out, plain)
