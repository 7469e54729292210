"""Rendering tables: plain text, rich (fitted to the console's width) and
notebook HTML, and the one number format they share."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    'fmt_bytes',
    'fmt_float',
    'fmt_int',
    'html_table',
    'json_safe',
    'rich_table',
    'stats_text',
    'text_table',
]

# Columns left out, in this order, while a rich table does not fit its width.
DROP_ORDER = (
    ('l2',), ('zeros',), ('nonfinite',), ('bytes',), ('min', 'max'), ('leaves',),
    ('sharding',), ('std',), ('mean',), ('size',),
)  # fmt: skip
LEFT = ('path', 'type', 'sharding', 'note')  # left-aligned columns; numbers go right


def fmt_int(n: int) -> str:
    """``1,234,567``."""
    return f'{n:,}'


def fmt_bytes(n: float) -> str:
    """``512 B``, ``8.2 KB``, ``1.1 GB`` (powers of 1000)."""
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1000 or unit == 'TB':
            return f'{n} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000
    return str(n)  # pragma: no cover


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


def fmt_float(v: float | None) -> str:
    """Four significant digits; exponent form below 1e-3 and from 1e5; '' for None.

    Example:
      >>> [fmt_float(v) for v in (0.0, 0.123456, 123456.0, 1e-5, float('nan'), None)]
      ['0', '0.1235', '1.23e+05', '1.00e-05', 'nan', '']
    """
    if v is None:
        return ''
    if v != v:
        return 'nan'
    if v == 0:
        return '0'
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f'{v:.2e}'
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
    return text_table(
        ['path', *columns], [[p, *(fmt_float(v) for v in t[i])] for i, p in enumerate(paths)]
    )


def rich_table(
    header: Sequence[str],
    cells: Sequence[Sequence[str]],
    total: Sequence[str],
    *,
    title: str,
    width: int = 80,
) -> Any:
    """A ``rich.table.Table`` that fits ``width`` columns with no cut cell: only
    paths fold; columns are left out in ``DROP_ORDER`` and named in the caption.

    Raises:
      ImportError: If rich is not installed.
    """
    try:
        from rich import box
        from rich.table import Table
    except ImportError as e:  # pragma: no cover - only reached through rich
        raise ImportError('rich tables need rich (`pip install rich`)') from e
    widths = [max(len(x) for x in col) for col in zip(header, *cells, total)]

    def need(keep: list[int]) -> int:  # box.SIMPLE: three characters between columns
        return sum(min(widths[i], 20) if i == 0 else widths[i] for i in keep) + 3 * len(keep)

    keep, dropped = list(range(len(header))), []
    for names in DROP_ORDER:
        if need(keep) <= width:
            break
        for name in names:
            if name in header and header.index(name) in keep:
                keep.remove(header.index(name))
                dropped.append(name)
    caption = f'not shown at this width: {", ".join(dropped)}' if dropped else None
    table = Table(title=title, caption=caption, show_footer=True, box=box.SIMPLE, pad_edge=False)
    for i in keep:
        table.add_column(  # only paths fold; every other cell keeps its width
            header[i],
            footer=total[i],
            justify='left' if header[i] in LEFT else 'right',
            overflow='fold',
            no_wrap=i != 0,
            min_width=min(widths[i], 20) if i == 0 else widths[i],
        )
    for c in cells:
        table.add_row(*(c[i] for i in keep))
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
