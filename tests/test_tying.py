"""Tests for _tying: Ties, tie/untie and tied_grads (under jit, with containers and boxes)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st

import pytreeparams as ptp

VOCAB, D = 50, 16


class TinyGPT(nn.Module):
    """GPT-2-like: embedding, one MLP block, LayerNorm, output projection."""

    tied_by_attend: bool = False

    @nn.compact
    def __call__(self, tokens):
        wte = nn.Embed(VOCAB, D, name='wte')
        x = wte(tokens)
        h = nn.Dense(4 * D, name='fc')(nn.LayerNorm(name='ln_1')(x))
        x = x + nn.Dense(D, name='proj')(nn.gelu(h))
        x = nn.LayerNorm(name='ln_f')(x)
        if self.tied_by_attend:
            return wte.attend(x)
        return nn.Dense(VOCAB, use_bias=False, name='lm_head')(x)


TIES = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})


def loss_of(model, params, tokens):
    logits = model.apply(params, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


class TwoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4, name='a')(x))
        x = nn.relu(nn.Dense(4, name='b')(x))
        return nn.Dense(1, name='out')(x)


Pair2 = __import__('collections').namedtuple('Pair2', ['first', 'second'])


class _Two(nnx.Module):
    def __init__(self, n: int):
        self.w = nnx.Param(jnp.arange(float(n)))
        self.v = nnx.Param(jnp.arange(float(n)))


@st.composite
def tied_trees(draw):
    """A tree holding a leaf ``x`` twice, in containers of every kind, and its Ties."""
    n = draw(st.integers(1, 4))
    x = jnp.arange(float(n)) * draw(st.sampled_from([1.0, -2.0]))
    kind = draw(st.sampled_from(['int_keys', 'frozen', 'list', 'namedtuple', 'nnx', 'partitioned']))
    if kind == 'int_keys':
        return {0: x, 1: x, 2: {'k': x}}, ptp.Ties({'1': '0'})
    if kind == 'frozen':
        return FrozenDict({'a': {'w': x}, 'b': {'w': x}}), ptp.Ties({'b': 'a'})
    if kind == 'list':
        return {'l': [x, {'w': x}], 'src': {'w': x}}, ptp.Ties({'l/1': 'src'})
    if kind == 'namedtuple':
        return {'p': Pair2(x, x), 'q': x}, ptp.Ties({'q': 'p/first'})
    if kind == 'nnx':
        return nnx.state(_Two(n)), ptp.Ties({'v': 'w'})
    box = nn.Partitioned(x, names=('model',))
    return {'a': box, 'b': nn.Partitioned(x, names=('model',))}, ptp.Ties({'b': 'a'})


@pytest.mark.heavy
def test_gpt_tied_head_matches_embed_attend(maybe_jit):
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, VOCAB)
    ref_model, model = TinyGPT(tied_by_attend=True), TinyGPT()
    ref_params = jax.jit(ref_model.init)(jax.random.key(0), tokens)
    compact = ref_params  # Embed.attend's params have no lm_head: already compact
    # the models are jitted in both variants: tie (and its gradient) is what runs
    # with and without jit
    full_loss = jax.jit(lambda p: loss_of(model, p, tokens))
    full = maybe_jit(lambda c: ptp.tie(c, TIES))(compact)
    assert ptp.paths(full) == sorted(ptp.paths(compact) + ['params/lm_head/kernel'])
    chex.assert_trees_all_close(
        jax.jit(model.apply)(full, tokens), jax.jit(ref_model.apply)(ref_params, tokens), atol=1e-6
    )

    g_ref = jax.jit(jax.grad(lambda p: loss_of(ref_model, p, tokens)))(ref_params)
    g = maybe_jit(jax.grad(lambda c: full_loss(ptp.tie(c, TIES))))(compact)
    chex.assert_trees_all_close(g, g_ref, atol=1e-6, rtol=1e-5)

    full_grads = jax.jit(jax.grad(full_loss))(full)
    parts = ptp.tied_grads(full_grads, TIES)['params/wte/embedding']
    assert set(parts) == {'params/wte/embedding', 'params/lm_head/kernel', 'sum'}
    chex.assert_trees_all_close(
        parts['params/lm_head/kernel'], full_grads['params']['lm_head']['kernel'].T
    )
    chex.assert_trees_all_close(
        parts['params/wte/embedding'] + full_grads['params']['lm_head']['kernel'].T,
        g['params']['wte']['embedding'],
        atol=1e-6,
    )
    chex.assert_trees_all_close(parts['sum'], g['params']['wte']['embedding'], atol=1e-6)


def test_two_separate_dense_layers_tied_against_untied_twin():
    x = jax.random.normal(jax.random.key(2), (3, 4))
    model = TwoDense()
    params = model.init(jax.random.key(0), x)
    ties = ptp.Ties({'params/b': 'params/a'})
    twin = ptp.set(params, 'params/b', ptp.get(params, 'params/a'))
    compact = ptp.untie(twin, ties)
    assert 'b' not in compact['params']
    loss = lambda p: jnp.sum(model.apply(p, x) ** 2)  # noqa: E731
    g_twin = jax.grad(loss)(twin)
    g = jax.grad(lambda c: loss(ptp.tie(c, ties)))(compact)
    for leaf in ('kernel', 'bias'):
        chex.assert_trees_all_close(
            g['params']['a'][leaf],
            g_twin['params']['a'][leaf] + g_twin['params']['b'][leaf],
            atol=1e-6,
        )
    # Optimizer state holds one copy; a few adam steps keep the alias equal to its source.
    tx = optax.adam(0.1)
    opt = tx.init(compact)
    assert ptp.count(opt) == 2 * ptp.count(compact) + 1
    for _ in range(3):
        grads = jax.grad(lambda c: loss(ptp.tie(c, ties)))(compact)
        upd, opt = tx.update(grads, opt, compact)
        compact = optax.apply_updates(compact, upd)
    full = ptp.tie(compact, ties)
    chex.assert_trees_all_equal(full['params']['a'], full['params']['b'])
    # Changing the source changes both uses.
    changed = ptp.tie(ptp.update(compact, 'params/a/bias', lambda b: b + 1), ties)
    chex.assert_trees_all_equal(changed['params']['b']['bias'], full['params']['a']['bias'] + 1)
    # Summaries count a tie once and mark the alias.
    s = ptp.summary(full, ties=ties)
    assert s.totals.size == ptp.count(compact)
    notes = {r.path: r.note for r in s.rows}
    assert notes['params/b/kernel'] == 'alias of params/a/kernel'
    assert 'alias of' in str(s)


def test_declaration_errors():
    with pytest.raises(ptp.StructureError, match="'b' is an alias .* and also a source .* a chain"):
        ptp.Ties({'b': 'a', 'c': 'b'})
    with pytest.raises(ptp.StructureError, match='a cycle'):
        ptp.Ties({'a': 'b', 'b': 'a'})
    with pytest.raises(ptp.StructureError, match='tied to itself'):
        ptp.Ties({'a': 'a'})
    with pytest.raises(ptp.StructureError, match='overlaps'):
        ptp.Ties({'x/y': 'a', 'x': 'b'})
    tree = {'a': jnp.ones((2, 3)), 'b': jnp.ones((2, 3))}
    with pytest.raises(ptp.PathError, match="no key 'z'"):
        ptp.untie(tree, ptp.Ties({'b': 'z'}))
    with pytest.raises(
        ptp.StructureError,
        match=r'transform gives float32\[3,2\] but the alias holds float32\[2,3\]',
    ):
        ptp.untie(tree, ptp.Ties({'b': ('a', ptp.transpose)}))
    with pytest.raises(ptp.StructureError, match="1 alias\\(es\\) differ from their source: 'b'"):
        ptp.untie({'a': jnp.ones(2), 'b': jnp.zeros(2)}, ptp.Ties({'b': 'a'}))
    loose = ptp.untie({'a': jnp.ones(2), 'b': jnp.zeros(2)}, ptp.Ties({'b': 'a'}), check=False)
    assert ptp.paths(loose) == ['a']


def test_frozen_containers_kept():
    tree = freeze({'p': {'a': jnp.ones(2), 'b': jnp.ones(2)}})
    ties = ptp.Ties({'p/b': 'p/a'})
    compact = ptp.untie(tree, ties)
    assert isinstance(compact, FrozenDict) and ptp.paths(compact) == ['p/a']
    full = jax.jit(lambda c: ptp.tie(c, ties))(compact)
    assert isinstance(full, FrozenDict) and ptp.paths(full) == ['p/a', 'p/b']


@given(st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_tie_untie_round_trip(n, m, frozen):
    w = jnp.arange(n * m, dtype=jnp.float32).reshape(n, m)
    tree = {
        'enc': {'w': w, 'b': jnp.ones(m)},
        'dec': {'w': w.T, 'b2': jnp.ones(m)},
        'x': jnp.ones(1),
    }
    tree = freeze(tree) if frozen else tree
    ties = ptp.Ties({'dec/w': ('enc/w', ptp.transpose), 'dec/b2': 'enc/b'})
    back = ptp.tie(ptp.untie(tree, ties), ties)
    assert type(back) is type(tree)
    chex.assert_trees_all_equal(back, tree)


@given(tied_trees())
def test_tie_of_untie_keeps_structure_containers_boxes_and_values(case):
    tree, ties = case
    back = ptp.tie(ptp.untie(tree, ties), ties)
    is_box = lambda x: isinstance(x, (nnx.Variable, nn.Partitioned))  # noqa: E731
    assert jax.tree_util.tree_structure(back, is_leaf=is_box) == jax.tree_util.tree_structure(
        tree, is_leaf=is_box
    )
    assert type(back) is type(tree)
    for (p1, a), (p2, b) in zip(
        jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0],
        jax.tree_util.tree_flatten_with_path(back, is_leaf=is_box)[0],
    ):
        assert p1 == p2 and type(a) is type(b)
    chex.assert_trees_all_equal(back, tree)


def test_tied_grads_match_subtrees_by_key_and_raise_on_mismatch():
    g = {
        'enc': {'a': jnp.ones(1), 'c': jnp.full(1, 2.0)},
        'dec': {'a': jnp.ones(1), 'b': jnp.ones(1)},
    }
    with pytest.raises(ptp.StructureError, match="only in the source \\['enc/c'\\]"):
        ptp.tied_grads(g, ptp.Ties({'dec': 'enc'}))
    ok = {
        'enc': {'a': jnp.ones(1), 'c': jnp.full(1, 2.0)},
        'dec': {'c': jnp.full(1, 5.0), 'a': jnp.ones(1)},
    }
    out = ptp.tied_grads(ok, ptp.Ties({'dec': 'enc'}))
    assert float(out['enc/c']['sum'][0]) == 7.0 and float(out['enc/a']['sum'][0]) == 2.0


def test_tie_untie_tied_grads_run_under_jit():
    ties = ptp.Ties({'b': ('a', ptp.transpose)})
    full = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.arange(6.0).reshape(2, 3).T}
    compact = jax.jit(lambda p: ptp.untie(p, ties, check=False))(full)
    chex.assert_trees_all_equal(compact, {'a': full['a']})
    chex.assert_trees_all_equal(jax.jit(lambda c: ptp.tie(c, ties))(compact), full)
    g = jax.jit(lambda f: ptp.tied_grads(f, ties))(full)
    chex.assert_trees_all_close(g['a']['sum'], full['a'] * 2)
