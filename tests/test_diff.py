"""Tests for _diff: what differs between two trees."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import pytreeparams as ptp


def test_diff_reports_missing_extra_reshaped_and_moved():
    a = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3), 'old': jnp.ones(1), 'same': jnp.ones(2)}
    b = {'w': jnp.ones((3, 2)), 'b': jnp.ones(3), 'new': jnp.ones(1), 'same': jnp.ones(2)}
    r = ptp.diff(a, b)
    assert r.only_a == ('old',) and r.only_b == ('new',)
    assert r.changed == {'w': ('float32[2,3]', 'float32[3,2]')}
    assert r.rel_change['b'] == float('inf') and r.rel_change['same'] == 0.0
    assert r.moved() == ['b'] and not r.same
    text = str(r)
    assert '- old  (only in a)' in text and '~ w  float32[2,3] -> float32[3,2]' in text
    c = {'w': jnp.array([3.0, 4.0])}
    np.testing.assert_allclose(ptp.diff(c, {'w': jnp.array([3.0, 5.0])}).rel_change['w'], 0.2)
    assert ptp.diff(c, c).same


def test_diff_of_identical_nan_trees_is_same_and_total_key_kept():
    t = {'a': jnp.array([1.0, jnp.nan]), 'b': jnp.ones(2)}
    r = ptp.diff(t, t)
    assert r.same and r.rel_change == {'a': 0.0, 'b': 0.0}
    d = ptp.summary({'total': jnp.ones(3), 'b': jnp.ones(2)}).to_dict()
    assert d['total/size'] == 3.0 and d['_total/size'] == 5.0


def test_diff_text_gives_the_absolute_change_beside_the_relative_one():
    """A zero-initialised leaf has no relative change to speak of (inf): the
    absolute change ||a - b|| says how far it moved."""
    r = ptp.diff(
        {'b': jnp.zeros(4), 'w': jnp.array([3.0, 4.0]), 's': 1.0, 'k': jnp.ones(2)},
        {'b': jnp.full(4, 0.5), 'w': jnp.array([3.0, 5.0]), 's': 3.0, 'k': jnp.ones(2)},
    )
    text = str(r)
    assert '  b  relative change inf, absolute 1.000e+00' in text
    assert '  w  relative change 2.000e-01, absolute 1.000e+00' in text
    assert '  s  relative change 2.000e+00, absolute 2.000e+00' in text
    assert r.abs_change == {'b': 1.0, 'w': 1.0, 's': 2.0, 'k': 0.0}
    assert 'absolute 1.000e+00' in r._repr_html_()
