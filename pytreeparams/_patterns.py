"""Patterns: the glob grammar, and selecting, masking, labelling, updating,
partitioning and combining leaves by pattern.

A *pattern* selects leaf paths. A string is a glob matched against the whole
path: ``*`` and ``?`` match within one key, ``**`` matches any number of whole
keys (``'**/kernel'`` matches ``'kernel'`` and ``'a/b/kernel'``), ``[...]`` is a
character class (``[!...]`` negates). A compiled ``re.Pattern`` is matched with
``fullmatch``. A list or tuple of patterns matches what any of them matches.
Matches are cached per tree structure and pattern.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ._errors import PathError, StructureError
from ._flatten import LRU, box_or, flatten_with_paths
from ._keys import rebox, unbox
from ._messages import deprecated, no_match_message, plural, quote_list
from ._typing import Leaf, Pattern, PyTree

MATCH_CACHE = LRU()


# --------------------------------------------------------------------------
# Patterns.


def glob_to_regex(glob: str, capture: bool = False) -> str:
    """Translates a path glob into a regular expression (for ``fullmatch``).

    Args:
      glob: ``*``/``?`` match within one key, ``**`` any number of keys,
        ``[...]`` a character class (``[!...]`` negated).
      capture: Make each wildcard a group (``\\1``, ``\\2``... in a rename's
        replacement); ``**/`` captures the keys with their trailing ``/``.

    Returns:
      The regular expression source.
    """
    grp = (lambda rx: f'({rx})') if capture else (lambda rx: rx)
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith('**', i):
            j = i + 2
            if j < n and glob[j] == '/':
                out.append('(.*/)?' if capture else '(?:.*/)?')
                i = j + 1
            else:
                out.append(grp('.*'))
                i = j
            continue
        if c == '*':
            out.append(grp('[^/]*'))
        elif c == '?':
            out.append(grp('[^/]'))
        elif c == '[':
            end = glob.find(']', i + 2 if glob.startswith('[!', i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end]
                negate = body.startswith('!')
                if negate:
                    body = body[1:]
                body = body.replace('\\', '\\\\').replace('[', '\\[')
                out.append(grp(f'[^/{body}]' if negate else f'[{body}]'))
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return ''.join(out)


_REGEX_ONLY = re.compile(r'[()|+^${}\\]|\.\*')


@functools.lru_cache(maxsize=1024)
def capture_pattern(pattern: str | re.Pattern[str], what: str) -> re.Pattern[str]:
    """The regex of a rename or conversion rule: a glob whose wildcards are
    groups, or a compiled ``re.Pattern`` as it is (one dialect everywhere).

    Raises:
      ValueError: For a string that is a regular expression (the old form),
        naming the two ways to write it now.
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    if _REGEX_ONLY.search(pattern):
        raise ValueError(
            f'{what}: {pattern!r} is a regular expression, but a string pattern is a glob '
            'everywhere in pytreeparams (each *, ** and ? is a group for \\1, \\2 in the '
            f'replacement). Write it as a glob, or pass re.compile({pattern!r}).'
        )
    return re.compile(glob_to_regex(pattern, capture=True))


@functools.lru_cache(maxsize=1024)
def _compile_one(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(glob_to_regex(pattern))
    except re.error as e:
        raise ValueError(
            f'the glob {pattern!r} is not valid ({e.msg}); a "[" opens a character class that '
            'needs a closing "]" (write "[[]" for a literal "[")'
        ) from None


def _pattern_key(pattern: Pattern) -> tuple[Any, ...]:
    if isinstance(pattern, (str, re.Pattern)):
        return (pattern,)
    if isinstance(pattern, Sequence) and all(isinstance(p, (str, re.Pattern)) for p in pattern):
        return tuple(pattern)
    raise TypeError(
        'a pattern is a glob string, a compiled re.Pattern or a list of them, '
        f'got {type(pattern).__name__}: {pattern!r}'
    )


def compile_pattern(pattern: Pattern) -> Callable[[str], bool]:
    """A predicate on path strings for ``pattern`` (see the module docstring)."""
    regexes = [_compile_one(p) for p in _pattern_key(pattern)]
    if len(regexes) == 1:
        fm = regexes[0].fullmatch
        return lambda s: fm(s) is not None
    return lambda s: any(r.fullmatch(s) is not None for r in regexes)


def pattern_texts(pattern: Pattern) -> list[str]:
    """The text of each pattern in ``pattern`` (a glob, or a regex's source), for messages."""
    return [p.pattern if isinstance(p, re.Pattern) else p for p in _pattern_key(pattern)]


def no_match_text(pattern: Pattern, paths_: Sequence[str], missing_ok_hint: bool = False) -> str:
    """The message for a pattern that matches no path, with the glob-vs-regex
    hint (as rename rules give it) when a string pattern is a regular expression.

    Example:
      >>> print(no_match_text('.*kernel', ['dense/kernel']))  # doctest: +ELLIPSIS
      pattern '.*kernel' matches none of the 1 paths. ... '.*kernel' is a regular expression, \
    but a string pattern is a glob everywhere in pytreeparams: write it as a glob ('**/kernel'), \
    or pass re.compile('.*kernel').
    """
    msg = no_match_message(pattern_texts(pattern), paths_, missing_ok_hint)
    for p in _pattern_key(pattern):
        if isinstance(p, str) and _REGEX_ONLY.search(p):
            msg += (
                f' {p!r} is a regular expression, but a string pattern is a glob everywhere in '
                f"pytreeparams: write it as a glob ('**/kernel'), or pass re.compile({p!r})."
            )
            break
    return msg


def match_flags(tree_paths: tuple[str, ...], pattern: Pattern) -> tuple[bool, ...]:
    """Which of ``tree_paths`` match ``pattern`` (cached per paths and pattern)."""
    key = (id(tree_paths), tree_paths, _pattern_key(pattern))
    try:
        flags = MATCH_CACHE.get(key)
    except TypeError:
        flags = None
    if flags is None:
        pred = compile_pattern(pattern)
        flags = tuple(pred(p) for p in tree_paths)
        try:
            MATCH_CACHE.put(key, flags)
        except TypeError:
            pass
    return flags


def _matches(tree: PyTree, pattern: Pattern, missing_ok: bool, is_leaf: Any = None):
    leaves, treedef, paths_ = flatten_with_paths(tree, is_leaf)
    flags = match_flags(paths_, pattern)
    if not missing_ok and not any(flags):
        raise PathError(no_match_text(pattern, paths_, missing_ok_hint=True))
    return leaves, treedef, paths_, flags


def select(
    tree: PyTree,
    pattern: Pattern,
    *,
    missing_ok: bool = False,
    is_leaf: Callable[[Any], bool] | None = None,
) -> dict[str, Leaf]:
    """The leaves whose paths match ``pattern``, in flatten order.

    Args:
      tree: Any pytree.
      pattern: A glob (``'**/kernel'``), a compiled regex (matched with
        ``fullmatch``) or a list of them.
      missing_ok: If False, a pattern that matches nothing is an error.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).

    Returns:
      ``{path: leaf}`` for the matching leaves (unboxed).

    Raises:
      PathError: If nothing matches and not ``missing_ok``; the message names
        the nearest paths.

    Example:
      >>> import pytreeparams as ptp
      >>> params = {'l0': {'kernel': 1, 'bias': 2}, 'l1': {'kernel': 3, 'bias': 4}}
      >>> ptp.select(params, '*/kernel')
      {'l0/kernel': 1, 'l1/kernel': 3}
    """
    leaves, _, paths_, flags = _matches(tree, pattern, missing_ok, is_leaf)
    return {p: unbox(x) for p, x, f in zip(paths_, leaves, flags, strict=False) if f}


def mask(
    tree: PyTree,
    pattern: Pattern,
    *,
    missing_ok: bool = False,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """A tree of bools, True where the leaf path matches ``pattern``.

    The mask has ``tree``'s own container types (a FrozenDict stays a
    FrozenDict), so it fits ``optax.masked(tx, mask)`` and the ``mask=``
    argument of ``optax.adamw`` directly.

    Args:
      tree: Any pytree, e.g. Flax params.
      pattern: Which leaves are True (see the module docstring).
      missing_ok: If False, a pattern that matches nothing is an error.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).

    Returns:
      A tree of Python bools with ``tree``'s structure.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.mask({'dense': {'kernel': 1.0, 'bias': 0.0}}, '**/kernel')
      {'dense': {'bias': False, 'kernel': True}}
    """
    _, treedef, _, flags = _matches(tree, pattern, missing_ok, is_leaf)
    return jax.tree_util.tree_unflatten(treedef, list(flags))


def update(
    tree: PyTree,
    pattern: Pattern,
    fn: Callable[[Leaf], Leaf],
    *,
    missing_ok: bool = False,
    is_leaf: Callable[[Any], bool] | None = None,
    check: bool = True,
) -> PyTree:
    """Returns a new tree with ``fn(leaf)`` at every leaf matching ``pattern``.

    Args:
      tree: Any pytree.
      pattern: Which leaves to change.
      fn: Called on each matching (unboxed) leaf; the result is reboxed.
      missing_ok: If False, a pattern that matches nothing is an error.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).
      check: If True, ``fn`` must keep each leaf's shape, as :func:`set`
        requires (a dtype may change: ``update(t, '**', lambda x:
        x.astype(jnp.bfloat16))`` casts by pattern).

    Returns:
      The new tree with ``tree``'s container types; ``tree`` is unchanged.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.
      StructureError: If ``check`` and ``fn`` changes a leaf's shape.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.update({'w': 1.0, 'b': 2.0}, 'w', lambda x: x + 1)
      {'b': 2.0, 'w': 2.0}
    """
    leaves, treedef, paths_, flags = _matches(tree, pattern, missing_ok, is_leaf)
    new = []
    for x, p, f in zip(leaves, paths_, flags, strict=True):
        if not f:
            new.append(x)
            continue
        old = unbox(x)
        y = fn(old)
        if check and _shape(y) != _shape(old):
            raise StructureError(
                f'update: fn changed the shape of {p!r} from {_shape(old)} to {_shape(y)}, '
                'as ptp.set refuses to; pass check=False to change shapes'
            )
        new.append(rebox(x, y))
    return jax.tree_util.tree_unflatten(treedef, new)


def _shape(x: Any) -> tuple[int, ...] | None:
    """A leaf's shape (``()`` for a Python scalar; None for what has none)."""
    shape = getattr(x, 'shape', None)
    if shape is not None:
        return tuple(shape)
    return () if isinstance(x, int | float | complex | bool) else None


def map_with_path(
    tree: PyTree,
    fn: Callable[[Any, Leaf], Leaf],
    *,
    key_paths: bool = False,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """Maps ``fn(path, leaf)`` over every leaf, keeping containers and boxes.

    Args:
      tree: Any pytree (the tree first, as in every function here; the old
        order ``map_with_path(fn, tree)`` warns and still works for one release).
      fn: Called with the path string and the (unboxed) leaf.
      key_paths: Hand ``fn`` the jax key path (as ``jax.tree_util.
        tree_map_with_path`` does) instead of the path string.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).

    Returns:
      A tree of ``fn``'s results with ``tree``'s structure.

    Raises:
      StructureError: If two leaves of a tree would get the same path string.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.map_with_path({'a': 1, 'b': [2]}, lambda p, x: p)
      {'a': 'a', 'b': ['b/0']}
    """
    if callable(tree) and not callable(fn):
        deprecated('ptp.map_with_path(fn, tree)', 'ptp.map_with_path(tree, fn)')
        tree, fn = fn, tree
    leaves, treedef, paths_ = flatten_with_paths(tree, is_leaf)
    names: Sequence[Any] = paths_
    if key_paths:
        flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=box_or(is_leaf))[0]
        names = [kp for kp, _ in flat]
    new = [rebox(x, fn(p, unbox(x))) for p, x in zip(names, leaves, strict=False)]
    return jax.tree_util.tree_unflatten(treedef, new)


def _rules(rules: Any, what: str) -> list[tuple[Pattern, Any]]:
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(
                f'{what} are an ordered mapping or a list of (pattern, {what[:-1]}) '
                f'pairs, got the item {item!r}'
            )
    return items


def first_match(paths_: Sequence[str], rules: Any, what: str) -> list[Any]:
    """For each path, the value of the first ``(pattern, value)`` rule matching it.

    Args:
      paths_: Leaf paths.
      rules: An ordered mapping or list of ``(pattern, value)``.
      what: The caller's name, for messages.

    Returns:
      One value per path, None where no rule matches.

    Raises:
      PathError: If a rule matches no path.
    """
    out: list[Any] = [None] * len(paths_)
    for pattern, value in _rules(rules, 'rules'):
        flags = match_flags(tuple(paths_), pattern)
        if not any(flags):
            raise PathError(f'{what}: rule ' + no_match_text(pattern, paths_))
        for i, f in enumerate(flags):
            if f and out[i] is None:
                out[i] = value
    return out


def labels(
    tree: PyTree,
    rules: Any,
    default: str | None = None,
    *,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """A tree of label strings for ``optax.multi_transform``.

    Args:
      tree: Any pytree, e.g. Flax params.
      rules: An ordered mapping or list of ``(pattern, label)``; for each leaf
        the first matching rule gives its label.
      default: The label of leaves no rule matches.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).

    Returns:
      A tree of strings with ``tree``'s containers.

    Raises:
      PathError: If a rule matches no leaf.
      StructureError: If some leaf gets no label and there is no ``default``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.labels({'w': 1.0, 'b': 0.0}, {'w': 'adam'}, default='sgd')
      {'b': 'sgd', 'w': 'adam'}
    """
    leaves, treedef, paths_ = flatten_with_paths(tree, is_leaf)
    out = first_match(paths_, rules, 'labels')
    unlabeled = [p for p, lab in zip(paths_, out, strict=False) if lab is None]
    if unlabeled:
        if default is None:
            raise StructureError(
                f'labels: no rule matches {plural(len(unlabeled), "path")}: '
                f'{quote_list(unlabeled)}; add a rule or pass default='
            )
        out = [default if lab is None else lab for lab in out]
    return jax.tree_util.tree_unflatten(treedef, out)


def partition(
    tree: PyTree,
    pattern: Pattern,
    *,
    missing_ok: bool = False,
    is_leaf: Callable[[Any], bool] | None = None,
) -> tuple[PyTree, PyTree]:
    """Splits ``tree`` into the leaves matching ``pattern`` and the rest.

    Both parts keep ``tree``'s structure with ``None`` in the holes, so
    ``combine(matched, rest)`` gives ``tree`` back. Use it to differentiate
    with respect to part of a model: ``jax.grad(lambda m: loss(combine(m,
    rest)))(matched)``.

    Args:
      tree: Any pytree.
      pattern: Which leaves go to ``matched``.
      missing_ok: If False, a pattern that matches nothing is an error.
      is_leaf: As in ``jax.tree_util``: nodes for which it is true are leaves
        (their path is the node's path).

    Returns:
      ``(matched, rest)``.

    Raises:
      PathError: If nothing matches and not ``missing_ok``.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.partition({'w': 1.0, 'b': 0.0}, 'w')
      ({'b': None, 'w': 1.0}, {'b': 0.0, 'w': None})
    """
    leaves, treedef, _, flags = _matches(tree, pattern, missing_ok, is_leaf)
    matched = [x if f else None for x, f in zip(leaves, flags, strict=False)]
    rest = [None if f else x for x, f in zip(leaves, flags, strict=False)]
    return (
        jax.tree_util.tree_unflatten(treedef, matched),
        jax.tree_util.tree_unflatten(treedef, rest),
    )


def combine(*trees: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """Merges trees with ``None`` holes, the inverse of :func:`partition`.

    Args:
      *trees: Trees of one structure; at each leaf position at most one of
        them is not ``None``.
      is_leaf: As in ``jax.tree_util`` (the one given to ``partition``).

    Returns:
      The tree with each position taken from the tree that fills it.

    Raises:
      StructureError: If the trees' structures differ or two fill one place.

    Example:
      >>> import pytreeparams as ptp
      >>> ptp.combine({'w': 1.0, 'b': None}, {'w': None, 'b': 0.0})
      {'b': 0.0, 'w': 1.0}
    """
    if len(trees) < 2:
        given = f'a {type(trees[0]).__name__}' if trees else 'nothing'
        raise StructureError(
            f'combine takes two or more trees as separate arguments, got {given}; '
            'for a list of trees, unpack it: ptp.combine(*trees)'
        )

    def pick(*xs: Any) -> Any:
        filled = [x for x in xs if x is not None]
        if len(filled) > 1:
            raise StructureError('combine: two trees fill the same leaf position')
        return filled[0] if filled else None

    try:
        leaf = box_or(is_leaf)
        return jax.tree_util.tree_map(pick, *trees, is_leaf=lambda x: x is None or leaf(x))
    except ValueError as e:
        if isinstance(e, StructureError):
            raise
        raise StructureError(f'combine: the trees have different structures: {e}') from e
