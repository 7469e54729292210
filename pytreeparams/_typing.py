"""Type aliases shared by the package."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias, Union

PyTree: TypeAlias = Any
"""Any JAX pytree: dicts, FrozenDicts, lists, tuples, NNX ``State`` ..."""

Leaf: TypeAlias = Any
"""A leaf: a jax or numpy array, a Python scalar or a ``jax.ShapeDtypeStruct``."""

Path: TypeAlias = tuple[str, ...]
"""A normalized path: the keys from the root, each as a string."""

PathLike: TypeAlias = str | Sequence[Any]
"""``'params/layers_2/bias'`` or ``('params', 'layers_2', 'bias')``."""

Pattern: TypeAlias = Union[str, 're.Pattern[str]', Sequence[Union[str, 're.Pattern[str]']]]
"""A glob string, a compiled regex, or a list of them (matches any)."""
