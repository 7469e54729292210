"""Keys and leaves: metadata boxes, key spelling, dtype names, ``describe``.

A *path* names a node: the string ``'params/layers_2/bias'`` (keys joined by
``/``, never a leading ``/``) or the tuple ``('params', 'layers_2', 'bias')``.
List and tuple children are named by their index (``'blocks/0/w'``), integer
dict keys (Flax NNX uses them) by their decimal form, namedtuple and dataclass
fields by their name. Metadata boxes (``nn.Partitioned``, NNX ``Variable``) are
transparent: ``'l0/kernel'`` names the array inside the box, and a replaced
leaf goes back into a copy of its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import meta

from ._errors import PathError
from ._typing import Path, PathLike

# --------------------------------------------------------------------------
# Metadata boxes.


_BOX_TYPES: tuple[type, ...] = (meta.AxisMetadata, nnx.Variable)
_IS_BOX: dict[type, bool] = {}


def is_box(x: Any) -> bool:
    """Whether ``x`` is a metadata box (``nn.Partitioned``, NNX ``Variable``)."""
    t = type(x)
    hit = _IS_BOX.get(t)
    if hit is None:
        hit = _IS_BOX[t] = isinstance(x, _BOX_TYPES)
    return hit


def is_state_box(x: Any) -> bool:
    """Whether ``x`` is an NNX ``Variable`` of other state than a parameter
    (``BatchStat``, ``RngKey``, ``RngCount``, ``Cache``...), as ``nnx.tabulate``
    keeps them apart from ``nnx.Param``."""
    return isinstance(x, nnx.Variable) and not isinstance(x, nnx.Param)


def shared_leaves(leaves: Sequence[Any], paths: Sequence[str]) -> dict[int, str]:
    """``{index: first path}`` for each leaf that is the very box of an earlier
    one: an NNX ``Variable`` shared by two modules (``self.head = self.emb``, or
    a kernel assigned another's ``Variable``). ``nnx.state`` keeps such a
    Variable once, at its first path; so do counts. An array in two places is
    two leaves, as JAX and optax see it (an optimizer keeps a state for each).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> v = nnx.Param(jnp.ones(3))
      >>> shared_leaves([v, nnx.Param(jnp.ones(3)), v], ['a', 'b', 'c'])
      {2: 'a'}
    """
    first: dict[int, str] = {}
    out: dict[int, str] = {}
    for i, (x, p) in enumerate(zip(leaves, paths, strict=True)):
        if not is_box(x):
            continue
        seen = first.setdefault(id(x), p)
        if seen != p:
            out[i] = seen
    return out


def unbox(x: Any) -> Any:
    """The value inside a metadata box; ``x`` itself if it is not a box."""
    if not is_box(x):
        return x
    get_value = getattr(x, 'get_value', None)
    if get_value is not None:
        return get_value()
    if hasattr(x, 'value'):
        return x.value
    return x.unbox()


def unbox_all(leaves: list[Any]) -> list[Any]:
    """``[unbox(x) for x in leaves]``, checking each leaf type only once."""
    if any(is_box(x) for x in {type(x): x for x in leaves}.values()):
        return [unbox(x) for x in leaves]
    return leaves


def rebox(old: Any, value: Any) -> Any:
    """``value`` in a copy of ``old``'s box; ``value`` if ``old`` is no box."""
    if not is_box(old) or is_box(value):
        return value
    replace_boxed = getattr(old, 'replace_boxed', None)
    if replace_boxed is not None:
        return replace_boxed(value)
    return old.replace(value)


# --------------------------------------------------------------------------
# Path spelling.


_KEY_ATTR = {
    jax.tree_util.DictKey: 'key',
    jax.tree_util.SequenceKey: 'idx',
    jax.tree_util.GetAttrKey: 'name',
    jax.tree_util.FlattenedIndexKey: 'key',
}


def key_str(entry: Any) -> str:  # a jax key entry's key, or a plain key, as a string
    attr = _KEY_ATTR.get(type(entry))
    if attr is None:
        return str(entry)
    value = getattr(entry, attr)
    return value if type(value) is str else str(value)


def path_tuple(path: PathLike) -> Path:
    """Normalizes a path to a tuple of key strings.

    Args:
      path: ``'a/b/0'``, ``('a', 'b', 0)``, or a jax key path (the tuples of
        ``DictKey``/``GetAttrKey``/``SequenceKey``/``FlattenedIndexKey`` that
        ``jax.tree_util.tree_flatten_with_path`` gives); ``''`` or ``()`` is
        the root.

    Returns:
      The keys as strings, e.g. ``('a', 'b', '0')``.

    Raises:
      PathError: If ``path`` is not a string or a sequence of keys, or a string
        path has a leading, trailing or doubled ``/``.
    """
    if isinstance(path, str):
        if not path:
            return ()
        keys = tuple(path.split('/'))
        if '' in keys:
            hint = path.strip('/')
            raise PathError(
                f'path {path!r} has an empty key: keys are joined by single '
                f"'/' with no leading or trailing '/'. Did you mean {hint!r}?"
            )
        return keys
    if isinstance(path, Sequence):
        return tuple(key_str(k) for k in path)  # plain keys and jax key entries alike
    raise PathError(
        f'a path is a string like "params/dense/kernel" or a tuple of keys, '
        f'got {type(path).__name__}: {path!r}'
    )


def path_str(path: PathLike) -> str:
    """The string spelling of a path (keys joined by ``/``)."""
    return '/'.join(path_tuple(path))


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


def same_dtype(a: Any, b: Any) -> bool:
    """Whether two dtypes are the same (PRNG key dtypes included)."""
    if is_key_dtype(a) or is_key_dtype(b):
        return str(a) == str(b)
    return np.dtype(a) == np.dtype(b)


def describe(x: Any) -> str:
    """Describes a leaf by dtype and shape, as Flax summaries do.

    Args:
      x: An array, ``jax.ShapeDtypeStruct``, Python scalar or any object.

    Returns:
      ``'float32[4,8]'`` for arrays (``'float32[]'`` for 0-d), the type name for
      Python scalars (``'float'``), ``'None'`` for None, else the type name.

    Raises:
      Nothing: any object gets a description.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.describe(jnp.zeros((4, 8)))
      'float32[4,8]'
      >>> ptp.describe(3)
      'int'
    """
    x = unbox(x)
    dtype = getattr(x, 'dtype', None)
    shape = getattr(x, 'shape', None)
    if dtype is not None and shape is not None:
        return f'{dtype_name(dtype)}[{",".join(str(d) for d in shape)}]'
    if x is None:
        return 'None'
    return type(x).__name__
