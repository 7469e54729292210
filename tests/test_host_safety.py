"""Host statistics that never change the user's arrays, survive fork and exit,
and keep their range (issue 23: items 2, 6, 7, 10, 15)."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._moments import _host_moments

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


def _script(code: str, timeout: float = 60) -> str:
    """Runs ``code`` in a fresh interpreter (its own process group, killed whole
    on a timeout, forked workers too): a hang is a failure, not a stuck run."""
    proc = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - the bug this guards against
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f'the script hung ({timeout} s)')
    assert proc.returncode == 0, err
    return out


def test_forked_workers_summarize_large_arrays():
    """The parent's host pool (and a queued compilation) do not hang a fork child."""
    out = _script(
        """
        import multiprocessing, time, warnings
        import numpy as np, pytreeparams as ptp
        from pytreeparams._moments import _engine

        warnings.simplefilter('ignore')  # jax warns about fork; the host route is NumPy
        def slow(key):
            time.sleep(0.5)
            return key
        _engine._compile = slow
        ptp.summary(np.ones(2**20))  # the parent's pool has threads now
        _engine._compile_later([('parent', 1)])  # and a compilation in the background

        def work(i):
            _engine._compile_later([('child', i)])
            _engine.wait_compiled()
            return float(ptp.stats({'a': np.full(2**20, float(i))})['mean'][0])

        with multiprocessing.get_context('fork').Pool(2) as pool:
            print(pool.map(work, [1, 2, 3]))
        """
    )
    assert out.strip() == '[1.0, 2.0, 3.0]'


def test_exit_does_not_wait_for_queued_compilations():
    """Compilations queued for a next call that never comes are dropped at exit:
    counted as compilations started after the script's last line (the one
    running then may finish; a slow exit may let one more start)."""
    out = _script(
        """
        import os, time
        from pytreeparams._moments import _engine

        def slow(key):
            os.write(1, b'compiled\\n')
            time.sleep(0.2)
            return key
        _engine._compile = slow
        _engine._compile_later([('k', i) for i in range(20)])
        os.write(1, b'last line\\n')
        """
    )
    lines = out.splitlines()
    after = lines[lines.index('last line') + 1 :]
    assert len(after) <= 2, f'{len(after)} of 20 queued compilations ran after the last line'


def test_a_dropped_compilation_is_compiled_by_whoever_needs_it(monkeypatch):
    from pytreeparams._moments import _engine

    monkeypatch.setattr(_engine, '_compile', lambda key: ('program', key))
    future = _engine._COMPILER.submit(lambda: None)
    future.cancel()  # as the queue leaves it at exit
    key = ('dropped',)
    with _engine._LOCK:
        _engine._PENDING[key] = future
    try:
        assert _engine._program(key) == ('program', key) == _engine._PROGRAMS[key]
    finally:
        with _engine._LOCK:
            _engine._PENDING.pop(key, None)
            _engine._PROGRAMS.pop(key, None)


def test_force_device_path_holds_in_its_own_thread_only():
    """One thread's forcing does not send another thread's leaves down the device route."""
    import threading

    import jax.numpy as jnp

    from pytreeparams._moments import _engine

    x = jnp.ones(3)
    inside, other = threading.Event(), threading.Event()
    seen = {}

    def forcing():
        with _engine.force_device_path():
            seen['forcing'] = _engine._where(x)
            inside.set()
            other.wait(10)

    def plain():
        inside.wait(10)
        seen['plain'] = _engine._where(x)
        other.set()

    threads = [threading.Thread(target=forcing), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {'forcing': 'device', 'plain': 'host'}
    with _engine.force_device_path(host_first=True):
        with _engine.force_device_path():
            assert _engine._FORCE.get() == (True, False)
        assert _engine._FORCE.get() == (True,)
    assert _engine._FORCE.get() == () and _engine._where(x) == 'host'


_EXTREMES = [
    (np.float32, 3e38, 1e-12),
    (ml_dtypes.bfloat16, 3e38, 1e-12),
    (np.float16, 65000.0, 1e-6),  # float32 deviations (63 eps bound), as for all float16
    (np.float64, 1e305, 1e-12),  # squares beyond float64: scaled by a power of two
    (np.float64, 1e-305, 1e-12),
]


@pytest.mark.parametrize('dtype, big, rtol', _EXTREMES)
@pytest.mark.parametrize('n', [100, 8192, 3 * 65536 + 64])  # stacked, one block, pooled blocks
def test_host_statistics_keep_their_range_near_the_top_of_each_dtype(dtype, big, rtol, n):
    """Finite data near float32's (bfloat16's, float16's) top once overflowed in
    float32 deviations: mean -inf, std and l2 NaN."""
    from pytreeparams._moments import leaf_rows

    x = np.full(n, big, dtype)
    x[::10] = -big
    x[3] = 0
    row = leaf_rows([x])[0]
    x64 = x.astype(np.float64)
    s = 2.0 ** -(np.frexp(float(np.max(np.abs(x64))))[1])  # exact: references in range too
    ref = [
        np.mean(x64 * s) / s,
        np.std(x64 * s) / s,
        x64.min(),
        x64.max(),
        np.linalg.norm(x64 * s) / s,
        0.0,
        1.0 / n,
    ]
    np.testing.assert_allclose(row, ref, rtol=rtol)
    summary_row = ptp.summary({'x': x}).rows[0]
    assert summary_row.nonfinite == 0
    np.testing.assert_allclose([summary_row.mean, summary_row.std], ref[:2], rtol=max(rtol, 1e-6))


def test_a_float64_leaf_is_scanned_for_its_range_block_by_block(tmp_path):
    """``np.max(np.abs(a))`` once copied a whole float64 leaf (twice its size
    in memory for a memory-mapped one); NumPy reports its buffers to tracemalloc."""
    import tracemalloc

    n = 1 << 22  # 32 MiB; scratch buffers are a few per thread, whatever the size
    f = tmp_path / 'a.npy'
    np.save(f, np.linspace(-1e200, 1e200, n))  # squares beyond float64: scaled
    a = np.load(f, mmap_mode='r')
    ptp.stats({'a': a})  # warm: caches, the pool
    tracemalloc.start()
    try:
        rows = ptp.summary({'a': a}).rows
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < a.nbytes // 4, peak
    np.testing.assert_allclose(rows[0].std, np.std(a / 1e200) * 1e200, rtol=1e-12)


@pytest.mark.parametrize('dtype', [ml_dtypes.int4, ml_dtypes.uint4])
@pytest.mark.parametrize('n', [100, 4096, 3 * 65536 + 7])
def test_int4_host_statistics_are_exact(dtype, n):
    from pytreeparams._moments import leaf_rows

    info = ml_dtypes.iinfo(dtype)
    x = np.random.default_rng(0).integers(int(info.min), int(info.max) + 1, n).astype(dtype)
    x64 = x.astype(np.float64)
    ref = [x64.mean(), x64.std(), x64.min(), x64.max(), np.linalg.norm(x64), 0, np.mean(x64 == 0)]
    np.testing.assert_allclose(leaf_rows([x, x[::-1].copy()])[0], ref, rtol=1e-13, atol=1e-15)
