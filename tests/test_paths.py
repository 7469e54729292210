"""Tests for the path grammar (get/set/update/select/mask/labels/partition)."""

from __future__ import annotations

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Pair, containers, trees
from flax import nnx
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st

import pytreeparams as ptp

MLP_PATHS = [
    'params/layers_0/bias',
    'params/layers_0/kernel',
    'params/layers_2/bias',
    'params/layers_2/kernel',
]


def test_paths_of_linen_mlp(mlp_params):
    assert ptp.paths(mlp_params) == MLP_PATHS
    assert ptp.paths(freeze(mlp_params)) == MLP_PATHS


def test_paths_sequences_namedtuples_and_none():
    tree = {'blocks': [{'w': 1}, {'w': 2}], 'pair': Pair(3, None), 'skip': None}
    assert ptp.paths(tree) == ['blocks/0/w', 'blocks/1/w', 'pair/first']


def test_paths_follow_jax_flatten_order():
    tree = {'b': (1, 2), 'a': {'z': 3, 'y': 4}}
    assert list(ptp.flatten(tree).values()) == jax.tree_util.tree_leaves(tree)


def test_paths_of_optax_state():
    state = optax.adam(1e-3).init({'w': jnp.ones(2)})
    assert ptp.paths(state) == ['0/count', '0/mu/w', '0/nu/w']


def test_get_leaf_and_subtree(mlp_params):
    chex.assert_trees_all_equal(
        ptp.get(mlp_params, 'params/layers_2/bias'), mlp_params['params']['layers_2']['bias']
    )
    sub = ptp.get(freeze(mlp_params), ('params', 'layers_0'))
    assert isinstance(sub, FrozenDict)
    assert ptp.get(mlp_params, '') is mlp_params


def test_get_sequence_index_by_string_or_int():
    tree = {'blocks': [{'w': 1}, {'w': 2}]}
    assert ptp.get(tree, 'blocks/1/w') == 2
    assert ptp.get(tree, ('blocks', 1, 'w')) == 2


def test_get_error_names_keys_and_nearest_path(mlp_params):
    with pytest.raises(ptp.PathError) as e:
        ptp.get(mlp_params, 'params/layers_1/bias')
    msg = str(e.value)
    assert msg.startswith("no key 'layers_1' under 'params'")
    assert "(while resolving 'params/layers_1/bias')" in msg
    assert "Keys there: 'layers_0', 'layers_2'." in msg
    assert "Did you mean 'params/layers_" in msg
    assert isinstance(e.value, KeyError)


def test_get_error_descending_into_leaf(mlp_params):
    with pytest.raises(ptp.PathError, match=r"'params/layers_2/bias' is a leaf \(float32\[1\]\)"):
        ptp.get(mlp_params, 'params/layers_2/bias/x')


def test_leading_slash_is_rejected():
    with pytest.raises(ptp.PathError, match="Did you mean 'a/b'"):
        ptp.get({'a': {'b': 1}}, '/a/b')


def test_error_never_prints_whole_tree():
    tree = {f'k{i}': {'w': np.zeros(3)} for i in range(100)}
    with pytest.raises(ptp.PathError) as e:
        ptp.get(tree, 'nope/w')
    assert '(88 more)' in str(e.value)
    assert len(str(e.value)) < 600


def test_set_returns_new_tree_and_shares_subtrees(mlp_params):
    frozen = freeze(mlp_params)
    new = ptp.set(frozen, 'params/layers_2/bias', jnp.ones(1))
    assert isinstance(new, FrozenDict)
    assert isinstance(new['params'], FrozenDict)
    chex.assert_trees_all_equal(new['params']['layers_2']['bias'], jnp.ones(1))
    chex.assert_trees_all_equal(frozen['params']['layers_2']['bias'], jnp.zeros(1))
    assert new['params']['layers_0']['kernel'] is frozen['params']['layers_0']['kernel']


def test_set_checks_shape_dtype_and_structure(mlp_params):
    with pytest.raises(ptp.StructureError, match=r'expected float32\[1\], got float32\[2\]'):
        ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(2))
    with pytest.raises(ptp.StructureError, match=r'expected float32\[1\], got int32\[1\]'):
        ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(1, jnp.int32))
    with pytest.raises(ptp.StructureError, match="missing 1 path: 'kernel'"):
        ptp.set(mlp_params, 'params/layers_2', {'bias': jnp.ones(1)})
    new = ptp.set(mlp_params, 'params/layers_2/bias', jnp.ones(2), check=False)
    assert new['params']['layers_2']['bias'].shape == (2,)


def test_set_missing_path_is_path_error(mlp_params):
    with pytest.raises(ptp.PathError, match="no key 'layers_3'"):
        ptp.set(mlp_params, 'params/layers_3/bias', jnp.ones(1))


def test_update_and_map_with_path(mlp_params, maybe_jit):
    frozen = freeze(mlp_params)
    new = maybe_jit(lambda p: ptp.update(p, '**/bias', lambda b: b + 1))(frozen)
    assert isinstance(new, FrozenDict)
    chex.assert_trees_all_equal(new['params']['layers_0']['bias'], jnp.ones(8))
    chex.assert_trees_all_equal(
        new['params']['layers_0']['kernel'], frozen['params']['layers_0']['kernel']
    )
    chex.assert_trees_all_equal(frozen['params']['layers_0']['bias'], jnp.zeros(8))
    names = ptp.map_with_path(frozen, lambda p, x: p)
    assert names['params']['layers_2']['kernel'] == 'params/layers_2/kernel'


def test_get_set_under_jit(mlp_params, maybe_jit):
    @maybe_jit
    def f(p):
        b = ptp.get(p, 'params/layers_2/bias')
        return ptp.set(p, 'params/layers_2/bias', b + 2.0)

    out = f(mlp_params)
    chex.assert_trees_all_close(out['params']['layers_2']['bias'], jnp.full(1, 2.0))


def test_select_glob_regex_and_lists(mlp_params):
    assert list(ptp.select(mlp_params, '**/kernel')) == [
        'params/layers_0/kernel',
        'params/layers_2/kernel',
    ]
    assert list(ptp.select(mlp_params, 'params/layers_[2]/*')) == [
        'params/layers_2/bias',
        'params/layers_2/kernel',
    ]
    assert list(ptp.select(mlp_params, re.compile(r'.*_0/b.*'))) == ['params/layers_0/bias']
    assert len(ptp.select(mlp_params, ['**/bias', re.compile('.*layers_2/kernel')])) == 3
    assert ptp.select(mlp_params, 'params/layers_?/bias').keys() == {
        'params/layers_0/bias',
        'params/layers_2/bias',
    }
    # '*' stays within one key, '**' crosses keys
    assert ptp.select(mlp_params, '*/kernel', missing_ok=True) == {}
    assert len(ptp.select(mlp_params, '**')) == 4
    assert len(ptp.select(mlp_params, 'params/**/bias')) == 2
    assert len(ptp.select({'bias': 1}, '**/bias')) == 1
    assert len(ptp.select(mlp_params, 'params/layers_[!0]/*')) == 2


def test_select_no_match_error_text(mlp_params):
    with pytest.raises(ptp.PathError) as e:
        ptp.select(mlp_params, 'params/layers_2')
    msg = str(e.value)
    assert "pattern 'params/layers_2' matches none of the 4 paths." in msg
    assert "write 'params/layers_2/**'" in msg
    assert 'missing_ok=True' in msg


def test_mask_with_optax_adamw_on_frozen_and_dict(mlp_params):
    for params in (mlp_params, freeze(mlp_params)):
        mask = ptp.mask(params, '**/kernel')
        assert type(mask) is type(params)
        tx = optax.adamw(learning_rate=0.1, weight_decay=0.5, mask=mask)
        state = tx.init(params)
        zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
        updates, _ = tx.update(zero_grads, state, params)
        # Zero gradients: only decayed (masked) leaves move.
        chex.assert_trees_all_close(
            updates['params']['layers_0']['kernel'],
            -0.1 * 0.5 * params['params']['layers_0']['kernel'],
        )
        for path in ('params/layers_0/bias', 'params/layers_2/bias'):
            np.testing.assert_array_equal(ptp.get(updates, path), 0.0)
        masked = optax.masked(optax.sgd(1.0), mask)
        upd, _ = masked.update(jax.tree_util.tree_map(jnp.ones_like, params), masked.init(params))
        np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/kernel'), -1.0)
        np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/bias'), 1.0)


def test_labels_with_multi_transform(mlp_params):
    params = freeze(mlp_params)
    lab = ptp.labels(params, [('**/bias', 'frozen'), ('params/layers_0/*', 'fast')], default='slow')
    assert isinstance(lab, FrozenDict)
    assert ptp.flatten(lab) == {
        'params/layers_0/bias': 'frozen',
        'params/layers_0/kernel': 'fast',
        'params/layers_2/bias': 'frozen',
        'params/layers_2/kernel': 'slow',
    }
    tx = optax.multi_transform(
        {'frozen': optax.set_to_zero(), 'fast': optax.sgd(1.0), 'slow': optax.sgd(0.5)}, lab
    )
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params))
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_0/bias'), 0.0)
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_0/kernel'), -1.0)
    np.testing.assert_array_equal(ptp.get(upd, 'params/layers_2/kernel'), -0.5)


def test_labels_errors(mlp_params):
    with pytest.raises(
        ptp.StructureError, match=r"no rule matches 2 paths: 'params/layers_0/bias'"
    ):
        ptp.labels(mlp_params, {'**/kernel': 'a'})
    with pytest.raises(ptp.PathError, match="labels: rule pattern '\\*\\*/scale' matches none"):
        ptp.labels(mlp_params, {'**/scale': 'a'}, default='b')


def test_partition_combine_under_grad(mlp_params, maybe_jit):
    x = jnp.ones((2, 4))
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    frozen_part, train_part = ptp.partition(mlp_params, 'params/layers_0/**')
    assert ptp.paths(frozen_part) == MLP_PATHS[:2]
    assert ptp.paths(train_part) == MLP_PATHS[2:]

    def loss(train):
        return jnp.sum(net.apply(ptp.combine(frozen_part, train), x) ** 2)

    g = maybe_jit(jax.grad(loss))(train_part)
    full = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(mlp_params)
    assert ptp.paths(g) == MLP_PATHS[2:]
    chex.assert_trees_all_close(
        ptp.get(g, 'params/layers_2/kernel'), ptp.get(full, 'params/layers_2/kernel')
    )
    chex.assert_trees_all_equal(ptp.combine(frozen_part, train_part), mlp_params)


def test_combine_errors():
    with pytest.raises(ptp.StructureError, match='two trees fill the same leaf'):
        ptp.combine({'a': 1}, {'a': 2})
    with pytest.raises(ptp.StructureError, match='different structures'):
        ptp.combine({'a': 1}, {'b': None})


def test_flatten_unflatten(mlp_params):
    flat = ptp.flatten(mlp_params)
    assert list(flat) == MLP_PATHS
    nested = ptp.unflatten(flat)
    chex.assert_trees_all_equal(nested, mlp_params)
    frozen = freeze(mlp_params)
    back = ptp.unflatten(flat, like=frozen)
    assert isinstance(back, FrozenDict) and isinstance(back['params']['layers_0'], FrozenDict)
    with pytest.raises(ptp.StructureError) as e:
        ptp.unflatten({'params/layers_0/bias': 1, 'params/extra': 2}, like=frozen)
    assert "missing 3 paths: 'params/layers_0/kernel'" in str(e.value)
    assert "unexpected 1 path: 'params/extra'" in str(e.value)
    with pytest.raises(ptp.StructureError, match="'a' is a leaf and also the parent of 'a/b'"):
        ptp.unflatten({'a': 1, 'a/b': 2})


def test_nnx_state_paths_and_boxes():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(2, 3, rngs=rngs)
            self.shared = self.l0
            self.blocks = nnx.List([nnx.Linear(3, 3, rngs=rngs)])

    state = nnx.state(Net(nnx.Rngs(0)))
    assert ptp.paths(state) == ['blocks/0/bias', 'blocks/0/kernel', 'l0/bias', 'l0/kernel']
    kernel = ptp.get(state, 'l0/kernel')
    assert isinstance(kernel, jax.Array) and kernel.shape == (2, 3)
    assert ptp.get(state, ('blocks', 0, 'bias')).shape == (3,)
    new = ptp.set(state, 'l0/bias', jnp.ones(3))
    assert type(new) is type(state)
    box = new['l0']['bias']
    assert isinstance(box, nnx.Param)
    np.testing.assert_array_equal(box.get_value(), np.ones(3))
    assert isinstance(state['l0']['bias'], nnx.Param)
    np.testing.assert_array_equal(state['l0']['bias'].get_value(), np.zeros(3))
    m = ptp.mask(state, '**/kernel')
    assert type(m) is type(state)
    assert ptp.flatten(m)['l0/kernel'] is True
    back = ptp.unflatten(ptp.flatten(state), like=state)
    assert isinstance(back['l0']['kernel'], nnx.Param)


def test_partitioned_boxes_are_transparent():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(
                3, kernel_init=nn.with_partitioning(nn.initializers.ones, (None, 'model'))
            )(x)

    variables = M().init(jax.random.key(0), jnp.ones((1, 2)))
    assert ptp.paths(variables) == ['params/Dense_0/bias', 'params/Dense_0/kernel']
    k = ptp.get(variables, 'params/Dense_0/kernel')
    assert isinstance(k, jax.Array) and k.shape == (2, 3)
    new = ptp.update(variables, '**/kernel', lambda x: x * 2)
    box = new['params']['Dense_0']['kernel']
    assert isinstance(box, nn.Partitioned) and box.names == (None, 'model')
    np.testing.assert_array_equal(box.value, 2.0)
    new2 = ptp.set(variables, 'params/Dense_0/kernel', jnp.zeros((2, 3)))
    assert isinstance(new2['params']['Dense_0']['kernel'], nn.Partitioned)


def test_abstract_trees(mlp_params):
    abstract = jax.eval_shape(lambda: mlp_params)
    assert ptp.paths(abstract) == MLP_PATHS
    assert isinstance(ptp.get(abstract, 'params/layers_0/kernel'), jax.ShapeDtypeStruct)
    assert ptp.describe(ptp.get(abstract, 'params/layers_0/kernel')) == 'float32[4,8]'


def test_flax_struct_dataclass():
    from flax import struct

    @struct.dataclass
    class S:
        w: jax.Array
        step: int = struct.field(pytree_node=False, default=0)

    s = S(w=jnp.ones(2), step=3)
    assert ptp.paths({'s': s}) == ['s/w']
    new = ptp.set({'s': s}, 's/w', jnp.zeros(2))
    assert isinstance(new['s'], S) and new['s'].step == 3


def test_duplicate_path_strings_are_an_error():
    @functools.total_ordering
    class K:  # sortable keys whose string forms collide
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            return isinstance(other, K) and self.v == other.v

        def __lt__(self, other):
            return self.v < other.v

        def __hash__(self):
            return hash(self.v)

        def __str__(self):
            return 'k'

    with pytest.raises(ptp.StructureError, match="same path 'k'"):
        ptp.paths({K(1): 1, K(2): 2})
    with pytest.raises(ptp.StructureError, match='keys of different types'):
        ptp.paths({1: 1, '1': 2})
    with pytest.raises(ptp.StructureError, match=r"'a/b'.*contains \"/\""):
        ptp.paths({'a/b': 1, 'a': {'b': 2}})


_ODD_KEYS = st.one_of(
    st.sampled_from(['', '/', 'a/b', 'a/', '/a', 'x', 'y', ' ', '.', 'a.b']),
    st.integers(-3, 3),
    st.text(max_size=3),
)


@st.composite
def _odd_trees(draw, depth=2):
    """Dicts (plain or frozen) and lists whose keys may be empty, hold '/' or be ints."""
    if depth == 0 or draw(st.booleans()):
        return np.float32(draw(st.integers(-5, 5)))
    if draw(st.booleans()):
        return [draw(_odd_trees(depth - 1)) for _ in range(draw(st.integers(1, 2)))]
    keys = draw(st.lists(_ODD_KEYS, min_size=1, max_size=3, unique_by=str))
    keys = [k for k in keys if isinstance(k, type(keys[0]))]  # JAX sorts a dict's keys
    node = {k: draw(_odd_trees(depth - 1)) for k in keys}
    if all(isinstance(k, str) for k in keys) and draw(st.booleans()):
        return FrozenDict(node)
    return node


@given(_odd_trees())
def test_odd_keys_round_trip_or_are_refused_at_the_first_call(tree):
    """Keys that are empty or hold '/' are refused by the first path function
    (StructureError naming the key and a tuple path that reads it); every other
    tree, int keys included, round-trips through flatten/unflatten(like=) and
    set(get) at every node, with its containers."""
    keys = [
        str(getattr(e, 'key', getattr(e, 'idx', None)))
        for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
        for e in kp
    ]
    if any(k == '' or '/' in k for k in keys):
        for fn in (ptp.paths, ptp.flatten, lambda t: ptp.summary(t, stats=False)):
            with pytest.raises(ptp.StructureError, match='Rename the key first'):
                fn(tree)
        return
    flat = ptp.flatten(tree)
    back = ptp.unflatten(flat, like=tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    chex.assert_trees_all_equal(back, tree)
    for path in [p for p in flat] + ['']:
        node = ptp.get(tree, path)
        again = ptp.set(tree, path, node)
        assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(tree)
        chex.assert_trees_all_equal(again, tree)


def test_describe():
    assert ptp.describe(jnp.zeros((4, 8))) == 'float32[4,8]'
    assert ptp.describe(jnp.zeros((), jnp.bfloat16)) == 'bfloat16[]'
    assert ptp.describe(jax.ShapeDtypeStruct((3,), jnp.int8)) == 'int8[3]'
    assert ptp.describe(None) == 'None'
    assert ptp.describe('x') == 'str'


# --- properties ------------------------------------------------------------


@given(trees())
def test_flatten_unflatten_round_trip(tree):
    flat = ptp.flatten(tree)
    back = ptp.unflatten(flat, like=tree)
    assert containers(back) == containers(tree)
    chex.assert_trees_all_equal(back, tree)
    assert list(flat) == ptp.paths(tree)


@given(trees(), st.data())
def test_set_get_round_trip(tree, data):
    paths = ptp.paths(tree)
    if not paths:
        return
    p = data.draw(st.sampled_from(paths))
    value = np.zeros_like(ptp.get(tree, p))
    new = ptp.set(tree, p, value)
    assert ptp.get(new, p) is value
    assert containers(new) == containers(tree)
    others = {k: v for k, v in ptp.flatten(tree).items() if k != p}
    for k, v in others.items():
        assert ptp.get(new, k) is v


@given(trees(), st.sampled_from(['**', '*', '**/0', '[ab]*/**', 'x']))
def test_partition_combine_round_trip(tree, pattern):
    matched, rest = ptp.partition(tree, pattern, missing_ok=True)
    back = ptp.combine(matched, rest)
    assert containers(back) == containers(tree)
    chex.assert_trees_all_equal(back, tree)
    m = ptp.mask(tree, pattern, missing_ok=True)
    assert ptp.paths(m) == ptp.paths(tree)
    assert [k for k, v in ptp.flatten(m).items() if v] == ptp.paths(matched)


def test_set_takes_what_get_gives_on_frozendicts():
    fd = FrozenDict({'p': {'d': {'x': jnp.ones(2)}}})
    back = ptp.set(fd, 'p/d', ptp.get(fd, 'p/d'))
    assert isinstance(back, FrozenDict)
    chex.assert_trees_all_equal(back, fd)
    plain = {'p': {'d': {'x': jnp.ones(2)}}}
    assert type(ptp.set(plain, 'p', FrozenDict(plain['p']))['p']) is dict


def test_path_caches_are_thread_safe():
    """8 threads selecting on trees of many structures (more than the cache holds)."""
    import concurrent.futures

    from pytreeparams import _flatten

    trees_ = [
        {f'k{i}': {'kernel': np.zeros(1), f'b{j}': np.zeros(1)}}
        for i in range(40)
        for j in range(10)
    ]

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(300):
            t = trees_[rng.integers(len(trees_))]
            assert len(ptp.select(t, '**/kernel')) == 1
        return True

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))
    assert len(_flatten.PATHS_CACHE) <= _flatten.CACHE_SIZE


def test_every_hint_names_a_call_that_works():
    """Each message's suggestion is run, and works."""
    tree = {'a/b': 1, 'x': {'k': jnp.ones((2, 2))}}
    with pytest.raises(ptp.PathError, match=re.escape("as a tuple, ('a/b',)")):
        ptp.get(tree, 'a/b')
    assert ptp.get(tree, ('a/b',)) == 1
    tree = {'a': 1, 'x': {'k': jnp.ones((2, 2))}}
    with pytest.raises(ptp.PathError, match='missing_ok=True') as e:
        ptp.select(tree, 'nope')
    assert ptp.select(tree, 'nope', missing_ok=True) == {}
    for call in (
        lambda: ptp.labels(tree, {'nope': 'x'}),
        lambda: ptp.summary(tree, select='nope'),
        lambda: ptp.dead_units(tree, 'nope'),
        lambda: ptp.reinit(tree, jax.random.key(0), {'nope': jax.nn.initializers.zeros}),
    ):
        with pytest.raises(ptp.PathError) as e:
            call()
        assert 'missing_ok' not in str(e.value), str(e.value)
    with pytest.raises(ptp.StructureError, match=re.escape("Ties({'a': 'b'})")):
        ptp.Ties({'a': 'b', 'b': 'a'})
    assert ptp.Ties({'a': 'b'}).aliases == ('a',)
    with pytest.raises(ValueError, match=re.escape('write "[[]"')):
        ptp.select({'[': 1}, '[]]')
    assert list(ptp.select({'[': 1, 'a': 2}, '[[]')) == ['[']
    with pytest.raises(ptp.StructureError, match=re.escape("only in the source ['c']")):
        ptp.untie(
            {
                'enc': {'a': jnp.ones(2), 'c': jnp.ones(2)},
                'dec': {'a': jnp.ones(2), 'b': jnp.ones(2)},
            },
            ptp.Ties({'dec': 'enc'}),
        )


def test_combine_history_and_stats_raise_the_library_errors_with_what_exists():
    """combine([a, b]) is refused with the call that works; an unknown History
    path is a PathError naming the recorded paths; unknown statistic names
    suggest the closest."""
    matched, rest = ptp.partition({'w': 1.0, 'b': 0.0}, 'w')
    with pytest.raises(ptp.StructureError, match=re.escape('ptp.combine(*trees)')):
        ptp.combine([matched, rest])
    assert ptp.combine(*[matched, rest]) == {'b': 0.0, 'w': 1.0}
    with pytest.raises(KeyError, match="Did you mean 'mean'"):
        ptp.stats({'w': jnp.ones(2)})['mena']
    hist = ptp.History()
    hist.append(0, ptp.grad_stats({'dense': {'kernel': jnp.ones((2, 2))}}))
    with pytest.raises(ptp.PathError, match="Did you mean 'dense/kernel'"):
        hist.array('dense/kernal', 'grad_norm')
    with pytest.raises(KeyError, match="Did you mean 'grad_norm'"):
        hist.array('dense/kernel', 'grad_nrom')


def test_jax_key_paths_are_paths_too():
    """Path strings equal jax's keystr(simple, '/'); a jax key path works wherever a
    path does; map_with_path can hand fn the key path. On NNX and optax trees."""
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    trees_ = [
        nnx.state(model),
        optax.adam(1e-3).init({'w': jnp.ones(2), 'b': [jnp.zeros(1)]}),
        freeze({'params': {'layers_0': {'kernel': jnp.ones((2, 2))}}}),
    ]

    def is_box(x):  # boxes (NNX Variables) are transparent in paths, as the docs say
        return isinstance(x, nnx.Variable)

    entries = (jax.tree_util.DictKey, jax.tree_util.SequenceKey, jax.tree_util.GetAttrKey)

    def is_kp(x):
        return isinstance(x, tuple) and bool(x) and all(isinstance(e, entries) for e in x)

    for tree in trees_:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)
        want = [jax.tree_util.keystr(kp, simple=True, separator='/') for kp, _ in flat]
        assert ptp.paths(tree) == want
        for kp, box in flat:
            leaf = box.get_value() if isinstance(box, nnx.Variable) else box
            got = ptp.get(tree, kp)
            assert got is leaf or np.array_equal(got, leaf)
        kps = ptp.map_with_path(tree, lambda kp, x: kp, key_paths=True)
        assert jax.tree.leaves(kps, is_leaf=is_kp) == [kp for kp, _ in flat]
    kp = jax.tree_util.tree_flatten_with_path(trees_[2])[0][0][0]
    new = ptp.set(trees_[2], kp, jnp.zeros((2, 2)))
    assert isinstance(new, FrozenDict) and float(new['params']['layers_0']['kernel'].sum()) == 0
