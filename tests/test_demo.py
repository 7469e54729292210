"""The demo runs the tour's cells end to end and shows their results."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_runs_the_tour(tmp_path):
    cmd = [sys.executable, '-m', 'pytreeparams', 'demo', '--steps', '20', '--out', str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r'total\s+4 leaves\s+49\b', out)  # the chapter's MLP: 49 parameters
    assert "['layers_0', 'layers_2', 'layers_6']" in out  # a shared layer is stored once
    assert "SharedModule(path='layers_2', calls=2" in out
    assert '193 -> 121' in out  # two separately defined layers tied
    assert 'final loss' in out and '(skipped:' not in out  # no cell skipped
    plot = tmp_path / 'grad_history.png'
    assert plot.read_bytes()[:4] == b'\x89PNG'
    assert (tmp_path / 'mlp.safetensors').exists()


def test_demo_plain_without_out_leaves_no_folder(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    cmd = [sys.executable, '-m', 'pytreeparams', 'demo', '--steps', '3', '--plain']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '== 1. Parameter access ==' in proc.stdout  # plain headings, no rich
    assert 'now removed' in proc.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith('pytreeparams-demo-')]
