"""Tests for _atomic: a failed or killed write leaves the previous file; links written through."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._files import _safetensors


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'w': np.ones(3, np.float32)})
    before = path.read_bytes()

    def failing_write(target, write):
        def half(tmp):
            write(tmp)  # the real writer fills the temp file, then the disk "fills up"
            with open(tmp, 'r+b') as f:
                f.truncate(20)
            raise OSError(28, 'No space left on device')

        return real(target, half)

    real = _safetensors.atomic_write_path
    monkeypatch.setattr(_safetensors, 'atomic_write_path', failing_write)
    with pytest.raises(OSError, match='No space left'):
        ptp.save(path, {'w': np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['p.safetensors']
    monkeypatch.undo()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(KeyboardInterrupt):
        ptp.save(path, {'w': np.zeros(3, np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['p.safetensors']


def test_killed_writer_leaves_previous_file(tmp_path):
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'w': np.ones(3, np.float32)})
    before = path.read_bytes()
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from pytreeparams._files import _atomic
        def die(f):
            f.write(b'x' * 100)
            f.flush()
            os._exit(9)
        _atomic.atomic_write({str(path)!r}, die)
        """
    )
    proc = subprocess.run([sys.executable, '-c', code])
    assert proc.returncode == 9
    assert path.read_bytes() == before
    assert ptp.load(path)['w'].tolist() == [1.0, 1.0, 1.0]


def test_save_through_a_symlink_writes_the_target(tmp_path):
    target = tmp_path / 'real.safetensors'
    link = tmp_path / 'link.safetensors'
    ptp.save(str(target), {'w': jnp.zeros(2)})
    link.symlink_to(target)
    ptp.save(str(link), {'w': jnp.ones(2)})
    assert link.is_symlink()
    np.testing.assert_array_equal(ptp.load(str(target))['w'], np.ones(2))


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist') as e:
        ptp.save(str(tmp_path / 'nope' / 'x.safetensors'), {'w': jnp.ones(2)})
    assert '.tmp' not in str(e.value)
