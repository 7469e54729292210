"""Tests of the installed command line on files written by the tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which('pytreeparams')
    cmd = [exe] if exe else [sys.executable, '-m', 'pytreeparams']
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def files(tmp_path):
    a = {
        'params': {
            'layers_0': {'kernel': np.ones((4, 8), np.float32), 'bias': np.zeros(8, np.float32)},
            'layers_2': {'kernel': np.ones((8, 1), np.float32), 'bias': np.zeros(1, np.float32)},
        }
    }
    b = {
        'params': {
            'layers_0': dict(a['params']['layers_0'], kernel=np.full((4, 8), 2.0, np.float32))
        }
    }
    pa, pb = tmp_path / 'a.safetensors', tmp_path / 'b.msgpack'
    ptp.save(pa, a)
    ptp.save(pb, b)
    return pa, pb


def test_summary_command(files):
    pa, _ = files
    r = cli('summary', str(pa), '--depth', '2')
    assert r.returncode == 0, r.stderr
    assert '4 leaves, 49 parameters' in r.stdout and 'params/layers_0' in r.stdout
    r = cli('summary', str(pa), '--select', '**/kernel', '--json')
    d = json.loads(r.stdout)
    assert d['total/size'] == 40.0 and d['params/layers_0/kernel/mean'] == 1.0
    r = cli('summary', str(pa), '--no-stats')
    assert r.returncode == 0 and 'mean' not in r.stdout and '196 B' in r.stdout


def test_diff_command(files):
    pa, pb = files
    r = cli('diff', str(pa), str(pb))
    assert r.returncode == 1, r.stderr  # the files differ (as cmp and diff say it)
    assert '- params/layers_2/bias  (only in a)' in r.stdout
    assert 'params/layers_0/kernel  relative change 1.000e+00' in r.stdout


def test_bad_and_missing_files(tmp_path, capsys):
    """A corrupt file through the installed command (exit code 2, one line on
    stderr, no traceback); a missing file and an unknown format in this process."""
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x05\x00\x00\x00\x00\x00\x00\x00{oops')
    r = cli('summary', str(bad))
    assert (
        r.returncode == 2 and 'pytreeparams: error:' in r.stderr and 'bad.safetensors' in r.stderr
    )
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    code, _, err = _main(capsys, 'summary', str(tmp_path / 'nope.safetensors'))
    assert code == 2 and 'no such checkpoint' in err
    (tmp_path / 'x.txt').write_text('hello')
    code, _, err = _main(capsys, 'summary', str(tmp_path / 'x.txt'))
    assert code == 2 and 'cannot tell the format' in err


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process (one real subprocess is in test_summary_command)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse: --version, usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes_version_and_one_line_errors(files, tmp_path, capsys):
    pa, pb = files
    assert _main(capsys, 'diff', str(pa), str(pa))[0] == 0  # equal
    assert _main(capsys, 'diff', str(pa), str(pb))[0] == 1  # different
    code, out, _ = _main(capsys, '--version')
    assert code == 0 and out.startswith('pytreeparams ')
    code, out, _ = _main(capsys, 'summary', str(pa), '--depth', '0')
    assert code == 0 and 'params/layers_0' not in out and '4 leaves' in out
    upper = tmp_path / 'A.SAFETENSORS'
    upper.write_bytes(pa.read_bytes())
    assert _main(capsys, 'summary', str(upper))[0] == 0
    afile = tmp_path / 'afile'
    afile.write_text('x')
    bad_inputs = [
        ('demo', '--steps', '0'),
        ('demo', '--steps', '-3'),
        ('demo', '--out', str(afile)),
        ('summary', str(pa), '--depth', '-1'),
        ('summary', str(pa), '--select', 'nope/**'),
        ('diff', str(pa), str(tmp_path / 'missing.msgpack')),
    ]
    for args in bad_inputs:
        code, out, err = _main(capsys, *args)
        assert code == 2, (args, out, err)
        assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, args


def test_closed_pipe_ends_quietly(files):
    pa, _ = files
    exe = shutil.which('pytreeparams')
    cmd = f'{exe or sys.executable + " -m pytreeparams"} summary {pa} --json | head -c 10'
    r = subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, timeout=300)
    assert 'Traceback' not in r.stderr and 'BrokenPipe' not in r.stderr


def test_summary_uses_rich_on_request_and_plain_text_for_scripts(tmp_path, capsys):
    pytest.importorskip('rich')
    path = str(tmp_path / 'p.safetensors')
    ptp.save(path, {'layer': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}})
    assert main(['summary', path, '--rich']) == 0
    rich_out = capsys.readouterr().out
    assert 'Parameters' in rich_out and '───' in rich_out  # the rich table's title and rule
    assert main(['summary', path]) == 0  # not a terminal: plain text
    plain = capsys.readouterr().out
    assert 'Parameters' not in plain and 'layer/kernel' in plain and '---' in plain
    assert main(['summary', path, '--plain']) == 0
    assert capsys.readouterr().out == plain


def test_summary_counts_parameters_apart_from_running_statistics(tmp_path, capsys):
    """A PyTorch ResNet-style file: running statistics and the int64
    num_batches_tracked are other state, not parameters (PyTorch's count)."""
    torch = pytest.importorskip('torch')
    from safetensors.torch import save_file

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    )
    path = str(tmp_path / 'resnetish.safetensors')
    save_file(net.state_dict(), path)
    n_params = sum(p.numel() for p in net.parameters())
    n_state = sum(b.numel() for b in net.buffers())
    assert main(['summary', path, '--plain', '--no-stats']) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f', {n_params:,} parameters, {n_state:,} values of other state' in first


def _strict_json(text: str):
    """Parses as strict JSON parsers do (no NaN, Infinity)."""

    def refuse(name):
        raise ValueError(f'not JSON: {name}')

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_with_non_finite_values_as_strings(tmp_path, capsys):
    """NaN and Infinity are not JSON; they come as proto3's strings, which float() reads."""
    a = {'bias': np.zeros(3, np.float32), 'w': np.array([1.0, np.nan], np.float32)}
    b = {'bias': np.ones(3, np.float32), 'w': np.array([1.0, np.nan], np.float32)}
    pa, pb = tmp_path / 'a.safetensors', tmp_path / 'b.safetensors'
    ptp.save(pa, a)
    ptp.save(pb, b)
    assert main(['summary', str(pa), '--json']) == 0
    d = _strict_json(capsys.readouterr().out)
    assert d['w/mean'] == 'NaN' and d['w/nonfinite'] == 1.0 and d['bias/mean'] == 0.0
    assert main(['diff', str(pa), str(pb), '--json']) == 1
    d = _strict_json(capsys.readouterr().out)
    assert d['rel_change'] == {'bias': 'Infinity', 'w': 0.0}
    assert float(d['rel_change']['bias']) == float('inf')
    np.testing.assert_allclose(d['abs_change']['bias'], np.sqrt(3.0))
