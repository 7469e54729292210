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

from ._errors import PathError, StructureError
from ._messages import no_match_message
from ._patterns import compile_pattern

__all__ = ['layer_paths', 'stacked_axes']


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
