"""The demo runs end to end and tells its key facts."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize('plain', [False, True])
def test_demo_runs(tmp_path, plain):
    cmd = [sys.executable, '-m', 'pytreeparams', 'demo', '--steps', '60', '--out', str(tmp_path)]
    if plain:
        cmd.append('--plain')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'Total: 49 parameters, 196 bytes' in out
    assert "Flax shared module: 3 stored layers: ['layers_0', 'layers_2', 'layers_6']" in out
    assert 'layers_2 is called 2 times' in out
    assert 'max difference from the compact gradient 0.00e+00' in out
    plot = tmp_path / 'grad_history.png'
    assert f'{plot}' in out.replace('\n', '')
    assert plot.exists() and plot.read_bytes()[:4] == b'\x89PNG'
    assert 'loaded back bit-identical: True' in out
    if plain:
        assert 'training: ####################' in out


def test_demo_without_out_leaves_no_folder(tmp_path):
    import os

    env = dict(os.environ, TMPDIR=str(tmp_path))
    cmd = [sys.executable, '-m', 'pytreeparams', 'demo', '--steps', '5', '--plain']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'now removed' in proc.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pytreeparams-demo-')]
