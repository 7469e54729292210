"""The statistics core: one algorithm (``_moments``), in NumPy (``_host_moments``)
and in traceable JAX (``_jax_moments``), and the engine that runs it where each leaf
lives (``_engine``), and over
several processes (``_global``). The rest of the package enters through the names below."""

from ._engine import DeviceWork as DeviceWork
from ._engine import clear_programs as clear_programs
from ._engine import count_device_work as count_device_work
from ._engine import force_device_path as force_device_path
from ._engine import leaf_rows as leaf_rows
from ._engine import wait_compiled as wait_compiled
from ._global import STATS_CALL as STATS_CALL
from ._global import as_auto as as_auto
from ._global import fetch_replicated as fetch_replicated
from ._global import is_global as is_global
from ._global import not_addressable_message as not_addressable_message
from ._global import on_auto_axes as on_auto_axes
from ._jax_moments import GradSums as GradSums
from ._jax_moments import finish_grads as finish_grads
from ._jax_moments import grad_scale as grad_scale
from ._jax_moments import grad_sums as grad_sums
from ._jax_moments import jax_grad_partials as jax_grad_partials
from ._jax_moments import jax_norm as jax_norm
from ._jax_moments import jax_partials as jax_partials
from ._jax_moments import poolable as poolable
from ._jax_moments import pooled_grad_sums as pooled_grad_sums
from ._jax_moments import small_grad_sums as small_grad_sums
from ._moments import STAT_NAMES as STAT_NAMES
from ._moments import Partial as Partial
from ._moments import finalize as finalize
from ._moments import merge as merge
from ._moments import scale_of as scale_of

__all__ = [
    'STATS_CALL',
    'STAT_NAMES',
    'DeviceWork',
    'GradSums',
    'Partial',
    'as_auto',
    'clear_programs',
    'count_device_work',
    'fetch_replicated',
    'finalize',
    'finish_grads',
    'force_device_path',
    'grad_scale',
    'grad_sums',
    'is_global',
    'jax_grad_partials',
    'jax_norm',
    'pooled_grad_sums',
    'poolable',
    'small_grad_sums',
    'jax_partials',
    'leaf_rows',
    'merge',
    'not_addressable_message',
    'on_auto_axes',
    'scale_of',
    'wait_compiled',
]
