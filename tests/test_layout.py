"""The package's layout rules (issues 15 and 27), checked on its source.

``ARCHITECTURE.md``'s tables of modules and layers are the rules: every module
(and sub-package) is named there once, under its layer, and imports only what
is above it in those tables. Sub-packages are entered only through their
``__init__``.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re
import subprocess
import sys

import pytest

import pytreeparams as ptp

ROOT = pathlib.Path(ptp.__file__).parent
REPO = ROOT.parent
MODULES = sorted(f for f in ROOT.rglob('*.py') if '__pycache__' not in f.parts)
SUBPACKAGES = sorted(d.name for d in ROOT.iterdir() if (d / '__init__.py').is_file())
ARCHITECTURE = REPO / 'ARCHITECTURE.md'


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or '').startswith('pytreeparams')
        ):
            yield node


def _unit(f: pathlib.Path) -> str:
    """The top-level unit a file belongs to: ``'_io'`` -> ``'_files/'``, ``'_keys'``."""
    rel = f.relative_to(ROOT).parts
    return rel[0] + '/' if len(rel) > 1 else f.stem


def _targets(f: pathlib.Path, node: ast.ImportFrom) -> list[tuple[str, ...]]:
    """The package paths an import names, from the package root: ``('_files', '_io')``."""
    if node.level:
        base = list(f.relative_to(ROOT).parts[:-1])
        base = base[: len(base) - (node.level - 1)]
    else:
        base = []
    parts = [p for p in (node.module or '').split('.') if p]
    if not node.level:
        parts = parts[1:]  # 'pytreeparams.x' -> ['x']
    target = tuple(base + parts)
    if node.module is None:  # from . import _x
        return [(*target, a.name) for a in node.names]
    return [target]


def read_layers(text: str | None = None) -> list[tuple[str, list[str]]]:
    """``ARCHITECTURE.md``'s layers, in order: ``(title, [unit, ...])``; a unit is a
    module name (``'_keys'``) or a sub-package (``'_files/'``)."""
    text = ARCHITECTURE.read_text() if text is None else text
    layers: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = re.match(r'^### Layer (\d+): (.+)$', line)
        if head:
            assert int(head.group(1)) == len(layers) + 1, line
            layers.append((head.group(2), []))
            continue
        row = re.match(r'^\| `([\w/]+)` \|', line)
        if row and layers:
            layers[-1][1].append(row.group(1))
    return layers


def _order() -> dict[str, tuple[int, int]]:
    """Each unit's ``(layer, position)`` in the tables."""
    return {u: (i, j) for i, (_, units) in enumerate(read_layers()) for j, u in enumerate(units)}


def test_architecture_names_every_module_once_under_its_layer():
    layers = read_layers()
    assert [t for t, _ in layers][:2] == ['the ground floor', 'naming things in a tree']
    named = [u for _, units in layers for u in units]
    assert len(named) == len(set(named)), [u for u in named if named.count(u) > 1]
    actual = {_unit(f) for f in MODULES}
    assert set(named) == actual, (sorted(set(named) - actual), sorted(actual - set(named)))


def test_architecture_names_each_member_of_a_subpackage_in_its_row():
    text = ARCHITECTURE.read_text()
    for pkg in SUBPACKAGES:
        row = re.search(rf'^\| `{pkg}/` \|(.*)$', text, flags=re.M).group(1)
        members = {f.stem for f in (ROOT / pkg).glob('*.py') if f.stem != '__init__'}
        assert members, pkg
        assert {m for m in members if f'`{m}`' not in row} == set(), pkg


def _upward_imports(f: pathlib.Path, source: str) -> list[str]:
    """The imports in ``source`` (the text of ``f``) of units not above ``f``'s in the tables."""
    order = _order()
    me = _unit(f)
    bad = []
    for node in _imports(ast.parse(source)):
        for target in _targets(f, node):
            if not target:  # `from . import x` inside a sub-package: its own members
                continue
            other = target[0] + '/' if target[0] in SUBPACKAGES else target[0]
            if other != me and not order[other] < order[me]:
                bad.append(f'{f.relative_to(ROOT)}:{node.lineno} imports {other}')
    return bad


def test_imports_run_down_the_architecture_tables():
    """A module imports only units of lower layers, or of its own layer listed above it."""
    assert [b for f in MODULES for b in _upward_imports(f, f.read_text())] == []


def test_the_layer_rule_catches_an_upward_import():
    """The rule above is not vacuous: an import up the tables, or into a face, fails it."""
    cases = {
        ROOT / '_messages.py': 'from ._summary import summary',
        ROOT / '_keys.py': 'from ._flatten import flatten',  # the same layer, listed below
        ROOT / '_files' / '_io.py': 'from .._load import load_into',
        ROOT / '_summary.py': 'from ._cli import main',
    }
    for f, source in cases.items():
        assert len(_upward_imports(f, source)) == 1, (f, source)
    assert _upward_imports(ROOT / '_load.py', 'from ._files import load') == []


def test_subpackages_are_entered_only_through_their_init():
    """Outside ``_files/`` (say), no module imports ``_files._io``: only ``_files``."""
    assert SUBPACKAGES == ['_files', '_moments']
    bad = []
    for f in MODULES:
        for node in _imports(ast.parse(f.read_text())):
            for target in _targets(f, node):
                inside = len(f.relative_to(ROOT).parts) > 1 and target[:1] == (
                    f.relative_to(ROOT).parts[0],
                )
                if len(target) > 1 and target[0] in SUBPACKAGES and not inside:
                    bad.append(f'{f.relative_to(ROOT)}:{node.lineno} imports {".".join(target)}')
    assert bad == []


def test_no_module_imports_a_private_name_of_another():
    """Names used across modules are the package's internal API: no leading underscore."""
    bad = [
        f'{f.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}'
        for f in MODULES
        for node in _imports(ast.parse(f.read_text()))
        if node.module is not None
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
                bad += [f'{f.relative_to(ROOT)}:{n.lineno} in {fn.name}' for n in _imports(fn)]
    assert bad == []


def test_pyproject_packages_cover_every_package_directory():
    """The wheel holds every sub-package: ``pyproject.toml`` finds them (a plain
    ``packages = ["pytreeparams"]`` would leave ``_files`` and ``_moments`` out).
    ``.ci/run`` also builds the wheel and checks its file list (tools/check_wheel.py)."""
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    config = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']
    packages = {
        '.'.join(d.relative_to(REPO).parts) for d in [ROOT, *(ROOT / p for p in SUBPACKAGES)]
    }
    assert all(list(d.glob('*.py')) == [] or (d / '__init__.py').is_file() for d in ROOT.rglob('*'))
    if 'packages' in config and isinstance(config['packages'], list):
        listed = set(config['packages'])
        assert packages <= listed, sorted(packages - listed)
    else:
        include = config['packages']['find']['include']
        assert all(any(fnmatch.fnmatch(p, pat) for pat in include) for p in packages), include
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'python tools/check_wheel.py' in ci


def test_check_wheel_names_what_a_wheel_lacks(tmp_path):
    import zipfile

    wheel = tmp_path / 'pytreeparams-0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as z:
        for f in MODULES:
            if f.parent == ROOT:
                z.writestr(f.relative_to(REPO).as_posix(), '')
        z.writestr('pytreeparams/py.typed', '')
    out = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'check_wheel.py'), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert 'pytreeparams/_files/_io.py' in out.stdout
    assert 'pytreeparams/_moments/_engine.py' in out.stdout
    assert 'pytreeparams/_keys.py' not in out.stdout


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


def test_pytest_runs_without_xdist():
    """``pytest`` starts without pytest-xdist: its flags live in the README's test command
    and ``.ci/run``, not in ``addopts``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTEST_', 'PYTEST'))}
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'pytest',
            '-p',
            'no:xdist',
            '-q',
            '-p',
            'no:randomly',
            '--co',
            'tests/test_readme.py',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'pytest',
            '-p',
            'no:xdist',
            '-q',
            'tests/test_readme.py::test_readme_opens_with_the_two_commands',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert '1 passed' in out.stdout
