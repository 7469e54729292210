"""Hugging Face sharded safetensors checkpoints: ``model.safetensors.index.json``
beside ``model-00001-of-00003.safetensors``, as ``transformers`` and
``huggingface_hub`` write and read them.

The index is ``{"metadata": {"total_size": N, ...}, "weight_map": {name: file}}``;
each shard is a plain safetensors file (``{"format": "pt"}`` in its header). A
folder holding ``model.safetensors`` and no index is the one-shard case. Shards
are memory-mapped and validated from their headers, so ``select=`` opens only
the shards that hold what it selects, and a ``like`` of sharded (global) arrays
reads only the slices the calling process's devices hold. Writing follows
``huggingface_hub.split_torch_state_dict_into_shards``: tensors in order, a new
shard when the next tensor would pass ``max_shard_size``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import PureWindowsPath
from typing import Any

import jax
import numpy as np

from .._errors import FormatError
from .._flatten import flatten_with_paths
from .._keys import jax_changes_dtype, unbox
from .._patterns import map_with_path, match_flags
from .._typing import PyTree
from ._atomic import atomic_write, atomic_write_path
from ._formats import SHARD_INDEX, format_of
from ._safetensors import ST_SUPPORTED, nest_names, own_copy, read_safetensors
from ._safetensors import read_state_dict as read_file_state_dict
from ._structure import FORMAT_VERSION, META_KEY, decode_structure, encode_structure

SINGLE_FILE = 'model.safetensors'
DEFAULT_INDEX = 'model' + SHARD_INDEX
DEFAULT_SHARD_SIZE = '5GB'  # huggingface_hub's and transformers' default
_MAX_INDEX_BYTES = 10 * 2**20  # huggingface_hub refuses larger index files too
_UNITS = {'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12}
_UNITS.update({'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40})


def shard_size(size: int | str) -> int:
    """Bytes from ``max_shard_size``: an int, or ``'5GB'``/``'500MB'`` (powers of
    1000, as huggingface_hub) or ``'2GiB'`` (powers of 1024)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B)\s*', str(size), re.IGNORECASE)
    if isinstance(size, str) and m and float(m[1]) > 0:
        return int(float(m[1]) * _UNITS[m[2].upper()])
    raise ValueError(
        f'max_shard_size={size!r}: give a positive number of bytes or a size such as '
        "'5GB', '500MB' or '2GiB'"
    )


def writes_shards(path: str, fmt: str, max_shard_size: int | str | None) -> bool:
    """Whether ``save`` writes a sharded checkpoint: to an index path or a Hugging
    Face folder, or to a new folder with ``max_shard_size``."""
    if max_shard_size is None:
        return fmt == 'shards'
    shard_size(max_shard_size)
    if fmt not in ('shards', 'orbax'):
        raise ValueError(
            f'save: max_shard_size is for sharded safetensors checkpoints; {path!r} is a '
            f'{fmt} file. Give a folder or a {DEFAULT_INDEX!r} path'
        )
    return True


def _locate(path: str) -> tuple[str, str]:
    """``(folder, file)``: the index of a sharded checkpoint, or its one file
    (``model.safetensors``, or a folder's only ``.safetensors`` file, as
    huggingface_hub's ``load_torch_model`` takes it)."""
    if path.lower().endswith(SHARD_INDEX):
        return os.path.dirname(path) or '.', os.path.basename(path)
    names = os.listdir(path)
    if SINGLE_FILE in names:  # transformers looks for the single file first
        return path, SINGLE_FILE
    indexes = sorted(n for n in names if n.endswith(SHARD_INDEX))
    if DEFAULT_INDEX in indexes or len(indexes) == 1:
        return path, DEFAULT_INDEX if DEFAULT_INDEX in indexes else indexes[0]
    files = sorted(n for n in names if n.endswith('.safetensors'))
    if not indexes and len(files) == 1:
        return path, files[0]
    raise FormatError(
        f'{path!r} holds {len(indexes)} safetensors indexes and {len(files)} .safetensors '
        f'files ({", ".join(indexes + files)}); give the path of the one to read'
    )


def _bad_shard_name(name: Any) -> bool:
    """A shard name that is not a plain ``.safetensors`` file inside the folder
    (as huggingface_hub checks it: no drive, no root, no ``..``)."""
    if not isinstance(name, str) or not name.endswith('.safetensors'):
        return True
    p = PureWindowsPath(name)
    return bool(p.drive or p.root or '..' in p.parts)


def read_index(index_file: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``(weight_map, metadata)`` of a safetensors index, every field checked."""
    where = f'{index_file!r} is not a valid safetensors index'
    if os.path.getsize(index_file) > _MAX_INDEX_BYTES:
        raise FormatError(f'{where}: larger than {_MAX_INDEX_BYTES:,} bytes')
    try:
        with open(index_file, encoding='utf-8') as f:
            index = json.load(f)
    except (ValueError, RecursionError) as e:
        raise FormatError(f'{where}: not JSON ({e})') from e
    if not isinstance(index, dict) or not isinstance(index.get('weight_map'), dict):
        raise FormatError(f'{where}: expected a JSON object with a "weight_map" object')
    metadata = index.get('metadata', {})
    if not isinstance(metadata, dict):
        raise FormatError(f'{where}: "metadata" is not a JSON object')
    for name, shard in index['weight_map'].items():
        if _bad_shard_name(shard):
            raise FormatError(
                f'{where}: tensor {name!r} is in {shard!r}; a shard is a .safetensors file '
                'in the index folder (no absolute path, no "..")'
            )
    return index['weight_map'], metadata


def _pytreeparams_meta(metadata: Mapping[str, Any], where: str) -> dict[str, Any]:
    if META_KEY not in metadata:
        return {}
    try:
        meta = json.loads(metadata[META_KEY])
    except (TypeError, ValueError, RecursionError) as e:
        raise FormatError(f'{where}: its pytreeparams metadata is not JSON: {e!r}') from e
    if not isinstance(meta, dict):
        raise FormatError(f'{where}: its pytreeparams metadata is not a JSON object')
    return meta


def shards_meta(path: str) -> dict[str, Any]:
    """What pytreeparams recorded beside the tensors (structure, ties, PRNG keys), or {}."""
    folder, name = _locate(path)
    if not name.endswith(SHARD_INDEX):
        return read_safetensors(os.path.join(folder, name))[1] or {}
    return _pytreeparams_meta(read_index(os.path.join(folder, name))[1], repr(path))


def _open(path: str, select: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any], set[str]]:
    """``({name: memory-mapped tensor}, meta, unopened)``; with ``select``, only
    the shards holding a tensor it matches are opened (``unopened``: the names
    in the others)."""
    folder, name = _locate(path)
    if not name.endswith(SHARD_INDEX):
        single, recorded = read_safetensors(os.path.join(folder, name))
        return single, recorded or {}, set()
    index_file = os.path.join(folder, name)
    weight_map, metadata = read_index(index_file)
    meta = _pytreeparams_meta(metadata, repr(index_file))
    wanted = _selected_names(list(weight_map), meta, select)
    files = sorted({f for n, f in weight_map.items() if wanted is None or n in wanted})
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        shard = os.path.join(folder, file)
        if not os.path.isfile(shard):
            raise FormatError(f'{index_file!r} names the shard {file!r}, which is missing')
        held, _ = read_safetensors(shard)
        for n in held:
            if weight_map.get(n) != file:
                raise FormatError(
                    f'{shard!r} holds the tensor {n!r}, which {index_file!r} '
                    + (f'puts in {weight_map[n]!r}' if n in weight_map else 'does not name')
                )
        lost = [n for n, f in weight_map.items() if f == file and n not in held]
        if lost:
            raise FormatError(f'{index_file!r} puts {lost[0]!r} in {file!r}, which lacks it')
        arrays.update(held)
    return arrays, meta, {n for n, f in weight_map.items() if f not in files}


def read_state_dict(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` of a safetensors, ``.npz`` or sharded checkpoint.

    This is the PyTorch route: ``ptp.from_torch_state_dict(path, like=v)``
    reads the file's dotted names (``'0.weight'``) without nesting them. A
    sharded Hugging Face checkpoint (its ``model.safetensors.index.json``, or
    the folder holding it) gives the tensors of every shard.

    Args:
      path: A ``.safetensors`` or ``.npz`` file, a ``*.safetensors.index.json``,
        or a Hugging Face model folder.
      mmap: Return read-only views of the memory-mapped safetensors files
        (zero-copy; they follow a file rewritten in place, and touching them
        after it was truncated kills the process with ``SIGBUS``). By default
        every array is the process's own copy.

    Returns:
      ``{name: array}``, NumPy arrays.

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      FormatError: For a corrupt file or index, a pickle file (.pt/.pth/.bin:
        with how to convert it safely), or another format.

    Example:
      >>> import os, tempfile, numpy as np, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'sd.npz')
      >>> np.savez(path, **{'0.weight': np.ones((2, 3)), '0.bias': np.zeros(2)})
      >>> sorted(ptp.read_state_dict(path))
      ['0.bias', '0.weight']
    """
    path = os.fspath(path)
    if os.path.exists(path) and format_of(path) == 'shards':
        arrays = _open(path)[0]
        return arrays if mmap else {k: own_copy(v) for k, v in arrays.items()}
    return read_file_state_dict(path, mmap=mmap)


def _selected_names(names: list[str], meta: dict[str, Any], select: Any) -> set[str] | None:
    """The tensor names whose tree path ``select`` matches; None (all) without
    ``select`` or when it matches none (``load`` then names the nearest paths)."""
    if select is None:
        return None
    paths = tuple(n if meta or '/' in n else n.replace('.', '/') for n in names)
    chosen = {n for n, hit in zip(names, match_flags(paths, select)) if hit}
    return chosen or None


def _placeholders(spec: Any, path: str, arrays: dict[str, Any], unopened: set[str]) -> None:
    """Stands in for the tensors of unopened shards: zero-strided uint32 arrays of
    their recorded shape (no memory; uint32 so that PRNG key data still wraps);
    ``load`` drops them with everything ``select`` does not match."""
    t = spec.get('t') if isinstance(spec, dict) else None
    if t == 'array' and path in unopened:
        arrays[path] = np.broadcast_to(np.zeros((), np.uint32), tuple(spec.get('s', ())))
    for k, child in spec.get('k', ()) if t in ('dict', 'frozen') else ():
        _placeholders(child, f'{path}/{k}' if path else str(k), arrays, unopened)
    for i, child in enumerate(spec.get('c', ())) if t in ('list', 'tuple') else ():
        _placeholders(child, f'{path}/{i}' if path else str(i), arrays, unopened)


def read_slice(tensor: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    """One device's slice of a memory-mapped tensor, copied out of the file."""
    return np.array(tensor[index])


def place(tensor: np.ndarray, target: Any, cast: bool) -> Any:
    """``tensor`` as a ``jax.Array`` with ``target``'s sharding, built from the
    slices this process's devices hold, each distinct slice read once; the
    tensor itself when it does not fit ``target`` (``load`` then says why)."""
    sharding = getattr(target, 'sharding', None)
    dtype = np.dtype(target.dtype) if hasattr(target, 'dtype') else None
    if (
        not isinstance(sharding, jax.sharding.Sharding)
        or isinstance(target, jax.core.Tracer)
        or dtype is None
        or jax_changes_dtype(dtype)  # 64-bit without x64: left to load (it keeps NumPy)
        or not isinstance(tensor, np.ndarray)
        or tuple(target.shape) != tensor.shape
        or (dtype != tensor.dtype and not cast)
    ):
        return tensor
    read: dict[tuple[Any, ...], np.ndarray] = {}
    buffers = []
    for device, index in sharding.addressable_devices_indices_map(tensor.shape).items():
        index = tuple(index or ())  # a slice per dimension
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in read:
            read[key] = read_slice(tensor, index).astype(dtype, copy=False)
        buffers.append(jax.device_put(read[key], device))
    return jax.make_array_from_single_device_arrays(tensor.shape, sharding, buffers)


def load_shards(path: str, like: PyTree | None, cast: bool, select: Any) -> PyTree:
    """The tree of a sharded checkpoint (``load``'s route for it): memory-mapped
    tensors, or with ``like``, arrays placed with its shardings slice by slice."""
    arrays, meta, unopened = _open(path, select)
    if not meta:  # written by another program: nest by '/' or '.'
        tree = nest_names(arrays, path)
    else:
        arrays = dict(arrays)
        if unopened:
            _placeholders(meta.get('structure'), '', arrays, unopened)
        try:
            tree = decode_structure(meta['structure'], '', arrays)
        except FormatError as e:
            raise FormatError(f'{path!r}: {e}') from e
        except (KeyError, TypeError, ValueError, RecursionError, AttributeError) as e:
            raise FormatError(f'{path!r}: its structure metadata is corrupt ({e!r})') from e
    return tree if like is None else place_like(tree, like, cast)


def place_like(tree: PyTree, like: PyTree, cast: bool) -> PyTree:
    """``tree`` with each memory-mapped tensor at a path of ``like`` :func:`place`-d
    with that leaf's sharding (this process's slices only); the rest as it is. The
    route of ``like=`` for sharded checkpoints and single safetensors files alike."""
    leaves, _, paths = flatten_with_paths(like)
    targets = {p: unbox(x) for p, x in zip(paths, leaves)}
    return map_with_path(tree, lambda p, x: place(x, targets[p], cast) if p in targets else x)


def _split(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """huggingface_hub's rule: tensors in order; a tensor above ``limit`` alone; a
    new shard when the next tensor would pass ``limit``."""
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name, size in sizes.items():
        if size > limit:
            shards.append([name])
            continue
        if used + size > limit:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current or not shards:
        shards.append(current)
    return shards


def _remove_stale(folder: str, stem: str, written: set[str]) -> None:
    """Removes the shards and index of an earlier save that this one did not
    rewrite (huggingface_hub's pattern), so that no stale file is read."""
    stale = re.compile(re.escape(stem) + r'(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?')
    for f in os.listdir(folder):
        if stale.fullmatch(f) and f not in written:
            os.remove(os.path.join(folder, f))


def save_shards(
    path: str, tree: PyTree, extra: dict[str, Any], max_shard_size: int | str | None
) -> None:
    """Writes ``tree`` as a Hugging Face checkpoint: ``path`` is a folder (one shard:
    ``model.safetensors`` alone) or an index file (always written)."""
    from safetensors.numpy import save_file

    limit = shard_size(DEFAULT_SHARD_SIZE if max_shard_size is None else max_shard_size)
    is_index = path.lower().endswith(SHARD_INDEX)
    folder, index_name = path, DEFAULT_INDEX
    if is_index:
        folder, index_name = os.path.dirname(path) or '.', os.path.basename(path)
    if not is_index and not os.path.isdir(folder):
        os.mkdir(folder)  # FileNotFoundError when its parent is missing, as for a file
    stem = index_name[: -len(SHARD_INDEX)]
    arrays: dict[str, np.ndarray] = {}
    spec = encode_structure(tree, '', arrays)
    for p, arr in arrays.items():  # checked before anything is written
        if arr.dtype.name not in ST_SUPPORTED:
            raise ValueError(
                f'save: {p!r} has dtype {arr.dtype.name}, which safetensors cannot hold '
                f'(supported: {", ".join(sorted(ST_SUPPORTED))}); nothing was written'
            )
    meta = json.dumps({'version': FORMAT_VERSION, 'structure': spec, **extra})
    flat_torch = isinstance(tree, Mapping) and all(
        isinstance(k, str) and '/' not in k and hasattr(v, 'shape') for k, v in tree.items()
    )
    header = {'format': 'pt' if flat_torch else 'flax'}
    shards = _split({p: a.nbytes for p, a in arrays.items()}, limit)
    if len(shards) == 1 and not is_index:
        written = {stem + '.safetensors'}
        target = os.path.join(folder, stem + '.safetensors')
        single = {**header, META_KEY: meta}  # as save_safetensors writes one file
        atomic_write_path(target, lambda tmp: save_file(arrays, tmp, metadata=single))
        return _remove_stale(folder, stem, written)
    weight_map = {}
    for i, names in enumerate(shards):
        file = f'{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        part = {n: arrays[n] for n in names}

        def write(tmp: str, part: dict[str, np.ndarray] = part) -> None:
            save_file(part, tmp, metadata=header)

        atomic_write_path(os.path.join(folder, file), write)
        weight_map.update(dict.fromkeys(names, file))
    total = sum(a.nbytes for a in arrays.values())
    index = {'metadata': {'total_size': total, META_KEY: meta}, 'weight_map': weight_map}
    text = json.dumps(index, indent=2, sort_keys=True) + '\n'  # as transformers writes it
    atomic_write(os.path.join(folder, index_name), lambda f: f.write(text.encode()))
    _remove_stale(folder, stem, {index_name, *weight_map.values()})
