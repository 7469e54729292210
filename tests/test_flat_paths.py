"""A flat {path: leaf} mapping (what select returns) is a tree every path
function takes (issue 26.9): its '/'-joined keys are the keys they join."""

import chex
import jax
import jax.numpy as jnp
import pytest

import pytreeparams as ptp

TREE = {
    'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)},
    'out': {'kernel': jnp.full((3,), 2.0)},
}


@pytest.fixture
def flat():
    return ptp.select(TREE, '**/kernel')


def test_select_result_is_counted_summarized_and_flattened(flat):
    assert list(flat) == ['dense/kernel', 'out/kernel']
    assert ptp.count(flat) == 9 and ptp.nbytes(flat) == 36
    assert ptp.paths(flat) == ['dense/kernel', 'out/kernel']
    assert ptp.flatten(flat) == flat
    s = ptp.summary(flat, depth=1)
    assert [(g.path, g.size) for g in s.groups] == [('dense', 6), ('out', 3)]
    assert ptp.unflatten(flat) == {'dense': {'kernel': flat['dense/kernel']}, 'out': {
        'kernel': flat['out/kernel']}}  # fmt: skip
    chex.assert_trees_all_equal(ptp.unflatten(ptp.flatten(flat), like=flat), flat)


@pytest.mark.parametrize('wrap', [lambda f: f, jax.jit], ids=['eager', 'jit'])
def test_patterns_get_and_set_resolve_joined_keys(flat, wrap):
    assert list(wrap(lambda t: ptp.select(t, 'dense/*'))(flat)) == ['dense/kernel']
    assert ptp.mask(flat, 'out/**') == {'dense/kernel': False, 'out/kernel': True}
    doubled = wrap(lambda t: ptp.update(t, 'out/*', lambda x: 2 * x))(flat)
    chex.assert_trees_all_equal(doubled['out/kernel'], jnp.full((3,), 4.0))
    want = {'dense/kernel': 'a', 'out/kernel': 'b'}
    assert ptp.labels(flat, {'dense/**': 'a', '**': 'b'}) == want
    assert ptp.get(flat, 'out/kernel') is flat['out/kernel']
    assert ptp.get(flat, ('out', 'kernel')) is flat['out/kernel']
    new = wrap(lambda t: ptp.set(t, 'out/kernel', jnp.zeros(3)))(flat)
    assert list(new) == list(flat) and float(new['out/kernel'].sum()) == 0.0
    gs = ptp.grad_stats(flat)
    assert gs.paths == ('dense/kernel', 'out/kernel')


def test_an_ambiguous_or_empty_part_is_still_refused():
    with pytest.raises(ptp.StructureError, match="two leaves have the same path 'a/b'"):
        ptp.count({'a/b': jnp.ones(1), 'a': {'b': jnp.ones(1)}})
    for key in ('a//b', '/a', 'a/'):
        with pytest.raises(ptp.StructureError, match='Rename the key first'):
            ptp.paths({key: 1.0})
    with pytest.raises(ptp.PathError, match="no key 'x' under 'dense'"):
        ptp.get({'dense/kernel': 1.0, 'dense': {'b': 2.0}}, 'dense/x')


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack'])
def test_saving_a_flat_mapping_asks_for_the_nested_tree(tmp_path, flat, suffix):
    path = str(tmp_path / f'f{suffix}')
    with pytest.raises(ptp.StructureError, match=r"save: the key 'dense/kernel' at 'the root' "
                       r"holds '/'.*ptp.save\(path, ptp.unflatten\(tree\)\)"):  # fmt: skip
        ptp.save(path, flat)
    assert not (tmp_path / f'f{suffix}').exists()
    ptp.save(path, ptp.unflatten(flat))
    assert ptp.flatten(ptp.load(path)).keys() == flat.keys()
