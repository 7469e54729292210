"""Saving and loading parameter trees: safetensors, Flax msgpack, Orbax.

The format follows the path: ``*.safetensors`` (recommended: readable by
PyTorch and every safetensors reader), ``*.msgpack`` (``flax.serialization``)
or a directory (an Orbax checkpoint, for sharded and multi-host trees).
Nothing is ever loaded with pickle. Writes are atomic (``_atomic``).

Every format stores the same things: the arrays (PRNG keys as their key data,
with the implementation recorded), Python scalars, and the tree's containers
(``_structure``), so that ``load`` without ``like`` gives the same tree from
each. The formats themselves: ``_safetensors``, ``_msgpack``, ``_orbax``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from .._errors import FormatError, PathError, StructureError
from .._flatten import flatten, flatten_with_paths, unflatten
from .._keys import describe, is_watch_path, jax_changes_dtype, unbox, watch_plan
from .._leaves import is_key_dtype
from .._messages import like_mismatch, no_match_message
from .._paths import get
from .._paths import set as set_path
from .._patterns import map_with_path, match_flags, pattern_texts
from .._tying import Ties, tie, untie
from .._typing import PyTree
from ._formats import format_of, scheme_of
from ._gather import gather_global, written_by_process_0
from ._msgpack import load_msgpack, save_msgpack
from ._orbax import (
    CheckpointChanged,
    load_orbax,
    nnx_names,
    orbax_item,
    orbax_meta,
    save_in_flight,
    save_orbax,
    stored_leaves,
)
from ._safetensors import (
    load_safetensors,
    nest_names,
    own_copy,
    read_npz,
    save_safetensors,
)
from ._shards import (
    load_shards,
    place_like,
    read_state_dict,
    save_shards,
    shards_meta,
    writes_shards,
)
from ._structure import array_keys

__all__ = ['load', 'read_state_dict', 'save']


def save(
    path: str | os.PathLike[str],
    tree: PyTree,
    *,
    ties: Any = None,
    max_shard_size: int | str | None = None,
    gather: bool = False,
) -> None:
    """Saves ``tree``; the format follows the path (see the module docstring).

    Args:
      path: ``*.safetensors``, ``*.msgpack`` or a directory (Orbax); a
        ``*.safetensors.index.json`` or a Hugging Face folder for a sharded
        safetensors checkpoint.
      tree: The tree to save (arrays are fetched to the host for single files).
      ties: Optional ``ptp.Ties``: each shared array is stored once and the ties
        are recorded, so :func:`load` gives the tied tree back.
      max_shard_size: Write a sharded safetensors checkpoint as transformers
        and huggingface_hub do (``'5GB'``, ``'500MB'`` or bytes; shards of at
        most this size and ``model.safetensors.index.json``) into the folder
        ``path``, or beside the index file ``path``.
      gather: For global arrays of a multi-process job saved to a single file:
        gather each to every host and write from process 0 (every process
        calls ``save``). Without it such an array raises ``FormatError``; an
        Orbax folder needs neither (each process writes its own shards).

    Returns:
      None; the file (or directory) is in place when it returns.

    Raises:
      ValueError: If a leaf cannot be stored in the format (e.g. complex128
        in safetensors), before anything is written; for a ``max_shard_size``
        that is not a size, or given with a single-file path.
      StructureError: If an alias of ``ties`` differs from its source, or two
        paths would share one name in an Orbax folder (``'a.b'`` beside ``'a'/'b'``).
      FileExistsError: For an Orbax save onto a file, or onto a folder that is
        not a finished Orbax checkpoint (an existing checkpoint is replaced; after
        a failure midway the previous one loads as before).
      FileNotFoundError: If the target's folder does not exist.
      FormatError: For a global array spanning other processes' devices saved to
        a single file without ``gather`` (naming the Orbax route).
      NotADirectoryError: If a folder on the target's path is a file.
      StructureError: If a name cannot be stored (a key that is neither str
        nor int, a safetensors tensor named ``'__metadata__'``), or an alias
        or source of ``ties`` is not in ``tree``; before anything is written.

    A path that is a symlink is written through: its target gets the new
    content (atomically), the link stays. A new file gets the mode ``open()``
    gives (``0o666`` less the umask); a replaced file keeps its mode. An Orbax
    folder may be a URL (``gs://bucket/ckpt``); in a multi-process job every
    process calls ``save`` and one checkpoint is written (a failure on any
    process outside Orbax's own collective write is raised on all, and the
    previous checkpoint is kept).

    A ``.safetensors`` file is laid out for the library its label names: a
    flat mapping of dotted names (``to_torch_state_dict``) as PyTorch's
    (``format: pt``); any other tree as Hugging Face's Flax layout
    (``format: flax``, keys joined by ``'.'``), so ``from_pretrained`` of a Flax
    model reads it; a tree whose keys hold ``'.'`` keeps ptp's ``'/'`` names and
    no label. A ``.msgpack`` file is the one ``flax.serialization.to_bytes``
    writes (``from_bytes`` reads it); ptp's record of the containers sits
    where Flax's readers do not see it.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'params.safetensors')
      >>> ptp.save(path, {'dense': {'kernel': jnp.ones((2, 3))}, 'step': 7})
      >>> ptp.load(path)['step']
      7
    """
    path = os.fspath(path)
    fmt = format_of(path)
    if fmt == 'npz':
        raise ValueError(
            f'save: {path!r}: saves go to .safetensors, .msgpack or an Orbax folder '
            '(.npz is read only)'
        )
    _check_names(tree)  # every name must come back as it went in: checked before writing
    extra: dict[str, Any] = {}
    if ties is not None:
        _check_tie_paths(tree, ties)
        extra['ties'] = ties.to_json()
        tree = untie(tree, ties)
    tree, keys = _keys_to_data(tree)
    if keys:
        extra['prng_keys'] = keys
    sharded = writes_shards(path, fmt, max_shard_size)
    one_writer = False
    if sharded or fmt != 'orbax':  # a file: global arrays gathered, process 0 writes
        tree, one_writer = gather_global(tree, path, gather)
    with written_by_process_0(one_writer, path) as here:
        if not here:
            pass  # process 0 writes the gathered tree
        elif sharded:
            save_shards(path, tree, extra, max_shard_size)
        elif fmt == 'safetensors':
            save_safetensors(path, tree, extra)
        elif fmt == 'msgpack':
            save_msgpack(path, tree, extra)
        else:
            save_orbax(path, tree, extra)


def _check_tie_paths(tree: PyTree, ties: Ties) -> None:
    """Raises before anything is written if an alias or source of ``ties`` is not in ``tree``."""
    for alias, source, _ in ties.items():
        for role, p in (('source', source), ('alias', alias)):
            try:
                get(tree, p)
            except PathError as e:
                raise StructureError(
                    f'save(ties=): the {role} {p!r} of the tie {alias!r} -> {source!r} is not '
                    f'in the tree ({e}); nothing was written'
                ) from e


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
    return map_with_path(tree, to_data), impls


def _like_key_data(like: PyTree, impls: Mapping[str, str]) -> PyTree:
    """``like`` with its PRNG key leaves (at recorded paths) as key-data shapes."""

    def to_data(p: str, x: Any) -> Any:
        if p in impls and is_key_dtype(getattr(x, 'dtype', None)):
            return jax.eval_shape(jax.random.key_data, x)
        return x

    return map_with_path(like, to_data)


def _has(tree: PyTree, path: str) -> bool:
    try:
        get(tree, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


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
                if isinstance(k, str) and '/' in k:  # a flat {path: leaf} mapping
                    raise StructureError(
                        f"save: the key {k!r} at {where or 'the root'!r} holds '/'; a file "
                        'records each key, so save the nested tree, ptp.save(path, '
                        'ptp.unflatten(tree)). Nothing was written'
                    )
                walk(v, f'{where}/{k}' if where else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{where}/{i}' if where else str(i))

    walk(tree, '')


def _aliases(flat: Mapping[str, Any], ties: Ties | None) -> dict[str, str]:
    """``{alias leaf path: source leaf path}`` for the sources present in ``flat``."""
    out: dict[str, str] = {}
    for alias, source, _ in ties.items() if ties is not None else ():
        for p in flat:
            if p == source or p.startswith(source + '/'):
                out[alias + p[len(source) :]] = p
    return out


def _select(tree: PyTree, select: Any, ties: Ties | None) -> tuple[PyTree, set[str]]:
    """The leaves ``select`` needs, as nested dicts, and the names it chose.

    Names are the tree's as saved: the file's leaves and each alias of
    ``ties``; a chosen alias needs its source's leaf.
    """
    flat = flatten(tree)
    alias_of = _aliases(flat, ties)
    names = list(flat) + [p for p in alias_of if p not in flat]
    keep = {p for p, hit in zip(names, match_flags(tuple(names), select)) if hit}
    if not keep:
        raise PathError(no_match_message(pattern_texts(select), names))
    need = {p for p in keep if p in flat} | {alias_of[p] for p in keep if p in alias_of}
    return unflatten({p: x for p, x in flat.items() if p in need}), keep


def _ties_within(ties: Ties, keep: set[str]) -> Ties:
    """The ties whose alias holds a chosen name."""
    return Ties(
        {
            a: (s, fn) if fn else s
            for a, s, fn in ties.items()
            if any(p == a or p.startswith(a + '/') for p in keep)
        }
    )


def _orbax_like(path: str, like: PyTree, meta: dict[str, Any]) -> PyTree:
    """``like`` for an Orbax partial restore, watch's statistics matched to the
    folder's (``watch_plan``): those the folder lacks left out, those ``like``
    lacks read as stored (and dropped by ``_check_like``)."""
    flat = flatten(like)
    spec = meta.get('structure')
    if spec is not None and not any(is_watch_path(p) for p in flat):  # ptp's own folder
        if not any(is_watch_path('/'.join(k)) for k in array_keys(spec)):
            return like  # no statistics on either side: nothing more to read
    stored = stored_leaves(path)
    names = nnx_names(stored, meta)
    kinds = {p: stored[n] for p, n in names.items()}
    if not any(is_watch_path(p) for p in (*flat, *kinds)):
        return like
    fill, drop = watch_plan(flat, {p: k[:2] for p, k in kinds.items()})
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    out = {p: x for p, x in flat.items() if p not in fill and p not in drop}
    for p in drop:
        shape, dtype, kind = kinds[p]
        out[p] = jax.ShapeDtypeStruct(shape, dtype, sharding=None if kind == 'host' else device)
    return unflatten(out)


def _fill_value(x: Any) -> Any:
    """``like``'s value for a path the file does not give (zeros for an abstract leaf)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        zeros = np.zeros(x.shape, x.dtype)
        return zeros if x.sharding is None else jax.device_put(zeros, x.sharding)
    return x


def _check_like(
    loaded: PyTree, like: PyTree, path: str, cast: bool = False, hint: bool | str = True
) -> PyTree:
    flat = flatten(loaded)
    like_leaves, _, like_paths = flatten_with_paths(like)
    fill: set[str] = set()
    if any(is_watch_path(p) for p in (*like_paths, *flat)):  # watch added or removed
        like_flat = {p: unbox(x) for p, x in zip(like_paths, like_leaves)}
        stored = {p: (np.shape(y), getattr(y, 'dtype', None)) for p, y in flat.items()}
        fill, drop = watch_plan(like_flat, stored)
        flat = {p: y for p, y in flat.items() if p not in drop}
        flat.update({p: _fill_value(like_flat[p]) for p in fill})
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
        raise like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=hint)
    out = {}
    for p, x in zip(like_paths, like_leaves):
        y = flat[p]
        target = unbox(x)
        if p in fill:
            out[p] = y
            continue
        if cast and hasattr(y, 'dtype') and hasattr(target, 'dtype'):
            y = y.astype(target.dtype)
        sharding = getattr(target, 'sharding', None)
        if jax_changes_dtype(getattr(y, 'dtype', np.float32)):
            pass  # 64-bit values without x64 stay NumPy rather than lose bits
        elif sharding is not None and hasattr(y, 'shape'):
            y = jax.device_put(y, sharding)
        elif isinstance(target, jax.Array) and hasattr(y, 'shape'):
            y = jax.numpy.asarray(y)
        out[p] = y
    return unflatten(out, like=like)


def file_meta(path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """The metadata :func:`save` recorded beside the arrays of a checkpoint
    (``structure``, ``ties``, ``prng_keys``); ``{}`` for a file of other software.

    Args:
      path: A checkpoint in any format :func:`load` reads.
      step: For an Orbax ``CheckpointManager`` folder, the step (the latest by default).

    Returns:
      The recorded metadata as a dict.

    Raises:
      FormatError: If the checkpoint is corrupt or of no known format.

    Example:
      >>> import os, tempfile, numpy as np, pytreeparams as ptp
      >>> from pytreeparams._files import file_meta
      >>> path = os.path.join(tempfile.mkdtemp(), 'p.safetensors')
      >>> w = np.ones(2, np.float32)
      >>> ptp.save(path, {'a': w, 'b': w}, ties=ptp.Ties({'b': 'a'}))
      >>> sorted(file_meta(path)['ties'])
      ['b']
    """
    path = os.fspath(path)
    fmt = format_of(path)
    if fmt == 'safetensors':
        return load_safetensors(path)[1]
    if fmt == 'msgpack':
        return load_msgpack(path)[1]
    if fmt == 'shards':
        return shards_meta(path)
    if fmt == 'orbax':
        return orbax_meta(orbax_item(path, step))
    return {}


def load(
    path: str | os.PathLike[str],
    like: PyTree | None = None,
    *,
    cast: bool = False,
    step: int | None = None,
    select: Any = None,
    mmap: bool = False,
) -> PyTree:
    """Loads a tree saved by :func:`save` (or by another safetensors writer).

    Args:
      path: ``*.safetensors``, ``*.msgpack`` or an Orbax checkpoint directory;
        a sharded Hugging Face checkpoint (``*.safetensors.index.json`` or its
        folder: only the shards ``select`` needs are opened, and a ``like`` of
        sharded arrays reads only the slices this process's devices hold).
      like: Optional tree (concrete, or ``jax.ShapeDtypeStruct`` leaves, with
        shardings): the result takes its structure and container types, each
        shape and dtype is checked, and arrays are placed with its shardings.
        ``ptp.watch``'s statistics (paths under ``'ptp_watch'``) are optional:
        ``like``'s values (zeros where abstract) when the checkpoint lacks them
        or holds them for other ``watch`` options, and the checkpoint's left out
        when ``like`` has none, so a run resumes across adding or removing ``watch``.
      cast: Convert each array to the dtype of ``like`` instead of raising on
        a dtype mismatch (the same rule for every format).
      step: For an Orbax ``CheckpointManager`` folder, the step to read (an
        int; the latest by default); a step folder or a single checkpoint works too.
      select: A pattern (glob, ``re.Pattern`` or a list): only the matching
        leaves, as nested dicts. A safetensors file is memory-mapped, so only
        the selected tensors are read from disk (safetensors: memory-mapped;
        Orbax: a partial restore). Not with ``like``. Patterns match the
        tree's names as :func:`save` got them: an alias of ``ties=`` is
        selected by its own name (and read from its source), a selected
        source comes without its aliases.
      mmap: For a safetensors file, return read-only views of the
        memory-mapped file instead of copies (zero-copy; a tensor is read
        when used). The views change if the file is overwritten in place
        (``cp new.safetensors path``), and touching them after the file was
        truncated kills the process (``SIGBUS``). By default the arrays are
        the process's own, whatever later happens to the file.

    Returns:
      The tree. With ``like``: ``like``'s structure, containers and boxes.
      Without ``like``, one rule for every format: dicts, FrozenDicts, lists
      and tuples come back as saved; other nodes (NNX ``State``, optax states
      and other namedtuples, dataclasses) as dicts keyed by their field names;
      boxes unboxed; Python scalars as Python scalars; PRNG keys as keys;
      arrays as NumPy arrays (jax arrays from Orbax), never aliasing the
      file unless ``mmap=True``.
      Files written by other programs: nested dicts (names split at ``/`` or
      ``.``). Tied trees come back tied.

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      FormatError: If the file is empty, truncated, corrupt or not of its
        format; never a crash or a huge allocation.
      StructureError: If it does not match ``like`` (naming every path).
      PathError: If ``select`` matches no leaf (naming the nearest).
      ValueError: For ``select`` with ``like``.
      TypeError: For a ``step`` that is not an int (``'2'``, ``True``).

    An Orbax folder (also a URL such as ``gs://bucket/ckpt``, read through Orbax
    and ``etils.epath``) is read as one checkpoint: if another process replaces it
    meanwhile, it is read again. In a multi-process job every process calls
    ``load``; arrays go onto ``like``'s shardings, else onto this process's devices.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pytreeparams as ptp
      >>> path = os.path.join(tempfile.mkdtemp(), 'p.msgpack')
      >>> ptp.save(path, {'w': jnp.arange(3.0)})
      >>> ptp.load(path, like={'w': jnp.zeros(3)})['w'].tolist()
      [0.0, 1.0, 2.0]
    """
    # An Orbax folder that another process replaces while it is read is read again:
    # the metadata and the arrays always come from one checkpoint.
    for attempt in range(_READ_TRIES):
        try:
            return _load_once(path, like, cast, step, select, mmap)
        except (CheckpointChanged, FileNotFoundError, FormatError) as e:
            last = attempt == _READ_TRIES - 1
            if last or not (isinstance(e, CheckpointChanged) or save_in_flight(os.fspath(path))):
                raise
            time.sleep(min(0.01 * 2**attempt, 0.5))
    raise AssertionError('unreachable')  # pragma: no cover


# a reader slower than a writer's saves must outlast them: backoff doubling to
# 0.5 s, about 15 s in all (5 tries of 10-50 ms lost every race on a busy machine)
_READ_TRIES = 36


def _load_once(
    path: Any, like: PyTree | None, cast: bool, step: Any, select: Any, mmap: bool
) -> PyTree:
    path = os.fspath(path)
    if not scheme_of(path) and not os.path.exists(path):
        raise FileNotFoundError(f'no such checkpoint: {path!r}')
    fmt = format_of(path)
    if fmt == 'safetensors':
        tree, meta = load_safetensors(path)
    elif fmt == 'msgpack':
        tree, meta = load_msgpack(path)
    elif fmt == 'npz':
        tree, meta = nest_names(read_npz(path), path), {}
    elif fmt == 'shards':  # read below, after like is adjusted (as Orbax)
        meta = shards_meta(path)
    else:
        path = orbax_item(path, step)
        meta = orbax_meta(path)
    if select is not None and like is not None:
        raise ValueError('load: give select= or like=, not both (like= says what to read)')
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
        read = _orbax_like(path, like, meta) if like is not None else None
        tree = load_orbax(path, read, cast, meta, select)
    elif fmt == 'shards':  # only the shards select= needs; like's slices per process
        tree = load_shards(path, like, cast, select)
    elif fmt == 'safetensors' and like is not None:  # like's slices per process, as shards
        tree = place_like(tree, like, cast)
    keep = None
    if select is not None:
        tree, keep = _select(tree, select, ties)
    # the process's own arrays, not views of the file (like='s slices are read as copies)
    if (fmt == 'safetensors' or (fmt == 'shards' and like is None)) and not mmap:
        tree = jax.tree_util.tree_map(own_copy, tree)
    if like is not None:
        foreign = fmt in ('safetensors', 'npz', 'shards') and (
            not meta or any('.' in p for p in flatten(tree))
        )
        tree = _check_like(tree, like, path, cast, 'torch' if foreign else True)
    if impls:
        if keep is not None and isinstance(impls, dict):  # the selected keys only
            impls = {p: v for p, v in impls.items() if p in keep}
        tree = _data_to_keys(tree, impls, path)
    if ties is not None:
        if keep is not None:
            ties = _ties_within(ties, keep)
        try:
            tree = tie(tree, ties)
        except (KeyError, TypeError, ValueError) as e:  # PathError, StructureError too
            raise FormatError(f'{path!r}: its ties metadata does not fit its tensors ({e})') from e
        if keep is not None:  # a selected alias's source, read for it, is not returned
            tree = unflatten({p: x for p, x in flatten(tree).items() if p in keep})
    return tree
