"""Tests for _messages: every hint names a call that works; errors name what exists."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import pytreeparams as ptp


def test_every_hint_names_a_call_that_works():
    """Each message's suggestion is run, and works."""
    tree = {'a/b': 1, 'x': {'k': jnp.ones((2, 2))}}
    # a key holding '/' is the keys it joins (issue 26.9): both spellings reach it
    assert ptp.get(tree, 'a/b') == ptp.get(tree, ('a/b',)) == 1
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
