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
    s = sub.add_parser('summary', help="print a checkpoint file's parameter summary")
    s.add_argument('file', help='a .safetensors or .msgpack file, or an Orbax directory')
    s.add_argument('--depth', type=int, default=None, help='group by the first N keys')
    s.add_argument('--select', default=None, help="only paths matching this glob, e.g. '**/kernel'")
    s.add_argument('--no-stats', action='store_true', help='names, shapes and counts only')
    s.add_argument('--json', action='store_true', help='print {path/stat: value} as JSON')
    d = sub.add_parser('diff', help='print what differs between two checkpoint files')
    d.add_argument('a')
    d.add_argument('b')
    d.add_argument('--json', action='store_true', help='print the report as JSON')
    return p


def _err(msg: str) -> int:
    print(f'pytreeparams: error: {msg}', file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    if args.command == 'demo':
        from ._demo import run_demo

        return run_demo(steps=args.steps, out=args.out, plain=args.plain)
    import json

    from ._errors import FormatError, PathError
    from ._io import load
    from ._summary import diff, summary

    try:
        if args.command == 'summary':
            tree = load(args.file)
            s = summary(tree, stats=not args.no_stats, depth=args.depth, select=args.select)
            if args.json:
                print(json.dumps(s.to_dict(), indent=1, allow_nan=True))
            else:
                print(f'{args.file}: {s.totals.leaves} leaves, {s.totals.size:,} parameters')
                print(s)
            return 0
        if args.command == 'diff':
            r = diff(load(args.a), load(args.b))
            if args.json:
                print(
                    json.dumps(
                        {
                            'only_a': r.only_a,
                            'only_b': r.only_b,
                            'changed': r.changed,
                            'rel_change': r.rel_change,
                        },
                        indent=1,
                    )
                )
            else:
                print(r)
            return 0
    except FileNotFoundError as e:
        return _err(str(e).strip('"'))
    except (FormatError, PathError, ValueError) as e:
        return _err(str(e))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
