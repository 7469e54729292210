"""The statistics core: one algorithm (``_moments``), in NumPy (``_host_moments``)
and in traceable JAX (``_jax_moments``), and the engine that runs it where each leaf
lives (``_engine``). The rest of the package enters through the names below."""

from ._engine import DeviceWork as DeviceWork
from ._engine import clear_programs as clear_programs
from ._engine import count_device_work as count_device_work
from ._engine import force_device_path as force_device_path
from ._engine import leaf_rows as leaf_rows
from ._engine import wait_compiled as wait_compiled
from ._jax_moments import jax_grad_partials as jax_grad_partials
from ._jax_moments import jax_partials as jax_partials
from ._moments import STAT_NAMES as STAT_NAMES
from ._moments import finalize as finalize

__all__ = [
    'STAT_NAMES',
    'DeviceWork',
    'clear_programs',
    'count_device_work',
    'finalize',
    'force_device_path',
    'jax_grad_partials',
    'jax_partials',
    'leaf_rows',
    'wait_compiled',
]
