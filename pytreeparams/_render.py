"""Rendering tables: plain text, rich (fitted to the console's width) and
notebook HTML, and the one number format they share."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    'axes_text',
    'fmt_bytes',
    'fmt_count',
    'fmt_float',
    'fmt_int',
    'html_table',
    'json_safe',
    'metrics',
    'rich_table',
    'stats_text',
    'text_table',
]

# Columns left out, in this order, while a rich table does not fit its width
# (after the foldable ones are folded as far as they go).
DROP_ORDER = (
    ('l2',), ('zeros',), ('nonfinite',), ('bytes',), ('min', 'max'), ('leaves',),
    ('sharding',), ('inputs', 'outputs'), ('std',), ('mean',), ('size',),
)  # fmt: skip
# Columns that fold onto further lines, and where: after these characters
# (paths at '/', types after ',' and ' ') and before these (a shape's '[').
FOLD = {
    'path': ('/', ''), 'module': ('.', ''), 'type': (', ', '['), 'inputs': (', ', '['),
    'outputs': (', ', '['), 'note': (' ', ''),
}  # fmt: skip
_SEP = 2  # characters between two columns of a rich table (see ``rich_table``)
LEFT = ('path', 'type', 'sharding', 'note')  # left-aligned columns; numbers go right


def fmt_int(n: int) -> str:
    """``1,234,567``."""
    return f'{n:,}'


def fmt_count(n: int, one: str, many: str) -> str:
    """``1 leaf``, ``20,000 leaves``: a count with its noun in number.

    Example:
      >>> fmt_count(1, 'leaf', 'leaves'), fmt_count(20000, 'leaf', 'leaves')
      ('1 leaf', '20,000 leaves')
    """
    return f'{fmt_int(n)} {one if n == 1 else many}'


def fmt_bytes(n: float) -> str:
    """``512 B``, ``8.2 KB``, ``1.1 GB`` (powers of 1000)."""
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1000 or unit == 'TB':
            return f'{n} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000
    return str(n)  # pragma: no cover


def axes_text(names: tuple[str | None, ...] | None) -> str:
    """Logical axis names as maxtext and t5x print them: ``('embed', 'mlp')``; '' for None.

    Example:
      >>> axes_text(('embed', None)), axes_text(None)
      ("('embed', None)", '')
    """
    return '' if names is None else repr(tuple(names))


def json_safe(obj: Any) -> Any:
    """``obj`` for strict JSON parsers: NaN and infinities as the strings
    ``'NaN'``, ``'Infinity'`` and ``'-Infinity'`` (proto3's JSON mapping of
    floats, which TensorBoard's and Google's JSON use; ``float()`` reads them
    back), through dicts, lists and tuples; everything else as it is.

    Example:
      >>> json_safe({'a': [1.0, float('inf')], 'b': float('nan')})
      {'a': [1.0, 'Infinity'], 'b': 'NaN'}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return 'NaN' if obj != obj else ('Infinity' if obj > 0 else '-Infinity')
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def metrics(
    cells: Iterable[tuple[str, str, float]],
    prefix: str = '',
    stat_first: bool = False,
    drop_nan: bool = False,
) -> dict[str, float]:
    """The one key rule of every ``to_dict``: ``(path, statistic, value)`` cells
    as ``{prefix + 'path/stat': value}`` (``'stat/path'`` with ``stat_first``),
    non-finite values left out with ``drop_nan``.

    Example:
      >>> metrics([('w', 'mean', 1.0), ('w', 'std', float('nan'))], 'train/', True, True)
      {'train/mean/w': 1.0}
    """
    return {
        prefix + (f'{s}/{p}' if stat_first else f'{p}/{s}'): v
        for p, s, v in cells
        if not (drop_nan and not math.isfinite(v))
    }


def fmt_float(v: float | None) -> str:
    """Four significant digits; exponent form below 1e-3 and from 1e5; '' for None.
    From 1e4 whole numbers with thousands separators (a count reads ``20,000``).

    Example:
      >>> [fmt_float(v) for v in (0.0, 0.123456, 123456.0, 1e-5, float('nan'), None)]
      ['0', '0.1235', '1.23e+05', '1.00e-05', 'nan', '']
      >>> fmt_float(20000.0), fmt_float(12345.6)
      ('20,000', '12,346')
    """
    if v is None:
        return ''
    if v != v:
        return 'nan'
    if v == 0:
        return '0'
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f'{v:.2e}'
    if abs(v) >= 1e4:  # .4g would give '2e+04'
        return f'{v:,.0f}'
    return f'{v:.4g}'


def text_table(
    header: Sequence[str], cells: Sequence[Sequence[str]], total: Sequence[str] | None = None
) -> str:
    """A plain-text table: a header, a rule, the rows (and a rule and the total).

    Example:
      >>> print(text_table(['path', 'size'], [['w', '6']], ['total', '6']))
      path   size
      -----------
      w         6
      -----------
      total     6
    """
    rows = [header, *cells, *([total] if total is not None else [])]
    widths = [max(len(x) for x in col) for col in zip(*rows)]
    right = {i for i, h in enumerate(header) if h not in LEFT}

    def line(vals: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))
        ]
        return '  '.join(parts).rstrip()

    rule = '-' * len(line(header))
    out = [line(header), rule, *(line(c) for c in cells)]
    if total is not None:
        out += [rule, line(total)]
    return '\n'.join(out)


def stats_text(paths: Sequence[str], columns: Sequence[str], table: Any) -> str:
    """A statistics table (one row per path, one column per statistic) as text;
    fetched once; a traced table is described, not printed.

    Example:
      >>> print(stats_text(('w',), ('mean',), np.array([[0.5]])))
      path  mean
      ----------
      w      0.5
    """
    if isinstance(table, jax.core.Tracer):
        return f'<{len(paths)} x {len(columns)} statistics, traced>'
    t = np.asarray(jax.device_get(table), np.float64)
    counts = [c.endswith('nonfinite') for c in columns]  # exact counts: 123,456, not 1.23e+05

    def cell(v: float, count: bool) -> str:
        return fmt_int(int(v)) if count and np.isfinite(v) else fmt_float(v)

    return text_table(
        ['path', *columns],
        [[p, *(cell(v, c) for v, c in zip(t[i], counts))] for i, p in enumerate(paths)],
    )


def fold_pieces(text: str, column: str) -> list[str]:
    """``text`` cut where column ``column`` may fold (see ``FOLD``); joined, the
    pieces are ``text``.

    Example:
      >>> fold_pieces('batch_stats/BatchNorm_0/mean', 'path')
      ['batch_stats/', 'BatchNorm_0/', 'mean']
      >>> fold_pieces('float32[2,8,8,16]', 'type')
      ['float32', '[2,', '8,', '8,', '16]']
    """
    after, before = FOLD.get(column, ('', ''))
    out, cur = [], ''
    for ch in text:
        if ch in before and cur:
            out.append(cur)
            cur = ''
        cur += ch
        if ch in after:
            out.append(cur)
            cur = ''
    return [*out, cur] if cur else out


def fold(text: str, column: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken where ``column``
    may fold (a piece longer than ``width`` is cut where it must).

    Example:
      >>> print(fold('params/lm_head/kernel', 'path', 16))
      params/lm_head/
      kernel
    """
    lines: list[str] = []
    cur = ''
    for piece in fold_pieces(text, column):
        while len(piece) > width:  # a piece that fits no line: cut it
            if cur:
                lines.append(cur)
                cur = ''
            lines.append(piece[:width])
            piece = piece[width:]
        if len(cur) + len(piece) > width:
            lines.append(cur)
            cur = ''
        cur += piece
    return '\n'.join([*lines, cur])


def fit_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> tuple[list[int], list[int], list[str]]:
    """Which columns a table of ``width`` characters shows, and how wide.

    Paths fold at '/' (down to 20 characters; only a longer key is cut) and
    columns are left out in ``DROP_ORDER`` while the table does not fit; before
    the last ones (inputs and outputs, std, mean, size) go, the other foldable
    columns (``FOLD``: types, inputs, outputs) fold too. Room left over widens
    the foldable columns, the path first, so that they fold as little as possible.

    Returns:
      ``(keep, widths, dropped)``: indices of the columns shown, the width of
      every column (by index), and the names left out.

    Example:
      >>> fit_columns(['path', 'size', 'l2'], [['a/b', '1', '2.5']], 14)
      ([0, 1], [4, 4, 3], ['l2'])
    """
    cols = list(zip(header, *rows))
    natural = [max(len(x) for x in col) for col in cols]
    least = [
        max(len(p) for x in col for p in fold_pieces(x, h) or ['']) if h in FOLD else n
        for h, col, n in zip(header, cols, natural)
    ]
    least = [min(n, 20) if h == 'path' else w for h, w, n in zip(header, least, natural)]
    paths_only = [w if h == 'path' else n for h, w, n in zip(header, least, natural)]

    def need(keep: list[int], w: list[int]) -> int:
        return sum(w[i] for i in keep) + _SEP * (len(keep) - 1) + 2  # and an edge each side

    keep, dropped, widths = list(range(len(header))), [], paths_only
    for names in DROP_ORDER:
        if need(keep, widths) <= width:
            break
        if names == ('inputs', 'outputs'):  # fold the others before the last columns go
            widths = least
            if need(keep, widths) <= width:
                break
        for name in names:
            if name in header and header.index(name) in keep:
                keep.remove(header.index(name))
                dropped.append(name)
    widths = list(widths)
    spare = width - need(keep, widths)
    for i in sorted((i for i in keep if header[i] in FOLD), key=lambda i: header[i] != 'path'):
        give = max(0, min(spare, natural[i] - widths[i]))
        widths[i] += give
        spare -= give
    return keep, widths, dropped


def rich_table(
    header: Sequence[str],
    cells: Sequence[Sequence[str]],
    total: Sequence[str],
    *,
    title: str,
    width: int = 80,
) -> Any:
    """A ``rich.table.Table`` that fits ``width`` columns with no cut cell: paths
    fold at '/', types and module inputs/outputs before a shape and after a
    comma; columns are left out only then, in ``DROP_ORDER``, and named in the
    caption (see :func:`fit_columns`).

    Raises:
      ImportError: If rich is not installed.
    """
    try:
        from rich import box
        from rich.table import Table
    except ImportError as e:  # pragma: no cover - only reached through rich
        raise ImportError('rich tables need rich (`pip install rich`)') from e
    keep, widths, dropped = fit_columns(header, [*cells, total], width)
    caption = f'not shown at this width: {", ".join(dropped)}' if dropped else None
    table = Table(
        title=title,
        caption=caption,
        show_footer=True,
        box=box.SIMPLE,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )

    def cell(row: Sequence[str], i: int) -> str:
        return fold(row[i], header[i], widths[i]) if header[i] in FOLD else row[i]

    for i in keep:
        table.add_column(  # text folded here; rich only cuts what no break point saved
            fold(header[i], header[i], widths[i]),
            footer=cell(total, i),
            justify='left' if header[i] in LEFT else 'right',
            overflow='fold',
            width=widths[i],
        )
    for c in cells:
        table.add_row(*(cell(c, i) for i in keep))
    return table


def html_table(header: Sequence[str], cells: Sequence[Sequence[str]], total: Sequence[str]) -> str:
    """The table as notebook HTML (escaped; the total in bold)."""
    esc = html.escape
    head = ''.join(f'<th>{esc(h)}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td>{esc(v)}</td>' for v in c) + '</tr>' for c in cells)
    foot = '<tr>' + ''.join(f'<td><b>{esc(v)}</b></td>' for v in total) + '</tr>'
    return (
        '<table class="pytreeparams-summary"><thead><tr>'
        f'{head}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>'
    )


def treescope_repr(obj: Any, attributes: dict[str, Any], path: Any, subtree_renderer: Any) -> Any:
    """``obj`` for treescope (``__treescope_repr__``): the constructor form of
    ``attributes`` (real attributes of ``obj``, foldable, arrays visualized by
    treescope), to which treescope's default renderer appends ``obj``'s
    ``_repr_html_`` table, as flax NNX modules show in treescope.

    Example:
      >>> import treescope, jax.numpy as jnp, pytreeparams as ptp
      >>> 'Summary(' in treescope.render_to_text(ptp.summary({'w': jnp.ones(2)}))
      True
    """
    from treescope import repr_lib

    return repr_lib.render_object_constructor(
        object_type=type(obj), attributes=attributes, path=path, subtree_renderer=subtree_renderer
    )
