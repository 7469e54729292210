"""Tests for _flatten: paths, flatten and unflatten (cached), odd keys."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Pair, containers, trees
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


@given(_odd_trees())
def test_odd_keys_round_trip_or_are_refused_at_the_first_call(tree):
    """Keys that are empty or have an empty part between '/' are refused by the
    first path function (StructureError naming the key and a tuple path that
    reads it), and so are keys holding '/' that give two leaves one path; every
    other tree, int keys and flat {path: leaf} keys ('a/b') included,
    round-trips through flatten/unflatten(like=) and set(get) at every node,
    with its containers."""
    key_paths = [
        [str(getattr(e, 'key', getattr(e, 'idx', None))) for e in kp]
        for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    if any('' in k.split('/') for keys in key_paths for k in keys):
        for fn in (ptp.paths, ptp.flatten, lambda t: ptp.summary(t, stats=False)):
            with pytest.raises(ptp.StructureError, match='Rename the key first'):
                fn(tree)
        return
    joined = ['/'.join(keys) for keys in key_paths]
    if len(set(joined)) < len(joined):
        for fn in (ptp.paths, ptp.flatten, lambda t: ptp.summary(t, stats=False)):
            with pytest.raises(ptp.StructureError, match='two leaves have the same path'):
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


@given(trees())
def test_flatten_unflatten_round_trip(tree):
    flat = ptp.flatten(tree)
    back = ptp.unflatten(flat, like=tree)
    assert containers(back) == containers(tree)
    chex.assert_trees_all_equal(back, tree)
    assert list(flat) == ptp.paths(tree)


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


def _adam_state():
    params = {'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}}
    return params, optax.adam(1e-3).init(params)


def test_is_leaf_as_jax_tree_util_takes_it_on_optax_and_nnx_trees():
    """With ``is_leaf`` the paths are jax's (keystr, simple, '/') for the same
    is_leaf; flatten gives the chosen nodes whole, and unflatten(like=) puts
    them back."""
    from flax import nnx

    _, state = _adam_state()
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    flat_kp = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_adam)[0]
    want = [jax.tree_util.keystr(kp, simple=True, separator='/') for kp, _ in flat_kp]
    assert ptp.paths(state, is_leaf=is_adam) == want == ['0']
    flat = ptp.flatten(state, is_leaf=is_adam)
    assert isinstance(flat['0'], optax.ScaleByAdamState)
    back = ptp.unflatten(flat, like=state, is_leaf=is_adam)
    chex.assert_trees_all_equal(back, state)
    assert type(back) is type(state)

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    st_ = nnx.state(model)
    whole = lambda x: isinstance(x, nnx.State) and 'kernel' in x  # noqa: E731
    assert ptp.paths(st_) == ['bias', 'kernel']
    assert ptp.paths(st_, is_leaf=whole) == ['']  # the root itself is the one leaf
    assert ptp.paths(st_, is_leaf=lambda x: False) == ptp.paths(st_)  # boxes stay leaves
