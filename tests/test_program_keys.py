"""The engine's compiled programs are cached under named keys (issue 27)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp
from pytreeparams._moments import _engine


def test_programs_are_cached_under_pack_and_kernel_keys():
    x = jnp.asarray(np.arange(_engine.HOST_STAGE + 1, dtype=np.float32))
    with _engine.force_device_path():  # host_first=False: compile now, reduce on the device
        row = ptp.summary({'w': x}).rows[0]
    assert row.max == float(_engine.HOST_STAGE)
    size = _engine.size_class(_engine.HOST_STAGE + 1)
    packs = [k for k in _engine._PROGRAMS if isinstance(k, _engine.PackKey)]
    kernels = [k for k in _engine._PROGRAMS if isinstance(k, _engine.KernelKey)]
    assert any(k.shape == x.shape and k.size == size and k.dtype == x.dtype for k in packs)
    assert any(k.size == size and k.rows == 8 for k in kernels)
