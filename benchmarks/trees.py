"""Synthetic parameter trees shaped like real models (for the benchmarks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _normal(key, shape, dtype=jnp.float32, scale=0.02):
    return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _fill(spec: dict, seed: int = 0) -> dict:
    keys = iter(jax.random.split(jax.random.key(seed), 100_000))

    def rec(node):
        if isinstance(node, dict):
            return {k: rec(v) for k, v in node.items()}
        shape, dtype = node
        return _normal(next(keys), shape, dtype)

    return rec(spec)


def resnet50_spec() -> dict:
    """ResNet-50-like: 25.6M params incl. batch_stats, ~267 leaves."""
    params, stats = {}, {}
    params['conv_init'] = {'kernel': ((7, 7, 3, 64), jnp.float32)}
    params['bn_init'] = {'scale': ((64,), jnp.float32), 'bias': ((64,), jnp.float32)}
    stats['bn_init'] = {'mean': ((64,), jnp.float32), 'var': ((64,), jnp.float32)}
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            name = f'stage{stage}_block{b}'
            blk, bst = {}, {}
            convs = [((1, 1, cin, width)), ((3, 3, width, width)), ((1, 1, width, width * 4))]
            if b == 0:
                convs.append((1, 1, cin, width * 4))
            for i, shape in enumerate(convs):
                blk[f'conv{i}'] = {'kernel': (shape, jnp.float32)}
                c = shape[-1]
                blk[f'bn{i}'] = {'scale': ((c,), jnp.float32), 'bias': ((c,), jnp.float32)}
                bst[f'bn{i}'] = {'mean': ((c,), jnp.float32), 'var': ((c,), jnp.float32)}
            params[name], stats[name] = blk, bst
            cin = width * 4
    params['head'] = {'kernel': ((2048, 1000), jnp.float32), 'bias': ((1000,), jnp.float32)}
    return {'params': params, 'batch_stats': stats}


def gpt2_spec(layers: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024) -> dict:
    """GPT-2-small-like: 124.4M params, 148 leaves (head tied to wte)."""
    p = {
        'wte': {'embedding': ((vocab, d), jnp.float32)},
        'wpe': {'embedding': ((ctx, d), jnp.float32)},
    }
    for i in range(layers):
        p[f'h_{i}'] = {
            'ln_1': {'scale': ((d,), jnp.float32), 'bias': ((d,), jnp.float32)},
            'attn': {
                'c_attn': {'kernel': ((d, 3 * d), jnp.float32), 'bias': ((3 * d,), jnp.float32)},
                'c_proj': {'kernel': ((d, d), jnp.float32), 'bias': ((d,), jnp.float32)},
            },
            'ln_2': {'scale': ((d,), jnp.float32), 'bias': ((d,), jnp.float32)},
            'mlp': {
                'c_fc': {'kernel': ((d, 4 * d), jnp.float32), 'bias': ((4 * d,), jnp.float32)},
                'c_proj': {'kernel': ((4 * d, d), jnp.float32), 'bias': ((d,), jnp.float32)},
            },
        }
    p['ln_f'] = {'scale': ((d,), jnp.float32), 'bias': ((d,), jnp.float32)}
    return {'params': p}


def leaves5000_spec() -> dict:
    """5,000 leaves of ~1k params: 2,500 Dense(44->44) layers."""
    return {
        'params': {
            f'layers_{i}': {'kernel': ((44, 44), jnp.float32), 'bias': ((44,), jnp.float32)}
            for i in range(2500)
        }
    }


def llama_spec(layers: int = 22, d: int = 2048, ff: int = 5632, vocab: int = 32000) -> dict:
    """LLaMA-like 1.1B in bfloat16 (TinyLlama shapes), 201 leaves."""
    bf = jnp.bfloat16
    p = {'embed': {'embedding': ((vocab, d), bf)}}
    for i in range(layers):
        p[f'layers_{i}'] = {
            'attn': {
                'wq': ((d, d), bf),
                'wk': ((d, 256), bf),
                'wv': ((d, 256), bf),
                'wo': ((d, d), bf),
            },
            'mlp': {'w1': ((d, ff), bf), 'w2': ((ff, d), bf), 'w3': ((d, ff), bf)},
            'attn_norm': {'scale': ((d,), bf)},
            'mlp_norm': {'scale': ((d,), bf)},
        }
    p['norm'] = {'scale': ((d,), bf)}
    p['lm_head'] = {'kernel': ((d, vocab), bf)}
    return {'params': p}


SPECS = {
    'resnet50': resnet50_spec,
    'gpt2': gpt2_spec,
    '5000 leaves': leaves5000_spec,
    'llama 1.1B bf16': llama_spec,
}


def make(name: str, seed: int = 0) -> dict:
    tree = _fill(SPECS[name](), seed)
    jax.block_until_ready(tree)
    return tree


def flat_buffer_like(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    return jnp.ones((n,), leaves[0].dtype)
