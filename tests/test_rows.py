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
