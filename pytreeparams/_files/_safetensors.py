"""safetensors files (and pickle-free ``.npz``): written with their structure,
read with every tensor accounted for; files of other programs by name."""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import FormatError, StructureError
from .._flatten import unflatten
from .._typing import PyTree
from ._atomic import atomic_write_path
from ._formats import format_of, open_regular, regular_size
from ._structure import (
    FORMAT_VERSION,
    META_KEY,
    array_keys,
    decode_structure,
    encode_structure,
)

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
    'F8_E4M3FNUZ': 'float8_e4m3fnuz',
    'F8_E5M2FNUZ': 'float8_e5m2fnuz',
    'F8_E8M0': 'float8_e8m0fnu',
    'C64': 'complex64',
}
# F4, F6_E2M3 and F6_E3M2 pack several values in a byte: refused by name
_SUB_BYTE = ('F4', 'F6_E2M3', 'F6_E3M2')
ST_SUPPORTED = set(_ST_DTYPES.values())


def read_state_dict(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` of one ``.safetensors`` or ``.npz`` file: the
    single-file part of the public ``ptp.read_state_dict`` (``_shards``), whose
    docstring says what ``mmap`` and the errors mean."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'no such file: {path!r}')
    fmt = format_of(path)
    if fmt == 'safetensors':
        arrays = read_safetensors(path)[0]
        return arrays if mmap else {k: own_copy(v) for k, v in arrays.items()}
    if fmt == 'npz':
        return read_npz(path)
    raise FormatError(f'{path!r}: a state dict is read from a .safetensors or .npz file')


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file, each member checked before it is read:
    a zip of ``.npy`` members with distinct names, no object (pickled) data,
    and no member declaring more bytes than the file can hold."""
    import zipfile
    import zlib

    where = f'{path!r} is not a valid .npz file'
    with open_regular(path) as f:
        regular_size(path, f.fileno())
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise FormatError(f'{where}: it is not a complete zip archive ({e})') from e
        out: dict[str, np.ndarray] = {}
        with zf:
            for info in zf.infolist():
                name = info.filename
                if not name.endswith('.npy'):
                    raise FormatError(f'{where}: its member {name!r} is not a .npy array')
                if name[:-4] in out:
                    raise FormatError(f'{where}: two of its members are named {name!r}')
                try:
                    out[name[:-4]] = _npz_member(zf, info, f'{where}: its member {name!r}')
                except FormatError:
                    raise
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
                    raise FormatError(f'{where}: its member {name!r} cannot be read ({e})') from e
                except (NotImplementedError, RuntimeError) as e:  # compression, encryption
                    raise FormatError(f'{where}: its member {name!r} cannot be read ({e})') from e
    return out


# deflate expands at most ~1032 to 1: a member claiming more holds less than it says
_DEFLATE_RATIO = 1100


def _npz_member(zf: Any, info: Any, where: str) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before any allocation."""
    import zipfile

    fmt = np.lib.format
    if info.compress_type == zipfile.ZIP_STORED:
        bound = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        bound = info.compress_size * _DEFLATE_RATIO + 1024
    else:
        raise FormatError(f'{where} uses compression {info.compress_type} (stored or deflated)')
    if info.file_size > bound:
        raise FormatError(f'{where} claims {info.file_size:,} bytes from {info.compress_size:,}')
    with zf.open(info) as m:
        version = fmt.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(m)
        else:
            raise FormatError(f'{where} is .npy format {version}, not read (1.0 or 2.0)')
        if dtype.hasobject:
            raise FormatError(f'{where} holds pickled (object) data, which is never loaded')
        if any(d < 0 for d in shape):
            raise FormatError(f'{where} has the negative shape {shape}')
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise FormatError(
                f'{where} declares {dtype}{list(shape)} ({nbytes:,} bytes) but holds '
                f'{info.file_size:,} bytes'
            )
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        while got < nbytes:
            n = m.readinto(view[got:])
            if not n:
                raise FormatError(f'{where} ends after {got:,} of its {nbytes:,} bytes')
            got += n
        if m.read(1):  # and at the end the zip's CRC is checked
            raise FormatError(f'{where} holds more bytes than its {dtype}{list(shape)}')
    arr = np.frombuffer(buf, dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def nest_names(arrays: dict[str, np.ndarray], path: str) -> PyTree:
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
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name, None) or name)


def save_safetensors(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    """Writes ``tree`` in the layout its label promises: a flat mapping of names
    (``to_torch_state_dict``'s) as PyTorch's (``format: pt``), any other tree as
    Hugging Face's Flax layout (``format: flax``: keys joined by ``'.'``, as
    ``flax.traverse_util.unflatten_dict(sep='.')`` reads them). Where a key
    holds ``'.'`` that layout cannot name it: the names are then ptp's paths
    and the file carries no ``format`` label. ptp's structure record gives
    every name back exactly either way."""
    from safetensors.numpy import save_file

    arrays: dict[str, np.ndarray] = {}
    spec = encode_structure(tree, '', arrays)
    for p, arr in arrays.items():  # checked before anything is written
        if arr.dtype.name not in ST_SUPPORTED:
            raise ValueError(
                f'save: {p!r} has dtype {arr.dtype.name}, which safetensors cannot hold '
                f'(supported: {", ".join(sorted(ST_SUPPORTED))}); nothing was written'
            )
    meta = {'version': FORMAT_VERSION, 'structure': spec, **extra}
    header = {}
    flat_torch = isinstance(tree, Mapping) and all(
        isinstance(k, str) and '/' not in k and hasattr(v, 'shape') for k, v in tree.items()
    )
    keys = array_keys(spec)
    if flat_torch:
        header['format'] = 'pt'
    elif not any('.' in k for ks in keys for k in ks):
        header['format'] = 'flax'
        meta['names'] = '.'
        arrays = {'.'.join(ks): arrays['/'.join(ks)] for ks in keys}
    if '__metadata__' in arrays:
        raise StructureError(
            "save: a safetensors file cannot hold a tensor named '__metadata__' (its header "
            'keeps its metadata under that name). Rename the key or save as .msgpack; nothing '
            'was written'
        )
    header[META_KEY] = json.dumps(meta)
    atomic_write_path(path, lambda tmp: save_file(arrays, tmp, metadata=header))


_BLOCK = 8 << 20  # bytes copied between page releases


def own_copy(x: Any) -> Any:
    """A NumPy array's own copy; a view of a memory-mapped file is copied block
    by block, each block's pages of the (read-only, shared) mapping released
    once copied, so the copy does not also keep the file's pages resident.
    Anything else comes back as it is."""
    if not isinstance(x, np.ndarray):
        return x
    mm = _mapping_of(x)
    out = np.empty(x.shape, x.dtype)
    if mm is None or not x.flags.c_contiguous:
        out[...] = x
        return out
    src, dst = x.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)
    start = x.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    for i in range(0, src.size, _BLOCK):
        dst[i : i + _BLOCK] = src[i : i + _BLOCK]
        lo, hi = start + i, start + min(i + _BLOCK, src.size)
        lo -= lo % mmap.PAGESIZE  # whole pages; a page shared with a neighbour is re-read
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (AttributeError, OSError, ValueError):  # pragma: no cover - no madvise
            break
    return out


def _mapping_of(x: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` a view was made from (through its bases), if any."""
    base: Any = x
    while base is not None and not isinstance(base, memoryview):
        base = getattr(base, 'base', None)
    obj = getattr(base, 'obj', None)
    return obj if isinstance(obj, mmap.mmap) else None


def _mapped(path: str) -> Any:
    """The file's bytes, memory-mapped read-only (read at once when tiny or empty)."""
    with open_regular(path) as f:
        size = regular_size(path, f.fileno())  # a device such as /dev/zero is refused
        if size < 4096:
            return f.read(size)
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Reads and validates a safetensors file; arrays are views of one buffer.

    The checks follow the format's specification (as the reference reader
    does): header length within the file, a JSON object header, known dtypes,
    offsets in bounds, sizes equal to dtype size x element count, and tensors
    covering the data region without gaps or overlaps. We parse it here
    because ``safetensors.numpy`` cannot load bfloat16 and
    ``safetensors.deserialize`` copies every tensor. The file is memory-mapped:
    validation reads the header only, and a tensor's bytes are read when it is
    used (``load(path, select=...)`` of a big file reads what it selects).
    """
    raw = _mapped(path)
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
    if isinstance(md, dict) and META_KEY in md:
        try:
            meta = json.loads(md[META_KEY])
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
    if dtype in _SUB_BYTE:
        raise FormatError(f'{bad} (the sub-byte dtype {dtype} is not read)')
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise FormatError(f'{bad} (unknown dtype {dtype!r})')
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(f'{bad} (the shape {shape!r} is not a list of non-negative integers)')
    if len(shape) > 32:
        raise FormatError(f'{bad} ({len(shape)} dimensions; at most 32 are read)')
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise FormatError(f'{bad} (data_offsets {offsets!r} are not two integers)')
    return _ST_DTYPES[dtype], shape, (offsets[0], offsets[1])


def load_safetensors(path: str) -> tuple[PyTree, dict[str, Any]]:
    """The tree of a safetensors file; its arrays are read-only views of the
    memory-mapped file (``load`` copies them unless asked for the views)."""
    arrays, meta = read_safetensors(path)
    if meta is None:  # written by another program: nest by '/' or '.'
        return nest_names(arrays, path), {}
    try:
        spec = meta['structure']
        if meta.get('names') == '.':  # Hugging Face's Flax names: keys joined by '.'
            arrays = _by_path(arrays, array_keys(spec), path)
        tree = decode_structure(spec, '', dict(arrays))
    except FormatError as e:
        raise FormatError(f'{path!r}: {e}') from e
    except (KeyError, TypeError, ValueError, RecursionError, AttributeError, IndexError) as e:
        raise FormatError(f'{path!r}: its structure metadata is corrupt ({e!r})') from e
    return tree, meta


def _by_path(
    arrays: dict[str, np.ndarray], keys: list[tuple[str, ...]], path: str
) -> dict[str, np.ndarray]:
    """The stored arrays keyed by ptp path ('/'-joined) instead of their '.'-joined names."""
    out = {}
    for ks in keys:
        name = '.'.join(ks)
        if name not in arrays:
            raise FormatError(f'the structure names a tensor {name!r} the file does not hold')
        out['/'.join(ks)] = arrays[name]
    return out
