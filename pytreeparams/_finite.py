"""Non-finite values: which leaves hold NaN or Inf, and the first activation
that turns non-finite."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import NonFiniteError
from ._flatten import flatten, flatten_with_paths
from ._keys import unbox_all
from ._leaves import is_array, readable
from ._messages import joined_list
from ._moments import leaf_rows
from ._typing import PyTree

__all__ = ['assert_finite', 'find_nonfinite', 'first_nonfinite_activation']


def _nonfinite_counts(tree: PyTree) -> list[tuple[str, int]]:
    leaves, _, paths_ = flatten_with_paths(tree)
    leaves = readable(unbox_all(leaves))
    stats = leaf_rows(leaves)
    return [(p, int(s[5])) for p, s in zip(paths_, stats) if s is not None and s[5] > 0]


def find_nonfinite(tree: PyTree) -> list[str]:
    """The paths of leaves holding NaN or Inf, in flatten order.

    Args:
      tree: Any pytree of concrete arrays (use outside ``jit``).

    Returns:
      The paths, empty if everything is finite.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.find_nonfinite({'a': jnp.ones(2), 'b': jnp.array([1.0, jnp.inf])})
      ['b']
    """
    return [p for p, _ in _nonfinite_counts(tree)]


def assert_finite(tree: PyTree) -> None:
    """Raises if any leaf holds NaN or Inf (for use outside ``jit``).

    Args:
      tree: Any pytree of concrete arrays.

    Returns:
      None when every value is finite.

    Raises:
      NonFiniteError: Naming each non-finite path with its count of NaN/Inf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> ptp.assert_finite({'a': jnp.ones(2)})
      >>> try:
      ...   ptp.assert_finite({'a': jnp.array([jnp.nan, 1.0, jnp.nan])})
      ... except ptp.NonFiniteError as e:
      ...   print(e)
      1 leaf holds NaN/Inf: 'a' (2 of 3 values)
    """
    bad = _nonfinite_counts(tree)
    if bad:
        sizes = {p: math.prod(np.shape(x)) for p, x in flatten(tree).items()}
        parts = [f'{p!r} ({n} of {sizes[p]} values)' for p, n in bad]
        noun = 'leaf holds' if len(bad) == 1 else 'leaves hold'
        raise NonFiniteError(f'{len(bad)} {noun} NaN/Inf: ' + joined_list(parts))


def first_nonfinite_activation(
    module: Any, variables: PyTree, *args: Any, **kwargs: Any
) -> str | None:
    """Names the first Flax linen sub-module whose output is non-finite.

    Runs the forward pass once with ``capture_intermediates`` and checks the
    outputs in the order the calls finished, so the answer is the layer where
    a NaN or Inf is born, not every layer it reached.

    Args:
      module: A ``flax.linen.Module``.
      variables: Its variables (``{'params': ...}``).
      *args: Inputs of ``module.apply``.
      **kwargs: Keyword inputs of ``module.apply``.

    Returns:
      The sub-module path (``'layers_2'``; ``''`` for the module itself, with
      ``/__call__`` omitted; other methods as ``'path/method'``), or None if
      every output is finite.

    Raises:
      TypeError: Under ``jax.jit`` (it needs concrete outputs).
      Whatever ``module.apply`` raises for these inputs.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(2), nn.Dense(1)])
      >>> v = net.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> v = ptp.set(v, 'params/layers_1/bias', jnp.array([jnp.nan]))
      >>> ptp.first_nonfinite_activation(net, v, jnp.ones((1, 3)))
      'layers_1'
    """
    order: list[tuple[tuple[str, ...], str]] = []

    def record(mdl: Any, method_name: str) -> bool:
        order.append((tuple(mdl.path), method_name))
        return True

    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((variables, args))):
        raise TypeError(
            'first_nonfinite_activation looks at concrete outputs and returns a path, so it '
            'cannot run under jax.jit; call it outside jit with the same inputs'
        )
    _, state = module.apply(
        variables, *args, capture_intermediates=record, mutable=['intermediates'], **kwargs
    )
    inter = state['intermediates']
    seen = set()
    for path, method in order:
        if (path, method) in seen:
            continue
        seen.add((path, method))
        node = inter
        for k in path:
            node = node[k]
        outs = node.get(method, ())
        for out in outs:
            leaves = [x for x in jax.tree_util.tree_leaves(out) if is_array(x)]
            if any(not bool(jnp.all(jnp.isfinite(x))) for x in leaves):
                name = '/'.join(path)
                return name if method == '__call__' else f'{name}/{method}'.lstrip('/')
    return None
