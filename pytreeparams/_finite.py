"""Non-finite values: which leaves hold NaN or Inf, and the first activation
that turns non-finite."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

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


def first_nonfinite_activation(module: Any, *args: Any, **kwargs: Any) -> str | None:
    """Names the first Flax sub-module (linen or NNX) whose output is non-finite.

    Runs the forward pass once and checks each sub-module's output as its call
    finishes, so the answer is the layer where a NaN or Inf is born, not every
    layer it reached. Layers inside ``nn.scan`` (or another lifted transform)
    run traced: a NaN born there is seen in the inputs of the next sub-module
    call, and the answer is the scanned module's path (``'layers'``); when no
    sub-module follows, the module holding the scan is named.

    Args:
      module: A ``flax.linen.Module`` or a ``flax.nnx.Module``.
      *args: linen: its variables (``{'params': ...}``), then the inputs of
        ``module.apply``; NNX: the inputs of its call (the module holds its
        variables; it runs on a copy, so its RNG counts and batch statistics
        stay as they were).
      **kwargs: Keyword inputs of the call.

    Returns:
      The sub-module path (``'layers_2'``; ``''`` for the module itself, with
      ``/__call__`` omitted; other methods as ``'path/method'``), or None if
      every output is finite.

    Raises:
      TypeError: Under ``jax.jit`` (it needs concrete outputs), or for another
        object than a flax module.
      Whatever the module raises for these inputs.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(2), nn.Dense(1)])
      >>> v = net.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> v = ptp.set(v, 'params/layers_1/bias', jnp.array([jnp.nan]))
      >>> ptp.first_nonfinite_activation(net, v, jnp.ones((1, 3)))
      'layers_1'
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
        raise TypeError(
            'first_nonfinite_activation looks at concrete outputs and returns a path, so it '
            'cannot run under jax.jit; call it outside jit with the same inputs'
        )
    if isinstance(module, nnx.Module):
        return _first_nonfinite_nnx(module, args, kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f'first_nonfinite_activation takes a flax linen or NNX module, got '
            f'{type(module).__name__}'
        )
    found: list[tuple[tuple[str, ...], str]] = []
    traced: list[tuple[tuple[str, ...], str]] = []  # calls seen only traced, since a finite one

    def check(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        out = next_fun(*call_args, **call_kwargs)
        call = (tuple(str(k) for k in context.module.path), context.method_name)
        if found:
            return out
        if _traced(out):  # inside nn.scan: the scan's own call is not intercepted
            if not call[1].startswith('<'):
                traced.append(call)
        elif not _nonfinite(out):
            traced.clear()
        elif traced and _nonfinite((call_args, call_kwargs)):
            found.append(min(traced[::-1], key=lambda c: len(c[0])))  # born in the scan
        else:
            found.append(call)  # the first call to finish with NaN/Inf
        return out

    with nn.intercept_methods(check):
        module.apply(*args, **kwargs)
    return _call_name(*found[0]) if found else None


def _traced(out: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(out))


def _nonfinite(out: Any) -> bool:
    """Whether a concrete output holds NaN/Inf (traced ones, inside a lifted
    transform, are judged by the inputs of the next concrete call)."""
    leaves = [x for x in jax.tree_util.tree_leaves(out) if is_array(x)]
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return False
    return any(
        not bool(jnp.all(jnp.isfinite(x)))
        for x in leaves
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    )


def _call_name(path: tuple[str, ...], method: str) -> str:
    name = '/'.join(path)
    return name if method == '__call__' else f'{name}/{method}'.lstrip('/')


def _first_nonfinite_nnx(module: Any, args: tuple[Any, ...], kwargs: Any) -> str | None:
    """NNX, which has no ``intercept_methods``: on a copy of the module, the
    public methods and ``__call__`` of its modules' classes report each output
    as the call finishes, for the instances of the copy only; the classes are
    restored at once (NNX's ``capture(method_outputs=)`` would instrument the
    user's classes for good)."""
    copy = nnx.clone(module)
    paths = {id(m): tuple(str(k) for k in p) for p, m in nnx.iter_graph(copy)}
    found: list[tuple[tuple[str, ...], str]] = []

    def wrap(name: str, method: Any) -> Any:
        @functools.wraps(method)
        def checked(self: Any, *a: Any, **kw: Any) -> Any:
            out = method(self, *a, **kw)
            if not found and id(self) in paths and _nonfinite(out):
                found.append((paths[id(self)], name))
            return out

        return checked

    patched: dict[tuple[type, str], Any] = {}
    for _, m in nnx.iter_graph(copy):
        if not isinstance(m, nnx.Module):
            continue
        for klass in type(m).__mro__:
            if klass.__module__.startswith('flax.nnx.') and klass.__name__ in _NNX_BASES:
                break
            for name, method in vars(klass).items():
                public = not name.startswith('_') or name == '__call__'
                if public and inspect.isfunction(method) and (klass, name) not in patched:
                    patched[klass, name] = method
    try:
        for (klass, name), method in patched.items():
            setattr(klass, name, wrap(name, method))
        copy(*args, **kwargs)
    finally:
        for (klass, name), method in patched.items():
            setattr(klass, name, method)
    return _call_name(*found[0]) if found else None


_NNX_BASES = frozenset({'Module', 'Object', 'Pytree'})
