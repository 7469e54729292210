"""Models for the benchmarks: a GPT-2-small-like transformer and a deep MLP."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Block(nn.Module):
    d: int
    heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        h = nn.LayerNorm(name='ln_1')(x)
        qkv = nn.Dense(3 * d, name='c_attn')(h).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        att = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(d // self.heads)
        att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -1e9)
        y = jnp.einsum('bhqk,bkhd->bqhd', nn.softmax(att, -1), v).reshape(b, t, d)
        x = x + nn.Dense(d, name='c_proj')(y)
        h = nn.LayerNorm(name='ln_2')(x)
        h = nn.Dense(d, name='mlp_proj')(nn.gelu(nn.Dense(4 * d, name='c_fc')(h)))
        return x + h


class GPT2(nn.Module):
    """GPT-2 small (124M with a tied head). ``head='attend'`` ties with
    ``Embed.attend``; ``head='dense'`` has its own ``lm_head`` (for ``ptp.Ties``)."""

    vocab: int = 50257
    ctx: int = 1024
    d: int = 768
    layers: int = 12
    heads: int = 12
    head: str = 'attend'

    @nn.compact
    def __call__(self, tokens):
        wte = nn.Embed(self.vocab, self.d, name='wte')
        x = wte(tokens) + nn.Embed(self.ctx, self.d, name='wpe')(jnp.arange(tokens.shape[1]))
        for i in range(self.layers):
            x = Block(self.d, self.heads, name=f'h_{i}')(x)
        x = nn.LayerNorm(name='ln_f')(x)
        if self.head == 'attend':
            return wte.attend(x)
        return nn.Dense(self.vocab, use_bias=False, name='lm_head')(x)


class DeepMLP(nn.Module):
    layers: int = 24
    width: int = 1024

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


def lm_loss(logits, tokens):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()
