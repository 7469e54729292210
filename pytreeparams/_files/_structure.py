"""What a file stores beside its arrays: the tree's containers, as JSON.

Every format records the same structure (dicts, FrozenDicts, lists, tuples,
Python scalars, array shapes; other nodes as dicts keyed by their field
names), so that ``load`` without ``like`` gives the same tree from each.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from .._errors import FormatError
from .._flatten import children, flatten
from .._keys import describe, unbox
from .._messages import quote_list
from .._typing import PyTree

META_KEY = 'pytreeparams'
FORMAT_VERSION = 1


def _child(path: str, key: Any) -> str:
    return f'{path}/{key}' if path else str(key)


def contiguous(arr: np.ndarray) -> np.ndarray:
    """``arr`` in C order, its shape kept (``np.ascontiguousarray`` makes a 0-d array 1-d)."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def encode_structure(
    node: Any, path: str, arrays: dict[str, Any] | None, fetch: bool = True
) -> Any:
    """The JSON structure of ``node`` (containers, Python scalars, array
    shapes): the one walk over a tree that every format makes before writing.

    Arrays go into ``arrays`` by path unless it is None: fetched to the host as
    C-ordered NumPy arrays, or as they are without ``fetch`` (Orbax takes
    device arrays). Leaves are checked before anything is written.
    """
    node = unbox(node)
    if node is None:
        return {'t': 'none'}
    if isinstance(node, (bool, int, float, str)) and not isinstance(node, np.generic):
        return {'t': 'py', 'v': node}
    if isinstance(node, (FrozenDict, dict)):
        kind = 'frozen' if isinstance(node, FrozenDict) else 'dict'
        items = []
        for k, v in node.items():
            key = k if isinstance(k, str) else int(k)
            items.append([key, encode_structure(v, _child(path, k), arrays, fetch)])
        return {'t': kind, 'k': items}
    if isinstance(node, (list, tuple)) and not hasattr(node, '_fields'):
        kind = 'list' if isinstance(node, list) else 'tuple'
        coded = [encode_structure(v, _child(path, i), arrays, fetch) for i, v in enumerate(node)]
        return {'t': kind, 'c': coded}
    if hasattr(node, 'shape') and hasattr(node, 'dtype'):
        if isinstance(node, jax.ShapeDtypeStruct):
            raise ValueError(f'save: {path!r} is abstract ({describe(node)}); save concrete arrays')
        if arrays is not None:
            arrays[path] = contiguous(np.asarray(jax.device_get(node))) if fetch else node
        return {'t': 'array', 's': list(np.shape(node))}
    kids = children(node)
    if kids is None:
        raise ValueError(
            f'save: {path or "the root"!r} holds a {type(node).__name__}, which a checkpoint '
            'cannot hold (arrays, numbers, strings, None and containers); nothing was written'
        )
    items = [
        [k, encode_structure(v, _child(path, k), arrays, fetch)] for k, v in zip(kids[0], kids[1])
    ]
    return {'t': 'dict', 'k': items, 'was': type(node).__name__}


def state_from_structure(spec: Any, path: str, arrays: dict[str, Any]) -> Any:
    """Flax's state dict (``flax.serialization.to_state_dict``) of an encoded
    tree: mappings keyed by ``str(key)``, sequences by ``'0'``, ``'1'``..., other
    nodes by their field names; leaves from ``arrays`` by path."""
    t = spec['t']
    if t == 'none':
        return None
    if t == 'py':
        return spec['v']
    if t == 'array':
        return arrays[path]
    if t in ('list', 'tuple'):
        return {
            str(i): state_from_structure(v, _child(path, i), arrays)
            for i, v in enumerate(spec['c'])
        }
    return {str(k): state_from_structure(v, _child(path, k), arrays) for k, v in spec['k']}


def array_keys(spec: Any, keys: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key tuple of every array in an encoded structure, in order."""
    t = spec['t']
    if t == 'array':
        return [keys]
    if t in ('list', 'tuple'):
        kids = [(str(i), v) for i, v in enumerate(spec['c'])]
    elif t in ('dict', 'frozen'):
        kids = [(str(k), v) for k, v in spec['k']]
    else:
        return []
    return [ks for k, v in kids for ks in array_keys(v, (*keys, k))]


def decode_structure(spec: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    t = spec['t']
    if t == 'none':
        return None
    if t == 'py':
        arrays.pop(path, None)  # msgpack and Orbax hold the scalar too
        return spec['v']
    if t == 'array':
        if path not in arrays:
            raise FormatError(f'the structure names a tensor {path!r} the file does not hold')
        arr = arrays.pop(path)
        shape = tuple(spec.get('s', arr.shape))
        if int(np.prod(shape)) != arr.size:
            raise FormatError(f'tensor {path!r} holds {arr.size} values, not shape {shape}')
        return arr.reshape(shape)
    if t in ('dict', 'frozen'):
        out = {}
        for k, v in spec['k']:
            out[k] = decode_structure(v, _child(path, k), arrays)
        return FrozenDict(out) if t == 'frozen' else out
    if t in ('list', 'tuple'):
        items = [decode_structure(v, _child(path, i), arrays) for i, v in enumerate(spec['c'])]
        return items if t == 'list' else tuple(items)
    raise FormatError(f'unknown node kind {t!r} in the structure metadata')


def rebuild_structure(state: PyTree, spec: Any, path: str) -> PyTree:
    """The saved containers around a msgpack or Orbax state dict (its leaves by
    path), from the structure recorded beside it."""
    flat = dict(flatten(state))
    try:
        tree = decode_structure(spec, '', flat)
    except FormatError as e:
        raise FormatError(f'{path!r}: {e}') from e
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError, IndexError) as e:
        raise FormatError(f'{path!r}: its structure metadata is corrupt ({e!r})') from e
    if flat:
        raise FormatError(
            f'{path!r}: its structure metadata does not name {len(flat)} stored entries '
            f'({quote_list(list(flat))})'
        )
    return tree
