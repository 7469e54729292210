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
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax.core import FrozenDict

from ._errors import FormatError, PathError, StructureError
from ._flatten import flatten, flatten_with_paths, unflatten
from ._formats import format_of
from ._keys import describe, is_key_dtype, unbox
from ._messages import like_mismatch, no_match_message
from ._msgpack import load_msgpack, save_msgpack
from ._orbax import load_orbax, orbax_item, orbax_meta, save_orbax
from ._paths import get
from ._paths import set as set_path
from ._patterns import map_with_path, match_flags, pattern_texts
from ._safetensors import (
    load_safetensors,
    nest_names,
    read_npz,
    read_state_dict,
    save_safetensors,
)
from ._tying import Ties, tie, untie
from ._typing import PyTree

__all__ = ['load', 'read_state_dict', 'save']


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
    fmt = format_of(path)
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
        save_safetensors(path, tree, extra)
    elif fmt == 'msgpack':
        save_msgpack(path, tree, extra)
    else:
        save_orbax(path, tree, extra)


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
        raise like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=hint)
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


def load(
    path: str | os.PathLike[str],
    like: PyTree | None = None,
    *,
    cast: bool = False,
    step: int | None = None,
    select: Any = None,
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
      select: A pattern (glob, ``re.Pattern`` or a list): only the matching
        leaves, as nested dicts. A safetensors file is memory-mapped, so only
        the selected tensors are read from disk (safetensors: memory-mapped;
        Orbax: a partial restore). Not with ``like``.

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
      PathError: If ``select`` matches no leaf (naming the nearest).
      ValueError: For ``select`` with ``like``.

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
    fmt = format_of(path)
    if fmt == 'safetensors':
        tree, meta = load_safetensors(path)
    elif fmt == 'msgpack':
        tree, meta = load_msgpack(path)
    elif fmt == 'npz':
        tree, meta = nest_names(read_npz(path), path), {}
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
        tree = load_orbax(path, like, cast, meta.get('structure'), select)
    if like is not None:
        foreign = fmt in ('safetensors', 'npz') and (
            not meta or any('.' in p for p in flatten(tree))
        )
        tree = _check_like(tree, like, path, cast, 'torch' if foreign else True)
    if impls:
        tree = _data_to_keys(tree, impls, path)
    if select is not None:
        flat = flatten(tree)
        keep = dict(zip(flat, match_flags(tuple(flat), select)))
        if not any(keep.values()):
            raise PathError(no_match_message(pattern_texts(select), list(flat)))
        tree = unflatten({p: x for p, x in flat.items() if keep[p]})
    if ties is not None:
        try:
            tree = tie(tree, ties)
        except (KeyError, TypeError, ValueError) as e:  # PathError, StructureError too
            raise FormatError(f'{path!r}: its ties metadata does not fit its tensors ({e})') from e
    return tree
