"""Saving and loading parameter trees: safetensors, Flax msgpack, Orbax.

The format follows the path: ``*.safetensors`` (recommended: readable by
PyTorch and every safetensors reader), ``*.msgpack`` (``flax.serialization``)
or a directory (an Orbax checkpoint, for sharded and multi-host trees).
Nothing is ever loaded with pickle. Writes are atomic: a temporary file in
the same directory, flushed and fsynced, then renamed over the target.

Every format stores the same things: the arrays (PRNG keys as their key data,
with the implementation recorded), Python scalars, and the tree's containers
(recorded as JSON beside the arrays), so that ``load`` without ``like`` gives
the same tree from each.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from ._errors import FormatError, StructureError
from ._flatten import children, flatten, flatten_with_paths, unflatten
from ._keys import describe, is_key_dtype, unbox
from ._paths import get
from ._paths import set as set_path
from ._patterns import map_with_path
from ._tying import Ties, tie, untie
from ._typing import PyTree

__all__ = ['load', 'save']

_META_KEY = 'pytreeparams'
_FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024

_ST_DTYPES = {
    'F64': 'float64',
    'F32': 'float32',
    'F16': 'float16',
    'BF16': 'bfloat16',
    'I64': 'int64',
    'I32': 'int32',
    'I16': 'int16',
    'I8': 'int8',
    'U64': 'uint64',
    'U32': 'uint32',
    'U16': 'uint16',
    'U8': 'uint8',
    'BOOL': 'bool',
    'F8_E4M3': 'float8_e4m3fn',
    'F8_E5M2': 'float8_e5m2',
}
_ST_SUPPORTED = set(_ST_DTYPES.values())


def _format_of(path: str) -> str:
    p = os.fspath(path)
    low = p.lower()
    if low.endswith('.safetensors'):
        return 'safetensors'
    if low.endswith('.msgpack'):
        return 'msgpack'
    if low.endswith('.npz'):
        return 'npz'
    if low.endswith(_PICKLE_SUFFIXES):
        raise FormatError(_PICKLE_MESSAGE.format(path=p))
    if p.endswith(os.sep) or os.path.isdir(p) or not os.path.splitext(p)[1]:
        return 'orbax'
    raise ValueError(
        f'cannot tell the format of {p!r}: use a .safetensors or .msgpack file, '
        'or a directory (no suffix) for an Orbax checkpoint'
    )


_PICKLE_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt', '.pkl', '.pickle')
_PICKLE_MESSAGE = (
    '{path!r} is a pickle file (PyTorch .pt/.pth/.bin): it is not read, as unpickling can run '
    'code. Convert it once where you trust it: in PyTorch, `from safetensors.torch import '
    "save_model; save_model(model, 'model.safetensors')` (or `save_file(state_dict, ...)`), "
    'then load the .safetensors file'
)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` of a ``.safetensors`` or ``.npz`` file, names as stored.

    This is the PyTorch route: ``ptp.from_torch_state_dict(path, like=v)``
    reads the file's dotted names (``'0.weight'``) without nesting them.

    Args:
      path: A ``.safetensors`` or ``.npz`` file.

    Returns:
      ``{name: array}``, NumPy arrays (zero-copy views for safetensors).

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      FormatError: For a corrupt file, a pickle file (.pt/.pth/.bin: with how
        to convert it safely), or another format.

    Example:
      >>> import os, tempfile, numpy as np, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'sd.npz')
      >>> np.savez(path, **{'0.weight': np.ones((2, 3)), '0.bias': np.zeros(2)})
      >>> sorted(ptp.read_state_dict(path))
      ['0.bias', '0.weight']
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'no such file: {path!r}')
    fmt = _format_of(path)
    if fmt == 'safetensors':
        return _read_safetensors(path)[0]
    if fmt == 'npz':
        return _read_npz(path)
    raise FormatError(f'{path!r}: a state dict is read from a .safetensors or .npz file')


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickles
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise FormatError(f'{path!r} is not a readable .npz file (without pickle): {e}') from e


def _nest_names(arrays: dict[str, np.ndarray], path: str) -> PyTree:
    """Foreign tensor names nested by '/' (or '.' when a name has no '/')."""
    flat: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for k, v in arrays.items():
        p = k.replace('.', '/') if '/' not in k else k
        if not all(p.split('/')):
            raise FormatError(
                f'{path!r}: the tensor name {k!r} has an empty part; it cannot be placed in '
                'a tree (read it with ptp.read_state_dict)'
            )
        if p in origin:
            raise FormatError(
                f'{path!r}: the tensors {origin[p]!r} and {k!r} both name {p!r}; '
                'they cannot be placed in one tree'
            )
        flat[p], origin[p] = v, k
    for p in flat:
        cut = p.rsplit('/', 1)[0] if '/' in p else None
        while cut:
            if cut in flat:
                raise FormatError(
                    f'{path!r}: the tensor {origin[cut]!r} is also a prefix of '
                    f'{origin[p]!r}; they cannot be placed in one tree'
                )
            cut = cut.rsplit('/', 1)[0] if '/' in cut else None
    return unflatten(flat)


def _np_dtype(name: str) -> np.dtype:
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(name))


# --------------------------------------------------------------------------
# Atomic writes.


def atomic_write_path(path: str, write: Callable[[str], None]) -> None:
    """Writes a file atomically through a writer that takes a file name.

    The content goes to a temporary file in the target's folder, is fsynced,
    then renamed over ``path`` (and the folder fsynced), so a failure midway
    (an exception, a full disk, a killed process) leaves the previous file
    as it was.

    Args:
      path: The target file.
      write: Called with the temporary file's name; it writes the content.

    Raises:
      Whatever ``write`` raises; the temporary file is then removed.
    """
    path = os.path.realpath(path)  # through a symlink to its target, the link kept
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'save: the folder {folder!r} does not exist; create it first')
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Writes a file atomically (see :func:`atomic_write_path`).

    Args:
      path: The target file; replaced only once the new content is on disk.
      write: Called with the open binary temporary file.

    Raises:
      Whatever ``write`` raises; the previous file is then left untouched.
    """

    def through(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            write(f)

    atomic_write_path(path, through)


# --------------------------------------------------------------------------
# Structure encoding (kept in the safetensors metadata).


def _encode(node: Any, path: str, arrays: dict[str, np.ndarray] | None) -> Any:
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
            items.append([k if isinstance(k, str) else int(k), _encode(v, child, arrays)])
        return {'t': kind, 'k': items}
    if isinstance(node, (list, tuple)) and not hasattr(node, '_fields'):
        kind = 'list' if isinstance(node, list) else 'tuple'
        return {
            't': kind,
            'c': [
                _encode(v, f'{path}/{i}' if path else str(i), arrays) for i, v in enumerate(node)
            ],
        }
    if hasattr(node, 'shape') and hasattr(node, 'dtype'):
        if isinstance(node, jax.ShapeDtypeStruct):
            raise ValueError(f'save: {path!r} is abstract ({describe(node)}); save concrete arrays')
        if arrays is None:  # the structure only (msgpack and Orbax store the arrays)
            return {'t': 'array', 's': list(np.shape(node))}
        arr = np.asarray(jax.device_get(node))
        if arr.dtype.name not in _ST_SUPPORTED:
            raise ValueError(
                f'save: {path!r} has dtype {arr.dtype.name}, which safetensors cannot hold '
                f'(supported: {", ".join(sorted(_ST_SUPPORTED))}); nothing was written'
            )
        arrays[path] = np.ascontiguousarray(arr)
        return {'t': 'array', 's': list(arr.shape)}
    kids = children(node)
    if kids is None:
        raise ValueError(
            f'save: {path!r} holds a {type(node).__name__}, which safetensors cannot hold'
        )
    items = [
        [k, _encode(v, f'{path}/{k}' if path else k, arrays)] for k, v in zip(kids[0], kids[1])
    ]
    return {'t': 'dict', 'k': items, 'was': type(node).__name__}


def _decode(spec: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
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
            out[k] = _decode(v, f'{path}/{k}' if path else str(k), arrays)
        return FrozenDict(out) if t == 'frozen' else out
    if t in ('list', 'tuple'):
        items = [
            _decode(v, f'{path}/{i}' if path else str(i), arrays) for i, v in enumerate(spec['c'])
        ]
        return items if t == 'list' else tuple(items)
    raise FormatError(f'unknown node kind {t!r} in the structure metadata')


def _rebuild(state: PyTree, spec: Any, path: str) -> PyTree:
    """The saved containers around a msgpack or Orbax state dict (its leaves by
    path), from the structure recorded beside it."""
    flat = dict(flatten(state))
    try:
        tree = _decode(spec, '', flat)
    except FormatError as e:
        raise FormatError(f'{path!r}: {e}') from e
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError, IndexError) as e:
        raise FormatError(f'{path!r}: its structure metadata is corrupt ({e!r})') from e
    if flat:
        raise FormatError(
            f'{path!r}: its structure metadata does not name {len(flat)} stored entries '
            f'({", ".join(repr(k) for k in list(flat)[:12])})'
        )
    return tree


# --------------------------------------------------------------------------
# safetensors.


def _save_safetensors(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    arrays: dict[str, np.ndarray] = {}
    spec = _encode(tree, '', arrays)
    meta = {'version': _FORMAT_VERSION, 'structure': spec, **extra}
    # Hugging Face loaders read only files that say their layout: a flat mapping of
    # dotted names (``to_torch_state_dict``) is PyTorch's, anything else Flax's
    flat_torch = isinstance(tree, Mapping) and all(
        isinstance(k, str) and '/' not in k and hasattr(v, 'shape') for k, v in tree.items()
    )
    header = {'format': 'pt' if flat_torch else 'flax', _META_KEY: json.dumps(meta)}
    atomic_write_path(path, lambda tmp: save_file(arrays, tmp, metadata=header))


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Reads and validates a safetensors file; arrays are views of one buffer.

    The checks follow the format's specification (as the reference reader
    does): header length within the file, a JSON object header, known dtypes,
    offsets in bounds, sizes equal to dtype size x element count, and tensors
    covering the data region without gaps or overlaps. We parse it here
    because ``safetensors.numpy`` cannot load bfloat16 and
    ``safetensors.deserialize`` copies every tensor.
    """
    with open(path, 'rb') as f:
        raw = f.read()
    where = f'{path!r} is not a valid safetensors file'
    if len(raw) < 8:
        raise FormatError(f'{where}: {len(raw)} bytes, shorter than the 8-byte header length')
    n = int.from_bytes(raw[:8], 'little')
    if n > len(raw) - 8 or n > _MAX_HEADER:
        raise FormatError(
            f'{where}: the header claims {n:,} bytes but the file has {len(raw) - 8:,} after it'
        )
    try:
        header = json.loads(raw[8 : 8 + n])
    except (ValueError, RecursionError) as e:
        raise FormatError(f'{where}: the header is not JSON ({e!r})') from e
    if not isinstance(header, dict):
        raise FormatError(f'{where}: the header is not a JSON object')
    base = 8 + n
    data_len = len(raw) - base
    spans = []
    arrays: dict[str, np.ndarray] = {}
    buf = memoryview(raw)
    for name, info in header.items():
        if name == '__metadata__':
            continue
        dtype, shape, (begin, end) = _entry(info, name, where)
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_len:
            raise FormatError(
                f'{where}: tensor {name!r} has offsets {begin}..{end} outside the data'
            )
        np_dtype = _np_dtype(dtype)
        count = int(np.prod(shape, dtype=object)) if shape else 1
        if count * np_dtype.itemsize != end - begin:
            raise FormatError(
                f'{where}: tensor {name!r} of {dtype}{shape} needs {count * np_dtype.itemsize} '
                f'bytes, the file gives {end - begin}'
            )
        try:
            arrays[name] = np.frombuffer(buf[base + begin : base + end], np_dtype).reshape(shape)
        except ValueError as e:  # e.g. a dimension NumPy cannot index
            raise FormatError(f'{where}: tensor {name!r} has shape {shape} ({e})') from e
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise FormatError(f'{where}: the tensors do not cover the data region contiguously')
        pos = end
    if pos != data_len:
        raise FormatError(f'{where}: {data_len - pos} bytes after the last tensor')
    meta = None
    md = header.get('__metadata__')
    if isinstance(md, dict) and _META_KEY in md:
        try:
            meta = json.loads(md[_META_KEY])
        except (TypeError, ValueError, RecursionError) as e:
            raise FormatError(f'{where}: its pytreeparams metadata is not JSON: {e!r}') from e
        if not isinstance(meta, dict):
            raise FormatError(f'{where}: its pytreeparams metadata is not a JSON object')
    return arrays, meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(info: Any, name: str, where: str) -> tuple[str, list[int], tuple[int, int]]:
    """(dtype, shape, offsets) of one header entry, every field checked: JSON
    integers only (not 1.5, "1", true or Infinity), at most 32 dimensions."""
    bad = f'{where}: bad entry for tensor {name!r}'
    if not isinstance(info, dict):
        raise FormatError(f'{bad} (not a JSON object)')
    dtype, shape, offsets = info.get('dtype'), info.get('shape'), info.get('data_offsets')
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise FormatError(f'{bad} (unknown dtype {dtype!r})')
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(f'{bad} (the shape {shape!r} is not a list of non-negative integers)')
    if len(shape) > 32:
        raise FormatError(f'{bad} ({len(shape)} dimensions; at most 32 are read)')
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise FormatError(f'{bad} (data_offsets {offsets!r} are not two integers)')
    return _ST_DTYPES[dtype], shape, (offsets[0], offsets[1])


def _load_safetensors(path: str) -> tuple[PyTree, dict[str, Any]]:
    arrays, meta = _read_safetensors(path)
    if meta is None:  # written by another program: nest by '/' or '.'
        return _nest_names(arrays, path), {}
    try:
        tree = _decode(meta['structure'], '', dict(arrays))
    except FormatError as e:
        raise FormatError(f'{path!r}: {e}') from e
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError, IndexError) as e:
        raise FormatError(f'{path!r}: its structure metadata is corrupt ({e!r})') from e
    return tree, meta


# --------------------------------------------------------------------------
# msgpack.


def _msgpack_state(node: Any, where: str, fetch: bool = True) -> Any:
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
            str(k): _msgpack_state(v, f'{where}/{k}' if where else str(k), fetch)
            for k, v in node.items()
        }
    if isinstance(node, (list, tuple)) and not hasattr(node, '_fields'):
        return {
            str(i): _msgpack_state(v, f'{where}/{i}' if where else str(i), fetch)
            for i, v in enumerate(node)
        }
    kids = children(node)
    if kids is None:
        raise ValueError(
            f'save: {where or "the root"!r} holds a {type(node).__name__}, which a msgpack '
            'checkpoint cannot hold (arrays, numbers, strings and containers); nothing was written'
        )
    return {
        k: _msgpack_state(v, f'{where}/{k}' if where else k, fetch)
        for k, v in zip(kids[0], kids[1])
    }


def _save_msgpack(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    from flax import serialization

    state = _msgpack_state(tree, '')
    extra = {'structure': _encode(tree, '', None), **extra}
    state = {'__pytreeparams__': json.dumps(extra), 'tree': state}
    data = serialization.msgpack_serialize(state)
    atomic_write(path, lambda f: f.write(data))


def _load_msgpack(path: str) -> tuple[PyTree, dict[str, Any]]:
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
            state = _rebuild(state, extra['structure'], path)
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
            _validate_state(v, path, depth + 1)
    elif not (
        node is None or isinstance(node, (np.ndarray, np.generic, bool, int, float, str, bytes))
    ):
        raise FormatError(
            f'{path!r} is not a valid msgpack checkpoint: it holds a {type(node).__name__}'
        )


# --------------------------------------------------------------------------
# Orbax.


def _save_orbax(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    for p, x in flatten(tree).items():
        if not (hasattr(x, 'dtype') or isinstance(x, (bool, int, float))):
            raise ValueError(
                f'save: {p!r} holds a {type(x).__name__}, which an Orbax checkpoint cannot '
                'hold (arrays and numbers only); nothing was written'
            )
        if hasattr(x, 'dtype') and math.prod(np.shape(x)) == 0:
            raise ValueError(
                f'save: {p!r} is an empty array ({describe(x)}), which an Orbax checkpoint '
                'cannot hold; use a .safetensors or .msgpack file; nothing was written'
            )
    path = os.path.realpath(path.rstrip(os.sep))
    parent = os.path.dirname(path)
    if os.path.lexists(path) and not _is_checkpoint(path):
        kind = 'a folder that is not a checkpoint' if os.path.isdir(path) else 'a file'
        raise FileExistsError(
            f'save: {path!r} exists and is {kind}; an Orbax save replaces only an existing '
            'checkpoint. Choose another path, or remove it first if it may go; nothing was written'
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(f'save: the folder {parent!r} does not exist; create it first')
    # The new checkpoint is written by Orbax's own atomic finalization (its
    # '.orbax-checkpoint-tmp' folder renamed into place) under a fresh name beside
    # `path`. It is then moved over the old one: POSIX cannot rename a folder onto a
    # non-empty one, and Orbax's force=True removes the old checkpoint *before* it
    # writes (a failed save would lose it), so the old one is moved aside first and
    # moved back if the second rename fails.
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.', dir=parent)
    os.rmdir(tmp)  # orbax creates it
    backup = None
    try:
        with ocp.StandardCheckpointer() as ckptr:
            # Flax's state dict (as in msgpack): the same layout whatever the tree's
            # containers; the containers themselves are recorded in pytreeparams.json
            ckptr.save(tmp, _msgpack_state(tree, '', fetch=False))
            ckptr.wait_until_finished()
        with open(os.path.join(tmp, 'pytreeparams.json'), 'w') as f:
            json.dump(
                {'version': _FORMAT_VERSION, 'structure': _encode(tree, '', None), **extra}, f
            )
        if os.path.exists(path):
            backup = path + '.old-' + os.path.basename(tmp)
            os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            if backup is not None:  # put the previous checkpoint back where it was
                os.replace(backup, path)
                backup = None
            raise
    except BaseException:
        _remove_leftovers(parent, os.path.basename(tmp))
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _is_checkpoint(path: str) -> bool:
    """Whether ``path`` is an Orbax checkpoint folder (a save may replace it)."""
    names = ('_METADATA', '_CHECKPOINT_METADATA', 'pytreeparams.json', '_sharding')
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in names)


def _remove_leftovers(parent: str, stem: str) -> None:
    """Removes a failed save's temporary folders (ours and Orbax's)."""
    for name in os.listdir(parent):
        if name == stem or name.startswith(stem + '.orbax-checkpoint-tmp'):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _orbax_meta(path: str) -> dict[str, Any]:
    meta_file = os.path.join(os.path.abspath(path.rstrip(os.sep)), 'pytreeparams.json')
    if not os.path.exists(meta_file):
        return {}
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except (ValueError, RecursionError) as e:
        raise FormatError(f'{path!r}: corrupt pytreeparams.json: {e!r}') from e
    if not isinstance(meta, dict):
        raise FormatError(f'{path!r}: corrupt pytreeparams.json: not a JSON object')
    return meta


def _orbax_arrays(ckptr: Any, path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{path: (shape, dtype)}`` of the arrays in an Orbax checkpoint (its metadata)."""
    meta = ckptr.metadata(path)
    tree = getattr(meta, 'tree', None)
    if tree is None:
        tree = getattr(getattr(meta, 'item_metadata', None), 'tree', meta)
    out = {}
    for p, m in flatten(tree).items():
        dtype = getattr(m, 'dtype', None)
        if dtype is not None:
            out[p] = (tuple(getattr(m, 'shape', ())), np.dtype(dtype))
    return out


def _load_orbax(path: str, like: PyTree, cast: bool = False, spec: Any = None) -> PyTree:
    import orbax.checkpoint as ocp

    path = os.path.abspath(path.rstrip(os.sep))
    if like is not None:
        try:
            with ocp.StandardCheckpointer() as ckptr:
                stored = _orbax_arrays(ckptr, path)
        except Exception as e:
            raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
        want = {p: x for p, x in flatten(like).items() if hasattr(x, 'dtype')}
        missing = [p for p in want if p not in stored]
        unexpected = [p for p in stored if p not in want]
        bad = [
            f'{p!r} (expected {describe(x)}, file has {stored[p][1].name}{list(stored[p][0])})'
            for p, x in want.items()
            if p in stored
            and (
                tuple(np.shape(x)) != stored[p][0]
                or (not cast and np.dtype(x.dtype) != stored[p][1])
            )
        ]
        if missing or unexpected or bad:
            dtype_only = all(tuple(np.shape(want[p])) == stored[p][0] for p in want if p in stored)
            raise _like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=False)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            if like is None:
                tree = ckptr.restore(path)
            else:
                # the target in the stored layout (a state dict by path); load()
                # then puts the arrays into like's containers
                target = unflatten(
                    {
                        p: (
                            x
                            if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, 'dtype')
                            else jax.ShapeDtypeStruct(
                                np.shape(x), x.dtype, sharding=getattr(x, 'sharding', None)
                            )
                        )
                        for p, x in flatten(like).items()
                    }
                )
                tree = ckptr.restore(path, target)
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
    if like is None and spec is not None:
        tree = _rebuild(tree, spec, path)
    return tree


# --------------------------------------------------------------------------
# Public API.


def save(path: str | os.PathLike[str], tree: PyTree, *, ties: Any = None) -> None:
    """Saves ``tree``; the format follows the path (see the module docstring).

    Args:
      path: ``*.safetensors``, ``*.msgpack`` or a directory (Orbax).
      tree: The tree to save (arrays are fetched to the host for single files).
      ties: Optional ``ptp.Ties``: each shared array is stored once and the ties
        are recorded, so :func:`load` gives the tied tree back.

    Returns:
      None; the file (or directory) is in place when it returns.

    Raises:
      ValueError: If a leaf cannot be stored in the format (e.g. complex in
        safetensors), before anything is written.
      StructureError: If an alias of ``ties`` differs from its source.
      FileExistsError: For an Orbax save onto a file, or onto a folder that is
        not an Orbax checkpoint (an existing checkpoint is replaced; after a
        failure midway the previous one loads as before).
      FileNotFoundError: If the target's folder does not exist.

    A path that is a symlink is written through: its target gets the new
    content (atomically), the link stays.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'params.safetensors')
      >>> ptp.save(path, {'dense': {'kernel': jnp.ones((2, 3))}, 'step': 7})
      >>> ptp.load(path)['step']
      7
    """
    path = os.fspath(path)
    fmt = _format_of(path)
    if fmt == 'npz':
        raise ValueError(
            f'save: {path!r}: saves go to .safetensors, .msgpack or an Orbax folder '
            '(.npz is read only)'
        )
    _check_names(tree)  # every name must come back as it went in: checked before writing
    extra: dict[str, Any] = {}
    if ties is not None:
        extra['ties'] = ties.to_json()
        tree = untie(tree, ties)
    tree, keys = _keys_to_data(tree)
    if keys:
        extra['prng_keys'] = keys
    if fmt == 'safetensors':
        _save_safetensors(path, tree, extra)
    elif fmt == 'msgpack':
        _save_msgpack(path, tree, extra)
    else:
        _save_orbax(path, tree, extra)


def _keys_to_data(tree: PyTree) -> tuple[PyTree, dict[str, str]]:
    """PRNG key leaves replaced by their key data (uint32), and each key's
    implementation by path (``{'rng': 'threefry2x32'}``), recorded in the file."""
    impls: dict[str, str] = {}

    def to_data(p: str, x: Any) -> Any:
        if is_key_dtype(getattr(x, 'dtype', None)):
            impls[p] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    if not any(is_key_dtype(getattr(x, 'dtype', None)) for x in jax.tree_util.tree_leaves(tree)):
        return tree, impls
    return map_with_path(to_data, tree), impls


def _like_key_data(like: PyTree, impls: Mapping[str, str]) -> PyTree:
    """``like`` with its PRNG key leaves (at recorded paths) as key-data shapes."""

    def to_data(p: str, x: Any) -> Any:
        if p in impls and is_key_dtype(getattr(x, 'dtype', None)):
            return jax.eval_shape(jax.random.key_data, x)
        return x

    return map_with_path(to_data, like)


def _data_to_keys(tree: PyTree, impls: Any, path: str) -> PyTree:
    """The recorded key-data leaves wrapped back into PRNG keys."""
    if not isinstance(impls, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in impls.items()
    ):
        raise FormatError(f'{path!r}: its prng_keys metadata is not a {{path: impl}} object')
    for p, impl in impls.items():
        try:
            data = get(tree, p)
            tree = set_path(tree, p, jax.random.wrap_key_data(data, impl=impl), check=False)
        except Exception as e:  # a missing path, an unknown impl, data of a wrong shape
            raise FormatError(f'{path!r}: PRNG key {p!r} ({impl}) cannot be restored: {e}') from e
    return tree


def _check_names(tree: PyTree) -> None:
    """Raises before anything is written if a name would not round-trip.

    Two leaves with one path (a key ``'a/b'`` beside a nested ``a``/``b``) are
    refused by ``flatten_with_paths``; keys must be strings or ints (a float or tuple key
    has no name in a file).
    """
    flatten_with_paths(tree)  # StructureError for two leaves with the same path

    def walk(node: Any, where: str) -> None:
        node = unbox(node)
        if isinstance(node, (dict, FrozenDict)):
            for k, v in node.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise StructureError(
                        f'save: the key {k!r} at {where or "the root"!r} is a '
                        f'{type(k).__name__}; only str and int keys can be saved and loaded '
                        'back. Rename it; nothing was written'
                    )
                walk(v, f'{where}/{k}' if where else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{where}/{i}' if where else str(i))

    walk(tree, '')


def _like_mismatch(
    path: str,
    missing: list[str],
    unexpected: list[str],
    bad: list[str],
    dtype_only: bool,
    partial_hint: bool | str,
) -> StructureError:
    """The error for a file that does not match ``like`` (every format).

    ``partial_hint``: False, True (suggest ``load_into``), or ``'torch'`` for a
    file in PyTorch's layout (suggest ``from_torch_state_dict``).
    """
    parts = [
        f'{what} {len(v)}: ' + ', '.join(v[:12])
        for what, v in (
            ('missing', [repr(p) for p in missing]),
            ('unexpected', [repr(p) for p in unexpected]),
            ('mismatched', bad),
        )
        if v
    ]
    hints = ['Pass cast=True to convert to the dtypes of `like`'] if bad and dtype_only else []
    if partial_hint == 'torch':
        hints.append(
            f'The file is in PyTorch layout (dotted names): use '
            f'ptp.from_torch_state_dict({path!r}, like=like)'
        )
    elif partial_hint:
        hints.append(
            f'For a partial load use ptp.load_into(like, ptp.load({path!r}), strict=False), '
            'which returns (tree, report)'
        )
    return StructureError(
        f'load: {path!r} does not match `like`: '
        + '; '.join(parts)
        + ''.join(f'. {h}' for h in hints)
        + '.'
    )


def _check_like(
    loaded: PyTree, like: PyTree, path: str, cast: bool = False, hint: bool | str = True
) -> PyTree:
    flat = flatten(loaded)
    like_leaves, _, like_paths = flatten_with_paths(like)
    missing = [p for p in like_paths if p not in flat]
    known = set(like_paths)
    unexpected = [p for p in flat if p not in known]
    bad = []
    dtype_only = False
    for p, x in zip(like_paths, like_leaves):
        x = unbox(x)
        if p in flat and hasattr(x, 'shape'):
            y = flat[p]
            if tuple(np.shape(y)) != tuple(np.shape(x)) or (
                not cast and hasattr(y, 'dtype') and np.dtype(y.dtype) != np.dtype(x.dtype)
            ):
                bad.append(f'{p!r} (expected {describe(x)}, file has {describe(y)})')
                dtype_only = dtype_only or tuple(np.shape(y)) == tuple(np.shape(x))
    if missing or unexpected or bad:
        raise _like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=hint)
    out = {}
    for p, x in zip(like_paths, like_leaves):
        y = flat[p]
        target = unbox(x)
        if cast and hasattr(y, 'dtype') and hasattr(target, 'dtype'):
            y = y.astype(target.dtype)
        sharding = getattr(target, 'sharding', None)
        if sharding is not None and hasattr(y, 'shape'):
            y = jax.device_put(y, sharding)
        elif isinstance(target, jax.Array) and hasattr(y, 'shape'):
            y = jax.numpy.asarray(y)
        out[p] = y
    return unflatten(out, like=like)


def orbax_item(path: str, step: int | None = None) -> str:
    """The folder of the Orbax item that ``path`` names.

    ``path`` may be the item itself (it holds ``_METADATA``), a
    ``CheckpointManager`` step folder (``mgr/5``: its one item, or ``default``)
    or a manager's root (``mgr``: the latest step, or ``step``).

    Raises:
      FileNotFoundError: For a step that is not there (naming those that are).
      FormatError: For a folder that holds no Orbax checkpoint.
    """
    path = os.path.abspath(path.rstrip(os.sep))
    if os.path.exists(os.path.join(path, '_METADATA')):
        if step is not None:
            raise ValueError(f'step={step}: {path!r} is one checkpoint, not a manager folder')
        return path
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    steps = sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(path, n)))
    if steps:
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            raise FileNotFoundError(f'{path!r} has no step {step}; its steps: {steps}')
        return orbax_item(os.path.join(path, str(chosen)))
    if step is not None:
        raise FileNotFoundError(f'{path!r} has no step folders (asked for step={step})')
    items = [n for n in names if os.path.exists(os.path.join(path, n, '_METADATA'))]
    if len(items) == 1 or 'default' in items:
        return os.path.join(path, items[0] if len(items) == 1 else 'default')
    if items:
        raise FormatError(f'{path!r} holds several items {items}: name one, e.g. {path}/{items[0]}')
    raise FormatError(f'{path!r} is not an Orbax checkpoint (no _METADATA, no step folders)')


def load(
    path: str | os.PathLike[str],
    like: PyTree = None,
    *,
    cast: bool = False,
    step: int | None = None,
) -> PyTree:
    """Loads a tree saved by :func:`save` (or by another safetensors writer).

    Args:
      path: ``*.safetensors``, ``*.msgpack`` or an Orbax checkpoint directory.
      like: Optional tree (concrete, or ``jax.ShapeDtypeStruct`` leaves, with
        shardings): the result takes its structure and container types, each
        shape and dtype is checked, and arrays are placed with its shardings.
      cast: Convert each array to the dtype of ``like`` instead of raising on
        a dtype mismatch (the same rule for every format).
      step: For an Orbax ``CheckpointManager`` folder, the step to read (the
        latest by default); a step folder or a single checkpoint works too.

    Returns:
      The tree. With ``like``: ``like``'s structure, containers and boxes.
      Without ``like``, one rule for every format: dicts, FrozenDicts, lists
      and tuples come back as saved; other nodes (NNX ``State``, optax states
      and other namedtuples, dataclasses) as dicts keyed by their field names;
      boxes unboxed; Python scalars as Python scalars; PRNG keys as keys;
      arrays as NumPy arrays (jax arrays from Orbax).
      Files written by other programs: nested dicts (names split at ``/`` or
      ``.``). Tied trees come back tied.

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      FormatError: If the file is empty, truncated, corrupt or not of its
        format; never a crash or a huge allocation.
      StructureError: If it does not match ``like`` (naming every path).

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'p.msgpack')
      >>> ptp.save(path, {'w': jnp.arange(3.0)})
      >>> ptp.load(path, like={'w': jnp.zeros(3)})['w'].tolist()
      [0.0, 1.0, 2.0]
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'no such checkpoint: {path!r}')
    fmt = _format_of(path)
    if fmt == 'safetensors':
        tree, meta = _load_safetensors(path)
    elif fmt == 'msgpack':
        tree, meta = _load_msgpack(path)
    elif fmt == 'npz':
        tree, meta = _nest_names(_read_npz(path), path), {}
    else:
        path = orbax_item(path, step)
        meta = _orbax_meta(path)
    if step is not None and fmt != 'orbax':
        raise ValueError(f'step={step}: only Orbax CheckpointManager folders have steps')
    ties = None
    if meta.get('ties'):
        try:
            ties = Ties.from_json(meta['ties'])
        except (KeyError, AttributeError, TypeError, IndexError, ValueError) as e:
            raise FormatError(f'{path!r}: its ties metadata is corrupt ({e!r})') from e
        if like is not None:
            like = untie(like, ties, check=False)
    impls = meta.get('prng_keys')
    if impls and like is not None:
        like = _like_key_data(like, impls)
    if fmt == 'orbax':
        # Restored straight into like's shardings: no array is gathered.
        tree = _load_orbax(path, like, cast, meta.get('structure'))
    if like is not None:
        foreign = fmt in ('safetensors', 'npz') and (
            not meta or any('.' in p for p in flatten(tree))
        )
        tree = _check_like(tree, like, path, cast, 'torch' if foreign else True)
    if impls:
        tree = _data_to_keys(tree, impls, path)
    if ties is not None:
        try:
            tree = tie(tree, ties)
        except (KeyError, TypeError, ValueError) as e:  # PathError, StructureError too
            raise FormatError(f'{path!r}: its ties metadata does not fit its tensors ({e})') from e
    return tree
