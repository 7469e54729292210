"""The demo runs the tour's cells end to end and shows their results."""

from __future__ import annotations

import os
import re

import pytest


@pytest.mark.heavy
def test_demo_runs_the_tour(tmp_path, capsys, monkeypatch):
    """One run (plain text, no --out), in this process through the command line's
    main(): the tour's facts, and no folder left behind (the notebook test runs the
    same cells under Jupyter; test_cli runs the installed command)."""
    import tempfile

    from pytreeparams._cli import main

    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    assert main(['demo', '--steps', '3', '--plain']) == 0
    out = capsys.readouterr().out
    assert '== 1. Parameter access ==' in out  # plain headings, no rich
    assert re.search(r'total\s+4 leaves\s+49\s+196 B', out)  # the chapter's MLP: 49 parameters
    assert "['layers_0', 'layers_2', 'layers_6']" in out  # a shared layer is stored once
    assert "SharedModule(path='layers_2', calls=2" in out
    assert '193 -> 121' in out  # two separately defined layers tied
    assert 'final loss' in out
    import importlib.util

    if importlib.util.find_spec('torch') is not None:
        assert '(skipped:' not in out  # no cell skipped
    else:  # README command 2 without torch: only the PyTorch section is skipped
        assert out.count('(skipped:') == 1 and "No module named 'torch'" in out
    folder = re.search(r'files in (\S+)\.', out).group(1)
    assert 'now removed' in out and not os.path.exists(folder)
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pytreeparams-demo-')]


def test_demo_skips_a_section_whose_optional_package_is_missing(tmp_path, capsys, monkeypatch):
    """Without torch (README command 1 installs no torch) the PyTorch section is
    skipped, with a note, and the demo still ends well."""
    import builtins

    from pytreeparams import _demo

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_demo, 'CELLS', _demo.CELLS[-5:])  # the saving section only
    monkeypatch.setattr(builtins, '__import__', no_torch)
    assert _demo.run_demo(steps=1, out=str(tmp_path), plain=True) == 0
    out = capsys.readouterr().out
    assert "(skipped: No module named 'torch'" in out and 'Done in' in out
