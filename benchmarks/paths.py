"""select and mask over a 5,000-leaf tree against hand-written code, same run.

Run: python benchmarks/paths.py
"""

from __future__ import annotations

import re
import sys

import jax
import numpy as np
from _common import fmt_s, interleaved
from flax import traverse_util

import pytreeparams as ptp
from pytreeparams import _flatten, _patterns


def make_tree(n_layers: int = 2500):
    """5,000 leaves: n_layers Dense(44->44) layers of kernel and bias."""
    return {
        'params': {
            f'layers_{i}': {
                'kernel': np.zeros((44, 44), np.float32),
                'bias': np.zeros(44, np.float32),
            }
            for i in range(n_layers)
        }
    }


def _key(k) -> str:
    for attr in ('key', 'idx', 'name'):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def hand_select(tree, rx):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for kp, x in leaves:
        s = '/'.join(_key(k) for k in kp)
        if rx.fullmatch(s):
            out[s] = x
    return out


def hand_mask(tree, rx):
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: rx.fullmatch('/'.join(_key(k) for k in kp)) is not None, tree
    )


def flax_mask(tree, rx):
    return traverse_util.path_aware_map(lambda p, x: rx.fullmatch('/'.join(p)) is not None, tree)


def main() -> None:
    tree = make_tree()
    assert len(ptp.paths(tree)) == 5000
    rx = re.compile(r'params/layers_\d*[02468]/kernel')
    glob = 'params/layers_*[02468]/kernel'
    assert list(ptp.select(tree, glob)) == list(hand_select(tree, rx))
    assert ptp.mask(tree, glob) == hand_mask(tree, rx) == flax_mask(tree, rx)
    res = interleaved(
        {
            'ptp.select': lambda: ptp.select(tree, glob),
            'ptp.select cold': lambda: (
                _flatten.PATHS_CACHE.clear(),
                _patterns.MATCH_CACHE.clear(),
                ptp.select(tree, glob),
            ),
            'hand select': lambda: hand_select(tree, rx),
            'ptp.mask': lambda: ptp.mask(tree, glob),
            'hand mask (tree_map_with_path)': lambda: hand_mask(tree, rx),
            'flax path_aware_map mask': lambda: flax_mask(tree, rx),
        },
        rounds=21,
    )
    print(f'python {sys.version.split()[0]}, jax {jax.__version__}, 5,000 leaves, warm median')
    print('| operation | ptp | baseline | baseline time | ratio ptp/baseline |')
    print('|---|---|---|---|---|')
    rows = [
        ('select', 'ptp.select', 'hand select'),
        ('select, cold (path caches cleared)', 'ptp.select cold', 'hand select'),
        ('mask', 'ptp.mask', 'hand mask (tree_map_with_path)'),
        ('mask', 'ptp.mask', 'flax path_aware_map mask'),
    ]
    for op, ours, base in rows:
        print(
            f'| {op} | {fmt_s(res[ours])} | {base} | {fmt_s(res[base])} | '
            f'{res[ours] / res[base]:.3f} |'
        )


if __name__ == '__main__':
    main()
