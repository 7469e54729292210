"""Tests for _rows: a row's fields (notes, aliases)."""

from __future__ import annotations

import jax.numpy as jnp

import pytreeparams as ptp


def test_a_note_is_text_and_an_alias_is_a_field():
    tree = {'a': jnp.ones(5), 'b': jnp.ones(5), 'c': jnp.ones(5)}
    s = ptp.summary(tree, notes={'a': 'alias of old checkpoint'})
    assert s.totals.size == 15
    t = ptp.summary(tree, ties=ptp.Ties({'b': 'a'}))
    assert t.totals.size == 10 and [r.alias for r in t.rows] == [False, True, False]


def test_group_rows_pool_by_the_scaled_merge():
    """Issue 24.5: group and total rows pool with _moments' scaled merge: leaves
    of +1e200 and -1e200 give std 1e200 and l2 sqrt(6) * 1e200 (was inf), values
    near 1e-200 keep their norm (was 0)."""
    import numpy as np

    import pytreeparams as ptp
    from pytreeparams._rows import combine_rows

    tree = {'a': np.full(3, 1e200), 'b': np.full(3, -1e200), 'c': np.full(4, 1e-200)}
    rows = ptp.summary(tree).rows
    big = combine_rows('g', rows[:2])
    assert big.mean == 0.0 and big.std == 1e200
    np.testing.assert_allclose(big.l2, np.sqrt(6) * 1e200, rtol=1e-15)
    tiny = combine_rows('t', [rows[2], rows[2]])
    np.testing.assert_allclose([tiny.mean, tiny.l2], [1e-200, np.sqrt(8) * 1e-200], rtol=1e-15)
    assert tiny.std == 0.0
