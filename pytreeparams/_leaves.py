"""What kind of leaf is this: arrays, PRNG keys, dtypes, torch tensors.

The ground floor every module asks (as equinox's ``_filters.py`` holds
``is_array``): whether a leaf is a numeric array, a PRNG key array or a plain
concrete array; a dtype's name and item size; the one ``float32[4,8]``
spelling of a dtype and shape; and torch tensors read as NumPy arrays. No
imports from the package: every layer above can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'dtype_info',
    'dtype_name',
    'from_torch',
    'is_array',
    'is_concrete_array',
    'is_key_array',
    'is_key_dtype',
    'is_plain',
    'readable',
    'type_str',
]

_NUMERIC: dict[Any, bool] = {}
_DTYPE_NAMES: dict[Any, tuple[str, int]] = {}
# Array types whose ``shape`` is a tuple of Python ints and ``dtype`` a NumPy dtype
# (NumPy arrays and the concrete jax array class, added when first seen).
_PLAIN_ARRAYS: set[type] = {np.ndarray}


def is_key_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is a typed PRNG key dtype (``jax.random.key``: ``key<fry>``)."""
    try:
        return bool(jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key))
    except TypeError:  # pragma: no cover - exotic dtypes
        return False


def dtype_name(dtype: Any) -> str:
    """``np.dtype(dtype).name``, and ``'key<fry>'`` style names for PRNG keys."""
    if is_key_dtype(dtype):
        return str(dtype)
    return np.dtype(dtype).name


def dtype_info(dtype: Any) -> tuple[str, int]:
    """(name, itemsize) of a dtype, cached (``np.dtype.name`` is slow)."""
    info = _DTYPE_NAMES.get(dtype)
    if info is None:
        if is_key_dtype(dtype):  # PRNG keys: the bytes of their key data
            info = (dtype_name(dtype), int(dtype.itemsize))
        else:
            d = np.dtype(dtype)
            info = (d.name, d.itemsize)
        _DTYPE_NAMES[dtype] = info
    return info


def type_str(dtype: str, shape: Sequence[int]) -> str:
    """The one spelling of a dtype name and a shape, as Flax summaries write them.

    Example:
      >>> type_str('float32', (4, 8)), type_str('int8', ())
      ('float32[4,8]', 'int8[]')
    """
    return f'{dtype}[{",".join(str(d) for d in shape)}]'


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array-like leaf with a numeric or bool dtype."""
    dtype = getattr(x, 'dtype', None)
    if dtype is None or not hasattr(x, 'shape'):
        return isinstance(x, (bool, int, float, complex, np.generic))
    hit = _NUMERIC.get(dtype)
    if hit is None:
        try:
            hit = bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))
        except TypeError:  # pragma: no cover - exotic dtypes
            hit = False
        _NUMERIC[dtype] = hit
    return hit


def is_concrete_array(x: Any) -> bool:
    """An array leaf with values to read: not a tracer, not a ``ShapeDtypeStruct``."""
    return is_array(x) and not isinstance(x, (jax.ShapeDtypeStruct, jax.core.Tracer))


def is_key_array(x: Any) -> bool:
    """A PRNG key array (``jax.random.key``): shown, counted in bytes, no statistics."""
    dtype = getattr(x, 'dtype', None)
    return dtype is not None and hasattr(x, 'shape') and is_key_dtype(dtype)


def is_plain(x: Any) -> bool:
    """A concrete NumPy or jax array (its shape Python ints, its dtype NumPy's): fast paths."""
    t = type(x)
    if t in _PLAIN_ARRAYS:
        return True
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        _PLAIN_ARRAYS.add(t)
        return True
    return False


def from_torch(x: Any) -> Any:
    """A torch tensor as a NumPy array (a CPU tensor without a copy; bfloat16
    through its bits), anything else as it is. torch is imported only for tensors.

    Example:
      >>> import numpy as np
      >>> from_torch(np.ones(2)).tolist()
      [1.0, 1.0]
    """
    if type(x).__module__.split('.')[0] != 'torch' or not hasattr(x, 'detach'):
        return x
    import torch

    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def readable(leaves: list[Any]) -> list[Any]:
    """``leaves`` with torch tensors read as NumPy arrays (see :func:`from_torch`)."""
    if any(type(x).__module__.split('.')[0] == 'torch' for x in leaves):
        return [from_torch(x) for x in leaves]
    return leaves
