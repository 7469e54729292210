"""Gradient statistics at the optimizer: ``ptp.watch`` wraps an optax
transformation and keeps the latest :class:`GradStats` in its state."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._errors import StructureError
from ._flatten import flatten_with_paths
from ._grads import GradStats, gated_grad_stats
from ._histogram import check_edges
from ._keys import WATCH_KEY, key_str, unbox
from ._messages import structure_mismatch_message
from ._typing import PyTree

__all__ = ['WatchState', 'watch', 'watched']


class WatchState(NamedTuple):
    """The state of :func:`watch`: the wrapped transformation's, and the statistics.

    As a pytree, ``inner``'s children keep their own keys and ``stats`` and
    ``count`` sit under ``'ptp_watch'`` (``ptp.paths`` gives ``'0/mu/w'``...,
    ``'ptp_watch/count'``), so a checkpoint saved with or without :func:`watch`
    loads into the other (see :func:`watch`).

    Attributes:
      inner: The wrapped transformation's state.
      stats: The :class:`GradStats` of the last update (zeros before the first).
      count: The updates seen (int32).

    Example:
      >>> import jax.numpy as jnp, optax, pytreeparams as ptp
      >>> state = ptp.watch(optax.sgd(0.1)).init({'w': jnp.ones(2)})
      >>> isinstance(state, ptp.WatchState), state.stats.table.shape
      (True, (1, 10))
    """

    inner: optax.OptState
    stats: GradStats
    count: jax.Array  # type: ignore[assignment]  # a field, as optax states name it (tuple.count)


def _flatten_watch_state(state: WatchState) -> tuple[list[tuple[Any, Any]], Any]:
    """The children of ``inner`` under their own keys, then the statistics under
    ``'ptp_watch'``: the wrapped state keeps the paths it has without ``watch``
    (``'0/mu/w'``, not ``'inner/0/mu/w'``), so a checkpoint of either loads into
    the other. Every key is a ``DictKey`` of a string (Orbax sorts the names)."""
    inner = state.inner
    kids, treedef = jax.tree_util.tree_flatten_with_path(inner, is_leaf=lambda x: x is not inner)
    if kids and kids[0][0] == ():  # a leaf state has no keys of its own
        keyed = [(jax.tree_util.DictKey('inner'), kids[0][1])]
    else:
        keyed = [(jax.tree_util.DictKey(key_str(kp[0])), x) for kp, x in kids]
    taken = {k.key for k, _ in keyed}
    name, n = WATCH_KEY, 0
    while name in taken:  # watch(watch(tx)): the outer statistics beside the inner ones
        n += 1
        name = f'{WATCH_KEY}_{n}'
    own = {'stats': state.stats, 'count': state.count}
    return [*keyed, (jax.tree_util.DictKey(name), own)], (treedef, name)


def _unflatten_watch_state(aux: tuple[Any, str], kids: Iterable[Any]) -> WatchState:
    treedef, _ = aux
    *inner, own = kids
    return WatchState(jax.tree_util.tree_unflatten(treedef, inner), own['stats'], own['count'])


jax.tree_util.register_pytree_with_keys(WatchState, _flatten_watch_state, _unflatten_watch_state)


def watch(
    tx: optax.GradientTransformation | None = None,
    *,
    depth: int | None = None,
    extras: bool = True,
    every: int = 1,
    stacked: Mapping[str, int] | str | None = None,
    histogram: Sequence[float] | None = None,
    norms_only: bool = False,
) -> optax.GradientTransformation:
    """Wraps ``tx`` so that its state keeps per-layer statistics of every update.

    The updates pass through unchanged. Each ``update`` records
    ``ptp.grad_stats(grads, params, updates)`` of the incoming gradients, the
    parameters and ``tx``'s outgoing updates, in one pass per leaf inside the
    jitted step. Wrap the whole optimizer (``watch(optax.chain(clip, adamw))``)
    to see the gradients before clipping and the final updates; read the
    statistics with :func:`watched`. Works under ``jit``, in ``optax.chain``,
    ``optax.MultiSteps`` and ``nnx.Optimizer``, on sharded parameters.

    Args:
      tx: The transformation to wrap (default: ``optax.identity()``, for a
        place in a chain: ``optax.chain(watch(), clip, adamw)``).
      depth: Group the statistics by the first ``depth`` keys (per module).
      extras: Also the mean and zero fraction (as in :func:`grad_stats`).
      every: Compute the statistics on every ``every``-th update only (the
        first, then each ``every``); the other updates keep the last ones.
        Each leaf's reductions run in a ``lax.cond`` of their own, so that a
        skipped step reads no leaf and keeps no gradient alive longer than
        the plain step (the outgoing updates are stored once, as operands of
        the conditionals).
      stacked: ``{subtree glob: layer axis}``: one row per stacked (scanned)
        layer, as in :func:`grad_stats` (or the partition name of flax's scan
        metadata).
      histogram: Bin edges (``ptp.log_bins()``): also per-row histograms of
        the gradients, as in :func:`grad_stats`, computed on the same steps.
      norms_only: The cheapest tier of :func:`grad_stats`: the norms, RMS and
        ratios only, one ``sum(x * x)`` per leaf and tree.

    Checkpoints: the statistics live in the optimizer state (so that they
    travel through ``jit``, ``optax.chain`` and ``nnx.Optimizer`` with no
    callback), yet adding or removing ``watch`` does not stop a run from
    resuming. A :class:`WatchState` flattens to the wrapped state's own paths
    (``'0/mu/w'``, as ``tx.init`` gives them) and its statistics and count under
    ``'ptp_watch'``; ``ptp.load(path, like=...)`` and ``ptp.load_into(path,
    like=...)`` (every format) take those from ``like`` (zeros) when the
    checkpoint lacks them or holds them for other options (``depth=``,
    ``histogram=``: other paths or shapes), and leave the checkpoint's out
    when ``like`` has none.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`WatchState`;
      an ``optax.GradientTransformationExtraArgs`` when ``tx`` is one
      (``optax.lbfgs()``, a chain holding ``reduce_on_plateau``), passing
      ``update``'s extra keyword arguments (``value=``...) on to it.

    Raises:
      StructureError: At ``update``, if the gradients' paths differ from the
        parameters'.
      ValueError: If ``every`` is not a positive int, or the histogram edges
        are not finite and increasing.

    Example:
      >>> import jax, jax.numpy as jnp, optax, pytreeparams as ptp
      >>> params = {'w': jnp.ones(3)}
      >>> tx = ptp.watch(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)))
      >>> state = tx.init(params)
      >>> updates, state = jax.jit(tx.update)({'w': jnp.array([3.0, 4.0, 0.0])}, state, params)
      >>> float(ptp.watched(state).global_norm)  # before clipping
      5.0
    """
    base = tx if tx is not None else optax.identity()
    inner_tx = optax.with_extra_args_support(base)  # extra arguments reach tx if it takes them
    if not isinstance(every, int) or every < 1:
        raise ValueError(f'watch(every=...) is a positive number of updates, got {every!r}')
    edges = check_edges(histogram) if histogram is not None else None

    stats_of = functools.partial(
        gated_grad_stats,
        depth=depth,
        extras=extras,
        stacked=stacked,
        histogram=edges,
        norms_only=norms_only,
    )

    def init(params: PyTree) -> WatchState:
        shapes = jax.eval_shape(stats_of, params, params, params)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return WatchState(inner_tx.init(params), zeros, jnp.zeros((), jnp.int32))

    def update(
        updates: PyTree, state: WatchState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, WatchState]:
        if params is not None:  # our StructureError, before the inner one's raw jax error
            _check_structure(updates, params)
        new, inner = inner_tx.update(updates, state.inner, params, **extra_args)
        if every == 1:
            stats = stats_of(updates, params, new)
        else:
            # one conditional per leaf: a skipped step reads no leaf, and each
            # gradient dies after its own conditional (one conditional for
            # the tree kept every gradient alive to its end: about twice the
            # parameter bytes of temporary memory on every step)
            take = state.count % every == 0
            fresh = stats_of(updates, params, new, gate=take)
            stats = jax.tree.map(lambda a, b: jnp.where(take, a, b), fresh, state.stats)
        return new, WatchState(inner, stats, state.count + 1)

    if isinstance(base, optax.GradientTransformationExtraArgs):
        return optax.GradientTransformationExtraArgs(init, update)
    return optax.GradientTransformation(init, update)


def _check_structure(updates: PyTree, params: PyTree) -> None:
    """Gradients with other paths than the parameters: a StructureError naming
    them (at trace time), before the wrapped optimizer fails in jax's words."""
    have, want = flatten_with_paths(updates)[2], flatten_with_paths(params)[2]
    if have != want:
        known, given = set(have), set(want)
        raise StructureError(
            structure_mismatch_message(
                'watch: the gradients do not match the parameters',
                [p for p in want if p not in known],
                [p for p in have if p not in given],
            )
        )


def watched(opt_state: PyTree) -> GradStats | None:
    """The :class:`GradStats` that :func:`watch` keeps in an optimizer state.

    Args:
      opt_state: An optax state holding a :class:`WatchState` anywhere (a chain,
        ``MultiSteps``), or an ``nnx.Optimizer`` (or its ``opt_state``).

    Returns:
      The statistics of the last update (of the first ``watch`` found), or
      None if there is no ``watch`` in the state.

    Raises:
      Nothing: a state without ``watch`` gives None.

    Example:
      >>> import jax.numpy as jnp, optax, pytreeparams as ptp
      >>> state = ptp.watch(optax.sgd(0.1)).init({'w': jnp.ones(2)})
      >>> ptp.watched(state).paths
      ('w',)
    """
    opt_state = getattr(opt_state, 'opt_state', opt_state)  # nnx.Optimizer
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, WatchState))
        if isinstance(x, WatchState)
    ]
    if not found:
        return None
    stats = found[0].stats
    hist = unbox(stats.histogram) if stats.histogram is not None else None
    return GradStats(
        table=unbox(stats.table),
        global_norm=unbox(stats.global_norm),
        paths=stats.paths,
        histogram=hist,
        bin_edges=stats.bin_edges,
    )
