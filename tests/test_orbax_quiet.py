"""Loads of ``CheckpointManager`` folders log nothing (issue 26.18): Orbax's
"Metadata file does not exist: .../<step>/<item>/_CHECKPOINT_METADATA" warning came
from asking a step's item folder for step metadata, which lives one folder up."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._files import _orbax

ocp = pytest.importorskip('orbax.checkpoint')

TREE = {'w': np.arange(6.0, dtype=np.float32), 'b': np.ones(3, np.float32)}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize('kind', ['standard', 'named', 'ptp'])
def test_loads_of_a_checkpoint_manager_folder_log_no_warning(tmp_path, caplog, kind):
    """Every read of a manager folder (whole, step=, select=, like=, the metadata of
    summary --no-stats) by items saved with StandardSave, a named Composite item and
    ptp.save into step folders: no absl warning, and the values are right."""
    root = tmp_path / 'mgr'
    if kind == 'ptp':
        root.mkdir()
        for step in (1, 2):
            ptp.save(str(root / str(step)), {k: v * step for k, v in TREE.items()})
    else:
        names = {'item_names': ('params',)} if kind == 'named' else {}
        with ocp.CheckpointManager(root, **names) as mgr:
            for step in (1, 2):
                item = ocp.args.StandardSave({k: v * step for k, v in TREE.items()})
                mgr.save(step, args=ocp.args.Composite(params=item) if names else item)
            mgr.wait_until_finished()
    like = {k: np.zeros_like(v) for k, v in TREE.items()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reads = [
            ptp.load(str(root)),
            ptp.load(str(root), step=1),
            ptp.load(str(root), select='w'),
            ptp.load(str(root), step=1, select='w'),
            ptp.load(str(root), like=like),
            _orbax.abstract_orbax(str(root)),
        ]
    assert _warnings(caplog) == []
    np.testing.assert_array_equal(reads[0]['w'], TREE['w'] * 2)
    np.testing.assert_array_equal(reads[1]['b'], TREE['b'])
    np.testing.assert_array_equal(reads[2]['w'], TREE['w'] * 2)
    np.testing.assert_array_equal(reads[3]['w'], TREE['w'])
    np.testing.assert_array_equal(reads[4]['b'], TREE['b'] * 2)
    assert reads[5]['w'].shape == (6,)


def test_other_absl_warnings_still_show(caplog):
    """Nothing is filtered: the reads ask Orbax's handler for the item's metadata."""
    from absl import logging as absl_logging

    with caplog.at_level(logging.INFO):
        absl_logging.warning('a warning of the user')
    assert _warnings(caplog) == ['a warning of the user']
