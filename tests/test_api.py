"""The public API: every exported name is documented with a runnable example."""

from __future__ import annotations

import doctest
import inspect

import pytest

import pytreeparams as ptp


def test_all_names_exist_and_are_sorted_out():
    assert len(ptp.__all__) == len(set(ptp.__all__))
    assert list(ptp.__all__) == sorted(ptp.__all__)
    assert {'STAT_NAMES', 'GRAD_STAT_NAMES'} <= set(ptp.__all__)
    for name in ptp.__all__:
        assert hasattr(ptp, name), name


PUBLIC = sorted({*ptp.__all__, 'set', 'inspect'} - {'STAT_NAMES', 'GRAD_STAT_NAMES'})


def test_star_import_shadows_no_builtin():
    import builtins

    assert not set(ptp.__all__) & set(dir(builtins)) and 'inspect' not in ptp.__all__


@pytest.mark.parametrize('name', PUBLIC)
def test_docstring_sections_and_example(name):
    obj = getattr(ptp, name)
    doc = inspect.getdoc(obj) or ''
    assert doc and doc.splitlines()[0].strip(), f'{name} has no one-line summary'
    assert 'Example:' in doc, f'{name} has no Example: section'
    examples = doctest.DocTestParser().get_examples(doc)
    assert examples, f'{name} has no doctest in its example'
    if inspect.isfunction(obj):
        for section in ('Args:', 'Returns:', 'Raises:'):
            assert section in doc, f'{name} lacks {section}'
        sig = inspect.signature(obj)
        assert sig.return_annotation is not inspect.Signature.empty, f'{name} lacks a return type'
        for p in sig.parameters.values():
            assert p.annotation is not inspect.Parameter.empty, f'{name}({p.name}) lacks a type'
    elif inspect.isclass(obj) and not issubclass(obj, Exception):
        assert 'Attributes:' in doc or 'Args:' in doc, f'{name} documents no attributes/args'


def test_every_example_runs_once():
    """The examples run under --doctest-modules (pyproject), once: not again here."""
    import pathlib

    import tomllib

    conf = tomllib.loads((pathlib.Path(__file__).parent.parent / 'pyproject.toml').read_text())
    assert '--doctest-modules' in conf['tool']['pytest']['ini_options']['addopts']


TREE_ARGS = {'tree', 'params', 'grads', 'updates', 'a', 'b', 'source', 'compact', 'full_grads'}


@pytest.mark.parametrize('name', PUBLIC)
def test_public_annotations_are_chex_types_and_resolve(name):
    """Trees are typed as optax and chex type parameters (``chex.ArrayTree``),
    and ``typing.get_type_hints`` resolves every public signature (chex's own
    alias alone fails there, as it does for ``optax.apply_updates``)."""
    import typing

    import chex

    obj = getattr(ptp, name)
    fns = [obj] if inspect.isfunction(obj) else []
    if inspect.isclass(obj):
        fns = [
            f
            for k, f in vars(obj).items()
            if inspect.isfunction(f) and not k.startswith('_') and 'pytreeparams' in f.__module__
        ]
    for fn in fns:
        hints = typing.get_type_hints(fn)  # raises on an unresolvable name
        for arg in TREE_ARGS & set(inspect.signature(fn).parameters):
            hint = hints[arg]
            members = set(typing.get_args(hint)) if typing.get_origin(hint) else {hint}
            assert set(typing.get_args(chex.Array)) <= members, (fn.__qualname__, arg, hint)
            text = str(hint)
            assert 'Iterable' in text and 'Mapping' in text, (fn.__qualname__, arg, hint)
