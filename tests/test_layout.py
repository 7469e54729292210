"""The package's layout rules (issue 15), checked on its source."""

from __future__ import annotations

import ast
import pathlib

import pytreeparams as ptp

ROOT = pathlib.Path(ptp.__file__).parent
MODULES = sorted(ROOT.glob('*.py'))


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or '').startswith('pytreeparams')
        ):
            yield node


def test_no_module_imports_a_private_name_of_another():
    """Names used across modules are the package's internal API: no leading underscore."""
    bad = [
        f'{f.name}:{node.lineno} imports {a.name} from {node.module}'
        for f in MODULES
        for node in _imports(ast.parse(f.read_text()))
        for a in node.names
        if a.name.startswith('_')
    ]
    assert bad == []


def test_package_imports_are_at_the_top_of_each_module():
    """No import of a package module hides inside a function: the graph is in plain sight."""
    bad = []
    for f in MODULES:
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bad += [f'{f.name}:{n.lineno} in {fn.name}' for n in _imports(fn)]
    assert bad == []


def test_the_ground_floor_is_a_one_way_stack():
    """messages <- keys <- flatten <- paths <- patterns: each imports only those below."""
    stack = ['_errors', '_typing', '_messages', '_leaves', '_keys', '_flatten', '_paths', '_patterns']
    for i, name in enumerate(stack):
        tree = ast.parse((ROOT / f'{name}.py').read_text())
        used = {node.module for node in _imports(tree)}
        assert used <= set(stack[:i]), (name, used - set(stack[:i]))


def test_the_suite_runs_with_its_xla_flags_unless_told_otherwise():
    """tests/conftest.py adds the fast-compiling XLA:CPU flags to XLA_FLAGS (workers
    and subprocesses inherit them); PYTREEPARAMS_TEST_XLA_FLAGS='' keeps XLA's defaults."""
    import os

    from conftest import FAST_XLA_FLAGS

    flags = os.environ.get('XLA_FLAGS', '')
    if os.environ.get('PYTREEPARAMS_TEST_XLA_FLAGS', FAST_XLA_FLAGS):
        assert os.environ.get('PYTREEPARAMS_TEST_XLA_FLAGS', FAST_XLA_FLAGS) in flags
    else:
        assert '--xla_backend_optimization_level=0' not in flags
