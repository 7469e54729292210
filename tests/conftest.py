"""Shared fixtures and hypothesis strategies."""

from __future__ import annotations

import os

# Test workers (pytest-xdist) share one accelerator: none takes 75% of its memory up front.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from hypothesis import settings
from hypothesis import strategies as st

import pytreeparams as ptp

settings.register_profile('ci', max_examples=60, deadline=None)
settings.register_profile('long', max_examples=2000, deadline=None)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


_CACHE: list[str] = []

# XLA:CPU compiles the suite's many small programs about 30% faster with LLVM's
# optimizations off and its legacy fusion emitters. What the tests check (values
# within their tolerances, compile and dispatch counts, the compiled HLO) does not
# depend on either. Set PYTREEPARAMS_TEST_XLA_FLAGS='' to test with XLA's defaults:
# .ci/run does so for the numerics tests as well.
FAST_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def _fast_xla_flags() -> None:
    """Adds the test XLA flags to ``XLA_FLAGS`` before any backend starts (workers
    and subprocesses inherit them)."""
    flags = os.environ.get('PYTREEPARAMS_TEST_XLA_FLAGS', FAST_XLA_FLAGS)
    if flags and flags not in os.environ.get('XLA_FLAGS', ''):
        os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flags}'.strip()


def pytest_configure(config):
    """One JAX persistent compilation cache per test run, made by the main process
    before the workers start (they, and the subprocesses of the CLI, notebook and
    8-device tests, inherit it through the environment): a program that several
    tests compile is compiled once. Every check still runs, and the compilation
    counts of ``count_device_work`` include programs read from the cache. A cache
    the caller set with ``JAX_COMPILATION_CACHE_DIR`` is used and kept."""
    _fast_xla_flags()
    if os.environ.get('PYTEST_XDIST_WORKER') or 'JAX_COMPILATION_CACHE_DIR' in os.environ:
        return
    import tempfile

    _CACHE.append(tempfile.mkdtemp(prefix='pytreeparams-test-jax-cache-'))
    env = {
        'JAX_COMPILATION_CACHE_DIR': _CACHE[0],
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.05',
        'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
    }
    os.environ.update(env)
    jax.config.update('jax_compilation_cache_dir', _CACHE[0])  # this process imported jax
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.05)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``heavy`` run first (a stable sort): the workers then end on
    short tests and finish together, instead of one waiting while the other runs a
    long test that came last."""
    items.sort(key=lambda item: item.get_closest_marker('heavy') is None)


def pytest_unconfigure(config):
    """The main process removes the run's compilation cache."""
    if _CACHE:
        import shutil

        shutil.rmtree(_CACHE.pop(), ignore_errors=True)


Pair = collections.namedtuple('Pair', ['first', 'second'])

DTYPES = ['float32', 'bfloat16', 'float16', 'int8', 'bool']


@pytest.fixture(params=['eager', 'jit'])
def maybe_jit(request):
    """Runs a function as is and under ``jax.jit``."""
    return (lambda f: f) if request.param == 'eager' else jax.jit


@pytest.fixture(params=['host', 'device'])
def host_path(request):
    """Runs concrete statistics on the host route and on the device route
    (forced for CPU arrays: small leaves fetched, large ones kernelled)."""
    from pytreeparams._moments._engine import force_device_path

    if request.param == 'device':
        with force_device_path():
            yield request.param
    else:
        yield request.param


@pytest.fixture
def mlp_params():
    """The D2L MLP's params: Dense(8), relu, Dense(1) on a (2, 4) input."""
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    return net.init(jax.random.key(0), jnp.ones((2, 4)))


def _array(draw, dtype: str) -> np.ndarray:
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple))
    size = int(np.prod(shape))
    if dtype == 'bool':
        vals = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        return np.array(vals, dtype=bool).reshape(shape)
    if dtype == 'int8':
        vals = draw(st.lists(st.integers(-128, 127), min_size=size, max_size=size))
        return np.array(vals, dtype=np.int8).reshape(shape)
    vals = draw(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=16), min_size=size, max_size=size)
    )
    return np.array(vals, dtype=np.float32).astype(jnp.dtype(dtype)).reshape(shape)


@st.composite
def leaves(draw):
    dtype = draw(st.sampled_from(DTYPES))
    arr = _array(draw, dtype)
    if draw(st.booleans()):
        return jnp.asarray(arr)
    return arr


KEYS = st.text('abcxyz_0123', min_size=1, max_size=4)


@st.composite
def trees(draw, max_depth: int = 3):
    """Random nested dict/FrozenDict/list/tuple/namedtuple trees of arrays."""
    if max_depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(leaves())
    kind = draw(st.sampled_from(['dict', 'frozen', 'list', 'tuple', 'pair']))
    child = trees(max_depth=max_depth - 1)
    if kind in ('dict', 'frozen'):
        d = draw(st.dictionaries(KEYS, child, min_size=1, max_size=3))
        return FrozenDict(d) if kind == 'frozen' else d
    if kind == 'pair':
        return Pair(draw(child), draw(child))
    items = draw(st.lists(child, min_size=1, max_size=3))
    return items if kind == 'list' else tuple(items)


def containers(tree):
    """The container types of a tree, in flatten order (for type checks)."""
    out = []

    def rec(node):
        if isinstance(node, (dict, FrozenDict, list, tuple)):
            out.append(type(node))
        if isinstance(node, (dict, FrozenDict)):
            for k in sorted(node):
                rec(node[k])
        elif isinstance(node, (list, tuple)):
            for x in node:
                rec(x)

    rec(tree)
    return out


def run_on_8_devices(code: str, *args: str) -> str:
    """Runs ``code`` in a fresh Python with 8 simulated CPU devices; returns stdout.

    The code must print ``OK`` when its own assertions pass.
    """
    import subprocess
    import sys

    # the CPU platform also where a GPU is present: the 8 devices are simulated CPUs
    flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=8'
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS='cpu')
    proc = subprocess.run(
        [sys.executable, '-c', code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def tanh_mlp(layers: int, width: int) -> nn.Module:
    """A linen MLP of ``layers`` x (Dense(width), tanh), for compiled-step memory tests."""

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(layers):
                x = nn.tanh(nn.Dense(width)(x))
            return x

    return MLP()


def det_mlp():
    """A small MLP with deterministic (hand-set) weights."""
    net = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2), nn.relu, nn.Dense(1)])
    # every value is set below: only the shapes of init are needed (traced, not run)
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.ones((1, 4)))
    params = ptp.map_with_path(
        params,
        lambda p, x: jnp.asarray(
            np.linspace(-1, 1, x.size).reshape(x.shape) * (1 + len(p) % 3), jnp.float32
        ),
    )
    return net, params


def run_processes(
    code: str, *args: str, num_processes: int = 2, devices: int = 4, timeout: float = 120
) -> list[str]:
    """Runs ``code`` as a real multi-controller JAX job on CPU; returns each stdout.

    ``num_processes`` fresh interpreters each call
    ``jax.distributed.initialize(coordinator_address='localhost:PORT',
    num_processes=..., process_id=i)`` with ``devices`` simulated CPU devices (gloo
    collectives, jax's CPU default), then run ``code`` with ``PROCESS`` (the process
    index) and ``ARGS`` (``args``) defined. Every process must exit 0; a process that
    hangs past ``timeout`` seconds (a collective that never meets) fails the test, and
    every process is killed.
    """
    import socket
    import subprocess
    import sys
    import tempfile
    import textwrap

    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS='cpu')
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # processes of one job must not share it
    header = textwrap.dedent(
        f"""
        import sys
        import jax
        PROCESS = int(sys.argv[1])
        ARGS = sys.argv[2:]
        jax.distributed.initialize(
            coordinator_address='localhost:{port}', num_processes={num_processes},
            process_id=PROCESS, initialization_timeout=60)
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, 'job.py')
        with open(script, 'w') as f:
            f.write(header + textwrap.dedent(code))
        outs = [open(os.path.join(tmp, f'out{i}'), 'w+') for i in range(num_processes)]
        procs = [
            subprocess.Popen(
                [sys.executable, script, str(i), *args],
                stdout=outs[i],
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
            )
            for i in range(num_processes)
        ]
        try:
            for p in procs:
                p.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        texts = []
        for f in outs:
            f.seek(0)
            texts.append(f.read())
            f.close()
    report = '\n'.join(f'--- process {i} ---\n{t[-3000:]}' for i, t in enumerate(texts))
    if hung:
        pytest.fail(f'the {num_processes}-process job hung past {timeout} s:\n{report}')
    codes = [p.returncode for p in procs]
    assert codes == [0] * num_processes, f'exit codes {codes}:\n{report}'
    return texts
