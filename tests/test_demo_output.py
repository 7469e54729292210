"""What the terminal demo shows (issue 26.18): each cell's code before its
output, markdown as text, where a figure really is, and the right install hint."""

import builtins

import pytest

from pytreeparams import _demo

CELLS = (
    (
        'markdown',
        '## 1. Part\n\nSee [D2L](https://d2l.ai): **bold**, *a pytree*, `code`, $U(5, 10)$.',
    ),
    ('code', "class Figure:\n    pass\n\n\nprint('printed')\nFigure()"),
)


@pytest.mark.parametrize('keep', [True, False])
def test_the_demo_shows_code_plain_markdown_and_where_its_figure_is(
    tmp_path, capsys, monkeypatch, keep
):
    monkeypatch.setattr(_demo, 'CELLS', CELLS)
    assert _demo.run_demo(steps=1, out=str(tmp_path) if keep else None, plain=True) == 0
    out = capsys.readouterr().out
    assert '== 1. Part ==' in out
    assert 'See D2L (https://d2l.ai): bold, a pytree, code, U(5, 10).' in out
    assert (
        '>>> class Figure:\n...     pass\n' in out
        and "... print('printed')\n... Figure()\nprinted\n" in out
    )
    if keep:
        assert f'(a matplotlib figure, not drawn in a terminal: saved in {tmp_path})' in out
    else:
        assert '`pytreeparams demo --out DIR` keeps it as a file)' in out
        assert 'saved in' not in out


def test_a_missing_torch_names_the_extra_that_installs_it(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_demo, 'CELLS', (('code', 'import torch'),))
    monkeypatch.setattr(builtins, '__import__', no_torch)
    assert _demo.run_demo(steps=1, out=str(tmp_path), plain=True) == 0
    out = capsys.readouterr().out
    assert "(skipped: No module named 'torch'; `pip install 'pytreeparams[torch]'` runs it)" in out
    assert 'pytreeparams[all]' not in out


def test_rich_renders_the_markdown(tmp_path, capsys, monkeypatch):
    pytest.importorskip('rich')
    monkeypatch.setattr(_demo, 'CELLS', CELLS[:1])
    assert _demo.run_demo(steps=1, out=str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert 'bold' in out and '**' not in out and '[D2L]' not in out
