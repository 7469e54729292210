"""Flax msgpack files (``flax.serialization``): Flax's state dict, with the
structure recorded beside it."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from .._errors import FormatError
from .._flatten import children
from .._keys import describe, unbox
from .._typing import PyTree
from ._atomic import atomic_write
from ._structure import encode_structure, rebuild_structure


def state_dict_of(node: Any, where: str, fetch: bool = True) -> Any:
    """Flax's state dict of any tree (NNX ``State``, boxes, namedtuples too):
    mappings keyed by their keys, sequences by ``'0'``, ``'1'``...; leaves
    checked before anything is written, and fetched to the host if ``fetch``
    (Orbax takes device arrays as they are)."""
    node = unbox(node)
    if node is None or (
        isinstance(node, (bool, int, float, str)) and not isinstance(node, np.generic)
    ):
        return node
    if isinstance(node, jax.ShapeDtypeStruct):
        raise ValueError(f'save: {where!r} is abstract ({describe(node)}); save concrete arrays')
    if hasattr(node, 'shape') and hasattr(node, 'dtype'):
        return np.asarray(jax.device_get(node)) if fetch else node
    if isinstance(node, (dict, FrozenDict)):
        return {
            str(k): state_dict_of(v, f'{where}/{k}' if where else str(k), fetch)
            for k, v in node.items()
        }
    if isinstance(node, (list, tuple)) and not hasattr(node, '_fields'):
        return {
            str(i): state_dict_of(v, f'{where}/{i}' if where else str(i), fetch)
            for i, v in enumerate(node)
        }
    kids = children(node)
    if kids is None:
        raise ValueError(
            f'save: {where or "the root"!r} holds a {type(node).__name__}, which a msgpack '
            'checkpoint cannot hold (arrays, numbers, strings and containers); nothing was written'
        )
    return {
        k: state_dict_of(v, f'{where}/{k}' if where else k, fetch) for k, v in zip(kids[0], kids[1])
    }


def save_msgpack(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    from flax import serialization

    state = state_dict_of(tree, '')
    extra = {'structure': encode_structure(tree, '', None), **extra}
    state = {'__pytreeparams__': json.dumps(extra), 'tree': state}
    data = serialization.msgpack_serialize(state)
    atomic_write(path, lambda f: f.write(data))


def load_msgpack(path: str) -> tuple[PyTree, dict[str, Any]]:
    from flax import serialization

    with open(path, 'rb') as f:
        raw = f.read()
    if not raw:
        raise FormatError(f'{path!r} is not a valid msgpack checkpoint: the file is empty')
    try:
        state = serialization.msgpack_restore(raw)
    except Exception as e:
        raise FormatError(f'{path!r} is not a valid msgpack checkpoint: {e}') from e
    _validate_state(state, path, 0)
    extra: dict[str, Any] = {}
    if isinstance(state, dict) and '__pytreeparams__' in state and 'tree' in state:
        try:
            extra = json.loads(state['__pytreeparams__'])
        except (TypeError, ValueError, RecursionError) as e:
            raise FormatError(f'{path!r}: corrupt pytreeparams record: {e!r}') from e
        if not isinstance(extra, dict):
            raise FormatError(f'{path!r}: corrupt pytreeparams record: not a JSON object')
        state = state['tree']
        if 'structure' in extra:
            state = rebuild_structure(state, extra['structure'], path)
    return state, extra


def _validate_state(node: Any, path: str, depth: int) -> None:
    """A Flax state dict: nested dicts with string keys over array/scalar leaves."""
    if depth > 100:
        raise FormatError(f'{path!r}: the msgpack tree nests more than 100 levels')
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str):
                raise FormatError(
                    f'{path!r} is not a valid msgpack checkpoint: a key is {type(k).__name__} '
                    f'{k!r}, not a string'
                )
            if not k or '/' in k:
                raise FormatError(
                    f'{path!r} is not a valid msgpack checkpoint: the key {k!r} is empty or '
                    "contains '/', which no path can name"
                )
            _validate_state(v, path, depth + 1)
    elif not (
        node is None or isinstance(node, (np.ndarray, np.generic, bool, int, float, str, bytes))
    ):
        raise FormatError(
            f'{path!r} is not a valid msgpack checkpoint: it holds a {type(node).__name__}'
        )
