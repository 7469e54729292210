"""Checks that a built wheel holds every file of the package (``.ci/run`` runs it).

Usage: ``python tools/check_wheel.py dist/wheel/pytreeparams-*.whl``. Fails, naming
them, if a module or ``py.typed`` of ``pytreeparams/`` (sub-packages included) is
missing from the wheel, e.g. a sub-package that ``pyproject.toml`` does not list.
"""

from __future__ import annotations

import pathlib
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def package_files() -> set[str]:
    """The files a wheel must hold: every module of the package, and ``py.typed``."""
    pkg = ROOT / 'pytreeparams'
    files = [*pkg.rglob('*.py'), pkg / 'py.typed']
    return {f.relative_to(ROOT).as_posix() for f in files if '__pycache__' not in f.parts}


def missing_from(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return sorted(package_files() - set(z.namelist()))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    missing = missing_from(argv[0])
    if missing:
        print(f'{argv[0]} lacks {len(missing)} package files: {", ".join(missing)}')
        return 1
    print(f'{argv[0]}: all {len(package_files())} package files present')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
