"""Stacked (scanned) layers: one row per layer instead of one per stacked leaf.

Large JAX models keep their layers stacked on a leading axis (``nn.scan``,
``nnx.scan``, vmapped stacks): ``'params/layers/mlp/kernel'`` of shape
``(24, d, 4 d)`` holds 24 layers. ``stacked={'params/layers': 0}`` names the
stacked subtree (a glob on node paths) and its layer axis; each of its leaves
then gives one row per layer, named with the layer index after the subtree:
``'params/layers/3/mlp/kernel'`` (as levanter's ``split_scan_layers`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import PathError, StructureError
from ._messages import no_match_message
from ._patterns import compile_pattern

__all__ = ['axes_from_metadata', 'layer_paths', 'resolve_stacked', 'stacked_axes']


def stacked_axes(
    paths: Sequence[str], shapes: Sequence[tuple[int, ...]], stacked: Mapping[str, int] | None
) -> list[tuple[str, int] | None]:
    """For each leaf, ``(stacked subtree path, axis)`` or None.

    Args:
      paths: Leaf paths.
      shapes: Their shapes.
      stacked: ``{glob on a subtree path: layer axis}``; the first pattern that
        matches a proper prefix of a leaf's path (the shortest prefix first) wins.

    Returns:
      One entry per leaf.

    Raises:
      PathError: If a pattern matches no subtree.
      StructureError: If a stacked leaf has no such axis, or the leaves of one
        subtree disagree on the number of layers.

    Example:
      >>> stacked_axes(['layers/w', 'head/w'], [(4, 2), (2,)], {'layers': 0})
      [('layers', 0), None]
    """
    if not stacked:
        return [None] * len(paths)
    rules = [(compile_pattern(p), p, int(a)) for p, a in stacked.items()]
    used: set[str] = set()
    out: list[tuple[str, int] | None] = []
    layers: dict[str, int] = {}
    for path, shape in zip(paths, shapes):
        keys = path.split('/')
        hit = None
        for k in range(1, len(keys)):
            prefix = '/'.join(keys[:k])
            hit = next(((prefix, a, text) for match, text, a in rules if match(prefix)), None)
            if hit is not None:
                break
        if hit is None:
            out.append(None)
            continue
        prefix, axis, text = hit
        used.add(text)
        if not -len(shape) <= axis < len(shape):
            raise StructureError(
                f'stacked: {path!r} (shape {tuple(shape)}) has no layer axis {axis}'
            )
        n = shape[axis]
        if layers.setdefault(prefix, n) != n:
            raise StructureError(
                f'stacked: the leaves under {prefix!r} hold {layers[prefix]} and {n} layers '
                f'(at {path!r}); one stacked subtree has one number of layers'
            )
        out.append((prefix, axis % len(shape)))
    for _, text, _ in rules:
        if text not in used:
            subtrees = sorted(
                {'/'.join(p.split('/')[:k]) for p in paths for k in range(1, p.count('/') + 1)}
            )
            raise PathError('stacked: ' + no_match_message([text], subtrees))
    return out


def layer_paths(path: str, prefix: str, n: int) -> list[str]:
    """The row names of a stacked leaf's ``n`` layers: the index after ``prefix``.

    Example:
      >>> layer_paths('layers/mlp/w', 'layers', 2)
      ['layers/0/mlp/w', 'layers/1/mlp/w']
    """
    rest = path[len(prefix) :]
    return [f'{prefix}/{i}{rest}' for i in range(n)]


def _axis_names(box: Any) -> tuple[Any, ...]:
    """The axis names a metadata box gives its array: ``nn.Partitioned.names``,
    or an NNX ``Variable``'s ``out_sharding`` (``sharding_names`` or ``sharding``
    in older flax)."""
    names = getattr(box, 'names', None)
    if names is None and hasattr(box, 'get_metadata'):
        meta = box.get_metadata()
        names = next(
            (meta[k] for k in ('out_sharding', 'sharding_names', 'sharding') if meta.get(k)), None
        )
    return tuple(names) if isinstance(names, (tuple, list)) else ()


def axes_from_metadata(paths: Sequence[str], boxes: Sequence[Any], name: str) -> dict[str, int]:
    """``{stacked subtree: axis}`` from flax's scan metadata.

    ``nn.scan(..., metadata_params={nn.PARTITION_NAME: name})`` and
    ``nnx.scan``/``nnx.vmap(..., transform_metadata={nnx.PARTITION_NAME: name})``
    put ``name`` into the partition names of every annotated parameter they
    stack (``nn.with_partitioning``, ``nnx.with_partitioning``). The stacked
    subtree is the deepest node holding all such leaves; its other leaves (a
    bias without annotation) are split on the same axis.

    Args:
      paths: Leaf paths.
      boxes: The leaves with their metadata boxes (not unboxed).
      name: The partition name of the stacked axis.

    Returns:
      A ``stacked`` mapping for one subtree.

    Raises:
      PathError: If no leaf names the axis.
      StructureError: If the annotated leaves disagree on its position, or
        share no subtree.

    Example:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> box = nn.Partitioned(jnp.ones((3, 2)), names=('layers', 'embed'))
      >>> axes_from_metadata(['params/layers/mlp/w', 'params/head/w'], [box, None], 'layers')
      {'params/layers/mlp': 0}
    """
    hits = []
    for path, box in zip(paths, boxes):
        names = _axis_names(box)
        if name in names:
            hits.append((path, names.index(name)))
    if not hits:
        raise PathError(
            f'stacked={name!r}: no leaf names the axis {name!r} in its partition metadata '
            f'(nn.scan(..., metadata_params={{nn.PARTITION_NAME: {name!r}}}) with '
            "nn.with_partitioning puts it there); or name the subtree: stacked={'params/layers': 0}"
        )
    axes = sorted({a for _, a in hits})
    if len(axes) > 1:
        raise StructureError(
            f'stacked={name!r}: the leaves that name the axis hold it at positions {axes}; '
            "name the subtree and axis instead: stacked={'params/layers': 0}"
        )
    parts = [p.split('/')[:-1] for p, _ in hits]
    common: list[str] = []
    for keys in zip(*parts):
        if len(set(keys)) > 1:
            break
        common.append(keys[0])
    if not common:
        raise StructureError(
            f'stacked={name!r}: the leaves that name the axis share no subtree '
            f'({hits[0][0]!r}, {hits[-1][0]!r}); name the subtrees: '
            "stacked={'encoder/layers': 0, 'decoder/layers': 0}"
        )
    return {'/'.join(common): axes[0]}


def resolve_stacked(
    stacked: Mapping[str, int] | str | None, paths: Sequence[str], boxes: Sequence[Any]
) -> Mapping[str, int] | None:
    """``stacked`` as a mapping: a string is a partition name (:func:`axes_from_metadata`)."""
    if isinstance(stacked, str):
        return axes_from_metadata(paths, boxes, stacked)
    return stacked
