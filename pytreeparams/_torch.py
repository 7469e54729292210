"""Conversion between Flax parameter trees and PyTorch ``state_dict`` layout.

Works on NumPy arrays; torch is imported only when tensors are passed in or
asked for. Default rules cover the standard layers:

=====================================  ==========================================
Flax                                   PyTorch
=====================================  ==========================================
``Dense`` kernel (in, out)             ``Linear`` weight (out, in)
``Conv`` kernel HWIO (or WIO, DHWIO)   ``Conv*d`` weight OIHW (OIW, OIDHW)
``Embed`` embedding                    ``Embedding`` weight
``LayerNorm``/``BatchNorm`` scale      weight
``BatchNorm`` batch_stats mean/var     running_mean/running_var
                                       (``num_batches_tracked`` added/dropped)
``nn.Sequential``'s ``layers_0``       ``0``
=====================================  ==========================================

Two things no name can say, given as arguments to both functions:

- **The first Dense after a flatten** (``after_flatten={'params/Dense_0': (7, 7, 64)}``:
  the module's path and the feature map's shape (H, W, C) in Flax's order).
  Flax flattens channels-last (``x.reshape(n, -1)`` of NHWC: index ``(h, w, c)``),
  PyTorch's ``nn.Flatten`` channels-first (NCHW: ``(c, h, w)``), so that
  Dense's rows are permuted in both directions; without it the model loads
  and computes something else.
- **Tied weights** (``ties={'lm_head.weight': 'transformer.wte.weight'}``, PyTorch
  names, alias to source): PyTorch's ``state_dict`` lists a shared tensor under
  every name (GPT-2's head, BERT's MLM decoder, T5's shared embeddings) while the
  Flax model stores it once. ``to_torch_state_dict`` writes the alias (the same
  array or tensor); ``from_torch_state_dict`` checks it equals its source and
  drops it (aliases that share storage with a used tensor are recognised
  without being named).
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._errors import PathError, StructureError
from ._files import read_state_dict
from ._flatten import flatten_with_paths, unflatten
from ._keys import describe, jax_changes_dtype, unbox
from ._leaves import from_torch
from ._load import LoadReport
from ._messages import did_you_mean, nearest, quote_list
from ._moments import not_addressable_message
from ._patterns import capture_pattern
from ._typing import PyTree

__all__ = ['TorchLayout', 'attention_rules', 'from_torch_state_dict', 'to_torch_state_dict']


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """How a Flax leaf lies in a PyTorch tensor: a rule's third element, as data.

    The Flax array is viewed as a matrix (``view``), transposed (``perm``), and
    may be one of ``n`` stacked parts of the tensor (``part``), as PyTorch's
    ``MultiheadAttention`` stacks the query, key and value projections.

    Attributes:
      view: ``k``: the Flax array reshaped to ``(prod(shape[:k]), prod(shape[k:]))``;
        ``0``: to one axis; None: as it is.
      perm: A permutation of that view's axes (``(1, 0)`` for a Linear weight).
      part: ``(i, n)``: the tensor is ``n`` such arrays concatenated along axis
        0, and this leaf is the ``i``-th.

    Example:
      >>> import numpy as np
      >>> from pytreeparams import TorchLayout
      >>> query = TorchLayout(view=1, perm=(1, 0), part=(0, 3))  # (E, H, D) kernel
      >>> query.to_torch(np.zeros((8, 2, 4))).shape  # its rows of in_proj_weight
      (8, 8)
      >>> query.to_flax(np.zeros((24, 8)), (8, 2, 4)).shape
      (8, 2, 4)
    """

    view: int | None = None
    perm: tuple[int, ...] | None = None
    part: tuple[int, int] | None = None

    def to_torch(self, arr: np.ndarray) -> np.ndarray:
        """The Flax array ``arr`` as its part of the PyTorch tensor."""
        if self.view is not None:
            shape = arr.shape
            if self.view == 0:
                arr = arr.reshape(-1)
            else:
                arr = arr.reshape(math.prod(shape[: self.view]), math.prod(shape[self.view :]))
        if self.perm is not None:
            arr = np.transpose(arr, self.perm)
        return _contiguous(arr)

    def to_flax(self, arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """This leaf's part of the PyTorch array ``arr``, in the Flax ``shape``
        (returned unshaped when the sizes do not fit: reported as a mismatch)."""
        if self.part is not None:
            i, n = self.part
            if arr.ndim == 0 or arr.shape[0] % n:
                return arr
            k = arr.shape[0] // n
            arr = arr[i * k : (i + 1) * k]
        if self.perm is not None and arr.ndim == len(self.perm):
            arr = np.transpose(arr, np.argsort(self.perm))
        if self.view is not None and arr.size == math.prod(shape):
            arr = arr.reshape(tuple(shape))
        return arr


Rule = tuple[str, str] | tuple[str, str, Sequence[int] | TorchLayout | None]


def attention_rules(flax_module: str, torch_module: str) -> list[Rule]:
    """Rules between Flax ``nn.MultiHeadDotProductAttention`` and PyTorch
    ``nn.MultiheadAttention``: the query, key and value kernels ``(E, H, D)``
    and biases ``(H, D)`` are the three stacked parts of ``in_proj_weight``
    ``(3 E, E)`` and ``in_proj_bias``; the ``out`` kernel ``(H, D, E)`` is
    ``out_proj.weight`` ``(E, E)``. For the same embedding size in and out
    (PyTorch's packed projections), and heads of ``E / H`` features.

    Args:
      flax_module: The attention module's Flax path (a glob; its wildcards are
        groups for ``torch_module``), e.g. ``'params/layers_*/attn'``.
      torch_module: Its PyTorch name, e.g. ``r'layers.\1.self_attn'``.

    Returns:
      Rules for ``to_torch_state_dict`` and ``from_torch_state_dict``.

    Raises:
      ValueError: If a name is empty.

    Example:
      >>> import pytreeparams as ptp
      >>> [r[1] for r in ptp.attention_rules('params/attn', 'self_attn')][:2]
      ['self_attn.in_proj_weight', 'self_attn.in_proj_weight']
    """
    f, t = flax_module.rstrip('/'), torch_module.rstrip('.')
    if not f or not t:
        raise ValueError(
            f'attention_rules: name the module on both sides, got {flax_module!r} and '
            f'{torch_module!r}'
        )
    rules: list[Rule] = []
    for i, proj in enumerate(('query', 'key', 'value')):
        rules.append((f'{f}/{proj}/kernel', f'{t}.in_proj_weight', TorchLayout(1, (1, 0), (i, 3))))
    for i, proj in enumerate(('query', 'key', 'value')):
        rules.append((f'{f}/{proj}/bias', f'{t}.in_proj_bias', TorchLayout(0, None, (i, 3))))
    rules.append((f'{f}/out/kernel', f'{t}.out_proj.weight', TorchLayout(2, (1, 0))))
    rules.append((f'{f}/out/bias', f'{t}.out_proj.bias', None))
    return rules


_LEAF_NAMES = {
    'kernel': 'weight',
    'scale': 'weight',
    'embedding': 'weight',
    'bias': 'bias',
    'mean': 'running_mean',
    'var': 'running_var',
}


def _default_perm(keys: list[str], ndim: int) -> tuple[int, ...] | None:
    if keys[-1] != 'kernel' or ndim < 2:
        return None
    if ndim == 2:
        return (1, 0)
    # Conv kernel: spatial..., in, out  ->  out, in, spatial...
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def _default_name(path: str) -> str:
    keys = path.split('/')
    if keys[0] in ('params', 'batch_stats'):
        keys = keys[1:]
    keys = [re.sub(r'^layers_(\d+)$', r'\1', k) for k in keys]
    if keys:
        keys[-1] = _LEAF_NAMES.get(keys[-1], keys[-1])
    return '.'.join(keys)


def _mapping(like: PyTree, rules: Sequence[Rule]) -> list[tuple[str, str, Any, Any]]:
    """``(flax path, torch key, permutation, leaf)`` for every leaf of ``like``."""
    leaves, _, paths_ = flatten_with_paths(like)
    compiled = [
        (capture_pattern(r[0], 'rules'), r[1], (r[2] if len(r) > 2 else 'default')) for r in rules
    ]
    out = []
    for path, leaf in zip(paths_, leaves):
        leaf = unbox(leaf)
        ndim = len(np.shape(leaf))
        name: str | None = None
        perm: Any = 'default'
        for rx, repl, p in compiled:
            m = rx.fullmatch(path)
            if m:
                name, perm = m.expand(repl), p
                break
        if name is None:
            name = _default_name(path)
        if perm == 'default':
            perm = _default_perm(path.split('/'), ndim)
        if perm is not None and not isinstance(perm, TorchLayout):
            perm = tuple(perm)
        out.append((path, name, perm, leaf))
    return out


def _flatten_shapes(
    after_flatten: Mapping[str, Sequence[int]], paths_: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """``{kernel path: (H, W, C)}`` for each module named in ``after_flatten``."""
    out = {}
    known = builtins.set(paths_)
    for module, shape in after_flatten.items():
        kernel = module if module.endswith('/kernel') else module.rstrip('/') + '/kernel'
        if kernel not in known:
            raise PathError(
                f'after_flatten: no Dense kernel at {kernel!r}.' + did_you_mean(kernel, paths_)
            )
        out[kernel] = tuple(int(d) for d in shape)
    return out


def _flax_rows_to_torch(kernel: np.ndarray, hwc: tuple[int, ...], path: str) -> np.ndarray:
    """A Dense kernel's rows from Flax's (h, w, c) flatten order to PyTorch's (c, h, w)."""
    _check_rows(kernel, hwc, path)
    n = len(hwc)
    k = kernel.reshape(*hwc, kernel.shape[-1])
    return k.transpose(n - 1, *range(n - 1), n).reshape(kernel.shape)


def _torch_rows_to_flax(kernel: np.ndarray, hwc: tuple[int, ...], path: str) -> np.ndarray:
    """The inverse of :func:`_flax_rows_to_torch` (rows in (c, h, w) to (h, w, c))."""
    _check_rows(kernel, hwc, path)
    n = len(hwc)
    k = kernel.reshape(hwc[-1], *hwc[:-1], kernel.shape[-1])
    return k.transpose(*range(1, n), 0, n).reshape(kernel.shape)


def _check_rows(kernel: np.ndarray, hwc: tuple[int, ...], path: str) -> None:
    if kernel.ndim != 2 or kernel.shape[0] != int(np.prod(hwc)):
        raise StructureError(
            f'after_flatten: {path!r} is {kernel.dtype.name}{list(kernel.shape)}, but a '
            f'feature map of shape {hwc} flattens to {int(np.prod(hwc))} inputs'
        )


def _check_ties(ties: Mapping[str, str]) -> dict[str, str]:
    ties = dict(ties)
    for alias, source in ties.items():
        if source in ties:
            raise StructureError(
                f'ties: {alias!r} -> {source!r}, which is itself an alias of {ties[source]!r}; '
                f'name the source directly: {{{alias!r}: {ties[source]!r}}}'
            )
    return ties


def to_torch_state_dict(
    params: PyTree,
    rules: Sequence[Rule] = (),
    *,
    tensors: bool = False,
    after_flatten: Mapping[str, Sequence[int]] | None = None,
    ties: Mapping[str, str] | None = None,
) -> OrderedDict[str, Any]:
    """Converts Flax variables to a PyTorch ``state_dict`` layout.

    Args:
      params: Flax variables (``{'params': ..., 'batch_stats': ...}``) or params.
      rules: Extra ``(pattern, torch_name)`` or ``(pattern, torch_name, perm)``
        rules, tried first: a glob on the Flax path whose wildcards are groups
        (``('params/blocks_*/kernel', r'blocks.\\1.weight')``) or a compiled
        ``re.Pattern``; ``perm`` transposes the array (None: no transpose), or
        is a :class:`TorchLayout` (a reshape, transpose and stacked part, as
        :func:`attention_rules` gives for attention layers).
      tensors: Return ``torch.Tensor`` values (imports torch) instead of NumPy.
      after_flatten: ``{dense module path: (H, W, C)}`` for each Dense that
        follows a flatten of a feature map of that shape (Flax's NHWC order):
        its rows are permuted to PyTorch's channels-first flatten.
      ties: ``{torch alias: torch source}``: each alias is written as the same
        array (tensor) as its source, as PyTorch's ``state_dict`` lists a tied
        weight under every name.

    Returns:
      An ordered ``{torch key: array}``; ``num_batches_tracked`` is added for
      each BatchNorm.

    Raises:
      StructureError: If two Flax paths map to one torch key, a tie's source
        is not produced, or an ``after_flatten`` shape does not fit.
        Also for a leaf sharded over several processes (multi-host): the error
        names the Orbax route (``ptp.save`` to a folder from every process).
      PathError: If an ``after_flatten`` module has no Dense kernel.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
      >>> sd = ptp.to_torch_state_dict(net.init(jax.random.key(0), jnp.ones((2, 4))))
      >>> {k: v.shape for k, v in sd.items()}
      {'0.bias': (8,), '0.weight': (8, 4), '2.bias': (1,), '2.weight': (1, 8)}
    """
    out: OrderedDict[str, Any] = OrderedDict()
    mapping = _mapping(params, rules)
    flat_rows = _flatten_shapes(after_flatten or {}, [m[0] for m in mapping])
    parts: dict[str, dict[int, tuple[str, np.ndarray, int]]] = {}
    for path, name, perm, leaf in mapping:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            raise StructureError(not_addressable_message('to_torch_state_dict', path))
        arr = np.asarray(jax.device_get(leaf))
        if path in flat_rows:
            arr = _flax_rows_to_torch(arr, flat_rows[path], path)
        if isinstance(perm, TorchLayout):
            arr = perm.to_torch(arr)
            if perm.part is not None:  # one of the stacked parts of a tensor
                i, n = perm.part
                have = parts.setdefault(name, {})
                if i in have:
                    raise StructureError(
                        f'to_torch_state_dict: {path!r} and {have[i][0]!r} are both part {i} '
                        f'of {name!r}'
                    )
                have[i] = (path, arr, n)
                if len(have) < n:
                    continue
                arr = np.concatenate([have[j][1] for j in range(n)], axis=0)
        elif perm is not None:
            arr = np.ascontiguousarray(np.transpose(arr, perm))
        if name in out:
            raise StructureError(
                f'to_torch_state_dict: two paths map to {name!r} (one is {path!r})'
            )
        out[name] = arr
    for name, have in parts.items():
        if name not in out:
            n = next(iter(have.values()))[2]
            raise StructureError(
                f'to_torch_state_dict: {name!r} is {n} stacked parts; only '
                f'{quote_list([have[i][0] for i in sorted(have)])} map to it'
            )
    for name in list(out):  # each BatchNorm's counter, under the name its statistics got
        if name.endswith('running_mean'):
            out[name[: -len('running_mean')] + 'num_batches_tracked'] = np.array(0, np.int64)
    if tensors:
        import torch

        out = OrderedDict((k, _tensor(torch, v)) for k, v in out.items())
    for alias, source in _check_ties(ties or {}).items():
        if source not in out:
            raise StructureError(
                f'ties: the source {source!r} of {alias!r} is not in the state_dict '
                f'(near: {quote_list(nearest(source, list(out), 3))})'
            )
        out[alias] = out[source]  # the same array (tensor): one storage, as in PyTorch
    return out


def _tensor(torch: Any, v: Any) -> Any:
    """A torch tensor holding ``v`` bit for bit (bfloat16 and float8 through their bits,
    which ``torch.from_numpy`` does not take)."""
    a = np.array(v)
    name = a.dtype.name
    if name in _TORCH_BITS:
        bits, torch_dtype = _TORCH_BITS[name]
        return torch.from_numpy(a.view(bits)).view(getattr(torch, torch_dtype))
    return torch.from_numpy(a)


_TORCH_BITS = {
    'bfloat16': (np.int16, 'bfloat16'),
    'float8_e4m3fn': (np.uint8, 'float8_e4m3fn'),
    'float8_e5m2': (np.uint8, 'float8_e5m2'),
}


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """``arr`` in C order, its shape kept (``np.ascontiguousarray`` makes 0-d 1-d)."""
    return np.ascontiguousarray(arr).reshape(arr.shape)


def _placed(value: np.ndarray, leaf: Any) -> Any:
    """A converted array where ``leaf`` says: on its sharding, or a jax array;
    a NumPy array when JAX would change its dtype (64-bit values without
    ``jax_enable_x64``), as ``load_into`` keeps them."""
    if jax_changes_dtype(value.dtype):
        return value
    sharding = getattr(leaf, 'sharding', None)
    return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)


def _to_numpy(v: Any) -> np.ndarray:
    return np.asarray(from_torch(v))


def _same_storage(a: Any, b: Any) -> bool:
    """Whether two torch tensors are views of one storage with the same layout."""
    try:
        return (
            a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.shape == b.shape
            and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset()
        )
    except AttributeError:  # not torch tensors
        return False


def _same_values(a: Any, b: Any) -> bool:
    if tuple(getattr(a, 'shape', ())) != tuple(getattr(b, 'shape', ())):
        return False
    x, y = _to_numpy(a), _to_numpy(b)
    return x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _drop_ties(sd: dict[str, Any], ties: Mapping[str, str]) -> list[str]:
    """Removes each tied alias from ``sd`` (checked equal to its source); their names."""
    dropped = []
    for alias, source in _check_ties(ties).items():
        if alias not in sd:
            continue
        if source in sd and not _same_values(sd[alias], sd[source]):
            raise StructureError(
                f'ties: {alias!r} differs from its source {source!r}; they are not tied'
            )
        del sd[alias]
        dropped.append(alias)
    return dropped


def _to_flax_layout(
    arr: np.ndarray, perm: Any, hwc: tuple[int, ...] | None, leaf: Any, path: str
) -> np.ndarray:
    """A PyTorch tensor's array in the Flax layout: transposed back (or its
    part taken and reshaped, for a :class:`TorchLayout`), rows of a Dense after a
    flatten put back in (h, w, c) order."""
    if isinstance(perm, TorchLayout):
        arr = perm.to_flax(arr, np.shape(leaf))
    elif perm is not None and arr.ndim == len(perm):
        arr = np.transpose(arr, np.argsort(perm))
    if hwc is not None and tuple(arr.shape) == tuple(np.shape(leaf)):
        arr = _torch_rows_to_flax(arr, hwc, path)
    return arr


def _strict_error(report: LoadReport, sd: dict[str, Any], used: set[str]) -> StructureError:
    """The strict error: every problem, and the ties=/rules=/cast= that would fix it."""
    tie_hint = {k: u for k in report.unexpected for u in sorted(used) if _same_values(sd[k], sd[u])}
    return StructureError(
        'from_torch_state_dict(strict=True): the state_dict does not fit `like`:\n  '
        + '\n  '.join(report.problems())
        + (
            f'\nThese hold the same values as a loaded tensor: pass ties={tie_hint!r}.'
            if tie_hint
            else ''
        )
        + '\nAdd rules=[(flax_path_glob, torch_name, perm)]'
        + (', pass cast=True to convert dtypes' if report.dtype_mismatch else '')
        + ' or pass strict=False.'
    )


def from_torch_state_dict(
    state_dict: Mapping[str, Any] | str | os.PathLike[str],
    like: PyTree,
    rules: Sequence[Rule] = (),
    *,
    strict: bool = True,
    cast: bool = False,
    after_flatten: Mapping[str, Sequence[int]] | None = None,
    ties: Mapping[str, str] | None = None,
) -> tuple[PyTree, LoadReport]:
    """Converts a PyTorch ``state_dict`` to Flax variables shaped like ``like``.

    Args:
      state_dict: ``{torch key: tensor or array}`` (torch tensors accepted
        without importing torch here unless given), or the path of a
        ``.safetensors`` or ``.npz`` file holding one (names read as stored:
        ``ptp.from_torch_state_dict('model.safetensors', like=variables)``).
      like: Flax variables giving the structure, shapes and dtypes (e.g. from
        ``model.init``), or an abstract tree.
      rules: As in :func:`to_torch_state_dict`.
      strict: Raise on missing, unexpected or mismatched entries (else keep
        ``like``'s value for them and report).
      cast: Convert each tensor to the dtype of ``like`` (e.g. a bfloat16
        state dict into float32 variables) instead of reporting a dtype
        mismatch, as ``ptp.load_into(cast=True)`` does.
      after_flatten: As in :func:`to_torch_state_dict` (rows permuted back).
      ties: ``{torch alias: torch source}``: each alias must equal its source
        and is dropped (the Flax model stores the weight once). Torch tensors
        that share storage with a tensor that was used are recognised as ties
        without being named.

    Returns:
      ``(variables, report)``; the report lists missing, unexpected and
      mismatched entries as ``ptp.load_into`` does (unexpected by torch key);
      ``report.dropped`` lists the tied aliases.

    Raises:
      StructureError: With ``strict``, naming every problem (and the ``ties=``
        that would fix aliases holding the same values as a used tensor); a
        tie whose alias differs from its source.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
      >>> v = net.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> back, report = ptp.from_torch_state_dict(ptp.to_torch_state_dict(v), like=v)
      >>> k = 'params/layers_0/kernel'
      >>> report.ok, bool((ptp.get(back, k) == ptp.get(v, k)).all())
      (True, True)
    """
    if isinstance(state_dict, (str, os.PathLike)):  # a PyTorch-layout file, names as stored
        state_dict = read_state_dict(state_dict)
    sd = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
    dropped = _drop_ties(sd, ties or {})
    used: set[str] = set()
    flat: dict[str, Any] = {}
    loaded, missing = [], []
    shape_mm: dict[str, tuple[str, str]] = {}
    dtype_mm: dict[str, tuple[str, str]] = {}
    mapping = _mapping(like, rules)
    flat_rows = _flatten_shapes(after_flatten or {}, [m[0] for m in mapping])
    for path, name, perm, leaf in mapping:
        if name not in sd:
            missing.append(path)
            flat[path] = leaf
            continue
        used.add(name)
        arr = _to_flax_layout(_to_numpy(sd[name]), perm, flat_rows.get(path), leaf, path)
        if tuple(arr.shape) != tuple(np.shape(leaf)):
            shape_mm[path] = (describe(leaf), f'{arr.dtype.name}{list(arr.shape)} at {name!r}')
            flat[path] = leaf
            continue
        want = np.dtype(getattr(leaf, 'dtype', arr.dtype))
        if arr.dtype != want:
            if not cast:
                dtype_mm[path] = (describe(leaf), arr.dtype.name)
                flat[path] = leaf
                continue
            arr = arr.astype(want)
        loaded.append(path)
        flat[path] = _placed(_contiguous(arr), leaf)
    unexpected = [k for k in sd if k not in used]
    tied = [k for k in unexpected if any(_same_storage(sd[k], sd[u]) for u in used)]
    unexpected = [k for k in unexpected if k not in tied]  # a tied alias: one tensor, two names
    dropped += tied
    report = LoadReport(
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatch=shape_mm,
        dtype_mismatch=dtype_mm,
        dropped=tuple(dropped),
    )
    if strict and not report.ok:
        raise _strict_error(report, sd, used)
    return unflatten(flat, like=like), report
