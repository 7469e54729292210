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
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._errors import StructureError
from ._io import read_state_dict
from ._load import LoadReport
from ._paths import _flatten, describe, unbox, unflatten
from ._stats import from_torch
from ._typing import PyTree

__all__ = ['from_torch_state_dict', 'to_torch_state_dict']

Rule = tuple[str, str] | tuple[str, str, Sequence[int] | None]

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


def _mapping(
    like: PyTree, rules: Sequence[Rule]
) -> list[tuple[str, str, tuple[int, ...] | None, Any]]:
    """``(flax path, torch key, permutation, leaf)`` for every leaf of ``like``."""
    leaves, _, paths_ = _flatten(like)
    compiled = [(re.compile(r[0]), r[1], (r[2] if len(r) > 2 else 'default')) for r in rules]
    out = []
    for path, leaf in zip(paths_, leaves):
        leaf = unbox(leaf)
        ndim = len(np.shape(leaf))
        name, perm = None, 'default'
        for rx, repl, p in compiled:
            m = rx.fullmatch(path)
            if m:
                name, perm = m.expand(repl), p
                break
        if name is None:
            name = _default_name(path)
        if perm == 'default':
            perm = _default_perm(path.split('/'), ndim)
        out.append((path, name, tuple(perm) if perm is not None else None, leaf))
    return out


def _bn_modules(paths: Sequence[str]) -> list[str]:
    mods = []
    for p in paths:
        if p.startswith('batch_stats/') and p.endswith('/mean'):
            mods.append(_default_name(p).rsplit('.', 1)[0])
    return mods


def to_torch_state_dict(
    params: PyTree, rules: Sequence[Rule] = (), *, tensors: bool = False
) -> OrderedDict[str, Any]:
    """Converts Flax variables to a PyTorch ``state_dict`` layout.

    Args:
      params: Flax variables (``{'params': ..., 'batch_stats': ...}``) or params.
      rules: Extra ``(regex, torch_name)`` or ``(regex, torch_name, perm)``
        rules, tried first (``fullmatch`` on the Flax path, group references
        allowed); ``perm`` transposes the array (None: no transpose).
      tensors: Return ``torch.Tensor`` values (imports torch) instead of NumPy.

    Returns:
      An ordered ``{torch key: array}``; ``num_batches_tracked`` is added for
      each BatchNorm.

    Raises:
      StructureError: If two Flax paths map to one torch key.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, pytreeparams as ptp
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
      >>> sd = ptp.to_torch_state_dict(net.init(jax.random.key(0), jnp.ones((2, 4))))
      >>> {k: v.shape for k, v in sd.items()}
      {'0.bias': (8,), '0.weight': (8, 4), '2.bias': (1,), '2.weight': (1, 8)}
    """
    out: OrderedDict[str, Any] = OrderedDict()
    for path, name, perm, leaf in _mapping(params, rules):
        arr = np.asarray(jax.device_get(leaf))
        if perm is not None:
            arr = np.ascontiguousarray(np.transpose(arr, perm))
        if name in out:
            raise StructureError(
                f'to_torch_state_dict: two paths map to {name!r} (one is {path!r})'
            )
        out[name] = arr
    for mod in _bn_modules(list(_flatten(params)[2])):
        out[f'{mod}.num_batches_tracked'] = np.array(0, np.int64)
    if tensors:
        import torch

        out = OrderedDict((k, _tensor(torch, v)) for k, v in out.items())
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


def _to_numpy(v: Any) -> np.ndarray:
    return np.asarray(from_torch(v))


def from_torch_state_dict(
    state_dict: Mapping[str, Any] | str | os.PathLike[str],
    like: PyTree,
    rules: Sequence[Rule] = (),
    *,
    strict: bool = True,
    cast: bool = False,
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

    Returns:
      ``(variables, report)``; the report lists missing, unexpected and
      mismatched entries as ``ptp.load_into`` does (unexpected by torch key).

    Raises:
      StructureError: With ``strict``, naming every problem.

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
    used: set[str] = set()
    flat: dict[str, Any] = {}
    loaded, missing = [], []
    shape_mm: dict[str, tuple[str, str]] = {}
    dtype_mm: dict[str, tuple[str, str]] = {}
    for path, name, perm, leaf in _mapping(like, rules):
        if name not in sd:
            missing.append(path)
            flat[path] = leaf
            continue
        used.add(name)
        arr = _to_numpy(sd[name])
        if perm is not None and arr.ndim == len(perm):
            arr = np.transpose(arr, np.argsort(perm))
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
        sharding = getattr(leaf, 'sharding', None)
        value = np.ascontiguousarray(arr)
        flat[path] = (
            jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)
        )
    unexpected = tuple(k for k in sd if k not in used)
    report = LoadReport(tuple(loaded), tuple(missing), unexpected, shape_mm, dtype_mm, (), {}, ())
    if strict and not report.ok:
        raise StructureError(
            'from_torch_state_dict(strict=True): the state_dict does not fit `like`:\n  '
            + '\n  '.join(report.problems())
            + '\nAdd rules=[(flax_path_regex, torch_name, perm)]'
            + (', pass cast=True to convert dtypes' if dtype_mm else '')
            + ' or pass strict=False.'
        )
    return unflatten(flat, like=like), report
