"""Writes notebooks/parameter_management.ipynb from the tour (pytreeparams/_tour.py).

Run `python tools/build_notebook.py` to write the cells, then
`python tools/build_notebook.py --execute` to run them and keep the outputs
(needs `pip install -e '.[test]'` and torch). The tour is the one source: edit
`pytreeparams/_tour.py`, never the notebook.
"""

import pathlib
import sys

import nbformat as nbf

from pytreeparams._tour import CELLS

OUT = pathlib.Path(__file__).resolve().parent.parent / 'notebooks' / 'parameter_management.ipynb'


def build() -> nbf.NotebookNode:
    """The notebook of the tour's cells, without outputs."""
    make = {'markdown': nbf.v4.new_markdown_cell, 'code': nbf.v4.new_code_cell}
    nb = nbf.v4.new_notebook(cells=[make[kind](source) for kind, source in CELLS])
    nb.metadata['kernelspec'] = {
        'name': 'python3',
        'display_name': 'Python 3',
        'language': 'python',
    }
    nb.metadata['language_info'] = {'name': 'python'}
    return nb


if __name__ == '__main__':
    nb = build()
    if '--execute' in sys.argv:
        import nbclient

        nbclient.NotebookClient(
            nb,
            timeout=300,
            kernel_name='python3',
            resources={'metadata': {'path': str(OUT.parent)}},
        ).execute()
    nbf.write(nb, str(OUT))
