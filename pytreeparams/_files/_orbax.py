"""Orbax checkpoint folders (single checkpoints and ``CheckpointManager``
roots): sharded arrays restored in place, replaced checkpoints kept until the
new one is in place."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from .._errors import FormatError, PathError, StructureError
from .._flatten import flatten, unflatten
from .._keys import describe
from .._messages import like_mismatch, no_match_message
from .._patterns import match_flags, pattern_texts
from .._typing import PyTree
from ._msgpack import state_dict_of
from ._structure import FORMAT_VERSION, encode_structure, rebuild_structure


def save_orbax(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
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
            ckptr.save(tmp, state_dict_of(tree, '', fetch=False))
            ckptr.wait_until_finished()
        with open(os.path.join(tmp, 'pytreeparams.json'), 'w') as f:
            json.dump(
                {'version': FORMAT_VERSION, 'structure': encode_structure(tree, '', None), **extra},
                f,
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


def orbax_meta(path: str) -> dict[str, Any]:
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


def load_orbax(
    path: str, like: PyTree | None, cast: bool = False, spec: Any = None, select: Any = None
) -> PyTree:
    import orbax.checkpoint as ocp

    path = os.path.abspath(path.rstrip(os.sep))
    if select is not None and like is None:
        return _restore_selected(ocp, path, select)
    if like is not None:
        stored = _stored_arrays(ocp, path)
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
            raise like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=False)
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
    if like is None:
        try:
            flatten(tree)  # names every leaf can be spelled by (a hostile folder's may not)
        except StructureError as e:
            raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
    if like is None and spec is not None:
        tree = rebuild_structure(tree, spec, path)
    return tree


def _stored_arrays(ocp: Any, path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The checkpoint's ``{path: (shape, dtype)}``, read from its metadata."""
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return _orbax_arrays(ckptr, path)
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e


def _restore_selected(ocp: Any, path: str, select: Any) -> PyTree:
    """Orbax's partial restore: only the arrays whose paths match ``select`` are
    read (each onto the default device), in the stored layout."""
    stored = _stored_arrays(ocp, path)
    names = tuple(stored)
    chosen = [p for p, hit in zip(names, match_flags(names, select)) if hit]
    if not chosen:
        raise PathError(no_match_message(pattern_texts(select), list(names)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = unflatten(
        {p: jax.ShapeDtypeStruct(stored[p][0], stored[p][1], sharding=device) for p in chosen}
    )
    args = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            return ckptr.restore(path, args=args)
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e


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
