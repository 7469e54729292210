"""Type aliases shared by the package."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, Union

PyTree: TypeAlias = Any
"""Any JAX pytree: dicts, FrozenDicts, lists, tuples, NNX ``State`` ..."""

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

Pattern: TypeAlias = Union[str, 're.Pattern[str]', Sequence[Union[str, 're.Pattern[str]']]]
"""A glob string, a compiled regex, or a list of them (matches any)."""
