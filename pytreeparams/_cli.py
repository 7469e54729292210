"""The ``pytreeparams`` command line: ``demo``, ``summary FILE``, ``diff A B``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='pytreeparams',
        description='Inspect JAX/Flax parameter trees and checkpoint files.',
    )
    sub = p.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='run the built-in tour on the D2L MLP')
    demo.add_argument('--steps', type=int, default=300, help='training steps (default 300)')
    demo.add_argument('--out', default=None, help='folder for the plot (default: a temp dir)')
    demo.add_argument('--plain', action='store_true', help='plain text even if rich is installed')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == 'demo':
        from ._demo import run_demo

        return run_demo(steps=args.steps, out=args.out, plain=args.plain)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
