"""summary(notes=): each note reaches its row and the rendered table (issue 27)."""

from __future__ import annotations

import jax.numpy as jnp

import pytreeparams as ptp


def test_notes_reach_their_rows_and_the_table():
    tree = {'a': jnp.ones(5), 'b': jnp.ones(3)}
    s = ptp.summary(tree, notes={'a': 'from old checkpoint'})
    assert [(r.path, r.note) for r in s.rows] == [('a', 'from old checkpoint'), ('b', '')]
    text = str(s)
    assert 'note' in text.splitlines()[0]
    assert next(ln for ln in text.splitlines() if ln.startswith('a ')).endswith(
        'from old checkpoint'
    )
    assert 'note' not in str(ptp.summary(tree)).splitlines()[0]  # no notes, no column


def test_a_tie_note_and_a_user_note_meet_in_one_column():
    tree = {'a': jnp.ones(5), 'b': jnp.ones(5), 'c': jnp.ones(2)}
    s = ptp.summary(tree, notes={'c': 'frozen'}, ties=ptp.Ties({'b': 'a'}))
    notes = {r.path: r.note for r in s.rows}
    assert notes['c'] == 'frozen' and notes['a'] == ''
    assert 'a' in notes['b']  # the alias names its source
