"""Flax msgpack files (``flax.serialization``): Flax's state dict, with the
structure recorded where Flax does not look.

The file is exactly what ``flax.serialization.to_bytes`` writes for the tree
(``from_bytes(target, data)``, ``msgpack_restore`` and Hugging Face's Flax
``from_pretrained`` read it), except that the root map starts with one extra
entry: its first key again, holding ptp's record (the containers, ties, PRNG
key implementations) as a JSON string. msgpack readers keep the last value of
a repeated key, so every Flax reader sees the state dict alone; ptp reads the
record first. A tree whose root is not a non-empty mapping (a single array,
an empty container) is stored as ``{'__pytreeparams__': record, 'tree': state}``,
as earlier versions stored every tree (still read).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from .._errors import FormatError
from .._typing import PyTree
from ._atomic import atomic_write
from ._formats import read_regular_file
from ._structure import (
    FORMAT_VERSION,
    META_KEY,
    encode_structure,
    rebuild_structure,
    state_from_structure,
)

_WRAPPED = '__pytreeparams__'


def state_dict_of(node: Any, where: str, fetch: bool = True) -> Any:
    """Flax's state dict of any tree (NNX ``State``, boxes, namedtuples too):
    mappings keyed by their keys, sequences by ``'0'``, ``'1'``...; leaves
    checked before anything is written, and fetched to the host if ``fetch``
    (Orbax takes device arrays as they are). The walk is
    ``_structure.encode_structure``'s, the one every format makes."""
    arrays: dict[str, Any] = {}
    spec = encode_structure(node, where, arrays, fetch)
    return state_from_structure(spec, where, arrays)


def _map_header(data: bytes) -> tuple[int, int] | None:
    """``(entries, header bytes)`` of the msgpack map ``data`` starts with."""
    b = data[0]
    if 0x80 <= b <= 0x8F:
        return b & 0x0F, 1
    if b == 0xDE:
        return int.from_bytes(data[1:3], 'big'), 3
    if b == 0xDF:
        return int.from_bytes(data[1:5], 'big'), 5
    return None


def save_msgpack(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    import msgpack
    from flax import serialization

    arrays: dict[str, Any] = {}
    spec = encode_structure(tree, '', arrays)
    state = state_from_structure(spec, '', arrays)
    record = json.dumps({META_KEY: FORMAT_VERSION, 'structure': spec, **extra})
    data = serialization.msgpack_serialize(state)
    head = _map_header(data) if isinstance(state, dict) and state else None
    if head is not None:  # the record under the first key, the state's entry after it
        n, skip = head
        first = msgpack.packb(msgpack.Unpacker(io.BytesIO(data[skip:])).unpack())  # as written
        pre = msgpack.Packer().pack_map_header(n + 1) + first + msgpack.packb(record)
        data = pre + data[skip:]
    else:
        data = serialization.msgpack_serialize({_WRAPPED: record, 'tree': state})
    atomic_write(path, lambda f: f.write(data))


def _record(raw: bytes) -> str | None:
    """ptp's record: the root map's first value when its key comes again next."""
    import msgpack

    u = msgpack.Unpacker(io.BytesIO(raw), raw=False, strict_map_key=False, ext_hook=_no_ext)
    try:
        if u.read_map_header() < 2:
            return None
        key = u.unpack()
        if not 0xA0 <= raw[u.tell()] <= 0xBF and raw[u.tell()] not in (0xD9, 0xDA, 0xDB):
            return None  # not a string: a Flax file's first entry, not unpacked twice
        value = u.unpack()
        if not isinstance(value, str) or u.unpack() != key:
            return None
    except Exception:  # not a map, or truncated: msgpack_restore says so
        return None
    return value


def _no_ext(code: int, data: bytes) -> None:
    return None


def load_msgpack(path: str) -> tuple[PyTree, dict[str, Any]]:
    from flax import serialization

    raw = read_regular_file(path)
    if not raw:
        raise FormatError(f'{path!r} is not a valid msgpack checkpoint: the file is empty')
    try:
        state = serialization.msgpack_restore(raw)
    except Exception as e:
        raise FormatError(f'{path!r} is not a valid msgpack checkpoint: {e}') from e
    text = _record(raw)
    if text is None and isinstance(state, dict) and set(state) == {_WRAPPED, 'tree'}:
        text, state = state[_WRAPPED], state['tree']
    _validate_state(state, path, 0)
    extra: dict[str, Any] = {}
    if text is not None:
        try:
            extra = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise FormatError(f'{path!r}: corrupt pytreeparams record: {e!r}') from e
        if not isinstance(extra, dict):
            raise FormatError(f'{path!r}: corrupt pytreeparams record: not a JSON object')
        extra.pop(META_KEY, None)
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
