"""The per-call view of a linen or NNX module, from flax's own tabulate machinery.

Which sub-module ran, with which method, on what input and output types (the
columns of ``nn.tabulate`` / ``nnx.tabulate``), beside the pooled statistics of
the variables each call owns. The calls are read from flax, not traced here:
linen's through ``flax.linen.summary._get_module_table`` (what linen's own
``Module.module_paths`` uses), NNX's through the ``row_filter`` hook of
``nnx.tabulate``. Both run the module abstractly or in copies: nothing it holds
changes.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import nnx

from ._flatten import LRU
from ._leaves import dtype_name, type_str
from ._rows import Row, combine_rows
from ._typing import PyTree

__all__ = ['Call', 'assign_calls', 'is_module', 'module_calls', 'module_variables']


@dataclasses.dataclass(frozen=True)
class Call:
    """One module call, as ``nn.tabulate`` shows it, with its variables' statistics.

    Attributes:
      path: The module's path, keys joined by ``'/'`` (``''`` for the root).
      module: The module's class name.
      method: The method called (``'__call__'`` unless another was).
      inputs: The inputs' types, as ``'float32[2,3]'``.
      outputs: The outputs' types.
      params: One :class:`Row` pooling the parameters the call owns: its
        module's own (as ``nn.tabulate`` counts them), and with ``depth`` those
        of the sub-modules below the depth as well. A variable shared by two
        modules is owned once, where ``nnx.state`` names it.
      state: The same for its other state (``batch_stats``, NNX ``BatchStat``
        and RNG variables), pooled apart as tabulate's columns keep them; None
        when the call owns none.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, pytreeparams as ptp
      >>> s = ptp.summary(nn.Dense(3), jnp.ones((2, 4)))
      >>> c = s.calls[0]
      >>> c.module, c.inputs, c.outputs, c.params.size
      ('Dense', 'float32[2,4]', 'float32[2,3]', 15)
    """

    path: str
    module: str
    method: str
    inputs: str
    outputs: str
    params: Row
    state: Row | None = None


def is_module(x: Any) -> bool:
    """Whether ``x`` is a flax linen or NNX module."""
    return isinstance(x, nn.Module | nnx.Module)


def _type_text(x: Any) -> str:
    """``'float32[2,3]'`` for an array or its abstract value, else ``repr``
    (through linen tabulate's wrappers of partitioned arrays and objects)."""
    x = getattr(x, 'array_representation', x)
    shape, dtype = getattr(x, 'shape', None), getattr(x, 'dtype', None)
    if shape is None or dtype is None:
        return repr(getattr(x, 'obj', x))
    return type_str(dtype_name(dtype), shape)


def _is_value(x: Any) -> bool:
    return hasattr(x, 'shape') or hasattr(x, 'obj') or hasattr(x, 'array_representation')


def _tree_text(tree: Any) -> str:
    """The types of a call's arguments or results, comma separated; keyword
    arguments (a trailing dict of the inputs) as ``name=type``."""
    kwargs: dict[str, Any] = {}
    if isinstance(tree, dict):
        tree, kwargs = (), tree
    elif isinstance(tree, tuple) and tree and isinstance(tree[-1], dict):
        tree, kwargs = tree[:-1], tree[-1]
    texts = [_type_text(x) for x in jax.tree.leaves(tree, is_leaf=_is_value)]
    texts += [f'{k}={_leaves_text(v)}' for k, v in kwargs.items()]
    return ', '.join(texts)


def _leaves_text(tree: Any) -> str:
    return ', '.join(_type_text(x) for x in jax.tree.leaves(tree, is_leaf=_is_value))


_MARKUP = re.compile(r'\[/?dim\]')


def _nnx_inputs_text(text: str) -> str:
    """nnx.tabulate's inputs (YAML with rich markup) on one line."""
    lines = [ln.strip().lstrip('- ').strip() for ln in _MARKUP.sub('', text).splitlines()]
    return ', '.join(ln for ln in lines if ln)


RawCall = tuple[tuple[str, ...], str, str, str, str]
"""``(path keys, module class name, method, inputs text, outputs text)``."""


def module_calls(
    module: Any, inputs: Sequence[Any], kwargs: Mapping[str, Any], rngs: Any
) -> list[RawCall]:
    """The calls a linen or NNX module makes on ``inputs``, in call order.

    As their tabulate lists them, each module call once: a linen module called
    again is listed once (``show_repeated=False``), and so is an NNX one (which
    ``nnx.tabulate`` lists once per input signature, and a module shared by two
    attributes under its first path); NNX's RNG streams are left out.

    Args:
      module: A ``flax.linen.Module`` or ``flax.nnx.Module``.
      inputs: The positional arguments of the call.
      kwargs: Its keyword arguments (``method`` names the method to call, as
        linen's ``init`` and ``nnx.tabulate`` take it).
      rngs: linen only: the key (or ``{name: key}``) of the abstract ``init``.

    Returns:
      One ``(path, module, method, inputs, outputs)`` tuple per call.

    Raises:
      TypeError: If ``module`` is neither.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> module_calls(nn.Dense(3), [jnp.ones((2, 4))], {}, jax.random.key(0))
      [((), 'Dense', '__call__', 'float32[2,4]', 'float32[2,3]')]
    """
    if isinstance(module, nn.Module):
        from flax.linen import summary as linen_summary

        # Private, on purpose: flax has no public API for the calls with their inputs and
        # outputs (nn.tabulate returns only rendered text; Module.module_paths, built on
        # this same function, keeps the modules and drops inputs, outputs and methods).
        table = linen_summary._get_module_table(
            module, depth=None, show_repeated=False, compute_flops=False, compute_vjp_flops=False
        )(rngs, *inputs, **kwargs)
        return [
            (
                tuple(str(k) for k in r.path),
                type(r.module_copy).__name__,
                r.method,
                _tree_text(r.inputs),
                _tree_text(r.outputs),
            )
            for r in table
        ]
    if isinstance(module, nnx.Module):
        seen: list[Any] = []

        def record(info: Any) -> bool:
            seen.append(info)
            return False  # nnx.tabulate renders no row: the rows are ours

        if 'row_filter' not in inspect.signature(nnx.tabulate).parameters:
            raise TypeError(
                "summary(nnx_module, *inputs) reads the calls through nnx.tabulate's "
                'row_filter, which this flax lacks (flax >= 0.12 has it); summary(nnx_module) '
                'gives its variables'
            )
        nnx.tabulate(module, *inputs, row_filter=record, **kwargs)
        out, listed = [], set()
        for c in sorted(seen, key=lambda c: c.call_order):
            if issubclass(c.type, nnx.RngStream):
                continue
            path, method = tuple(str(k) for k in c.path), '__call__'
            if (
                path
                and path[-1] != '__call__'
                and inspect.isfunction(getattr(c.type, path[-1], None))
            ):
                path, method = path[:-1], path[-1]  # nnx.tabulate appends another method's name
            if (path, method) in listed:
                continue  # called again (a shared module, or other shapes): listed once
            listed.add((path, method))
            inputs_text = _nnx_inputs_text(c.inputs_repr)
            out.append((path, c.type.__name__, method, inputs_text, _tree_text(c.outputs)))
        return out
    raise TypeError(f'expected a flax linen or NNX module, got {type(module).__name__}')


def module_variables(
    module: Any,
    inputs: Sequence[Any],
    kwargs: Mapping[str, Any],
    variables: PyTree | None,
    rngs: Any,
    concrete: bool,
) -> Any:
    """The variables to summarize: an NNX module's own; for linen the given
    ``variables``, else ``module.init`` (jitted; abstract without statistics)."""
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise ValueError('an NNX module holds its variables: pass no variables=')
        return module
    if variables is not None:
        return variables
    if not concrete:
        return jax.eval_shape(lambda r: module.init(r, *inputs, **kwargs), rngs)
    fn, arrays = _jitted_init(module, inputs, kwargs)
    return fn(rngs, arrays)


_INIT_CACHE = LRU()


def _jitted_init(
    module: nn.Module, inputs: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[Any, list[Any]]:
    """``module.init`` jitted once per module, input structure and non-array
    arguments (``train=False``), so jax's cache serves every later call with
    inputs of the same shapes (it was traced and compiled again on each
    ``summary`` call: seconds on a GPT-2). The arrays are arguments of the
    returned function; nothing holds them."""
    leaves, treedef = jax.tree.flatten((tuple(inputs), dict(kwargs)))
    where = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array | np.ndarray)]
    traced = set(where)
    statics = tuple((i, x) for i, x in enumerate(leaves) if i not in traced)
    arrays, n = [leaves[i] for i in where], len(leaves)

    def init(rngs: Any, arrays: list[Any]) -> Any:
        full: list[Any] = [None] * n
        for i, x in statics:
            full[i] = x
        for i, x in zip(where, arrays):
            full[i] = x
        args, kw = jax.tree.unflatten(treedef, full)
        return module.init(rngs, *args, **kw)

    try:
        key = (module, treedef, statics)
        fn = _INIT_CACHE.get(key)
        if fn is None:
            fn = _INIT_CACHE.put(key, jax.jit(init))
    except TypeError:  # an unhashable module field or argument: jitted for this call only
        fn = jax.jit(init)
    return fn, arrays


def assign_calls(
    calls: Sequence[RawCall],
    rows: Sequence[Row],
    depth: int | None,
    collections: bool,
    leaf_paths: Sequence[str],
    state: Sequence[bool] | None = None,
) -> tuple[Call, ...]:
    """Each leaf row goes to the deepest call whose module path holds it.

    Args:
      calls: From :func:`module_calls`.
      rows: The leaf rows of the summary.
      depth: Keep calls at most this deep; a call at the depth also owns the
        variables of the sub-modules below it.
      collections: Whether leaf paths may start with a collection name
        (``'params'``, ``'batch_stats'``: linen variables); a first key that is
        no top-level module's name is taken for one.
      leaf_paths: The tree path of each row's leaf (a stacked leaf's layer
        rows, named with the layer index, all belong to the module that holds
        the stacked leaf).
      state: Whether each row is other state than a parameter (pooled apart).
        Alias rows (``row.alias``) are owned by no call.

    Returns:
      One :class:`Call` per kept call, in call order.
    """
    kept = [c for c in calls if depth is None or len(c[0]) <= depth]
    first: dict[tuple[str, ...], int] = {}
    for i, c in enumerate(kept):
        first.setdefault(c[0], i)
    owned: dict[tuple[int, bool], list[Row]] = {}
    state = [False] * len(rows) if state is None else state
    for r, path, s in zip(rows, leaf_paths, state, strict=True):
        if r.alias:
            continue  # an alias (a shared Variable's second path) is its source's
        keys = tuple(path.split('/'))[:-1]
        if collections and keys and keys[:1] not in first:
            keys = keys[1:]  # 'params/Dense_0/kernel'; variables['params'] has no collection
        for n in range(len(keys), -1, -1):
            if keys[:n] in first:
                owned.setdefault((first[keys[:n]], s), []).append(r)
                break
    out = []
    for j, (keys_, module_type, method, inputs, outputs) in enumerate(kept):
        path = '/'.join(keys_)
        st = owned.get((j, True))
        params = combine_rows(path, owned.get((j, False), []))
        state_row = None if st is None else combine_rows(path, st)
        out.append(Call(path, module_type, method, inputs, outputs, params, state_row))
    return tuple(out)
