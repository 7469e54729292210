"""The ``pytreeparams`` command line: ``demo``, ``summary FILE``, ``diff A B``.

Exit codes, as ``cmp`` and ``diff`` have them: 0 for success (``diff``: the
files hold the same tree), 1 when ``diff`` finds a difference, 2 for an error
(one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._demo import run_demo
from ._diff import diff
from ._errors import FormatError, PathError
from ._files import abstract_orbax, file_meta, format_of, load, scheme_of
from ._render import fmt_count, json_safe
from ._summary import summary
from ._tying import Ties


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='pytreeparams',
        description='Inspect JAX/Flax parameter trees and checkpoint files.',
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version('pytreeparams')
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        ver = 'unknown'
    p.add_argument('--version', action='version', version=f'pytreeparams {ver}')
    sub = p.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='run the built-in tour on the D2L MLP')
    demo.add_argument('--steps', type=int, default=300, help='training steps (default 300)')
    demo.add_argument('--out', default=None, help='folder for the plot (default: a temp dir)')
    demo.add_argument('--plain', action='store_true', help='plain text even if rich is installed')
    s = sub.add_parser('summary', help="print a checkpoint file's parameter summary")
    s.add_argument(
        'file', help='a .safetensors or .msgpack file, an Orbax or Hugging Face (sharded) folder'
    )
    s.add_argument(
        '--depth', type=int, default=None, help='group by the first N keys (0: totals only)'
    )
    s.add_argument('--select', default=None, help="only paths matching this glob, e.g. '**/kernel'")
    s.add_argument('--no-stats', action='store_true', help='names, shapes and counts only')
    s.add_argument(
        '--json',
        action='store_true',
        help="print {path/stat: value} as strict JSON (NaN, inf: 'NaN', 'Infinity', '-Infinity')",
    )
    look = s.add_mutually_exclusive_group()
    look.add_argument(
        '--rich', action='store_true', help='a rich table even when not on a terminal'
    )
    look.add_argument(
        '--plain', action='store_true', help='plain text even on a terminal with rich installed'
    )
    s.add_argument(
        '--step', type=int, default=None, help='Orbax CheckpointManager folder: the step to read'
    )
    d = sub.add_parser('diff', help='print what differs between two checkpoint files')
    d.add_argument('a', help='the reference checkpoint (file or Orbax directory)')
    d.add_argument('b', help='the checkpoint compared with it')
    d.add_argument(
        '--json',
        action='store_true',
        help="print the report as strict JSON (NaN, inf: 'NaN', 'Infinity', '-Infinity')",
    )
    return p


def _err(msg: str) -> int:
    line = ' '.join(str(msg).split('\n')[0].split())
    print(f'pytreeparams: error: {line}', file=sys.stderr)
    return 2


def _print_table(s: Any, args: argparse.Namespace) -> None:
    """A rich table on a terminal (or with --rich) when rich is installed, else text."""
    use_rich = not args.plain and (args.rich or sys.stdout.isatty())
    if use_rich:
        try:
            from rich.console import Console
        except ImportError:
            use_rich = False
    if use_rich:
        Console(highlight=False, soft_wrap=False).print(s)
    else:
        print(s)


def _file_ties(path: str, step: int | None) -> Ties | None:
    """The ties a file saved with ``ties=`` records (``load`` rebuilds the aliases)."""
    meta = file_meta(path, step)
    return Ties.from_json(meta['ties']) if meta.get('ties') else None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # e.g. `... --json | head`: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except Exception as e:  # every error one line, never a traceback
        return _err(f'{type(e).__name__}: {e}' if not str(e) else str(e).strip('"'))


def _read_for_summary(args: argparse.Namespace) -> Any:
    """What ``summary`` needs of the checkpoint. An Orbax folder is read from its
    metadata alone with ``--no-stats``, and only the selected arrays with
    ``--select``: a checkpoint larger than memory can be listed."""
    if (scheme_of(args.file) or os.path.isdir(args.file)) and format_of(args.file) == 'orbax':
        if args.no_stats:
            return abstract_orbax(args.file, args.step, args.select)
        if args.select is not None:
            return load(args.file, step=args.step, select=args.select)
    return load(args.file, step=args.step, mmap=True)  # read here, never handed out


def _run(args: argparse.Namespace) -> int:
    if args.command == 'demo':
        if args.steps < 1:
            return _err(f'--steps must be a positive number of training steps, got {args.steps}')
        if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
            return _err(f'--out {args.out!r} is a file; give a folder (it is created if missing)')
        return run_demo(steps=args.steps, out=args.out, plain=args.plain)
    try:
        if args.command == 'summary':
            if args.depth is not None and args.depth < 0:
                return _err(f'--depth must be 0 (totals only) or positive, got {args.depth}')
            tree = _read_for_summary(args)
            depth = args.depth or None
            ties = _file_ties(args.file, args.step)  # a tied tensor is counted once
            s = summary(tree, stats=not args.no_stats, depth=depth, select=args.select, ties=ties)
            full = s  # its leaf rows, also where --depth 0 leaves out the table
            if args.depth == 0:
                s = dataclasses.replace(s, rows=(), groups=(), depth=None)
            if args.json:
                print(json.dumps(json_safe(s.to_dict()), indent=1, allow_nan=False))
            else:
                # parameters apart from other state; a tied or shared tensor once
                n_state = full.state.size if full.state is not None else 0
                leaves = full.totals.leaves + (full.state.leaves if full.state else 0)
                state = f', {n_state:,} values of other state (running statistics, counters)'
                print(
                    f'{args.file}: {fmt_count(leaves, "leaf", "leaves")}, '
                    f'{fmt_count(full.totals.size, "parameter", "parameters")}'
                    + (state if n_state else '')
                )
                _print_table(s, args)
            return 0
        if args.command == 'diff':
            r = diff(load(args.a, mmap=True), load(args.b, mmap=True))
            if args.json:
                report = {
                    'only_a': r.only_a,
                    'only_b': r.only_b,
                    'changed': r.changed,
                    'rel_change': r.rel_change,
                    'abs_change': r.abs_change,
                }
                print(json.dumps(json_safe(report), indent=1, allow_nan=False))
            else:
                print(r)
            return 0 if r.same else 1
    except FileNotFoundError as e:
        return _err(str(e).strip('"'))
    except (FormatError, PathError, ValueError) as e:
        return _err(str(e))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
