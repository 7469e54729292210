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
from ._leaves import dtype_name, is_key_dtype, type_str
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


def logical_axes(x: Any) -> tuple[str | None, ...] | None:
    """The logical axis names a metadata box gives its array, or None.

    ``nn.with_logical_partitioning`` (an ``nn.LogicallyPartitioned`` box) and an
    NNX ``Variable``'s sharding metadata (``out_sharding``, ``sharding_names`` or
    ``sharding`` in older flax) name each axis (``('embed', 'mlp')``), as maxtext
    and t5x print them; ``nn.Partitioned`` names mesh axes (the partition spec).

    Example:
      >>> import flax.linen as nn, jax
      >>> init = nn.with_logical_partitioning(nn.initializers.ones, ('embed', 'mlp'))
      >>> logical_axes(init(jax.random.key(0), (2, 3)))
      ('embed', 'mlp')
    """
    if not is_box(x):
        return None
    if hasattr(x, 'rules') and hasattr(x, 'names'):  # nn.LogicallyPartitioned
        names = x.names
    elif hasattr(x, 'get_metadata'):  # an NNX Variable
        meta = x.get_metadata()
        keys = ('out_sharding', 'sharding_names', 'sharding')
        names = next((meta[k] for k in keys if meta.get(k)), None)
    else:
        return None
    if not isinstance(names, (tuple, list)):
        return None
    return tuple(n if n is None or isinstance(n, str) else str(n) for n in names)


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


WATCH_KEY = 'ptp_watch'  # where ptp.watch's statistics sit in an optimizer state


def is_watch_path(path: str) -> bool:
    """Whether ``path`` lies under ``WATCH_KEY`` (``'ptp_watch'``, or ``'ptp_watch_1'``...
    of a nested ``watch``): state that a resumed run may add or drop."""
    return any(k == WATCH_KEY or k.startswith(WATCH_KEY + '_') for k in path.split('/'))


def _watch_group(path: str) -> str:
    keys = path.split('/')
    i = next(i for i, k in enumerate(keys) if k == WATCH_KEY or k.startswith(WATCH_KEY + '_'))
    return '/'.join(keys[: i + 1])


def watch_plan(
    like: dict[str, Any], stored: dict[str, tuple[Any, Any]]
) -> tuple[set[str], set[str]]:
    """``(fill, drop)`` for the statistics of ``ptp.watch`` when ``stored`` (a
    checkpoint's ``{path: (shape, dtype)}``) is read into ``like`` (``{path: leaf}``).

    A run may add or remove ``watch``, or change its options: each ``watch``'s
    statistics (the paths under one ``'ptp_watch'`` key) are read only when the
    checkpoint holds the same paths, shapes and dtypes; else ``like``'s paths there
    are in ``fill`` (they keep ``like``'s values) and the checkpoint's in ``drop``
    (not read into the result)."""

    def fits(p: str) -> bool:
        x = like[p]
        if p not in stored or not hasattr(x, 'dtype'):
            return p in stored
        shape, dtype = stored[p]
        return tuple(np.shape(x)) == tuple(shape) and same_dtype(x.dtype, dtype)

    theirs = [p for p in stored if is_watch_path(p)]
    ours = [p for p in like if is_watch_path(p)]
    stale = {_watch_group(p) for p in ours if not fits(p)}
    stale |= {_watch_group(p) for p in theirs if p not in like}
    fill = {p for p in ours if _watch_group(p) in stale}
    drop = {p for p in theirs if _watch_group(p) in stale}
    return fill, drop


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


def same_dtype(a: Any, b: Any) -> bool:
    """Whether two dtypes are the same (PRNG key dtypes included)."""
    if is_key_dtype(a) or is_key_dtype(b):
        return str(a) == str(b)
    return np.dtype(a) == np.dtype(b)


def jax_changes_dtype(dtype: Any) -> bool:
    """Whether JAX would store ``dtype`` as another (64-bit values without
    ``jax_enable_x64``): such arrays stay NumPy rather than lose bits.

    Example:
      >>> import numpy as np
      >>> jax_changes_dtype(np.float32)
      False
    """
    import jax

    return not is_key_dtype(dtype) and jax.dtypes.canonicalize_dtype(dtype) != np.dtype(dtype)


def torch_as_numpy(x: Any) -> Any:
    """A torch tensor as a NumPy array (a CPU tensor without a copy; bfloat16
    and 8-bit floats through their bits, as ``ml_dtypes`` arrays); any other
    leaf as it is. The one place a leaf of PyTorch becomes readable; torch is
    never imported here.

    Example:
      >>> torch_as_numpy(3.0)
      3.0
    """
    if type(x).__module__.split('.')[0] != 'torch' or not hasattr(x, 'detach'):
        return x
    t = x.detach().cpu()
    import ml_dtypes

    ml = getattr(ml_dtypes, str(t.dtype).rsplit('.', 1)[-1], None)
    if ml is None:
        return t.numpy()
    import torch  # already imported: x is a tensor

    bits = torch.uint8 if t.element_size() == 1 else torch.int16
    return t.view(bits).numpy().view(ml)


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
    x = torch_as_numpy(unbox(x))
    dtype = getattr(x, 'dtype', None)
    shape = getattr(x, 'shape', None)
    if dtype is not None and shape is not None:
        return type_str(dtype_name(dtype), shape)
    if x is None:
        return 'None'
    return type(x).__name__
