"""Orbax checkpoint folders (single checkpoints and ``CheckpointManager``
roots): sharded arrays restored in place, replaced checkpoints kept until the
new one is in place, one checkpoint from every process of a multi-host job.

A save writes the new checkpoint with Orbax (its own barriers, its primary host
finalizing) into a temporary folder whose name process 0 draws and every
process agrees on, beside the target; the primary host then writes
``pytreeparams.json`` (with the checkpoint's id, also recorded in Orbax's own
step metadata) and moves it over the old checkpoint. Every step that can fail on
one process alone ends in an agreement (one all-gather of an ok flag), so that
every process raises instead of waiting at a barrier the failed one never meets.
A failure inside Orbax's own collective write is Orbax's to report: its barriers
are collectives that wait for every process (Orbax's absl flag
``experimental_orbax_use_distributed_barrier`` makes them time out after 300 s).

Paths with a scheme (``gs://``, ``s3://``) reach Orbax and ``etils.epath``
unchanged.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
import warnings
from typing import Any

import jax
import numpy as np

from .._errors import FormatError, PathError, StructureError
from .._flatten import flatten, flatten_with_paths, unflatten
from .._keys import describe, unbox
from .._messages import like_mismatch, no_match_message
from .._patterns import match_flags, pattern_texts
from .._typing import PyTree
from ._formats import scheme_of
from ._structure import FORMAT_VERSION, encode_structure, rebuild_structure

META_FILE = 'pytreeparams.json'
ID_KEY = 'pytreeparams_id'  # the checkpoint's id in Orbax's step metadata (custom_metadata)


class CheckpointChanged(FormatError):
    """The checkpoint at a path was replaced by another save while it was read."""


# --------------------------------------------------------------------------
# Paths: local paths as the OS spells them, URLs untouched (etils.epath).


def _resolve(path: str) -> str:
    if scheme_of(path):
        return path.rstrip('/')
    return os.path.realpath(path.rstrip(os.sep))


def _split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a local path or a URL."""
    if scheme_of(path):
        parent, _, name = path.rpartition('/')
        return parent, name
    return os.path.dirname(path), os.path.basename(path)


def _join(parent: str, name: str) -> str:
    return f'{parent}/{name}' if scheme_of(parent) else os.path.join(parent, name)


def _epath(path: str) -> Any:
    from etils import epath  # type: ignore[import-untyped]

    return epath.Path(path)


def unreachable(path: str, doing: str, error: BaseException) -> FormatError:
    """The error for a URL whose filesystem is missing or cannot be reached."""
    scheme = scheme_of(path)
    cause = ' '.join(str(error).split())[:300] or type(error).__name__
    return FormatError(
        f'{doing}: cannot reach {path!r} ({type(error).__name__}: {cause}). Paths with a '
        f'scheme go unchanged to Orbax through etils.epath, which needs a filesystem for '
        f"'{scheme}://' installed and configured (gs://: tensorflow or gcsfs; s3://: s3fs); "
        'nothing was written'
    )


def _exists(path: str, doing: str) -> bool:
    if not scheme_of(path):
        return os.path.lexists(path)
    try:
        return bool(_epath(path).exists())
    except Exception as e:  # no filesystem for the scheme, no network, no credentials
        raise unreachable(path, doing, e) from e


def _is_dir(path: str) -> bool:
    return _epath(path).is_dir() if scheme_of(path) else os.path.isdir(path)


def _move(src: str, dst: str) -> None:
    if scheme_of(src):
        _epath(src).rename(dst)
    else:
        os.replace(src, dst)


def _read_text(path: str) -> str:
    if scheme_of(path):
        return _epath(path).read_text()
    with open(path) as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    if scheme_of(path):
        _epath(path).write_text(text)
    else:
        with open(path, 'w') as f:
            f.write(text)


def _rmtree(path: str) -> None:
    if scheme_of(path):
        _epath(path).rmtree()
    else:
        shutil.rmtree(path)


# --------------------------------------------------------------------------
# Saving.


def agree(error: BaseException | None, doing: str, token: int = 0) -> int:
    """Every process learns whether any failed ``doing``; returns process 0's ``token``.

    One process: raises ``error`` if there is one. Several: one all-gather of
    ``(ok, token)`` that every process reaches, then the failed processes raise
    their own error and the others an ``OSError`` naming the failed ones.
    """
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return token
    from jax.experimental import multihost_utils

    mine = np.array([error is None, token], np.int32)
    got = np.asarray(multihost_utils.process_allgather(mine))
    if error is not None:
        raise error
    failed = [i for i, ok in enumerate(got[:, 0]) if not ok]
    if failed:
        raise OSError(
            f'save: {doing} failed on process {", ".join(map(str, failed))} (its own error '
            'says why); the previous checkpoint, if any, is kept'
        )
    return int(got[0, 1])


def _check_leaves(tree: PyTree) -> tuple[Any, list[str]]:
    """The tree Orbax writes, and the paths of its NNX Variables; refuses leaves
    and names Orbax cannot hold.

    The tree goes to Orbax in its own containers (tuples, namedtuples, NNX
    ``State`` and ``Variable``), as a plain ``StandardCheckpointer().save`` would
    write it, so that plain Orbax restores the folder with an abstract target. Boxes
    other than NNX Variables (Flax's ``Partitioned``) are unboxed. Orbax names an
    NNX Variable's array ``.../value``; ``pytreeparams.json`` lists those paths.
    """
    from flax import nnx

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
    leaves, treedef, paths = flatten_with_paths(tree)
    variables = [isinstance(x, nnx.Variable) for x in leaves]
    value_paths = [p for p, v in zip(paths, variables) if v]
    state = jax.tree_util.tree_unflatten(
        treedef, [x if v else unbox(x) for x, v in zip(leaves, variables)]
    )
    seen: dict[str, str] = {}
    for p, v in zip(paths, variables):
        name = (p + '/value' if v else p).replace('/', '.')  # Orbax joins keys with '.'
        if name in seen:
            raise StructureError(
                f'save: {seen[name]!r} and {p!r} would be stored under one Orbax name '
                f"{name!r} (Orbax joins keys with '.'), and one would overwrite the other. "
                'Rename a key, or save to a .safetensors or .msgpack file; nothing was written'
            )
        seen[name] = p
    return state, value_paths


def _check_target(path: str) -> None:
    """Raises unless ``path`` may take a new checkpoint (missing, or a checkpoint)."""
    parent = _split(path)[0]
    if _exists(path, 'save') and not is_checkpoint(path):
        kind = 'a folder that is not a checkpoint' if _is_dir(path) else 'a file'
        raise FileExistsError(
            f'save: {path!r} exists and is {kind}; an Orbax save replaces only an existing '
            'Orbax checkpoint (one that holds _METADATA and a committed _CHECKPOINT_METADATA). '
            'Choose another path, or remove it first if it may go; nothing was written'
        )
    if not _is_dir(parent):
        what = 'is a file, not a folder' if _exists(parent, 'save') else 'does not exist'
        raise FileNotFoundError(f'save: the folder {parent!r} {what}; create it first')


def save_orbax(path: str, tree: PyTree, extra: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    state, value_paths = _check_leaves(tree)  # the same on every process: no agreement needed
    path = _resolve(path)
    parent, base = _split(path)
    error = None
    try:
        _check_target(path)
    except Exception as e:
        error = e
    # one temporary name for every process (process 0 draws it), and the checkpoint's id
    token = agree(error, f'checking {path!r}', secrets.randbits(31))
    name = f'.{base}.{token:08x}'
    tmp = _join(parent, name)
    ckpt_id = f'{token:08x}-{time.time_ns() // 1000:x}'  # the primary host's is recorded
    meta = {
        'version': FORMAT_VERSION,
        'id': ckpt_id,
        'structure': encode_structure(tree, '', None),
        **({'value_paths': value_paths} if value_paths else {}),
        **extra,
    }
    primary = jax.process_index() == 0
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, state, custom_metadata={ID_KEY: ckpt_id})
            ckptr.wait_until_finished()
    except BaseException:
        if primary:
            _remove_leftovers(parent, name)
        raise
    error = None
    if primary:
        try:
            backup = _finalize(path, tmp, meta)
        except Exception as e:
            error = e
            _remove_leftovers(parent, name)
        else:
            if backup is not None:
                _remove_backup(backup)
    # every process returns once the checkpoint is in place (or raises)
    agree(error, f'moving the new checkpoint to {path!r}')


def _finalize(path: str, tmp: str, meta: dict[str, Any]) -> str | None:
    """Writes pytreeparams.json into ``tmp`` and moves ``tmp`` to ``path``; returns
    where the previous checkpoint was moved aside (None if there was none).

    POSIX cannot rename a folder onto a non-empty one, and Orbax's ``force=True``
    removes the old checkpoint *before* it writes (a failed save would lose it),
    so the old one is moved aside first and moved back if the second move fails.
    """
    _write_text(_join(tmp, META_FILE), json.dumps(meta))
    backup = None
    if _exists(path, 'save'):
        parent, base = _split(path)
        backup = _join(parent, f'{base}.old-{_split(tmp)[1].lstrip(".")}')
        _move(path, backup)
    try:
        _move(tmp, path)
    except BaseException as e:
        if backup is not None:  # put the previous checkpoint back where it was
            try:
                _move(backup, path)
            except Exception as e2:
                raise OSError(
                    f'save: the new checkpoint could not be moved to {path!r} ({e}) and the '
                    f'previous one could not be moved back: it is at {backup!r}'
                ) from e2
        raise
    return backup


def _remove_backup(backup: str) -> None:
    try:
        _rmtree(backup)
    except Exception as e:
        warnings.warn(
            f'save: the new checkpoint is in place, but the previous one, moved aside to '
            f'{backup!r}, could not be removed ({e}); it holds a full copy: remove it by hand',
            RuntimeWarning,
            stacklevel=4,
        )


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a finished Orbax checkpoint (a save may replace it):
    ``_METADATA`` beside Orbax's step metadata with its commit time (or Orbax's
    ``commit_success.txt``). A folder with one of those names among other files
    is not one."""
    if not _is_dir(path) or not _exists(_join(path, '_METADATA'), 'save'):
        return False
    if _exists(_join(path, 'commit_success.txt'), 'save'):
        return True
    try:
        step = json.loads(_read_text(_join(path, '_CHECKPOINT_METADATA')))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(step, dict) and step.get('commit_timestamp_nsecs') is not None


def _remove_leftovers(parent: str, stem: str) -> None:
    """Removes a failed save's temporary folders (ours and Orbax's); warns with the
    path of any that cannot be removed."""
    names = [p.name for p in _epath(parent).iterdir()] if scheme_of(parent) else os.listdir(parent)
    for name in names:
        if name == stem or name.startswith(stem + '.orbax-checkpoint-tmp'):
            try:
                _rmtree(_join(parent, name))
            except Exception as e:
                warnings.warn(
                    f'save failed, and its temporary folder {_join(parent, name)!r} could not '
                    f'be removed ({e}): remove it by hand',
                    RuntimeWarning,
                    stacklevel=4,
                )


# --------------------------------------------------------------------------
# Loading.


def orbax_meta(path: str) -> dict[str, Any]:
    meta_file = _join(path, META_FILE)
    if not _exists(meta_file, 'load'):
        return {}
    try:
        meta = json.loads(_read_text(meta_file))
    except FileNotFoundError:  # replaced by a save since it was seen
        raise CheckpointChanged(f'{path!r} was replaced while it was read') from None
    except (ValueError, RecursionError) as e:
        raise FormatError(f'{path!r}: corrupt pytreeparams.json: {e!r}') from e
    if not isinstance(meta, dict):
        raise FormatError(f'{path!r}: corrupt pytreeparams.json: not a JSON object')
    return meta


def _same_checkpoint(path: str, ckpt_id: Any) -> None:
    """Raises ``CheckpointChanged`` unless ``path`` still holds checkpoint ``ckpt_id``
    (read before its arrays): the metadata and the arrays came from one save."""
    if ckpt_id is None:
        return
    try:
        now = orbax_meta(path).get('id')
    except FormatError:
        now = None
    if now != ckpt_id:
        raise CheckpointChanged(f'{path!r} was replaced by another save while it was read')


def save_in_flight(path: str) -> bool:
    """Whether a save of ``path`` is under way beside it (its temporary folder or
    the previous checkpoint moved aside): a failed read may then be retried."""
    if scheme_of(path) or path.lower().endswith(('.safetensors', '.msgpack', '.npz')):
        return False
    parent, base = _split(_resolve(path))
    try:
        names = os.listdir(parent)
    except OSError:
        return False
    return any(n.startswith((f'.{base}.', f'{base}.old-')) for n in names)


class Stored(dict):
    """``{path: (shape, dtype, kind)}`` of a checkpoint's leaves (``kind``:
    ``'scalar'`` for a Python number, ``'host'`` for a NumPy array, ``'device'``
    for a jax array), and Orbax's metadata tree (``.tree``: the stored containers)."""

    tree: Any = None


def _orbax_arrays(handler: Any, path: str) -> Stored:
    """The leaves of an Orbax checkpoint, from its metadata (nothing else is read)."""
    meta = handler.metadata(_epath(path))
    tree = getattr(meta, 'tree', None)
    if tree is None:
        tree = getattr(getattr(meta, 'item_metadata', None), 'tree', meta)
    out = Stored()
    out.tree = tree
    for p, m in flatten(tree).items():
        dtype = getattr(m, 'dtype', None)
        if dtype is not None:
            if type(m).__name__ == 'ScalarMetadata':
                kind = 'scalar'
            else:
                kind = 'host' if getattr(m, 'sharding', None) is None else 'device'
            out[p] = (tuple(getattr(m, 'shape', ())), np.dtype(dtype), kind)
    return out


def stored_leaves(path: str) -> Stored:
    """The checkpoint's ``{path: (shape, dtype, kind)}``, read from its metadata."""
    import orbax.checkpoint as ocp

    # the item's metadata from its handler: a Checkpointer's metadata() also reads
    # the step's, which a CheckpointManager keeps one folder up (its absl warning
    # "Metadata file does not exist" on every load of a manager folder)
    handler = ocp.StandardCheckpointHandler()
    try:
        return _orbax_arrays(handler, path)
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
    finally:
        handler.close()


def nnx_names(stored: Any, meta: dict[str, Any]) -> dict[str, str]:
    """``{shown: stored}`` names. An NNX Variable's array is stored as
    ``.../value`` (Orbax's name for it) and shown without it, as ``nnx.state`` and
    ``ptp.paths`` name it: the paths ``pytreeparams.json`` lists, or, in a folder
    written by plain Orbax, every leaf when all end in ``/value`` (an NNX State)."""
    names = list(stored)
    if meta:
        values = meta.get('value_paths')
        values = set(values) if isinstance(values, list) else set()
    else:
        every = bool(names) and all(n.endswith('/value') for n in names)
        values = {n[: -len('/value')] for n in names} if every else set()
    return {
        (n[: -len('/value')] if n.endswith('/value') and n[: -len('/value')] in values else n): n
        for n in names
    }


def load_orbax(
    path: str,
    like: PyTree | None,
    cast: bool = False,
    meta: dict[str, Any] | None = None,
    select: Any = None,
) -> PyTree:
    """The checkpoint at ``path``: all of it (in its saved containers, from
    ``meta``'s structure), ``like``'s leaves (by path, each restored onto its
    sharding) or the ``select``-ed leaves (onto this process's first device), read
    as one checkpoint: ``CheckpointChanged`` if another save replaced it meanwhile."""
    import orbax.checkpoint as ocp

    meta = meta or {}
    try:
        if like is None and select is None:
            tree = _restore_all(ocp, path, meta)
        else:
            tree = _restore_some(ocp, path, like, cast, meta, select)
    except (CheckpointChanged, PathError, StructureError):
        raise
    except Exception:
        _same_checkpoint(path, meta.get('id'))  # failed as the folder was swapped?
        raise
    _same_checkpoint(path, meta.get('id'))
    return tree


def _restore_all(ocp: Any, path: str, meta: dict[str, Any]) -> PyTree:
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path)
        flat = flatten(tree)  # names every leaf can be spelled by (a hostile folder's may not)
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
    names = nnx_names(flat, meta)  # NNX Variables' arrays without their '/value'
    if any(k != v for k, v in names.items()):
        tree = unflatten({k: flat[v] for k, v in names.items()})
    if meta.get('structure') is not None:
        tree = rebuild_structure(tree, meta['structure'], path)
    return tree


def _restore_some(
    ocp: Any, path: str, like: PyTree | None, cast: bool, meta: dict[str, Any], select: Any
) -> PyTree:
    stored = stored_leaves(path)
    names = nnx_names(stored, meta)
    if like is None:
        shown = tuple(names)
        chosen = [p for p, hit in zip(shown, match_flags(shown, select)) if hit]
        if not chosen:
            raise PathError(no_match_message(pattern_texts(select), list(shown)))
        return _restore_paths(ocp, path, {p: (names[p], None) for p in chosen}, stored)
    want = flatten(like)
    missing = [p for p in want if p not in names]
    unexpected = [p for p in names if p not in want]
    bad = []
    for p, x in want.items():
        if p in names and hasattr(x, 'dtype'):
            shape, dtype = stored[names[p]][:2]
            if tuple(np.shape(x)) != shape or (not cast and np.dtype(x.dtype) != dtype):
                bad.append(f'{p!r} (expected {describe(x)}, file has {dtype.name}{list(shape)})')
    if missing or unexpected or bad:
        dtype_only = all(
            tuple(np.shape(x)) == stored[names[p]][0]
            for p, x in want.items()
            if p in names and hasattr(x, 'dtype')
        )
        raise like_mismatch(path, missing, unexpected, bad, dtype_only, partial_hint=False)
    plan = {
        p: (
            names[p],
            x
            if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, 'dtype')
            else jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, 'sharding', None)),
        )
        for p, x in want.items()
    }
    return _restore_paths(ocp, path, plan, stored)


def _restore_paths(ocp: Any, path: str, plan: dict[str, tuple[str, Any]], stored: Stored) -> PyTree:
    """Orbax's partial restore of the stored leaves that ``plan`` names
    (``{shown path: (stored path, target)}``; nothing else is read), nested dicts by
    shown path. A target (``like``'s leaf, a ``ShapeDtypeStruct``) gives the dtype
    and sharding; without one a leaf comes back as saved: a NumPy array as NumPy, a
    jax array onto this process's first device (never another process's)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {}
    for name, want in plan.values():
        shape, dtype, kind = stored[name]
        if kind == 'scalar':
            target[name] = dtype.type(0).item()
        elif want is None:
            target[name] = jax.ShapeDtypeStruct(
                shape, dtype, sharding=None if kind == 'host' else device
            )
        else:
            target[name] = want
    # the stored containers (lists stay lists), every leaf not asked for skipped
    leaves, treedef, paths = flatten_with_paths(stored.tree)
    nested = jax.tree_util.tree_unflatten(treedef, [target.get(p, ocp.PLACEHOLDER) for p in paths])
    args = ocp.args.PyTreeRestore(
        item=nested, restore_args=ocp.checkpoint_utils.construct_restore_args(nested)
    )
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            flat = flatten(ckptr.restore(path, args=args))
    except Exception as e:
        raise FormatError(f'{path!r} is not a readable Orbax checkpoint: {e}') from e
    return unflatten({shown: flat[name] for shown, (name, _) in plan.items()})


def _check_step(step: Any) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
        raise TypeError(
            f'load: step={step!r} is a {type(step).__name__}; a step is an int, e.g. '
            f'step={int(step) if isinstance(step, str) and step.isdigit() else 2}'
        )
    if step is not None and step < 0:
        raise ValueError(f'load: step={step} is negative; steps are numbered from 0')


def _listdir(path: str) -> list[str]:
    if scheme_of(path):
        return sorted(p.name for p in _epath(path).iterdir()) if _is_dir(path) else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def orbax_item(path: str, step: int | None = None) -> str:
    """The folder of the Orbax item that ``path`` names.

    ``path`` may be the item itself (it holds ``_METADATA``), a
    ``CheckpointManager`` step folder (``mgr/5``: its one item, or ``default``)
    or a manager's root (``mgr``: the latest step, or ``step``).

    Raises:
      FileNotFoundError: For a step that is not there (naming those that are).
      FormatError: For a folder that holds no Orbax checkpoint, or a URL whose
        filesystem is missing.
      TypeError: For a step that is not an int (``'2'``, ``True``).
    """
    _check_step(step)
    path = path.rstrip('/') if scheme_of(path) else os.path.abspath(path.rstrip(os.sep))
    if _exists(_join(path, '_METADATA'), 'load'):
        if step is not None:
            raise ValueError(f'step={step}: {path!r} is one checkpoint, not a manager folder')
        return path
    names = _listdir(path)
    steps = sorted(int(n) for n in names if n.isdigit() and _is_dir(_join(path, n)))
    if steps:
        chosen = steps[-1] if step is None else int(step)
        if chosen not in steps:
            raise FileNotFoundError(f'{path!r} has no step {step}; its steps: {steps}')
        return orbax_item(_join(path, str(chosen)))
    if step is not None:
        raise FileNotFoundError(f'{path!r} has no step folders (asked for step={step})')
    items = [n for n in names if _exists(_join(_join(path, n), '_METADATA'), 'load')]
    if len(items) == 1 or 'default' in items:
        return _join(path, items[0] if len(items) == 1 else 'default')
    if items:
        raise FormatError(f'{path!r} holds several items {items}: name one, e.g. {path}/{items[0]}')
    raise FormatError(f'{path!r} is not an Orbax checkpoint (no _METADATA, no step folders)')


def abstract_orbax(path: str, step: int | None = None, select: Any = None) -> PyTree:
    """The checkpoint as ``jax.ShapeDtypeStruct`` leaves, from its metadata alone
    (Python scalars are read, they are small; PRNG keys as keys): what a summary
    without statistics needs, at the memory of the metadata. Nested dicts by path;
    only the paths matching ``select`` if given.

    Raises:
      FormatError: If ``path`` holds no readable Orbax checkpoint.
      PathError: If ``select`` matches no leaf.
    """
    import orbax.checkpoint as ocp

    path = orbax_item(path, step)
    meta = orbax_meta(path)
    stored = stored_leaves(path)
    names = nnx_names(stored, meta)
    if select is not None:
        shown = tuple(names)
        names = {p: names[p] for p, hit in zip(shown, match_flags(shown, select)) if hit}
        if not names:
            raise PathError(no_match_message(pattern_texts(select), list(shown)))
    out: dict[str, Any] = {p: jax.ShapeDtypeStruct(*stored[n][:2]) for p, n in names.items()}
    scalars = {p: (n, None) for p, n in names.items() if stored[n][2] == 'scalar'}
    if scalars:
        out.update(flatten(_restore_paths(ocp, path, scalars, stored)))
    impls = meta.get('prng_keys')
    for p, impl in impls.items() if isinstance(impls, dict) else ():
        if p in out and isinstance(impl, str):
            data = out[p]
            out[p] = jax.eval_shape(
                lambda d=data, i=impl: jax.random.wrap_key_data(
                    jax.numpy.zeros(d.shape, d.dtype), impl=i
                )
            )
    _same_checkpoint(path, meta.get('id'))
    return unflatten(out)
