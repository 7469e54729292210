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


def encode_structure(node: Any, path: str, arrays: dict[str, np.ndarray] | None) -> Any:
    """The JSON structure of ``node`` (containers, Python scalars, array
    shapes); arrays are fetched into ``arrays`` by path unless it is None."""
    node = unbox(node)
    if node is None:
        return {'t': 'none'}
    if isinstance(node, (bool, int, float, str)) and not isinstance(node, np.generic):
        return {'t': 'py', 'v': node}
    if isinstance(node, (FrozenDict, dict)):
        kind = 'frozen' if isinstance(node, FrozenDict) else 'dict'
        items = []
        for k, v in node.items():
            child = f'{path}/{k}' if path else str(k)
            items.append([k if isinstance(k, str) else int(k), encode_structure(v, child, arrays)])
        return {'t': kind, 'k': items}
    if isinstance(node, (list, tuple)) and not hasattr(node, '_fields'):
        kind = 'list' if isinstance(node, list) else 'tuple'
        return {
            't': kind,
            'c': [
                encode_structure(v, f'{path}/{i}' if path else str(i), arrays)
                for i, v in enumerate(node)
            ],
        }
    if hasattr(node, 'shape') and hasattr(node, 'dtype'):
        if isinstance(node, jax.ShapeDtypeStruct):
            raise ValueError(f'save: {path!r} is abstract ({describe(node)}); save concrete arrays')
        if arrays is None:  # the structure only (msgpack and Orbax store the arrays)
            return {'t': 'array', 's': list(np.shape(node))}
        arr = np.asarray(jax.device_get(node))
        arrays[path] = np.ascontiguousarray(arr)
        return {'t': 'array', 's': list(arr.shape)}
    kids = children(node)
    if kids is None:
        raise ValueError(
            f'save: {path!r} holds a {type(node).__name__}, which safetensors cannot hold'
        )
    items = [
        [k, encode_structure(v, f'{path}/{k}' if path else k, arrays)]
        for k, v in zip(kids[0], kids[1])
    ]
    return {'t': 'dict', 'k': items, 'was': type(node).__name__}


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
            out[k] = decode_structure(v, f'{path}/{k}' if path else str(k), arrays)
        return FrozenDict(out) if t == 'frozen' else out
    if t in ('list', 'tuple'):
        items = [
            decode_structure(v, f'{path}/{i}' if path else str(i), arrays)
            for i, v in enumerate(spec['c'])
        ]
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
