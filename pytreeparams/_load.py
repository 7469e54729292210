"""Partial loading: copy a checkpoint into a (different) model, with a report."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import StructureError
from ._files import load, own_copy, place
from ._flatten import flatten_with_paths
from ._keys import (
    describe,
    jax_changes_dtype,
    rebox,
    same_dtype,
    torch_as_numpy,
    unbox,
    watch_plan,
)
from ._messages import deprecated, joined_list, path_differences
from ._patterns import capture_pattern, compile_pattern
from ._typing import Pattern, PyTree

__all__ = ['LoadReport', 'load_into']


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_into` did and what did not fit.

    Attributes:
      loaded: Target paths filled from the source.
      missing: Target paths the source does not provide (target value kept).
      unexpected: Source paths (after renaming) that no target path uses.
      shape_mismatch: ``{target path: (target type, source type)}``.
      dtype_mismatch: ``{target path: (target type, source type)}``.
      skipped: Target paths kept because they match ``skip``.
      renamed: ``{source path: target path}`` for every rename applied.
      dropped: Source paths a rename rule mapped to None.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> target = {'w': jnp.zeros(2), 'b': jnp.zeros(1)}
      >>> _, report = ptp.load_into({'w': jnp.ones(2)}, like=target, strict=False)
      >>> report.missing, report.ok
      (('b',), False)
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shape_mismatch: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    dtype_mismatch: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.shape_mismatch or self.dtype_mismatch)

    def problems(self) -> list[str]:
        """One line per kind of problem (empty when ``ok``)."""
        out = path_differences(self.missing, self.unexpected, where=' in source')
        for name, d in (('shape', self.shape_mismatch), ('dtype', self.dtype_mismatch)):
            if d:
                items = [f'{p!r} (target {a}, source {b})' for p, (a, b) in d.items()]
                out.append(f'{name} mismatch ({len(d)}): ' + joined_list(items))
        return out

    def __str__(self) -> str:
        lines = [
            f'loaded {len(self.loaded)}, skipped {len(self.skipped)}, renamed {len(self.renamed)}, '
            f'dropped {len(self.dropped)}'
        ]
        lines += self.problems()
        return '\n'.join(lines)


def _rename(path: str, rules: Sequence[tuple[Any, str | None]]) -> tuple[str | None, bool]:
    for pattern, repl in rules:
        m = capture_pattern(pattern, 'load_into(rename=)').fullmatch(path)
        if m:
            return (None if repl is None else m.expand(repl)), True
    return path, False


def _put_like(value: Any, target: Any) -> Any:
    if jax_changes_dtype(getattr(value, 'dtype', np.float32)):
        return value  # 64-bit values without x64 stay NumPy rather than lose bits
    sharding = getattr(target, 'sharding', None)
    if sharding is not None and not isinstance(target, jax.core.Tracer):
        return jax.device_put(value, sharding)
    return jnp.asarray(value) if isinstance(target, jax.Array) else value


def _renamed_source(
    s_paths: tuple[str, ...], s_leaves: list[Any], rules: list[Any]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str], list[str]]:
    """``(provided, origin, renamed, dropped)``: the source's leaves by their
    target path after ``rules``, where each came from, the renames applied and
    the paths a rule dropped."""
    provided: dict[str, Any] = {}
    origin: dict[str, str] = {}
    renamed: dict[str, str] = {}
    dropped: list[str] = []
    for p, x in zip(s_paths, s_leaves):
        new, hit = _rename(p, rules)
        if new is None:
            dropped.append(p)
            continue
        if hit and new != p:
            renamed[p] = new
        if new in provided:
            raise StructureError(
                f'load_into: source paths {origin[new]!r} and {p!r} both map to {new!r}'
            )
        provided[new], origin[new] = torch_as_numpy(unbox(x)), p
    return provided, origin, renamed, dropped


def _with_target_dtype(src: Any, tgt: Any, cast: bool) -> Any:
    """``src`` in the target's dtype where that is allowed, else None (a mismatch).

    A Python scalar has no dtype of its own: the target's wins if it holds the
    value. Arrays of another dtype convert only with ``cast``.
    """
    t_dtype, s_dtype = getattr(tgt, 'dtype', None), getattr(src, 'dtype', None)
    if t_dtype is not None and s_dtype is None and isinstance(src, (bool, int, float, complex)):
        cast_src = np.asarray(src).astype(t_dtype)
        return cast_src if cast_src.item() == src else None
    if t_dtype is not None and s_dtype is not None and not same_dtype(t_dtype, s_dtype):
        if not cast:
            return None
        return src.astype(t_dtype) if isinstance(src, jax.Array) else np.asarray(src, t_dtype)
    return src


def load_into(
    source: PyTree,
    *old: PyTree,
    like: PyTree | None = None,
    rename: Sequence[tuple[str | re.Pattern[str], str | None]] = (),
    skip: Pattern = (),
    strict: bool = True,
    cast: bool = False,
) -> tuple[PyTree, LoadReport]:
    """Copies ``source`` leaves into a tree shaped ``like``, by path, reporting what differs.

    Args:
      source: A loaded checkpoint tree, or the path of a checkpoint file or
        folder (any format :func:`ptp.load` reads). A safetensors file is
        memory-mapped: only the tensors copied into ``like`` are read from disk,
        each into an array of its own (the result does not change with the file).
        Torch tensors are read as NumPy arrays.
      *old: The old spelling ``load_into(target, source)`` (deprecated: it
        warns and still works for one release).
      like: The target: a freshly initialized (or abstract) tree; its
        structure, containers, boxes and shardings are kept, and its values
        stay where the source has nothing that fits. ``ptp.watch``'s
        statistics (paths under ``'ptp_watch'``) are optional on both sides:
        kept from ``like`` when the source lacks them, ignored in the source
        when ``like`` lacks them (a run resumes across adding ``watch``).
      rename: Ordered ``(pattern, replacement)`` pairs applied to source paths
        (first match wins, ``None`` drops the entry). A pattern is a glob whose
        wildcards are groups (``('backbone/**', r'body/\\1')``) or a compiled
        ``re.Pattern`` with its groups; a regex string is refused.
      skip: Patterns of target paths to keep as they are (e.g. a new head).
      strict: Raise on any missing, unexpected or mismatched entry; else keep
        the target's value for those and report them.
      cast: Cast source leaves to the target dtype instead of reporting a
        dtype mismatch.

    Returns:
      ``(params, report)``.

    Raises:
      StructureError: With ``strict``, naming every problem; always when two
        source paths map to one target path.
      TypeError: Without ``like``.
      FileNotFoundError, FormatError: For a ``source`` path, as :func:`ptp.load`.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> target = {'body': {'w': jnp.zeros(2)}, 'head': {'w': jnp.zeros(3)}}
      >>> source = {'backbone': {'w': jnp.ones(2)}, 'head': {'w': jnp.ones(10)}}
      >>> params, report = ptp.load_into(
      ...     source, like=target, rename=[('backbone/**', r'body/\\1')], skip='head/**')
      >>> params['body']['w'].tolist(), report.renamed, report.skipped
      ([1.0, 1.0], {'backbone/w': 'body/w'}, ('head/w',))
    """
    if old:  # load_into(target, source)
        if len(old) > 1 or like is not None:
            raise TypeError('load_into(source, like=target): give the target as like=')
        deprecated('ptp.load_into(target, source)', 'ptp.load_into(source, like=target)')
        source, like = old[0], source
    if like is None:
        raise TypeError('load_into(source, like=target): like= (the tree to fill) is missing')
    from_file = isinstance(source, (str, os.PathLike))
    if isinstance(source, (str, os.PathLike)):  # memory-mapped: a tensor is copied when used
        source = load(source, mmap=True)
    t_leaves, t_def, t_paths = flatten_with_paths(like)
    s_leaves, _, s_paths = flatten_with_paths(source)
    provided, origin, renamed, dropped = _renamed_source(s_paths, s_leaves, list(rename))
    skip_pred = compile_pattern(skip) if skip else (lambda _: False)
    fill, drop = watch_plan(
        {p: unbox(x) for p, x in zip(t_paths, t_leaves)},
        {p: (np.shape(x), getattr(x, 'dtype', None)) for p, x in provided.items()},
    )
    out, loaded, missing, skipped = [], [], [], []
    shape_mm: dict[str, tuple[str, str]] = {}
    dtype_mm: dict[str, tuple[str, str]] = {}
    for p, x in zip(t_paths, t_leaves):
        tgt = unbox(x)
        if skip_pred(p):
            skipped.append(p)
            out.append(x)
            continue
        if p in fill:  # watch's statistics the source lacks or holds for another setup
            out.append(x)
            continue
        if p not in provided:
            missing.append(p)
            out.append(x)
            continue
        src = provided[p]
        if tuple(np.shape(src)) != tuple(np.shape(tgt)):
            shape_mm[p] = (describe(tgt), describe(src))
            out.append(x)
            continue
        src = _with_target_dtype(src, tgt, cast)
        if src is None:
            dtype_mm[p] = (describe(tgt), describe(provided[p]))
            out.append(x)
            continue
        loaded.append(p)
        if from_file and isinstance(src, np.ndarray):
            # tgt's slices on this process's devices (each read once) where it has a
            # sharding, else the process's own copy: never a view of the file
            src = own_copy(place(src, tgt, cast))
        out.append(rebox(x, _put_like(src, tgt)))
    known = set(t_paths)
    unexpected = [origin[p] for p in provided if p not in known and p not in drop]
    report = LoadReport(
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatch=shape_mm,
        dtype_mismatch=dtype_mm,
        skipped=tuple(skipped),
        renamed=renamed,
        dropped=tuple(dropped),
    )
    if strict and not report.ok:
        raise StructureError(
            'load_into(strict=True): the source does not fit the target:\n  '
            + '\n  '.join(report.problems())
            + '\nUse rename=, skip= or strict=False (mismatches then keep the target value).'
        )
    return jax.tree_util.tree_unflatten(t_def, out), report
