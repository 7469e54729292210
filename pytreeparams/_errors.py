"""Errors raised by pytreeparams."""

from __future__ import annotations


class PathError(KeyError):
    """A path or pattern names nothing in the tree.

    A ``KeyError`` whose message prints as written (``KeyError`` would quote it).

    Example:
      >>> import pytreeparams as ptp
      >>> try:
      ...   ptp.get({'a': {'b': 1}}, 'a/c')
      ... except ptp.PathError as e:
      ...   print(e)
      no key 'c' under 'a' (while resolving 'a/c'). Keys there: 'b'. Did you mean 'a/b'?
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


class StructureError(ValueError):
    """Two trees, or a tree and a value, do not have the structure expected.

    Example:
      >>> import pytreeparams as ptp
      >>> try:
      ...   ptp.unflatten({'a': 1}, like={'b': 2})
      ... except ptp.StructureError as e:
      ...   print(e)
      flat entries do not match the structure of `like`: missing 1 path: 'b'; unexpected 1 path: 'a'
    """


class FormatError(ValueError):
    """A file is not a valid checkpoint of the format its name claims.

    Example:
      >>> import pytreeparams as ptp
      >>> issubclass(ptp.FormatError, ValueError)
      True
    """


class NonFiniteError(FloatingPointError):
    """A tree holds NaN or Inf where finite values were asserted.

    Example:
      >>> import pytreeparams as ptp
      >>> issubclass(ptp.NonFiniteError, FloatingPointError)
      True
    """
