"""The library's messages: quoting, lists, "did you mean", mismatches.

Builders here take plain data (names, lists, counts), never trees or patterns,
so that every layer above can use them: the ground floor of the package.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Sequence

from ._errors import StructureError

MAX_KEYS_SHOWN = 12  # names listed in a message before '... (N more)'


def unspellable_key_message(key: str, keys: Sequence[str]) -> str:
    """Why a key cannot be spelled in a path string (empty, or holding '/')."""
    where = '/'.join(keys)
    what = 'is empty' if not key else 'contains "/"'
    return (
        f'the key {key!r} (in the leaf path {where!r}) {what}: path strings join keys with '
        f"'/', so this tree's paths would be ambiguous and would not unflatten to the same "
        f'tree. Rename the key first (its subtree can still be read with a tuple path, '
        f'ptp.get(tree, {tuple(keys[: keys.index(key) + 1])!r}))'
    )


def nearest(word: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.0)


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate (a close one only), else ''.

    Example:
      >>> did_you_mean('mena', ['mean', 'std'])
      " Did you mean 'mean'?"
    """
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' Did you mean {close[0]!r}?' if close else ''


def joined_list(items: Sequence[str], limit: int = MAX_KEYS_SHOWN) -> str:
    """Items (already formatted) joined by commas, at most ``limit``, then ``... (N more)``.

    Example:
      >>> joined_list([str(i) for i in range(14)])
      '0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (2 more)'
    """
    shown = ', '.join(items[:limit])
    return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')


def quote_list(items: Iterable[str], limit: int = MAX_KEYS_SHOWN) -> str:
    """Names quoted and joined (the one list quoting), truncated as :func:`joined_list`.

    Example:
      >>> quote_list(['a/b', 'c'])
      "'a/b', 'c'"
    """
    return joined_list([repr(i) for i in items], limit)


def plural(n: int, word: str) -> str:
    return f'{n} {word}' + ('' if n == 1 else 's')


def path_differences(
    missing: Sequence[str], unexpected: Sequence[str], where: str = ''
) -> list[str]:
    """The one wording of missing and unexpected paths: a part for each kind there is.

    Example:
      >>> path_differences(['a/b'], ['c', 'd'], where=' in source')
      ["missing 1 path in source: 'a/b'", "unexpected 2 paths in source: 'c', 'd'"]
    """
    return [
        f'{what} {plural(len(paths_), "path")}{where}: {quote_list(paths_)}'
        for what, paths_ in (('missing', missing), ('unexpected', unexpected))
        if paths_
    ]


def structure_mismatch_message(what: str, missing: Sequence[str], unexpected: Sequence[str]) -> str:
    parts = path_differences(missing, unexpected) or ['the same paths in another order']
    return f'{what}: ' + '; '.join(parts)


def no_match_message(
    patterns: Sequence[str], paths_: Sequence[str], missing_ok_hint: bool = False
) -> str:
    """The text of the error for a pattern that matches no path.

    Args:
      patterns: The text of each pattern (a glob, or a regex's source).
      paths_: The tree's leaf paths.
      missing_ok_hint: Add "Pass missing_ok=True": only for callers that take it.

    Returns:
      One paragraph: the pattern, the nearest paths, and how to match a subtree.
    """
    shown = repr(patterns[0]) if len(patterns) == 1 else repr(list(patterns))
    msg = f'pattern {shown} matches none of the {len(paths_)} paths.'
    if not paths_:
        return msg + ' The tree has no leaves.'
    near: list[str] = []
    for f in patterns:
        near += nearest(f, paths_, n=3)
    near = list(dict.fromkeys(near))[:3]
    if near:
        msg += f' Nearest paths: {quote_list(near)}.'
    for f in patterns:
        if any(p.startswith(f + '/') for p in paths_):
            msg += (
                f' Patterns match whole leaf paths: to select everything under {f!r}, '
                f'write {f + "/**"!r}.'
            )
            break
    if missing_ok_hint:
        msg += ' Pass missing_ok=True to allow no match.'
    return msg


def like_mismatch(
    path: str,
    missing: list[str],
    unexpected: list[str],
    bad: list[str],
    dtype_only: bool,
    partial_hint: bool | str,
) -> StructureError:
    """The error for a file that does not match ``like`` (every format).

    ``partial_hint``: False, True (suggest ``load_into``), or ``'torch'`` for a
    file in PyTorch's layout (suggest ``from_torch_state_dict``).
    """
    parts = path_differences(missing, unexpected)
    if bad:
        parts.append(f'mismatched {len(bad)}: ' + joined_list(bad))
    hints = ['Pass cast=True to convert to the dtypes of `like`'] if bad and dtype_only else []
    if partial_hint == 'torch':
        hints.append(
            f'The file is in PyTorch layout (dotted names): use '
            f'ptp.from_torch_state_dict({path!r}, like=like)'
        )
    elif partial_hint:
        hints.append(
            f'For a partial load use ptp.load_into(ptp.load({path!r}), like=like, strict=False), '
            'which returns (tree, report)'
        )
    return StructureError(
        f'load: {path!r} does not match `like`: '
        + '; '.join(parts)
        + ''.join(f'. {h}' for h in hints)
        + '.'
    )


def deprecated(old: str, new: str) -> None:
    """Warns (``DeprecationWarning``, at the caller's line) that ``old`` is spelled ``new`` now."""
    warnings.warn(
        f'{old} is deprecated and will be removed in the next release: write {new}',
        DeprecationWarning,
        stacklevel=3,
    )
