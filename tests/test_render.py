"""Tests for _render: text, rich (at 60, 80 and 120 columns) and HTML tables."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import pytreeparams as ptp


def test_renderers_and_to_dict(mlp_params):
    s = ptp.summary(mlp_params, depth=2)
    text = str(s)
    assert 'params/layers_0' in text and '4 leaves' in text and '196 B' in text
    assert text.splitlines()[0].split()[:3] == ['path', 'type', 'leaves']
    html = s._repr_html_()
    assert html.startswith('<table') and '<th>mean</th>' in html and 'params/layers_2' in html
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(s)
    out = console.export_text()
    assert 'Parameters by module (depth 2)' in out and 'params/layers_2' in out
    d = s.to_dict()
    assert d['total/size'] == 49.0 and d['params/layers_0/size'] == 40.0
    assert set(d) >= {'params/layers_2/l2', 'total/nonfinite'}
    json.dumps(d)
    leaf_d = ptp.summary(mlp_params).to_dict()
    assert 'params/layers_0/kernel/std' in leaf_d
    assert repr(s) == 'Summary(4 leaves, 49 parameters, 196 B)'


def test_printing_stats_and_grad_stats_shows_a_table():
    tree = {'a': {'w': jnp.arange(4.0)}, 'b': jnp.zeros(2)}
    text = str(ptp.stats(tree))
    assert text.splitlines()[0].split() == ['path', *ptp.STAT_NAMES]
    assert text.splitlines()[2].split()[:2] == ['a/w', '1.5']
    g = str(ptp.grad_stats(tree))
    assert 'grad_norm' in g.splitlines()[0] and g.splitlines()[-1] == 'global_norm 3.742'


@pytest.mark.parametrize('width', [80, 120, 60])
def test_rich_table_reads_at_ordinary_widths(width):
    """At 80 (and 60, 120) columns no numeric cell is cut: lines fit, no '…',
    every shown number appears whole, paths fold, left-out columns are named."""
    import io

    from rich.console import Console

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(3):
                x = nn.Dense(64, name=f'a_rather_long_layer_name_{i}')(x)
            return nn.LayerNorm()(x)

    v = Net().init(jax.random.key(0), jnp.ones((1, 32)))
    for s in (ptp.summary(v), ptp.summary(v, depth=2)):
        console = Console(width=width, file=io.StringIO(), record=True)
        console.print(s)
        text = console.export_text()
        assert '…' not in text
        assert max(len(line) for line in text.splitlines()) <= width
        header, cells, total = s._table()
        shown = text.splitlines()[2].split()
        assert 'path' in shown and 'type' in shown and 'size' in shown
        assert width < 80 or ('mean' in shown and 'std' in shown)
        for j, h in enumerate(header):
            if h in shown and h not in ('path', 'type'):
                for row in [*cells, total]:
                    assert row[j] in text, (h, row[j])
        hidden = [h for h in header if h not in shown]
        if hidden:
            caption = ' '.join(text.split()).split('not shown at this width: ')[1]
            assert sorted(caption.split(', ')) == sorted(hidden)
    if width >= 120:
        assert 'min' in shown and 'max' in shown


def test_treescope_renders_summary_grad_stats_and_diff():
    """In treescope (flax NNX's display): the constructor form of each object's
    fields, foldable, with its statistics table appended (the same cells as its
    notebook HTML)."""
    import html

    import treescope

    tree = {'a': {'w': jnp.array([3.0, 4.0])}, 'b': jnp.zeros(2)}
    objects = {
        'Summary': ptp.summary(tree),
        'GradStats': ptp.grad_stats(tree),
        'DiffReport': ptp.diff(tree, {'a': {'w': jnp.array([3.0, 5.0])}, 'c': jnp.ones(1)}),
    }
    for name, obj in objects.items():
        text = treescope.render_to_text(obj)
        assert text.startswith(f'{name}('), text[:80]
        page = html.unescape(treescope.render_to_html(obj, compressed=False))
        assert obj._repr_html_() in page, name
    gs_html = objects['GradStats']._repr_html_()
    assert '<th>grad_norm</th>' in gs_html and '<td>a/w</td>' in gs_html
    assert '<td>5</td>' in gs_html  # the norm of [3, 4]
    diff_html = objects['DiffReport']._repr_html_()
    assert '<td>c</td><td>only in b</td>' in diff_html
    assert '<td>b</td><td>only in a</td>' in diff_html


def _cnn():
    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(16, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.Dense(10, name='lm_head')(x.reshape(x.shape[0], -1))

    x = jnp.ones((2, 8, 8, 3))
    return CNN(), x, CNN().init(jax.random.key(0), x)


def _rendered(obj, width):
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(obj)
    return console.export_text()


def _whole_keys(path: str) -> str:
    """A regex: the keys of ``path`` in order, each whole, folded only after a '/'
    (the rest of a line, other columns, between two lines)."""
    import re

    keys = path.split('/')
    between = r'/(?:[^\n]*\n\s*)?'
    return between.join(re.escape(k) for k in keys)


@pytest.mark.parametrize('width', [80, 120])
def test_paths_fold_at_slashes_and_statistics_stay_at_ordinary_widths(width):
    """At 80 columns paths wrapped mid-key ('batch_stats/BatchNorm_0/m' / 'ean')
    and summary(model, x) left out every statistic."""
    import re

    module, x, v = _cnn()
    s = ptp.summary(v)
    text = _rendered(s, width)
    assert max(len(line) for line in text.splitlines()) <= width
    for r in s.rows:
        assert re.search(_whole_keys(r.path), text), (r.path, text)
    header = text.splitlines()[2].split()
    assert {'path', 'type', 'size', 'mean', 'std'} <= set(header)
    calls = _rendered(ptp.summary(module, x), width)
    assert max(len(line) for line in calls.splitlines()) <= width
    assert {'path', 'module', 'size', 'mean', 'std'} <= set(calls.splitlines()[2].split())
    assert 'lm_head' in calls and 'BatchNorm_0' in calls and '10,250' in calls
    if width >= 120:
        assert {'min', 'max', 'bytes'} <= set(header)
        assert 'float32[2,8,8,16]' in calls  # nothing folds where there is room


def test_fold_breaks_paths_at_slashes_and_types_in_shapes():
    from pytreeparams._render import fit_columns, fold

    assert fold('params/lm_head/kernel', 'path', 16) == 'params/lm_head/\nkernel'
    assert fold('batch_stats/BatchNorm_0/mean', 'path', 24) == 'batch_stats/BatchNorm_0/\nmean'
    assert fold('a_key_longer_than_the_width', 'path', 10).split('\n') == [
        'a_key_long',
        'er_than_th',
        'e_width',
    ]
    assert fold('float32[2,8,8,16]', 'outputs', 8) == 'float32\n[2,8,8,\n16]'
    keep, widths, dropped = fit_columns(
        ['path', 'type', 'size', 'mean', 'l2'],
        [['params/dense/kernel', 'f32[3]', '3', '1', '2']],
        42,
    )
    assert dropped == ['l2'] and [widths[i] for i in keep] == [19, 6, 4, 4]


def test_counts_read_as_counts_and_leaves_agree_in_number():
    """'1 leaves' and counts printed as '2e+04' (issue 26.18)."""
    one = ptp.summary({'w': jnp.ones(3)})
    assert repr(one) == 'Summary(1 leaf, 3 parameters, 12 B)'
    assert '1 leaf ' in str(one) + ' ' and '1 leaves' not in str(one)
    bad = jnp.full(20000, jnp.nan).at[0].set(1.0)
    s = ptp.summary({'a': {'w': bad}, 'b': jnp.ones(1)}, depth=1)
    text = str(s)
    assert '19,999' in text and '2 leaves' in text and 'e+04' not in text
    stats_text = str(ptp.stats({'w': jnp.full(123456, jnp.inf), 'v': jnp.full(5, 20000.0)}))
    assert '123,456' in stats_text and '20,000' in stats_text and 'e+04' not in stats_text
    grads_text = str(ptp.grad_stats({'w': jnp.full(20000, jnp.nan)}))
    assert '20,000' in grads_text
