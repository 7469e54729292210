"""Type aliases shared by the package."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ForwardRef, TypeAlias, Union

import chex
from flax import nnx

if TYPE_CHECKING:
    PyTree: TypeAlias = chex.ArrayTree | nnx.Pytree
else:
    # chex.ArrayTree refers to itself by the name 'ArrayTree', which
    # typing.get_type_hints looks up in the caller's module (and fails, as it
    # does for optax.apply_updates). The same union, built from chex's public
    # chex.Array, refers to itself here by its own name (no private chex module).
    _NNX_NODE = getattr(nnx, 'Pytree', None) or nnx.Object  # 'Object' before flax 0.12
    _ref = ForwardRef('PyTree', module=__name__)
    PyTree = Union[chex.Array, Iterable[_ref], Mapping[Any, _ref], _NNX_NODE]  # noqa: UP007
"""A tree of arrays, typed as optax and chex type parameters
(``chex.ArrayTree``: dicts, FrozenDicts, lists, tuples, NamedTuples such as
optax states, NNX ``State``), or an NNX module or other ``nnx.Pytree`` (pytrees
since flax 0.12). Other pytrees (a ``flax.struct`` or equinox dataclass) work
the same at run time; chex ships no ``py.typed``, so a user's type checker sees
``Any`` for chex's part unless told to follow chex."""

Leaf: TypeAlias = Any
"""A leaf: a jax or numpy array, a Python scalar or a ``jax.ShapeDtypeStruct``."""

Path: TypeAlias = tuple[str, ...]
"""A normalized path: the keys from the root, each as a string."""

PathLike: TypeAlias = str | Sequence[Any]
"""``'params/layers_2/bias'`` or ``('params', 'layers_2', 'bias')``."""

FlatTree: TypeAlias = Mapping[str, Any] | Mapping[tuple[Any, ...], Any] | Mapping[PathLike, Any]
"""``{path: leaf}`` keyed by path strings, key tuples, or both: ``Mapping`` is
invariant in its key type, so a ``dict[str, jax.Array]`` type-checks only
against a mapping keyed by ``str``."""

Pattern: TypeAlias = str | re.Pattern[str] | Sequence[str | re.Pattern[str]]
"""A glob string, a compiled regex, or a list of them (matches any)."""
