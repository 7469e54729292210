"""Which Flax sub-modules are used at several places (linen calls, NNX graph
duplicates), with where their parameters are stored."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from ._flatten import flatten_with_paths

__all__ = ['SharedModule', 'shared_modules']


@dataclasses.dataclass(frozen=True)
class SharedModule:
    """A sub-module reached more than once.

    Attributes:
      path: The module's path (where its parameters are stored).
      calls: How many times it was called (linen; NNX given inputs), or the
        number of attribute paths that reach it (NNX without inputs).
      call_sites: Where: for linen, ``'caller path #n'`` per call (the n-th
        sub-module call of that caller); for NNX, every attribute path.
      param_paths: The parameter paths it owns (stored once).

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> d = nn.Dense(2)
      >>> m, = ptp.shared_modules(nn.Sequential([d, d]), jnp.ones((1, 2)))
      >>> m.path, m.calls, m.param_paths
      ('layers_0', 2, ('params/layers_0/bias', 'params/layers_0/kernel'))
    """

    path: str
    calls: int
    call_sites: tuple[str, ...]
    param_paths: tuple[str, ...]


def shared_modules(module: Any, *args: Any, **kwargs: Any) -> list[SharedModule]:
    """Reports sub-modules used at several places, stored once.

    For a Flax linen module, runs ``module.init`` abstractly (``jax.eval_shape``,
    nothing allocated) on ``args`` and records every sub-module call. For a
    Flax NNX module, reports every ``Module`` or ``Param`` reached through more
    than one attribute path (``nnx.find_duplicates``), under the path where
    NNX's ``State`` stores its parameters; with ``args``, ``calls`` counts the
    calls of one abstract forward pass (``nnx.eval_shape``: the model is not
    changed), without them the attribute paths that reach it. Modules without
    parameters (dropout, activations) are not listed.

    Args:
      module: A ``flax.linen.Module`` or ``flax.nnx.Module``.
      *args: Example inputs, e.g. ``jnp.ones((2, 4))`` (linen: required).
      **kwargs: Keyword inputs.

    Returns:
      One :class:`SharedModule` per reused module, in order of first call.

    Raises:
      Whatever ``module.init`` raises for these inputs.

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> shared = nn.Dense(8)
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
      >>> [(m.path, m.calls) for m in ptp.shared_modules(net, jnp.ones((2, 4)))]
      [('layers_2', 2)]
    """
    from flax import nnx

    if isinstance(module, nnx.Module):
        return _shared_nnx(module, args, kwargs)
    import flax.linen as nn

    calls: dict[tuple[str, ...], list[str]] = {}
    stack: list[tuple[str, ...]] = []
    counters: dict[tuple[str, ...], int] = {}

    def interceptor(next_fun: Any, a: Any, kw: Any, context: Any) -> Any:
        if context.method_name != '__call__':
            return next_fun(*a, **kw)
        path = tuple(context.module.path)
        caller = stack[-1] if stack else None
        if caller is not None:
            counters[caller] = counters.get(caller, 0) + 1
            site = f'{"/".join(caller) or "<root>"} #{counters[caller]}'
            calls.setdefault(path, []).append(site)
        stack.append(path)
        try:
            return next_fun(*a, **kw)
        finally:
            stack.pop()

    def run() -> Any:
        with nn.intercept_methods(interceptor):
            return module.init(jax.random.key(0), *args, **kwargs)

    variables = jax.eval_shape(run)
    all_paths = flatten_with_paths(variables)[2]
    out = []
    for path, sites in calls.items():
        if len(sites) > 1:
            p = '/'.join(path)
            owned = tuple(
                x
                for x in all_paths
                if f'/{p}/' in f'/{x}' and x.split('/', 1)[1].startswith(p + '/')
            )
            if owned:  # a parameterless module (dropout, an activation) shares no weight
                out.append(SharedModule(p, len(sites), tuple(sites), owned))
    return out


def _shared_nnx(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[SharedModule]:
    """NNX: ``nnx.find_duplicates`` for the nodes reached by several attribute
    paths; the path NNX stores them under (its state's); calls counted by
    running the model abstractly when inputs are given."""
    from flax import nnx

    param_paths = flatten_with_paths(nnx.state(module, nnx.Param))[2]
    groups = []
    for group in nnx.find_duplicates(module):
        paths_ = ['/'.join(str(k) for k in p) for p in group]
        owned = tuple(
            p for p in param_paths if any(p == q or p.startswith(q + '/') for q in paths_)
        )
        if owned:  # a parameterless module (Dropout, an activation) is not a shared weight
            stored = next(q for q in paths_ if owned[0] == q or owned[0].startswith(q + '/'))
            groups.append((stored, paths_, owned))
    calls = _count_nnx_calls(module, args, kwargs) if (args or kwargs) and groups else {}
    return [
        SharedModule(stored, calls.get(stored, 0) if args or kwargs else len(paths_),
                     tuple(paths_), owned)
        for stored, paths_, owned in groups
    ]  # fmt: skip


def _count_nnx_calls(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, int]:
    """``{stored path: __call__ count}`` of every sub-module, from one abstract
    forward pass (``nnx.eval_shape``: nothing computed, the model untouched)."""
    from flax import nnx

    counts: dict[str, int] = {}
    where: dict[int, str] = {}
    classes = {type(n) for _, n in nnx.graph.iter_graph(module) if isinstance(n, nnx.Module)}
    saved = {cls: cls.__dict__.get('__call__') for cls in classes}

    def counting(cls: type) -> Any:
        original = cls.__call__

        def __call__(self: Any, *a: Any, **k: Any) -> Any:
            path = where.get(id(self))
            if path is not None:
                counts[path] = counts.get(path, 0) + 1
            return original(self, *a, **k)

        return __call__

    def run(m: Any, *a: Any) -> Any:
        for p, n in nnx.graph.iter_graph(m):
            if isinstance(n, nnx.Module) and p:
                where[id(n)] = '/'.join(str(k) for k in p)
        return m(*a, **kwargs)

    try:
        for cls in classes:
            setattr(cls, '__call__', counting(cls))  # noqa: B010 (mypy: a method is assigned)
        nnx.eval_shape(run, module, *args)
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.__call__
            else:
                setattr(cls, '__call__', original)  # noqa: B010
    return counts
