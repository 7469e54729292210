"""The notebook is the tour's cells (one source) and runs top to bottom."""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).parent.parent / 'notebooks' / 'parameter_management.ipynb'


@pytest.mark.heavy
def test_notebook_executes():
    pytest.importorskip('torch', reason='the notebook runs the MLP in PyTorch')
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name='python3',
        resources={'metadata': {'path': str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = '\n'.join(
        o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
    )
    assert "['layers_0', 'layers_2', 'layers_6']" in outputs
    assert 'final loss' in outputs


def test_committed_notebook_has_outputs():
    import json

    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert code and all(c.get('execution_count') for c in code)
    assert sum(bool(c.get('outputs')) for c in code) >= len(code) // 2


def test_committed_notebook_is_the_tour():
    """The notebook holds exactly the cells of pytreeparams/_tour.py (the demo's
    source too): `python tools/build_notebook.py --execute` writes it."""
    import json

    from pytreeparams._tour import CELLS

    nb = json.loads(NOTEBOOK.read_text())
    cells = [(c['cell_type'], ''.join(c['source'])) for c in nb['cells']]
    assert cells == list(CELLS)
