"""Re-initialization by pattern with ``jax.nn.initializers``-style functions."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ._flatten import flatten_with_paths
from ._keys import rebox, unbox
from ._patterns import first_match
from ._typing import PyTree

__all__ = ['path_key', 'reinit']

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def path_key(key: chex.PRNGKey, path: str) -> chex.PRNGKey:
    """A PRNG key for ``path`` derived from ``key`` (independent of other leaves).

    Args:
      key: The base key.
      path: The leaf path string.

    Returns:
      ``jax.random.fold_in(key, crc32(path))``.

    Raises:
      Nothing for a valid key.

    Example:
      >>> import jax, pytreeparams as ptp
      >>> k = jax.random.key(0)
      >>> a, b = ptp.path_key(k, 'dense/kernel'), ptp.path_key(k, 'dense/kernel')
      >>> bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
      True
    """
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def _sharding_of(x: Any) -> Any:
    if isinstance(x, jax.core.Tracer):
        return None
    return getattr(x, 'sharding', None)


def _sharded_value(
    init: Initializer, key: chex.PRNGKey, shape: tuple[int, ...], dtype: Any, sharding: Any
) -> jax.Array:
    """``init``'s value made where its shards lie: one jitted call with
    ``out_shardings``, so that no device (or process) holds the whole leaf."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = jax.random.key_impl(key) if typed else None
    data = np.asarray(jax.random.key_data(key) if typed else key)  # the same on every process

    def make(data: jax.Array) -> jax.Array:
        k = jax.random.wrap_key_data(data, impl=impl) if typed else data
        return jnp.asarray(init(k, shape, dtype), dtype)

    return jax.jit(make, out_shardings=sharding)(data)


def reinit(params: PyTree, key: chex.PRNGKey, rules: Any) -> PyTree:
    """Re-initializes the leaves matching each rule's pattern. Jittable.

    Args:
      params: The parameter tree (concrete, abstract or traced).
      key: A PRNG key; each leaf's key is ``path_key(key, path)``, so a leaf's
        new value does not depend on which other leaves exist.
      rules: An ordered mapping or list of ``(pattern, initializer)``; the
        initializer has the ``jax.nn.initializers`` signature
        ``(key, shape, dtype) -> array``. The first matching rule wins;
        unmatched leaves are kept as they are.

    Returns:
      A new tree with ``params``' containers, shapes, dtypes and (for concrete
      arrays or ``ShapeDtypeStruct`` with a sharding) shardings. A sharded
      leaf is made by one jitted call with ``out_shardings``, each shard on
      its device (no device or process ever holds the whole leaf); for arrays
      sharded over several processes every process calls ``reinit``.

    Raises:
      PathError: If a rule matches no leaf.

    Example:
      >>> import jax, jax.numpy as jnp, pytreeparams as ptp
      >>> params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
      >>> new = ptp.reinit(params, jax.random.key(0), {'**/bias': jax.nn.initializers.zeros})
      >>> new['dense']['bias'].tolist(), new['dense']['kernel'].tolist()
      ([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]])
    """
    leaves, treedef, paths_ = flatten_with_paths(params)
    chosen: list[Initializer | None] = first_match(paths_, rules, 'reinit')
    new = []
    for x, p, init in zip(leaves, paths_, chosen):
        if init is None:
            new.append(x)
            continue
        old = unbox(x)
        shape = tuple(np.shape(old))
        dtype = getattr(old, 'dtype', None) or jnp.asarray(old).dtype
        k = path_key(key, p)
        sharding = _sharding_of(old)
        value = jax.eval_shape(lambda k: init(k, shape, dtype), k)  # noqa: B023
        if value.shape != shape:
            raise ValueError(
                f'reinit: the initializer for {p!r} returned shape {value.shape}, expected {shape}'
            )
        if sharding is None or isinstance(k, jax.core.Tracer):
            value = jnp.asarray(init(k, shape, dtype), dtype)
        elif len(sharding.device_set) > 1:
            value = _sharded_value(init, k, shape, dtype, sharding)
        else:
            value = jax.device_put(jnp.asarray(init(k, shape, dtype), dtype), sharding)
        new.append(rebox(x, value))
    return jax.tree_util.tree_unflatten(treedef, new)
