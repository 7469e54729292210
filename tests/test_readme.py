"""The README's Python examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parent.parent / 'README.md'


@pytest.mark.heavy
def test_readme_python_blocks_run():
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}  # blocks build on each other, as a reader runs them in order
    for block in blocks:
        exec(compile(block, str(README), 'exec'), namespace)


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first = re.search(r'```bash\n(.*?)```', text, flags=re.S).group(1)
    assert 'python -m pytreeparams demo' in first
    command = re.search(r"^pip install -e '\.\[test\]' && pytest.*$", first, flags=re.M).group(0)
    ci = (README.parent / '.ci' / 'run').read_text()
    assert command in ci.splitlines()  # the same command, flags and all
