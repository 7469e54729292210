"""Host statistics that never change the user's arrays, survive fork and exit,
and keep their range (issue 23: items 2, 6, 7, 10, 15)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams import _host_moments

_N = 1 << 18  # four host blocks: pages are released between blocks


def _run_ptp(fn, tree):
    if fn == 'assert_finite':
        ptp.assert_finite(tree)
    else:
        getattr(ptp, fn)(tree)


@pytest.mark.parametrize('fn', ['summary', 'stats', 'find_nonfinite', 'assert_finite'])
def test_statistics_keep_edits_of_copy_on_write_maps(tmp_path, fn):
    """MADV_DONTNEED on a private map would drop the edits (zeros come back)."""
    f = tmp_path / 'a.npy'
    np.save(f, np.zeros(_N))
    a = np.load(f, mmap_mode='c')
    a[:] = 1.0
    m = np.memmap(tmp_path / 'raw', np.float32, 'w+', shape=(_N,))
    m.flush()
    c = np.memmap(tmp_path / 'raw', np.float32, 'c', shape=(_N,))
    c[:] = 2.0
    with open(tmp_path / 'raw', 'rb') as fh:  # an array viewing a private mmap
        raw = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    v = np.frombuffer(raw, np.float32)
    v[:] = 3.0
    _run_ptp(fn, {'a': a, 'c': c, 'v': v[: _N // 2]})
    assert float(a.sum()) == _N
    assert float(c.sum()) == 2.0 * _N
    assert float(v.sum()) == 3.0 * _N


def test_read_only_maps_are_still_released(tmp_path, monkeypatch):
    """Only read-only maps (whose pages come back from the file) are released."""
    f = tmp_path / 'a.npy'
    np.save(f, np.arange(_N, dtype=np.float32))
    called = []
    real = _host_moments.release_pages
    monkeypatch.setattr(
        _host_moments, 'release_pages', lambda a, lo, hi: (called.append(lo), real(a, lo, hi))
    )
    ro = np.load(f, mmap_mode='r')
    s = ptp.stats({'ro': ro, 'cow': np.load(f, mmap_mode='c'), 'rw': np.load(f, mmap_mode='r+')})
    assert len(called) == _N // _host_moments.HOST_BLOCK  # the read-only leaf only
    np.testing.assert_allclose(np.asarray(s['mean']), (_N - 1) / 2)
    assert _host_moments._releasable(ro) is not None
    assert _host_moments._releasable(np.load(f, mmap_mode='c')) is None
    assert _host_moments._releasable(np.load(f, mmap_mode='r+')) is None
